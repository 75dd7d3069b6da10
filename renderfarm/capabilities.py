"""What a worker can do (renderers, cores, memory, GPU, tags) and what a job requires of one.

A worker advertises its capabilities in its heartbeat; the manager stores them with the worker
and weighs them in pick_task; `farm status` uses them to tell a job no live worker can run.
Pure: no I/O here (the worker's own detection lives in renderfarm_worker.capabilities).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from renderfarm.errors import InputError
from renderfarm.scheduling import WorkerView

TAG = re.compile(r"[a-z0-9][a-z0-9_.-]{0,31}")
MAX_TAGS = 32


def check_tags(values: Iterable[str] | str | None, what: str = "require") -> tuple[str, ...]:
    """Tags from options (each may hold several, comma-separated), sorted and without repeats;
    an InputError names the first bad one."""
    if values is None:
        return ()
    if isinstance(values, str):
        values = [values]
    tags: set[str] = set()
    for value in values:
        if not isinstance(value, str):
            raise InputError(f"{what}: {value!r} is not a tag")
        for part in value.split(","):
            tag = part.strip().lower()
            if not TAG.fullmatch(tag):
                raise InputError(f"{what}: {part.strip()!r} is not a tag (letters, digits, '_', '.', '-'; up to 32)")
            tags.add(tag)
    if len(tags) > MAX_TAGS:
        raise InputError(f"{what}: {len(tags)} tags; at most {MAX_TAGS}")
    return tuple(sorted(tags))


def parse_capabilities(raw: Any) -> dict[str, Any] | None:
    """A worker's capabilities as it sent them (a dict, or the JSON the database keeps), checked
    loosely: a worker is not trusted to send well-formed data. None when it sent none."""
    if isinstance(raw, (str, bytes)):
        try:
            raw = json.loads(raw)
        except ValueError:
            return None
    if not isinstance(raw, dict):
        return None
    caps: dict[str, Any] = {}
    renderers = raw.get("renderers")
    if isinstance(renderers, dict):
        caps["renderers"] = {str(k)[:32]: str(v)[:64] for k, v in list(renderers.items())[:32]}
    paths = raw.get("paths")
    if isinstance(paths, dict):
        caps["paths"] = {str(k)[:32]: str(v)[:1024] for k, v in list(paths.items())[:32]}
    tags = raw.get("tags")
    if isinstance(tags, (list, tuple)):
        caps["tags"] = sorted({t for t in tags if isinstance(t, str) and TAG.fullmatch(t)})[:MAX_TAGS]
    for key in ("cores", "memory_gib"):
        if isinstance(raw.get(key), (int, float)) and not isinstance(raw.get(key), bool):
            caps[key] = raw[key]
    if isinstance(raw.get("gpu"), str):
        caps["gpu"] = raw["gpu"][:128]
    if raw.get("scripts") is True:
        caps["scripts"] = True
    for key in ("os_family", "cpu_arch"):
        if isinstance(raw.get(key), str):
            caps[key] = raw[key][:32]
    for key in ("gpus", "scratch_gib"):
        if isinstance(raw.get(key), (int, float)) and not isinstance(raw.get(key), bool):
            caps[key] = raw[key]
    attributes = raw.get("attributes")
    if isinstance(attributes, dict):
        caps["attributes"] = {str(k)[:128]: [str(v)[:64] for v in vs[:32]]
                              for k, vs in list(attributes.items())[:32] if isinstance(vs, (list, tuple))}
    return caps


def openjd_capabilities(caps: dict[str, Any]) -> tuple[tuple, tuple]:
    """A worker's capabilities in OpenJD's names, (amounts, attributes), for host requirements:
    memory in MiB and scratch disk in GiB, as the specification counts them."""
    amounts = {"amount.worker.vcpu": caps.get("cores"), "amount.worker.gpu": caps.get("gpus"),
               "amount.worker.memory": caps["memory_gib"] * 1024 if "memory_gib" in caps else None,
               "amount.worker.disk.scratch": caps.get("scratch_gib")}
    attributes = {name: (caps[key],) for name, key in (("attr.worker.os.family", "os_family"),
                                                        ("attr.worker.cpu.arch", "cpu_arch")) if key in caps}
    attributes.update({k: tuple(v) for k, v in caps.get("attributes", {}).items()})
    return (tuple(sorted((k, float(v)) for k, v in amounts.items() if v is not None)),
            tuple(sorted(attributes.items())))


def wants_scripts(render_options: Any) -> bool:
    """Whether a job lets its scene's scripts run (`--allow-scripts`), from its render options
    (a dict, or the JSON the database keeps): it runs only on a node that allows scripts."""
    if isinstance(render_options, (str, bytes)):
        try:
            render_options = json.loads(render_options)
        except ValueError:
            return False
    return isinstance(render_options, dict) and render_options.get("allow_scripts") is True


def worker_view(name: str, pool: str, site: str, capabilities: Any, price: int = 0) -> WorkerView:
    """The scheduler's view of a worker from what it advertised."""
    caps = parse_capabilities(capabilities) or {}
    renderers = caps.get("renderers")
    amounts, attributes = openjd_capabilities(caps)
    return WorkerView(
        name, pool, site, price, frozenset(caps.get("tags", ())),
        frozenset(renderers) if renderers is not None else None,
        tuple(sorted(renderers.items())) if renderers else (), caps.get("scripts", False), amounts, attributes,
    )


def describe(capabilities: Any) -> str:
    """One line for `farm workers`: renderers, cores, memory, GPU and tags."""
    caps = parse_capabilities(capabilities)
    if not caps:
        return "-"
    parts = []
    if caps.get("renderers"):
        parts.append(" ".join(f"{k} {v}".strip() for k, v in sorted(caps["renderers"].items())))
    if "memory_gib" in caps:
        parts.append(f"{caps['memory_gib']:g} GiB")
    if caps.get("gpu"):
        parts.append(f"GPU {caps['gpu']}")
    if caps.get("tags"):
        parts.append("tags " + ",".join(caps["tags"]))
    if caps.get("scripts"):
        parts.append("scripts allowed")
    return "; ".join(parts)
