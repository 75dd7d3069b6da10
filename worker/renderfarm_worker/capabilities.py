"""What this node can do, advertised in its heartbeat: renderers with versions, cores, memory,
GPU and the tags it was given (a GPU found by `nvidia-smi` adds the tag `gpu`)."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from typing import TYPE_CHECKING, Any

from renderfarm import __version__

if TYPE_CHECKING:
    from renderfarm.config import Settings


def detect(settings: Settings, tags: tuple[str, ...]) -> dict[str, Any]:
    renderers = {"builtin": __version__, "null": __version__}
    if settings.allow_commands:
        renderers["command"] = f"python {platform.python_version()}"
    gpu = _gpu()
    return {
        "renderers": renderers,
        "cores": os.cpu_count() or 1,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        **({"gpu": gpu} if gpu else {}),
        "tags": sorted(set(tags) | ({"gpu"} if gpu else set())),
    }


def _gpu() -> str | None:
    """The first NVIDIA GPU's name, if `nvidia-smi` finds one."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    first = next((line for line in out.splitlines() if line.startswith("GPU ")), None)
    if first is None:
        return None
    return first.split(":", 1)[-1].split("(UUID")[0].strip() or "GPU"
