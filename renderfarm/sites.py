"""Sites and what rendering costs there: power price, currency, grid carbon, default power draw.

Amounts are integers so that sums are exact: energy in micro-kWh, prices in micro-currency per
kWh, costs in 10^-12 currency (micro-kWh times micro-currency per kWh), carbon intensity in
milligrams per kWh and CO2 in nanograms (micro-kWh times mg/kWh). A site's cost is then exactly
its energy times its price, and a job's totals exactly the sums of its attempts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from renderfarm.errors import ConfigError

DEFAULT_SITE = "local"
MICRO = 10**6
PICO = 10**12
NANO = 10**9


@dataclass(frozen=True)
class Site:
    """Where workers run, and what a kWh costs there."""

    name: str
    price_micros: int = 0  # per kWh, in millionths of `currency`
    currency: str = ""
    carbon_mg_per_kwh: int = 0
    watts: float = 100.0  # a worker's draw unless it declares its own
    heartbeat_ttl: float | None = None  # seconds; None: the farm's heartbeat_ttl
    compare_micros: int | None = None  # price for choosing the cheapest site (a common currency)
    source: str = field(default="", compare=False)  # the farm.toml that defined it, for `farm config`

    @property
    def price_per_kwh(self) -> float:
        return self.price_micros / MICRO

    @property
    def ranking_price(self) -> int:
        return self.price_micros if self.compare_micros is None else self.compare_micros


_KEYS = {"price_per_kwh", "currency", "carbon_g_per_kwh", "watts", "heartbeat_ttl", "compare_price_per_kwh"}


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
        sites[name] = Site(
            name=name,
            price_micros=price,
            currency=currency.upper(),
            carbon_mg_per_kwh=round(_number(where, "carbon_g_per_kwh", table.get("carbon_g_per_kwh", 0)) * 1000),
            watts=watts,
            heartbeat_ttl=None if ttl is None else max(1.0, _number(where, "heartbeat_ttl", ttl)),
            compare_micros=None if compare is None else _micros(where, "compare_price_per_kwh", compare),
            source=source,
        )
    return sites


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
            watts_per_core: float | None = None) -> Usage:
    """An attempt's usage at `site`: the worker's fixed draw over the render's wall time, or a
    per-core draw over the render's CPU time, or the site's default draw over the wall time."""
    if watts_per_core is not None:
        energy = energy_ukwh(watts_per_core, cpu_seconds)
    else:
        energy = energy_ukwh(site.watts if watts is None else watts, wall_seconds)
    return Usage(energy, energy * site.price_micros, energy * site.carbon_mg_per_kwh, site.currency)
