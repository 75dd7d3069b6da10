"""A job's cost drawn for a producer: per currency, the cost of each frame as bars coloured by the
site that rendered it, and the running total as a line (Pillow only)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from renderfarm.sites import PICO

if TYPE_CHECKING:
    from renderfarm.report import Report

WIDTH, PANEL = 1100, 420
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 90, 90, 56, 60
PALETTE = [(52, 120, 196), (230, 126, 34), (39, 174, 96), (192, 57, 43), (142, 68, 173), (22, 160, 133)]
INK, GRID, LINE = (40, 40, 40), (225, 225, 225), (20, 20, 20)


def cost_chart(report: Report, out: Path) -> Path:
    """Draw the chart to `out` (PNG); one panel per currency the job was charged in."""
    from PIL import Image, ImageDraw, ImageFont

    per_site_frame: dict[str, dict[tuple[int, str], int]] = {}
    for a in report.attempts:
        frames = a["frames"]
        share, rest = divmod(a["cost_pico"], len(frames))
        for i, frame in enumerate(frames):
            cell = per_site_frame.setdefault(a["currency"] or "(no price)", {})
            cell[(frame, a["site"])] = cell.get((frame, a["site"]), 0) + share + (rest if i == 0 else 0)
    currencies = sorted(per_site_frame) or ["(no cost recorded)"]
    sites = sorted({a["site"] for a in report.attempts})
    colours = {site: PALETTE[i % len(PALETTE)] for i, site in enumerate(sites)}
    image = Image.new("RGB", (WIDTH, PANEL * len(currencies)), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=14)
    title = ImageFont.load_default(size=18)
    for p, currency in enumerate(currencies):
        _panel(draw, font, title, report, currency, per_site_frame.get(currency, {}), colours, top=p * PANEL)
    tmp = out.with_name(f".{out.name}.partial")
    image.save(tmp, format="PNG")
    tmp.replace(out)
    return out


def _panel(draw, font, title, report: Report, currency: str, cells: dict, colours: dict, *, top: int) -> None:
    frames = sorted({frame for frame, _ in cells}) or sorted(report.by_frame)
    totals = [sum(v for (f, _), v in cells.items() if f == frame) for frame in frames]
    cumulative, running = [], 0
    for t in totals:
        running += t
        cumulative.append(running)
    x0, x1 = MARGIN_L, WIDTH - MARGIN_R
    y0, y1 = top + MARGIN_T, top + PANEL - MARGIN_B
    bar_max = max(totals, default=0) or 1
    line_max = cumulative[-1] if cumulative and cumulative[-1] else 1
    draw.text((x0, top + 14), f"job {report.job_id} ({report.name}): cost per frame by site, {currency}", fill=INK, font=title)
    for i in range(5):
        y = y1 - (y1 - y0) * i / 4
        draw.line([(x0, y), (x1, y)], fill=GRID)
        draw.text((8, y - 8), f"{bar_max * i / 4 / PICO:.4g}", fill=INK, font=font)
        draw.text((x1 + 8, y - 8), f"{line_max * i / 4 / PICO:.4g}", fill=INK, font=font)
    draw.text((8, y0 - 30), "per frame", fill=INK, font=font)
    draw.text((x1 - 10, y0 - 30), "running total", fill=INK, font=font)
    slot = (x1 - x0) / max(len(frames), 1)
    for i, frame in enumerate(frames):
        left, bottom = x0 + i * slot + slot * 0.15, y1
        for site, colour in colours.items():
            value = cells.get((frame, site), 0)
            if value:
                height = (y1 - y0) * value / bar_max
                draw.rectangle([left, bottom - height, left + slot * 0.7, bottom], fill=colour)
                bottom -= height
        if len(frames) <= 24 or i % max(1, len(frames) // 12) == 0:
            draw.text((left, y1 + 6), str(frame), fill=INK, font=font)
    points = [(x0 + (i + 0.5) * slot, y1 - (y1 - y0) * c / line_max) for i, c in enumerate(cumulative)]
    if len(points) > 1:
        draw.line(points, fill=LINE, width=2)
    for point in points[-1:]:
        draw.ellipse([point[0] - 3, point[1] - 3, point[0] + 3, point[1] + 3], fill=LINE)
    legend_x = x0
    for site, colour in colours.items():
        draw.rectangle([legend_x, y1 + 30, legend_x + 12, y1 + 42], fill=colour)
        draw.text((legend_x + 18, y1 + 28), site, fill=INK, font=font)
        legend_x += 30 + int(draw.textlength(site, font=font))
    draw.text((x1 - 200, y1 + 28), f"total {line_max / PICO if cumulative else 0:.6g} {currency}", fill=INK, font=font)
