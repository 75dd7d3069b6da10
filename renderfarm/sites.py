"""Sites and what rendering costs there: power price, currency, grid carbon, default power draw.

Amounts are integers so that sums are exact: energy in micro-kWh, prices in micro-currency per
kWh, costs in 10^-12 currency (micro-kWh times micro-currency per kWh), carbon intensity in
milligrams per kWh and CO2 in nanograms (micro-kWh times mg/kWh). A site's cost is then exactly
its energy times its price, and a job's totals exactly the sums of its attempts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from functools import cached_property

from renderfarm.errors import ConfigError

DEFAULT_SITE = "local"
MICRO = 10**6
PICO = 10**12
NANO = 10**9


DAY = 24 * 60  # minutes


@dataclass(frozen=True)
class Band:
    """Part of a day at a site, in its own time zone: from `start` to `end` minutes after its
    midnight (an `end` below `start` runs past midnight), and the amount in force then."""

    start: int
    end: int
    value: int

    def covers(self, minute: int) -> bool:
        return self.start <= minute < self.end if self.start < self.end else minute >= self.start or minute < self.end

    def minutes(self) -> set[int]:
        return {m for m in range(DAY) if self.covers(m)}

    def text(self) -> str:
        return f"{_clock(self.start)}-{_clock(self.end)}"


@dataclass(frozen=True)
class Site:
    """Where workers run, and what a kWh costs there: a flat price and carbon intensity, or one
    for each band of the day in the site's time zone."""

    name: str
    price_micros: int = 0  # per kWh, in millionths of `currency` (with bands: their lowest)
    currency: str = ""
    carbon_mg_per_kwh: int = 0
    watts: float = 100.0  # a worker's draw unless it declares its own
    heartbeat_ttl: float | None = None  # seconds; None: the farm's heartbeat_ttl
    compare_micros: int | None = None  # price for choosing the cheapest site (a common currency)
    source: str = field(default="", compare=False)  # the farm.toml that defined it, for `farm config`
    timezone: str = "UTC"
    price_bands: tuple[Band, ...] = ()  # time-of-day prices, covering the day (none: the flat price)
    carbon_bands: tuple[Band, ...] = ()  # time-of-day carbon intensity in mg/kWh
    idle_watts: float | None = None  # an idle node's draw (None: not counted)
    sleep_watts: float = 0.0  # an asleep node's draw (FARM_SLEEP_AFTER), counted against idle_watts

    @property
    def price_per_kwh(self) -> float:
        return self.price_micros / MICRO

    @property
    def ranking_price(self) -> int:
        return self.price_micros if self.compare_micros is None else self.compare_micros

    @cached_property
    def zone(self):
        from zoneinfo import ZoneInfo

        return ZoneInfo(self.timezone)

    def local_minute(self, at: float) -> int:
        local = datetime.fromtimestamp(at, self.zone)
        return local.hour * 60 + local.minute

    def local_minutes(self, at: float) -> int:
        """Whole minutes of the site's local time since the epoch at `at`: one number per band minute."""
        return int((at + datetime.fromtimestamp(at, self.zone).utcoffset().total_seconds()) // 60)

    def price_at(self, at: float) -> int:
        """The price per kWh in force at epoch second `at` (millionths of `currency`)."""
        return _in_force(self.price_bands, self.local_minute(at), self.price_micros) if self.price_bands \
            else self.price_micros

    def carbon_at(self, at: float) -> int:
        """The grid's carbon intensity at epoch second `at` (mg per kWh)."""
        return _in_force(self.carbon_bands, self.local_minute(at), self.carbon_mg_per_kwh) if self.carbon_bands \
            else self.carbon_mg_per_kwh

    def ranking_price_at(self, at: float) -> int:
        """The price for comparing sites at `at`: the band's, where the site has bands."""
        return self.price_at(at) if self.price_bands else self.ranking_price

    def changes(self, after: float, before: float) -> list[float]:
        """The epoch seconds in (after, before] at which a price or carbon band starts, in order."""
        from datetime import timedelta

        starts = sorted({b.start for b in self.price_bands + self.carbon_bands})
        out: list[float] = []
        day = datetime.fromtimestamp(after, self.zone).date()
        while starts and datetime(day.year, day.month, day.day, tzinfo=self.zone).timestamp() <= before:
            for minute in starts:
                at = datetime(day.year, day.month, day.day, minute // 60, minute % 60, tzinfo=self.zone).timestamp()
                if after < at <= before:
                    out.append(at)
            day += timedelta(days=1)
        return out


_KEYS = {"price_per_kwh", "currency", "carbon_g_per_kwh", "watts", "heartbeat_ttl", "compare_price_per_kwh",
         "timezone", "price", "carbon", "idle_watts", "sleep_watts"}
_CLOCK = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$|^24:00$")


def _in_force(bands: tuple[Band, ...], minute: int, default: int) -> int:
    return next((b.value for b in bands if b.covers(minute)), default)


def _clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _minutes(where: str, value: object) -> int:
    if not isinstance(value, str) or not _CLOCK.match(value):
        raise ConfigError(f"{where}: {value!r} is not a time of day HH:MM (00:00 to 24:00)")
    hours, minutes = value.split(":")
    return int(hours) * 60 + int(minutes)


def parse_bands(where: str, bands: object, key: str, unit) -> tuple[Band, ...]:
    """`[[sites.NAME.price]]` (or `.carbon`) tables: `from`, `to` and the amount under `key`,
    converted by `unit(where, key, value)`. They must cover the day once: an overlap, or hours
    no band covers, is refused naming the bands and the hours."""
    if not isinstance(bands, list) or not bands or not all(isinstance(b, dict) for b in bands):
        raise ConfigError(f"{where}: expected [[{where.split(': ', 1)[-1]}]] tables with from, to and {key}")
    out: list[Band] = []
    seen: dict[int, int] = {}  # minute -> the band covering it
    for i, table in enumerate(bands):
        at = f"{where}[{i}]"
        unknown = set(table) - {"from", "to", key}
        if unknown:
            raise ConfigError(f"{at}: unknown key {sorted(unknown)[0]!r} (expected from, to, {key})")
        for needed in ("from", "to", key):
            if needed not in table:
                raise ConfigError(f"{at}: missing {needed!r}")
        start, end = _minutes(f"{at}.from", table["from"]) % DAY, _minutes(f"{at}.to", table["to"]) % DAY
        if start == end:
            raise ConfigError(f"{at}: from {table['from']} to {table['to']} is empty (a whole day is a flat amount)")
        band = Band(start, end, unit(at, key, table[key]))
        for minute in sorted(band.minutes()):
            if minute in seen:
                raise ConfigError(f"{at}: {band.text()} overlaps {where.rsplit(': ', 1)[-1]}[{seen[minute]}] "
                                  f"{out[seen[minute]].text()} (at {_clock(minute)})")
            seen[minute] = i
        out.append(band)
    if len(seen) < DAY:
        first = min(m for m in range(DAY) if m not in seen)
        last = first
        while (last + 1) % DAY not in seen and (last + 1) % DAY != first:
            last = (last + 1) % DAY
        raise ConfigError(f"{where}: {_clock(first)}-{_clock((last + 1) % DAY)} is not covered "
                          "(the bands must cover the whole day)")
    return tuple(out)


def parse_sites(tables: object, source: str) -> dict[str, Site]:
    """The `[sites.NAME]` tables of a farm.toml; ConfigError names the site, key and value."""
    if not isinstance(tables, dict):
        raise ConfigError(f"{source}: [sites] must be a table of [sites.NAME] tables")
    sites = {}
    for name, table in tables.items():
        where = f"{source}: sites.{name}"
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: must be a table")
        unknown = set(table) - _KEYS
        if unknown:
            raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r} (expected {', '.join(sorted(_KEYS))})")
        currency = table.get("currency", "")
        if not isinstance(currency, str) or len(currency) > 8:
            raise ConfigError(f"{where}.currency: {currency!r} is not a currency code (e.g. CNY, EUR)")
        watts = _number(where, "watts", table.get("watts", 100.0))
        if watts <= 0:
            raise ConfigError(f"{where}.watts: {watts:g} must be more than 0")
        ttl = table.get("heartbeat_ttl")
        compare = table.get("compare_price_per_kwh")
        price = _micros(where, "price_per_kwh", table.get("price_per_kwh", 0))
        if price and not currency:
            raise ConfigError(f"{where}.currency: missing; price_per_kwh {table['price_per_kwh']!r} needs a "
                              "currency code (e.g. currency = \"EUR\")")
        timezone = table.get("timezone", "UTC")
        _check_timezone(where, timezone)
        price_bands = carbon_bands = ()
        if "price" in table:
            if "price_per_kwh" in table:
                raise ConfigError(f"{where}: give price_per_kwh or [[sites.{name}.price]] bands, not both")
            if compare is not None:
                raise ConfigError(f"{where}.compare_price_per_kwh: cannot go with price bands (give the bands in "
                                  "the currency the farm compares sites in)")
            price_bands = parse_bands(f"{where}.price", table["price"], "per_kwh", _micros)
            price = min(b.value for b in price_bands)
            if not currency:
                raise ConfigError(f"{where}.currency: missing; price bands need a currency code (e.g. currency = \"CNY\")")
        if "carbon" in table:
            if "carbon_g_per_kwh" in table:
                raise ConfigError(f"{where}: give carbon_g_per_kwh or [[sites.{name}.carbon]] bands, not both")
            carbon_bands = parse_bands(f"{where}.carbon", table["carbon"], "g_per_kwh",
                                       lambda at, key, v: round(_number(at, key, v) * 1000))
        idle = table.get("idle_watts")
        sleep_watts = _number(where, "sleep_watts", table.get("sleep_watts", 0))
        if sleep_watts and idle is None:
            raise ConfigError(f"{where}.sleep_watts: needs idle_watts (what sleeping saves is counted against it)")
        sites[name] = Site(
            name=name,
            timezone=timezone,
            price_bands=price_bands,
            carbon_bands=carbon_bands,
            idle_watts=None if idle is None else _number(where, "idle_watts", idle),
            sleep_watts=sleep_watts,
            price_micros=price,
            currency=currency.upper(),
            carbon_mg_per_kwh=min(b.value for b in carbon_bands) if carbon_bands
            else round(_number(where, "carbon_g_per_kwh", table.get("carbon_g_per_kwh", 0)) * 1000),
            watts=watts,
            heartbeat_ttl=None if ttl is None else max(1.0, _number(where, "heartbeat_ttl", ttl)),
            compare_micros=None if compare is None else _micros(where, "compare_price_per_kwh", compare),
            source=source,
        )
    return sites


def _check_timezone(where: str, timezone: object) -> None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if not isinstance(timezone, str) or not timezone or len(timezone) > 64:
        raise ConfigError(f"{where}.timezone: {timezone!r} is not a time zone (e.g. Asia/Urumqi, UTC)")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{where}.timezone: {timezone!r} is not a known time zone (e.g. Asia/Urumqi, UTC)") from None


def site_settings(site: Site) -> list[tuple[str, str]]:
    """A site's effective settings as farm.toml keys and the values in force, for `farm config`."""
    rows = [
        ("price_per_kwh", f"{Decimal(site.price_micros) / MICRO:f}" if site.price_micros else "0 (no price)"),
        ("currency", site.currency or "(none)"),
        ("carbon_g_per_kwh", f"{Decimal(site.carbon_mg_per_kwh) / 1000:f}"),
        ("watts", f"{site.watts:g}"),
        ("heartbeat_ttl", "the farm's" if site.heartbeat_ttl is None else f"{site.heartbeat_ttl:g}"),
    ]
    if site.compare_micros is not None:
        rows.append(("compare_price_per_kwh", f"{Decimal(site.compare_micros) / MICRO:f}"))
    if site.price_bands:
        rows[0] = ("price", ", ".join(f"{b.text()} {Decimal(b.value) / MICRO:f}" for b in site.price_bands))
    if site.carbon_bands:
        rows[2] = ("carbon", ", ".join(f"{b.text()} {Decimal(b.value) / 1000:f} g" for b in site.carbon_bands))
    rows.append(("timezone", site.timezone))
    if site.idle_watts is not None:
        rows.append(("idle_watts", f"{site.idle_watts:g}"))
        rows.append(("sleep_watts", f"{site.sleep_watts:g}"))
    return [(f"sites.{site.name}.{key}", value) for key, value in rows]


def _number(where: str, key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(f"{where}.{key}: expected a number of at least 0, got {value!r}")
    return float(value)


def _micros(where: str, key: str, value: object) -> int:
    """An amount with at most 6 decimals, as an exact count of millionths."""
    _number(where, key, value)
    try:
        micros = Decimal(str(value)) * MICRO
    except InvalidOperation:
        raise ConfigError(f"{where}.{key}: {value!r} is not a number") from None
    if micros != micros.to_integral_value():
        raise ConfigError(f"{where}.{key}: {value!r} has more than 6 decimals")
    return int(micros)


@dataclass(frozen=True)
class Usage:
    """What one attempt burned: energy, its cost and its CO2, in exact integer units."""

    energy_ukwh: int
    cost_pico: int
    co2_ng: int
    currency: str


def energy_ukwh(watts: float, seconds: float) -> int:
    """Energy in micro-kWh of `watts` drawn for `seconds` (1 micro-kWh = 3.6 J)."""
    return max(0, round(watts * seconds / 3.6))


def account(site: Site, *, wall_seconds: float, cpu_seconds: float, watts: float | None = None,
            watts_per_core: float | None = None, at: float | None = None) -> Usage:
    """An attempt's usage at `site`: the worker's fixed draw over the render's wall time, or a
    per-core draw over the render's CPU time, or the site's default draw over the wall time;
    priced at the band in force at epoch second `at` (the flat price where none is given)."""
    if watts_per_core is not None:
        energy = energy_ukwh(watts_per_core, cpu_seconds)
    else:
        energy = energy_ukwh(site.watts if watts is None else watts, wall_seconds)
    price = site.price_micros if at is None else site.price_at(at)
    carbon = site.carbon_mg_per_kwh if at is None else site.carbon_at(at)
    return Usage(energy, energy * price, energy * carbon, site.currency)
