"""The heartbeat: a worker's word that it lives, what it can do and which attempts it holds.

It sits at the worker's own key with a TTL; the manager reads every live one each round."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from renderfarm.wire.base import INT64, Id, Message, ShortSlug, Tag, WorkerName

ATTRIBUTE = r"^(?:[A-Za-z_][A-Za-z0-9_-]{0,63}:)?attr\.[A-Za-z_][A-Za-z0-9_.-]{0,99}$"  # OpenJD's names
Short = Annotated[str, Field(max_length=64, pattern=r"^[^\x00-\x1f\x7f]*$")]


class Capabilities(Message):
    """What a worker can do: renderers with their versions, cores, memory, GPU, tags, scripts."""

    what = "capabilities"
    renderers: Annotated[dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")], Short],
                         Field(max_length=32)] = {}
    paths: Annotated[dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")],
                          Annotated[str, Field(max_length=1024)]], Field(max_length=32)] = {}
    tags: Annotated[tuple[Tag, ...], Field(max_length=32)] = ()
    cores: Annotated[int, Field(ge=1, le=65536)] | None = None
    memory_gib: Annotated[float, Field(ge=0, le=1e6)] | None = None
    gpu: Annotated[str, Field(max_length=128)] | None = None
    scripts: Literal[True] | None = None  # it lets a scene's scripts run (FARM_ALLOW_SCRIPTS=1)
    # What OpenJD host requirements match: its OS family, CPU architecture, GPU count, scratch
    # disk, and custom attributes (`attr.studio.dcc` -> ("maya", "nuke")).
    os_family: Literal["linux", "windows", "macos"] | None = None
    cpu_arch: Literal["x86_64", "arm64"] | None = None
    gpus: Annotated[int, Field(ge=0, le=1024)] | None = None
    scratch_gib: Annotated[float, Field(ge=0, le=1e9)] | None = None
    attributes: Annotated[dict[Annotated[str, Field(pattern=ATTRIBUTE)],
                               Annotated[tuple[Short, ...], Field(max_length=32)]], Field(max_length=32)] = {}
    mac: Annotated[str, Field(pattern=r"^[0-9a-f]{2}(?::[0-9a-f]{2}){5}$")] | None = None  # to wake it by


class Heartbeat(Message):
    """One beat of a worker. `seq` counts up by one per beat (a new number is a new beat: the
    manager times beats by its own clock); `attempts` names every attempt the worker still holds,
    the one rendering first, then those whose outputs are still uploading."""

    what = "heartbeat"
    MAX_BYTES = 16 * 1024

    name: WorkerName
    host: Annotated[str, Field(max_length=255, pattern=r"^[^\x00-\x1f\x7f]*$")] = ""
    pid: Annotated[int, Field(ge=1, le=2**31)]
    pool: ShortSlug = "default"
    site: ShortSlug = "local"
    cores: Annotated[int, Field(ge=1, le=65536)] = 1
    version: Short = ""
    uptime: Annotated[float, Field(ge=0, le=1e9)] = 0.0  # seconds since the worker started
    state: Literal["idle", "busy", "stopping", "asleep"] = "idle"
    task: Annotated[str, Field(pattern=r"^[0-9a-f]{4,16}:[0-9]{1,10}$")] | None = None
    attempts: Annotated[tuple[Id, ...], Field(max_length=16)] = ()
    ttl: Annotated[float, Field(ge=1, le=3600)] = 30.0
    seq: Annotated[int, Field(ge=0, le=INT64)] = 0
    capabilities: Capabilities | None = None
