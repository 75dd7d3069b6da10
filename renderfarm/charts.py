"""A job's cost drawn for a producer: per currency, the cost of each frame as bars coloured by the
site that rendered it, and the running total as a line; a job rendered where power has no price
gets its energy and its render time drawn the same way instead (Pillow only). Axes are in
readable units: a currency with the decimals its scale needs, Wh or kWh, seconds, minutes or
hours, never `6.6e-06`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

from renderfarm.sites import PICO

if TYPE_CHECKING:
    from renderfarm.report import Report

WIDTH, PANEL = 1100, 420
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 90, 90, 56, 60
PALETTE = [(52, 120, 196), (230, 126, 34), (39, 174, 96), (192, 57, 43), (142, 68, 173), (22, 160, 133)]
INK, GRID, LINE = (40, 40, 40), (225, 225, 225), (20, 20, 20)
TICKS = 4  # intervals on each axis


@dataclass(frozen=True)
class Axis:
    """A value axis from 0 to `TICKS` steps of a round size, labelled in `unit`."""

    step: Decimal
    unit: str
    decimals: int

    @property
    def top(self) -> float:
        return float(self.step * TICKS)

    def labels(self) -> list[str]:
        return [f"{self.step * i:.{self.decimals}f}" for i in range(TICKS + 1)]


def nice_axis(maximum: float, unit: str, *, min_decimals: int = 0) -> Axis:
    """The smallest axis of TICKS round steps (1, 2, 2.5 or 5 times a power of ten) that holds
    `maximum`, with just the decimals its labels need (at least `min_decimals`)."""
    if not maximum > 0:  # nothing to draw: 0 to 1
        return Axis(Decimal("0.25"), unit, max(min_decimals, 2))
    raw = maximum / TICKS
    power = math.floor(math.log10(raw))
    step = Decimal(10) ** (power + 1)
    for mantissa in ("1", "2", "2.5", "5"):
        candidate = Decimal(mantissa) * Decimal(10) ** power
        if candidate * TICKS >= Decimal(repr(maximum)):
            step = candidate
            break
    decimals = max(min_decimals, -step.normalize().as_tuple().exponent)
    return Axis(step, unit, decimals)


def readable(value: float, unit: str, *, min_decimals: int = 0) -> str:
    """`value` with three significant digits (more when it is large) and its unit: 0.0000792 EUR,
    12.35 EUR, 0.0123 Wh, 1530 s."""
    if value <= 0:
        return f"0 {unit}"
    decimals = max(min_decimals, 2 - math.floor(math.log10(value)))
    return f"{value:.{decimals}f} {unit}"


@dataclass(frozen=True)
class Panel:
    """One panel of the chart: a quantity per frame and site, in display units."""

    title: str
    unit: str
    cells: dict[tuple[int, str], float]
    min_decimals: int = 0

    def totals(self, frames: list[int]) -> list[float]:
        return [sum(v for (f, _), v in self.cells.items() if f == frame) for frame in frames]

    def axes(self, frames: list[int]) -> tuple[Axis, Axis]:
        """The per-frame axis (left) and the running total's axis (right)."""
        totals = self.totals(frames)
        return (nice_axis(max(totals, default=0.0), self.unit, min_decimals=self.min_decimals),
                nice_axis(sum(totals), self.unit, min_decimals=self.min_decimals))


def chart_panels(report: Report) -> list[Panel]:
    """The chart's panels: one per currency the job was charged in; without any price, its
    energy per frame and its render time per frame."""
    money: dict[str, dict[tuple[int, str], int]] = {}
    energy: dict[tuple[int, str], int] = {}
    wall: dict[tuple[int, str], float] = {}
    for a in report.attempts:
        frames = a["frames"]
        for i, frame in enumerate(frames):
            cell = (frame, a["site"])
            if a["cost_pico"]:
                share, rest = divmod(a["cost_pico"], len(frames))
                per_currency = money.setdefault(a["currency"] or "(no currency)", {})
                per_currency[cell] = per_currency.get(cell, 0) + share + (rest if i == 0 else 0)
            share, rest = divmod(a["energy_ukwh"] or 0, len(frames))
            energy[cell] = energy.get(cell, 0) + share + (rest if i == 0 else 0)
            wall[cell] = wall.get(cell, 0.0) + (a["wall_seconds"] or 0.0) / len(frames)
    job = f"job {report.job_id} ({report.name})"
    if money:
        return [Panel(f"{job}: cost per frame by site, {currency}", currency,
                      {cell: pico / PICO for cell, pico in cells.items()}, min_decimals=2)
                for currency, cells in sorted(money.items())]
    kwh = sum(energy.values()) >= 10**6  # micro-kWh: a kWh or more is drawn in kWh, less in Wh
    unit, per = ("kWh", 10**6) if kwh else ("Wh", 10**3)
    seconds = sum(wall.values())
    time_unit, span = ("h", 3600.0) if seconds >= 10 * 3600 else ("min", 60.0) if seconds >= 600 else ("s", 1.0)
    return [
        Panel(f"{job}: energy per frame by site, {unit} (no price: see [sites] in farm.toml)", unit,
              {cell: v / per for cell, v in energy.items()}),
        Panel(f"{job}: render time per frame by site, {time_unit}", time_unit,
              {cell: v / span for cell, v in wall.items()}),
    ]


def cost_chart(report: Report, out: Path) -> Path:
    """Draw the chart to `out` (PNG), one panel under another."""
    from PIL import Image, ImageDraw, ImageFont

    panels = chart_panels(report)
    sites = sorted({a["site"] for a in report.attempts})
    colours = {site: PALETTE[i % len(PALETTE)] for i, site in enumerate(sites)}
    image = Image.new("RGB", (WIDTH, PANEL * len(panels)), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=14)
    title = ImageFont.load_default(size=18)
    for p, panel in enumerate(panels):
        _panel(draw, font, title, report, panel, colours, top=p * PANEL)
    tmp = out.with_name(f".{out.name}.partial")
    image.save(tmp, format="PNG")
    tmp.replace(out)
    return out


def _panel(draw, font, title, report: Report, panel: Panel, colours: dict, *, top: int) -> None:
    frames = sorted({frame for frame, _ in panel.cells}) or sorted(report.by_frame)
    cumulative, running = [], 0.0
    for t in panel.totals(frames):
        running += t
        cumulative.append(running)
    bars, line = panel.axes(frames)
    x0, x1 = MARGIN_L, WIDTH - MARGIN_R
    y0, y1 = top + MARGIN_T, top + PANEL - MARGIN_B
    draw.text((x0, top + 14), panel.title, fill=INK, font=title)
    for i, (left_label, right_label) in enumerate(zip(bars.labels(), line.labels())):
        y = y1 - (y1 - y0) * i / TICKS
        draw.line([(x0, y), (x1, y)], fill=GRID)
        draw.text((x0 - 8 - draw.textlength(left_label, font=font), y - 8), left_label, fill=INK, font=font)
        draw.text((x1 + 8, y - 8), right_label, fill=INK, font=font)
    draw.text((8, y0 - 22), f"per frame, {panel.unit}", fill=INK, font=font)
    draw.text((x1 - 60, y0 - 22), f"running total, {panel.unit}", fill=INK, font=font)
    slot = (x1 - x0) / max(len(frames), 1)
    for i, frame in enumerate(frames):
        left, bottom = x0 + i * slot + slot * 0.15, y1
        for site, colour in colours.items():
            value = panel.cells.get((frame, site), 0)
            if value:
                height = (y1 - y0) * value / bars.top
                draw.rectangle([left, bottom - height, left + slot * 0.7, bottom], fill=colour)
                bottom -= height
        if len(frames) <= 24 or i % max(1, len(frames) // 12) == 0:
            draw.text((left, y1 + 6), str(frame), fill=INK, font=font)
    points = [(x0 + (i + 0.5) * slot, y1 - (y1 - y0) * c / line.top) for i, c in enumerate(cumulative)]
    if len(points) > 1:
        draw.line(points, fill=LINE, width=2)
    for point in points[-1:]:
        draw.ellipse([point[0] - 3, point[1] - 3, point[0] + 3, point[1] + 3], fill=LINE)
    legend_x = x0
    for site, colour in colours.items():
        draw.rectangle([legend_x, y1 + 30, legend_x + 12, y1 + 42], fill=colour)
        draw.text((legend_x + 18, y1 + 28), site, fill=INK, font=font)
        legend_x += 30 + int(draw.textlength(site, font=font))
    total = f"total {readable(running, panel.unit, min_decimals=panel.min_decimals)}"
    draw.text((x1 - draw.textlength(total, font=font), y1 + 28), total, fill=INK, font=font)
