"""Idle power: what nodes draw while they wait for work, per site, and what sleeping them saves.
A node awake with nothing to do draws its site's `idle_watts`; an asleep one (FARM_SLEEP_AFTER)
draws `sleep_watts` (0 by default); what sleeping saved is the difference, over the time asleep.
Each slice of time is priced at the site's band in force then. Sites without idle_watts are not
counted. The manager's sleeper measures (IdleMeter) and keeps the sums in `idle_power`; `farm
report` with no job reads them (idle_report)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from renderfarm.sites import MICRO, PICO, Site

if TYPE_CHECKING:
    from sqlmodel import Session

FLUSH_EVERY = 60.0  # seconds of the manager's clock between writes of the sums
MAX_SLICE = 60.0  # a longer gap between two looks (a stalled manager) is not counted


@dataclass
class Slice:
    """What one site's idle and asleep nodes drew over some time, and what sleep saved: energy in
    watt-seconds (joules) and cost in joules times the price per kWh (micro-units), turned into
    micro-kWh and 10^-12 units once summed, so that many short slices lose nothing to rounding."""

    idle_seconds: float = 0.0
    idle_joules: float = 0.0
    idle_cost: float = 0.0
    asleep_seconds: float = 0.0
    asleep_joules: float = 0.0
    asleep_cost: float = 0.0
    saved_joules: float = 0.0
    saved_cost: float = 0.0

    def add(self, other: Slice) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def sums(self) -> dict[str, float | int]:
        """As the columns of `idle_power` hold them."""
        def ukwh(joules: float) -> int:
            return round(joules / 3.6)

        return {"idle_seconds": self.idle_seconds, "idle_ukwh": ukwh(self.idle_joules),
                "idle_cost_pico": ukwh(self.idle_cost), "asleep_seconds": self.asleep_seconds,
                "asleep_ukwh": ukwh(self.asleep_joules), "asleep_cost_pico": ukwh(self.asleep_cost),
                "saved_ukwh": ukwh(self.saved_joules), "saved_cost_pico": ukwh(self.saved_cost)}


def charge(site: Site, *, idle: int, asleep: int, seconds: float, at: float) -> Slice:
    """`idle` awake idle nodes and `asleep` asleep ones at `site` for `seconds` from epoch `at`,
    priced at the band in force at `at`. Nothing where the site has no idle_watts."""
    if site.idle_watts is None or seconds <= 0:
        return Slice()
    price = site.price_at(at)
    idle_j = site.idle_watts * idle * seconds
    asleep_j = site.sleep_watts * asleep * seconds
    saved_j = max(0.0, site.idle_watts - site.sleep_watts) * asleep * seconds
    return Slice(idle * seconds, idle_j, idle_j * price, asleep * seconds, asleep_j, asleep_j * price,
                 saved_j, saved_j * price)


class IdleMeter:
    """Sums each site's slices since the manager started; each write adds what the rounded sums
    gained since the last one (so rounding never accumulates over writes)."""

    def __init__(self) -> None:
        self.pending: dict[str, Slice] = defaultdict(Slice)  # every slice since the start, per site
        self._written: dict[str, dict[str, float | int]] = {}
        self._dirty = False
        self._last: float | None = None
        self._flushed: float | None = None

    def look(self, sites: dict[str, Site], idle: dict[str, int], asleep: dict[str, int], now: float) -> None:
        """The idle and asleep nodes per site now: the time since the last look is theirs."""
        last, self._last = self._last, now
        if last is None or not 0 < now - last <= MAX_SLICE:
            return
        for name in set(idle) | set(asleep):
            site = sites.get(name)
            if site is not None and site.idle_watts is not None:
                self.pending[name].add(charge(site, idle=idle.get(name, 0), asleep=asleep.get(name, 0),
                                              seconds=now - last, at=last))
                self._dirty = True

    def due(self, now: float) -> bool:
        if self._flushed is None:
            self._flushed = now
        return self._dirty and now - self._flushed >= FLUSH_EVERY

    def flush(self, session: Session, sites: dict[str, Site], now: float) -> None:
        """Add the pending sums to each site's row, in the caller's transaction."""
        from renderfarm.models import IdlePower

        for name, part in self.pending.items():
            total = part.sums()
            before = self._written.get(name, {})
            sums = {k: v - before.get(k, 0) for k, v in total.items()}
            self._written[name] = total
            row = session.get(IdlePower, name)
            if row is None:
                row = IdlePower(site=name, currency=sites[name].currency if name in sites else "",
                                **{k: 0 for k in sums})
                session.add(row)
            for column, amount in sums.items():
                setattr(row, column, getattr(row, column) + amount)
            row.updated_at = now
        self._dirty = False
        self._flushed = now


def idle_report(session: Session) -> list[dict[str, Any]]:
    """Each counted site's idle power so far: hours, kWh and cost idle, asleep, and saved."""
    from sqlalchemy import select

    from renderfarm.models import IdlePower

    out = []
    for row in session.scalars(select(IdlePower).order_by(IdlePower.site)):
        out.append({
            "site": row.site, "currency": row.currency,
            "idle_hours": round(row.idle_seconds / 3600, 6), "idle_kwh": row.idle_ukwh / MICRO,
            "idle_cost": row.idle_cost_pico / PICO,
            "asleep_hours": round(row.asleep_seconds / 3600, 6), "asleep_kwh": row.asleep_ukwh / MICRO,
            "asleep_cost": row.asleep_cost_pico / PICO,
            "saved_kwh": row.saved_ukwh / MICRO, "saved_cost": row.saved_cost_pico / PICO,
            "idle_ukwh": row.idle_ukwh, "idle_cost_pico": row.idle_cost_pico, "saved_ukwh": row.saved_ukwh,
            "saved_cost_pico": row.saved_cost_pico,
        })
    return out
