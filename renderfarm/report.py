"""What a job cost: time, energy, money and CO2 per frame, per site, per worker and in total,
from the per-attempt records (failed attempts included). Sums are exact integers (see
renderfarm.sites); floats are only for showing."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from renderfarm.frames import parse_frames
from renderfarm.models import Attempt, Task
from renderfarm.sites import MICRO, NANO, PICO

# The key of a cost charged without a currency (only in a database written before sites had to
# name one along with a price).
NO_CURRENCY = "(no currency)"

if TYPE_CHECKING:
    from sqlmodel import Session

    from renderfarm.models import Job


@dataclass
class Usage:
    """Summed usage of some attempts. Integer fields are exact; costs are kept per currency."""

    attempts: int = 0
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    energy_ukwh: int = 0
    co2_ng: int = 0
    cost_pico: dict[str, int] = field(default_factory=dict)

    def add(self, *, attempts: int, wall: float, cpu: float, energy: int, co2: int, currency: str, cost: int) -> None:
        self.attempts += attempts
        self.wall_seconds += wall
        self.cpu_seconds += cpu
        self.energy_ukwh += energy
        self.co2_ng += co2
        self.cost_pico[currency] = self.cost_pico.get(currency, 0) + cost

    def priced(self) -> dict[str, int]:
        """The costs per currency, without the zero of attempts at sites with no price (no
        currency): a job rendered where power has no price costs {}, not {"": 0}."""
        return {currency: pico for currency, pico in sorted(self.cost_pico.items()) if currency or pico}

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["wall_seconds"] = round(self.wall_seconds, 3)
        doc["cpu_seconds"] = round(self.cpu_seconds, 3)
        doc["energy_kwh"] = self.energy_ukwh / MICRO
        doc["co2_kg"] = self.co2_ng / NANO / 1000
        priced = self.priced()
        doc["cost_pico"] = {currency or NO_CURRENCY: pico for currency, pico in priced.items()}
        doc["cost"] = {currency or NO_CURRENCY: pico / PICO for currency, pico in priced.items()}
        return doc


@dataclass
class Report:
    job_id: str
    name: str
    state: str
    total: Usage
    by_site: dict[str, Usage]
    by_worker: dict[str, Usage]
    by_frame: dict[int, Usage]
    sites: dict[str, dict[str, Any]]  # each site's price and currency, as used
    attempts: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {
            "job": self.job_id, "name": self.name, "state": self.state, "total": self.total.to_json(),
            "by_site": {k: v.to_json() for k, v in sorted(self.by_site.items())},
            "by_worker": {k: v.to_json() for k, v in sorted(self.by_worker.items())},
            "by_frame": {str(k): v.to_json() for k, v in sorted(self.by_frame.items())},
            "sites": self.sites, "attempts": self.attempts,
        }


def job_report(session: Session, job: Job, sites: dict | None = None) -> Report:
    """The job's usage from its attempts' records. A chunk's usage is shared out over its frames
    in whole units (the remainder to its first frame), so frames still sum exactly."""
    rows = session.execute(
        select(Attempt, Task.frames, Task.index).join(Task, Task.id == Attempt.task_id)
        .where(Attempt.job_id == job.id, Attempt.wall_seconds.is_not(None))
        .order_by(Task.index, Attempt.number)
    ).all()
    report = Report(job.id, job.name, job.state, Usage(), defaultdict(Usage), defaultdict(Usage), defaultdict(Usage),
                    {}, [])
    for attempt, frames_text, index in rows:
        site = attempt.site or "local"
        amounts = dict(wall=attempt.wall_seconds or 0.0, cpu=attempt.cpu_seconds or 0.0, energy=attempt.energy_ukwh,
                       co2=attempt.co2_ng, currency=attempt.currency, cost=attempt.cost_pico)
        report.total.add(attempts=1, **amounts)
        report.by_site[site].add(attempts=1, **amounts)
        report.by_worker[attempt.worker].add(attempts=1, **amounts)
        frames = parse_frames(frames_text)
        for i, frame in enumerate(frames):
            report.by_frame[frame].add(attempts=1 if i == 0 else 0, **_share(amounts, len(frames), first=i == 0))
        report.attempts.append({
            "task": index, "frames": frames, "attempt": attempt.number, "worker": attempt.worker,
            "state": attempt.state, "site": site,
            "wall_seconds": attempt.wall_seconds, "cpu_seconds": attempt.cpu_seconds,
            "energy_ukwh": attempt.energy_ukwh, "cost_pico": attempt.cost_pico, "currency": attempt.currency,
            "co2_ng": attempt.co2_ng,
        })
        if sites is not None and site not in report.sites:
            known = sites.get(site)
            report.sites[site] = {
                "price_per_kwh": known.price_per_kwh if known else None, "currency": attempt.currency,
                "carbon_g_per_kwh": known.carbon_mg_per_kwh / 1000 if known else None,
            }
    report.by_site, report.by_worker, report.by_frame = dict(report.by_site), dict(report.by_worker), dict(report.by_frame)
    return report


def _share(amounts: dict[str, Any], parts: int, *, first: bool) -> dict[str, Any]:
    out = dict(amounts)
    for key in ("energy", "co2", "cost"):
        whole, rest = divmod(amounts[key], parts)
        out[key] = whole + (rest if first else 0)
    out["wall"] = amounts["wall"] / parts
    out["cpu"] = amounts["cpu"] / parts
    return out


def job_costs(session: Session, job_id: str) -> dict[str, int]:
    """The job's cost so far, per currency, in 10^-12 units (for `farm status`)."""
    from sqlalchemy import func

    rows = session.execute(
        select(Attempt.currency, func.coalesce(func.sum(Attempt.cost_pico), 0))
        .where(Attempt.job_id == job_id, Attempt.wall_seconds.is_not(None))
        .group_by(Attempt.currency)
    ).all()
    return {currency: int(total) for currency, total in rows}
