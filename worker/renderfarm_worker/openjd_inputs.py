"""Staging an OpenJD task's inputs on a worker: each file its order names (an output of a step
it depends on, rendered here or on any other worker) downloaded to the same relative path under
its session's params/ folder, checked against its SHA-256, written under a temporary name and
renamed, and never outside params/ (no '..' part reaches here: the order's parse refuses one; a
link in the way is refused too)."""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from renderfarm.errors import RenderError
from renderfarm.storage.base import sha256_file

if TYPE_CHECKING:
    from renderfarm.wire import OpenJDInput
    from renderfarm_worker.attemptlog import AttemptLog
    from renderfarm_worker.runtime import WorkerRuntime


def stager(rt: WorkerRuntime, inputs: Sequence[OpenJDInput], attempt_log: AttemptLog) -> Callable[[Path], None]:
    """The `stage_inputs(params_dir)` hook of OpenJDRunner.run_task for these inputs."""

    def stage(params_dir: Path) -> None:
        fetched = kept = 0
        for item in inputs:
            rt.raise_if_stopped()
            target = target_of(params_dir, item.path)
            if _intact(target, item.size, item.sha256):
                kept += 1  # staged for an earlier task of this warm session
                continue
            _fetch(rt, item, params_dir, target)
            fetched += 1
        attempt_log.note(f"inputs: {fetched} fetched, {kept} already in the session")

    return stage


def target_of(params_dir: Path, relative: str) -> Path:
    """Where `relative` goes under `params_dir`, its folders made; a link or a file where a
    folder should be is refused (nothing is ever written through a link)."""
    from renderfarm.downloads import OPENJD_DEPTH, target_below
    from renderfarm.errors import InputError

    try:
        return target_below(params_dir, relative, depth=OPENJD_DEPTH)
    except InputError as e:
        raise RenderError(f"input {relative[:200]!r}: {e}") from None


def _intact(path: Path, size: int, sha256: str) -> bool:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode) or st.st_size != size:
        return False
    return sha256_file(path) == sha256


def _fetch(rt: WorkerRuntime, item: OpenJDInput, params_dir: Path, target: Path) -> None:
    """Downloaded into the session's own folder (the worker's alone), checked, then renamed into
    its folder below params/, opened part by part without following a link: a folder the render
    user writes may be swapped for a link at any moment (see openjd_layout.open_folder)."""
    from renderfarm_worker.openjd_layout import open_folder

    tmp = params_dir.parent / f".input-{secrets.token_hex(8)}.part"
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644))
        rt.download(item.key, tmp, item.url)
        digest = sha256_file(tmp)
        if digest != item.sha256 or tmp.stat().st_size != item.size:
            raise RenderError(f"input {item.path}: downloaded {tmp.stat().st_size} bytes with SHA-256 "
                              f"{digest[:16]}..., expected {item.size} with {item.sha256[:16]}...")
        os.chmod(tmp, 0o644)
        folder = open_folder(params_dir, target.relative_to(params_dir).parts[:-1], make=True)
        try:
            os.replace(tmp, target.name, dst_dir_fd=folder)
        finally:
            os.close(folder)
    except OSError as e:
        raise RenderError(f"input {item.path}: cannot write {target} ({e.strerror or e})") from None
    finally:
        tmp.unlink(missing_ok=True)
