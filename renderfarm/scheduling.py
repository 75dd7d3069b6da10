"""Who renders what next: pick_task, the one pure function that holds the farm's dispatch policy."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True)
class WorkerView:
    """What the scheduler knows of a worker asking for work."""

    name: str
    pool: str = "default"
    site: str = "local"
    price: int = 0  # its site's price per kWh, for comparing sites (micro-units)
    tags: frozenset[str] = frozenset()  # what it advertises (`farm-worker --tag gpu`)
    renderers: frozenset[str] | None = None  # the renderers it has; None: it did not say (any)
    versions: tuple[tuple[str, str], ...] = ()  # (renderer, version) for those it gave a version of
    scripts: bool = False  # it lets a scene's scripts run (FARM_ALLOW_SCRIPTS=1)
    # OpenJD capabilities: amounts (`amount.worker.vcpu` -> 16) and attributes
    # (`attr.worker.os.family` -> ("linux",)), from what it advertised.
    amounts: tuple[tuple[str, float], ...] = ()
    attributes: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def version_of(self, renderer: str) -> str | None:
        return dict(self.versions).get(renderer)


@dataclass(frozen=True)
class HostNeeds:
    """An OpenJD step's host requirements: amounts within [min, max], attributes with any (or
    all) of their values. A worker that did not advertise a capability does not meet it."""

    amounts: tuple[tuple[str, float | None, float | None], ...] = ()  # (name, min, max)
    attributes: tuple[tuple[str, tuple[str, ...], bool], ...] = ()  # (name, values, all of them)

    def unmet(self, worker: WorkerView) -> str | None:
        """The first requirement `worker` does not meet, in words; None when it meets them all."""
        have = dict(worker.amounts)
        for name, low, high in self.amounts:
            value = have.get(name)
            if value is None or (low is not None and value < low) or (high is not None and value > high):
                bounds = " and ".join(b for b in (low is not None and f">= {low:g}", high is not None
                                                   and f"<= {high:g}") if b)
                return f"{name} {bounds}"
        attrs = {k: {v.lower() for v in vs} for k, vs in worker.attributes}
        for name, values, all_of in self.attributes:
            got = attrs.get(name, set())
            wanted = {v.lower() for v in values}
            if (wanted > got) if all_of else not (wanted & got):
                return f"{name} {'all of' if all_of else 'one of'} {', '.join(values)}"
        return None

    def to_dict(self) -> dict:
        return {"amounts": [list(a) for a in self.amounts], "attributes": [[n, list(v), a] for n, v, a in self.attributes]}

    @classmethod
    def from_dict(cls, d: dict) -> HostNeeds:
        return cls(tuple((str(n), low, high) for n, low, high in d.get("amounts", ())),
                   tuple((str(n), tuple(v), bool(a)) for n, v, a in d.get("attributes", ())))


@lru_cache(maxsize=256)
def step_hosts(openjd_steps: str | None) -> dict[str, HostNeeds]:
    """An OpenJD job's host requirements by step, from the JSON its row keeps (`{step: {"after":
    [...], "host": {...}}}`); empty for other jobs. Cached: do not change what it returns."""
    if not openjd_steps:
        return {}
    import json

    try:
        steps = json.loads(openjd_steps)
    except ValueError:
        return {}
    return {name: HostNeeds.from_dict(step["host"]) for name, step in steps.items() if step.get("host")}


@dataclass(frozen=True)
class Candidate:
    """A task that could be dispatched now, with what the policy weighs."""

    task_id: int
    job_id: str
    task_index: int
    priority: int  # 0-100, higher first
    submitted_at: float
    pool: str = "default"
    failed_on: frozenset[str] = frozenset()  # workers this task already failed on
    blocked: frozenset[str] = frozenset()  # workers blocklisted for this task's job
    rank: int = 1  # 0: before the rest of its job (--first-last)
    max_workers: int | None = None  # at most this many workers on its job at once
    site: str | None = None  # its job runs only at this site
    cheapest: bool = False  # its job goes to the cheapest site with idle workers first
    requires: frozenset[str] = frozenset()  # tags a worker must have (`farm submit --require gpu`)
    renderer: str | None = None  # the renderer its job needs
    renderer_version: str | None = None  # and the version of it ("3.4": any 3.4.x)
    scripts: bool = False  # its job lets the scene's scripts run (`--allow-scripts`)
    host: HostNeeds | None = None  # an OpenJD step's host requirements


def pick_task(
    worker: WorkerView,
    candidates: Iterable[Candidate],
    peers: Iterable[str] = (),
    shares: Mapping[str, float] | None = None,
    holders: Mapping[str, frozenset[str]] | None = None,
    idle_price: int | None = None,
) -> Candidate | None:
    """The candidate `worker` should render next, or None when nothing fits.

    - Only tasks of its pool, of a renderer it has, of jobs whose required tags it has; a job
      that lets its scene's scripts run only on a worker that allows scripts.
    - None of a job it is blocklisted for while another of `peers` (the live workers of the pool)
      is not (a blocklist that bars everyone would only stall the job).
    - A task that failed on this worker waits for another peer unless none could take it.
    - A job with `max_workers` takes a new worker only while fewer hold its tasks (`holders`).
    - A job pinned to a site only goes to that site's workers; a cheapest-first job only to a
      worker whose site is as cheap as the cheapest idle worker of the pool (`idle_price`).
    - Then: the highest priority first; among equal priorities the job that has had the least
      of the farm lately (`shares`, the dispatcher's fair-share account: lower goes first), so
      equal jobs share the farm evenly and a small job is not starved by a big one; then the
      oldest job; then first-last frames, then task order.
    """
    others = frozenset(peers) - {worker.name}
    shares = shares or {}
    holders = holders or {}

    def allowed(c: Candidate) -> bool:
        if not can_run(worker, c.pool, c.site, c.renderer, c.requires, c.renderer_version, c.scripts, c.host):
            return False
        if c.cheapest and idle_price is not None and worker.price > idle_price:
            return False
        if worker.name in c.blocked and others - c.blocked:
            return False
        if c.max_workers is not None:
            held = holders.get(c.job_id, frozenset())
            if worker.name not in held and len(held) >= c.max_workers:
                return False
        return worker.name not in c.failed_on or not (others - c.failed_on - c.blocked)

    eligible = (c for c in candidates if allowed(c))
    return min(
        eligible,
        key=lambda c: (-c.priority, shares.get(c.job_id, 0.0), c.submitted_at, c.job_id, c.rank, c.task_index),
        default=None,
    )


def can_run(worker: WorkerView, pool: str, site: str | None, renderer: str | None, requires: frozenset[str],
            version: str | None = None, scripts: bool = False, host: HostNeeds | None = None) -> bool:
    """Whether `worker` may ever take a task of a job with these needs (whatever else it is doing)."""
    return (
        worker.pool == pool
        and (site is None or worker.site == site)
        and requires <= worker.tags
        and (renderer is None or worker.renderers is None or renderer in worker.renderers)
        and (version is None or renderer is None or version_matches(worker.version_of(renderer), version))
        and (not scripts or worker.scripts)
        and (host is None or host.unmet(worker) is None)
    )


def version_matches(have: str | None, need: str) -> bool:
    """Whether version `have` is the `need` a job asks for: `need` names its leading parts
    (3.4 is met by 3.4.0 and 3.4.1, not by 3.5 or 4.0)."""
    return bool(have) and have.split(".")[: len(need.split("."))] == need.split(".")


def unschedulable(workers: Iterable[WorkerView], pool: str, site: str | None, renderer: str | None,
                  requires: frozenset[str], version: str | None = None, scripts: bool = False,
                  hosts: Mapping[str, HostNeeds] | None = None) -> str | None:
    """Why no live worker could run a job with these needs, or None if one could. The reason names
    the first need that rules the last candidates out, so it says what to fix. `hosts`: an OpenJD
    job's host requirements by step; a step no live worker meets makes the job unschedulable."""
    workers = list(workers)
    for step, host in (hosts or {}).items():
        able = [w for w in workers if can_run(w, pool, site, renderer, requires, version, scripts)]
        if able and not any(host.unmet(w) is None for w in able):
            return f"step {step!r}: no live worker of pool {pool!r} has {host.unmet(able[0])}"
    if any(can_run(w, pool, site, renderer, requires, version, scripts) for w in workers):
        return None
    if not workers:
        return "no live worker"
    in_pool = [w for w in workers if w.pool == pool]
    if not in_pool:
        return f"no live worker in pool {pool!r}"
    here = [w for w in in_pool if site is None or w.site == site]
    if not here:
        return f"no live worker of pool {pool!r} at site {site!r}"
    tagged = [w for w in here if requires <= w.tags]
    if not tagged:
        return f"no live worker of pool {pool!r} has tag(s) {', '.join(sorted(requires))}"
    equipped = [w for w in tagged if renderer is None or w.renderers is None or renderer in w.renderers]
    if not equipped:
        if renderer == "openjd":
            return (f"no live worker of pool {pool!r} with the needed tags runs OpenJD tasks "
                    f"(a node opts in with FARM_ALLOW_OPENJD=1)")
        return f"no live worker of pool {pool!r} with the needed tags has the {renderer} renderer"
    versioned = [w for w in equipped if can_run(w, pool, site, renderer, requires, version)]
    if not versioned:
        label = RENDERER_LABELS.get(renderer or "", renderer)
        found = sorted({v for w in equipped if (v := w.version_of(renderer or ""))})
        return (f"no live worker of pool {pool!r} has {label} {version}"
                + (f" (they have {', '.join(found)})" if found else ""))
    return (f"no live worker of pool {pool!r} that could render it allows scripts (the job was submitted with "
            f"--allow-scripts; a node opts in with FARM_ALLOW_SCRIPTS=1)")


RENDERER_LABELS = {"blender": "Blender"}
