"""What this node can do, advertised in its heartbeat: renderers with versions, cores, memory,
GPU, the tags it was given (a GPU found by `nvidia-smi` adds the tag `gpu`) and whether it lets
a scene's scripts run; and the render user it renders as, checked at start."""

from __future__ import annotations

import functools
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from renderfarm import __version__

if TYPE_CHECKING:
    from renderfarm.config import Settings
    from renderfarm.renderers.blender import Blender

log = logging.getLogger("renderfarm.worker")


def detect(settings: Settings, tags: tuple[str, ...], blender: Blender | None = None,
           scratch: Path | None = None) -> dict[str, Any]:
    renderers = {"builtin": __version__, "null": __version__}
    if settings.allow_commands:
        renderers["command"] = f"python {platform.python_version()}"
    if settings.allow_openjd:
        refusal = openjd_refusal(settings.render_user)
        if refusal is None:
            renderers["openjd"] = "2023-09"  # the specification revision it runs
        else:
            log.warning("%s: this worker takes no OpenJD tasks", refusal)
    if blender is not None:
        renderers["blender"] = blender.version
    gpu, gpus = _gpu()
    free = scratch_gib(scratch) if scratch is not None else None
    return {
        "renderers": renderers,
        "cores": os.cpu_count() or 1,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        **({"gpu": gpu} if gpu else {}),
        **({"paths": {"blender": blender.path}} if blender is not None else {}),
        "tags": tuple(sorted(set(tags) | ({"gpu"} if gpu else set()))),
        **({"scripts": True} if settings.allow_scripts else {}),
        **_platform(), "gpus": gpus,
        **({"scratch_gib": free} if free is not None else {}),
        **({"attributes": attributes} if (attributes := parse_attributes(settings.openjd_attributes)) else {}),
    }


@functools.lru_cache(maxsize=4)
def openjd_refusal(render_user: str | None) -> str | None:
    """Why OpenJD tasks cannot run as `render_user` on this node, or None when they can (or there
    is no render user). openjd-sessions runs an action as another user with `sudo -u USER -i
    setsid -w SCRIPT` (its _subprocess.py) and finds the action's process group as sudo's only
    child: the user's login shell must exec that command, as bash does (dash forks it, and then
    cancel can signal nothing). One probe, the same command, says whether all of that holds."""
    if not render_user:
        return None
    what = f"FARM_ALLOW_OPENJD with FARM_RENDER_USER={render_user}"
    sudo, setsid = shutil.which("sudo"), shutil.which("setsid")
    if sudo is None:
        return f"{what} needs sudo (openjd-sessions switches users with it; apt-get install sudo)"
    if setsid is None:
        return f"{what} needs setsid (util-linux)"
    try:  # the probe reads its own /proc stat: "pid (cat) state ppid pgrp ..."
        proc = subprocess.Popen([sudo, "-n", "-u", render_user, "-i", setsid, "-w", "cat", "/proc/self/stat"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, cwd="/", start_new_session=True)
    except OSError as e:
        return f"{what}: sudo -u {render_user} -i failed ({e})"
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired as e:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: sudo and whatever it started
        proc.wait()
        return f"{what}: sudo -u {render_user} -i failed ({e})"
    import pwd

    shell = pwd.getpwnam(render_user).pw_shell
    fields = out.rsplit(")", 1)[-1].split()
    if proc.returncode != 0 or len(fields) < 3:
        last = (out.strip().splitlines() or err.strip().splitlines() or ["no output"])[-1]
        return (f"{what}: `sudo -u {render_user} -i` exited {proc.returncode} ({last[:200]}); its login "
                f"shell is {shell} (usermod -s /bin/bash {render_user})")
    if fields[1] != str(proc.pid) or fields[2] == str(proc.pid):
        return (f"{what} needs a login shell that execs its command ({render_user}'s is {shell}; "
                f"usermod -s /bin/bash {render_user}), or cancel cannot reach the action")
    return None


def parse_attributes(text: str | None) -> dict[str, tuple[str, ...]]:
    """FARM_OPENJD_ATTRIBUTES ("attr.studio.dcc=maya,nuke attr.studio.site=lon") as the custom
    attributes this worker advertises; ConfigError names a malformed one."""
    import re

    from renderfarm.errors import ConfigError

    attributes: dict[str, tuple[str, ...]] = {}
    for item in (text or "").split():
        m = re.fullmatch(r"((?:[A-Za-z_][A-Za-z0-9_-]{0,63}:)?attr\.[A-Za-z_][A-Za-z0-9_.-]{0,99})=([^=]+)", item)
        if m is None:
            raise ConfigError(f"FARM_OPENJD_ATTRIBUTES: {item[:60]!r} is not attr.NAME=VALUE[,VALUE...]")
        attributes[m.group(1)] = tuple(v for v in m.group(2).split(",") if v)[:32]
    return attributes


def scratch_gib(scratch: Path) -> float | None:
    """The free space of the scratch directory's disk at start, in GiB (OpenJD's
    amount.worker.disk.scratch); None if no folder on its way exists or can be read."""
    for folder in (scratch, *scratch.parents):
        try:
            return round(shutil.disk_usage(folder).free / 2**30, 1)
        except OSError:
            continue
    return None


def _platform() -> dict[str, str]:
    """Its OS family and CPU architecture in OpenJD's words (attr.worker.os.family, .cpu.arch)."""
    family = {"Linux": "linux", "Windows": "windows", "Darwin": "macos"}.get(platform.system())
    arch = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine().lower())
    return {**({"os_family": family} if family else {}), **({"cpu_arch": arch} if arch else {})}


def check_render_account(settings: Settings, scratch: Path) -> None:
    """With FARM_RENDER_USER, refuse to start unless renders can run as that user: the worker is
    root, the user exists and is not root, and it can reach the scratch directory and run this
    Python (a renderer is this Python, running one of our modules)."""
    from renderfarm.renderers.account import render_account

    account = render_account(settings.render_user)
    if account is None:
        return
    account.check_reach(scratch, "the scratch directory", need=0)
    for python in (Path(sys.executable), Path(sys.executable).resolve()):  # a venv's, and the one it links to
        account.check_reach(python, "the worker's Python")
    log.info("renders run as %s (uid %d)", account.name, account.uid)


def find_worker_blender(settings: Settings) -> Blender | None:
    """The Blender this worker renders with (FARM_BLENDER, or `blender` on PATH), or None, with
    the reason logged: a worker without Blender still renders everything else."""
    from renderfarm.renderers.blender import PROBED_VAR, BlenderNotFound, find_configured_blender

    try:
        return find_configured_blender(settings.blender, probed=os.environ.get(PROBED_VAR))
    except BlenderNotFound as e:
        log.info("%s: this worker takes no Blender jobs", e)
        return None


def _gpu() -> tuple[str | None, int]:
    """The first NVIDIA GPU's name, if `nvidia-smi` finds one, and how many it finds."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None, 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None, 0
    found = [line for line in out.splitlines() if line.startswith("GPU ")]
    if not found:
        return None, 0
    return found[0].split(":", 1)[-1].split("(UUID")[0].strip() or "GPU", len(found)
