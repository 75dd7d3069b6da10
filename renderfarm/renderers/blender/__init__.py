"""The Blender renderer: `.blend` scenes packed with their dependencies, rendered by the Blender a
worker has (found on PATH or through FARM_BLENDER), one Blender process per chunk.

    scene.py     what a .blend holds (size, frames, the Blender that saved it) and its packing
    command.py   Blender's argv, the setup it runs before rendering, and what its output says
    __main__.py  the wrapper a worker runs: Blender, then each frame renamed (a tile cropped)

This module finds Blender and compares versions; it imports nothing heavy.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

from renderfarm.errors import InputError, RenderError

VERSION_TIMEOUT = 10.0  # `blender --version` starts Blender: ~0.6 s warm, more from a cold disk
INSTALL_HINT = "install Blender (apt-get install -y blender) or set FARM_BLENDER=/path/to/blender"
_VERSION_SPEC = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){0,2}")


@dataclass(frozen=True)
class Blender:
    """A Blender install: its executable and the version it reports (`3.4.1`)."""

    path: str
    version: str


class BlenderNotFound(RenderError):
    """No usable Blender: the message says what was tried and how to fix it."""


def locate_blender(environ: Mapping[str, str]) -> tuple[str | None, str]:
    """The Blender executable FARM_BLENDER names, or the one on PATH, and where it came from;
    (None, why) when there is none."""
    configured = environ.get("FARM_BLENDER")
    if configured:
        if not (os.path.isfile(configured) and os.access(configured, os.X_OK)):
            return None, f"FARM_BLENDER={configured} is not an executable file"
        return configured, "FARM_BLENDER"
    found = shutil.which("blender", path=environ.get("PATH", os.defpath))
    if found is None:
        return None, "blender is not on PATH and FARM_BLENDER is unset"
    return found, "PATH"


def run_version(path: str) -> tuple[int | None, str]:
    """`blender --version`: its exit status (None when it did not finish in time) and output."""
    proc = subprocess.Popen(
        [path, "--version"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, errors="replace", start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=VERSION_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: Blender's children go too
        proc.communicate()
        return None, ""
    return proc.returncode, output


def blender_version(output: str) -> str | None:
    """The version on the first `Blender X.Y[.Z]` line of `blender --version`
    (lines before it are warnings some builds print)."""
    match = re.search(r"^Blender (\d+\.\d+(?:\.\d+)?)", output, re.MULTILINE)
    return match.group(1) if match else None


def find_blender(environ: Mapping[str, str], probed: str | None = None) -> Blender:
    """This machine's Blender and its version; BlenderNotFound says why there is none. `probed`:
    what probe_record said of a Blender found just before (`farm up` finds it once for all its
    workers): its version, if it names this very file, unchanged, without running it again."""
    path, source = locate_blender(environ)
    if path is None:
        raise BlenderNotFound(f"Blender not found: {source}; {INSTALL_HINT}")
    known = _probed_version(probed, path)
    if known is not None:
        return Blender(path, known)
    code, output = run_version(path)
    version = blender_version(output)
    if code != 0 or version is None:
        raise BlenderNotFound(f"Blender at {path} (from {source}) does not run: `--version` exited {code}")
    return Blender(path, version)


def find_configured_blender(configured: str | None, probed: str | None = None) -> Blender:
    """find_blender for this process: the Blender FARM_BLENDER (the setting `configured`) names,
    else the one on PATH."""
    return find_blender({"FARM_BLENDER": configured or "", "PATH": os.environ.get("PATH", os.defpath)}, probed)


PROBED_VAR = "FARM_BLENDER_PROBED"  # a local farm's workers find the Blender `farm up` found in it


def probe_record(blender: Blender) -> str:
    """What find_blender may take from another process's finding: the file, its identity (device,
    inode, size, change times: a Blender installed over it differs) and the version it reported."""
    return json.dumps({"path": blender.path, "file": _identity(blender.path), "version": blender.version})


def _probed_version(record: str | None, path: str) -> str | None:
    if not record:
        return None
    try:
        found = json.loads(record)
        same = found["path"] == path and found["file"] == _identity(path)
        version = found["version"]
    except (ValueError, TypeError, KeyError, OSError):
        return None
    return version if same and isinstance(version, str) and _VERSION_SPEC.fullmatch(version) else None


def _identity(path: str) -> list[int]:
    st = os.stat(path)  # the file a link leads to: what runs
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def check_version_spec(text: str, what: str = "blender-version") -> str:
    """A version a job may require: `4`, `4.2` or `4.2.1`."""
    text = text.strip()
    if not _VERSION_SPEC.fullmatch(text):
        raise InputError(f"{what}: {text[:40]!r} is not a version such as 4.2 or 4.2.1")
    return text
