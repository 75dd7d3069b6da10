"""The week benchmark's chart (Pillow only): cost per hour and load per hour, each as bars stacked
by site for the farm's policy, with the baseline's as a line and the solar band's hours shaded."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from renderfarm.charts import GRID, INK, LINE, PALETTE, TICKS, nice_axis, readable
from renderfarm.sites import Site

WIDTH, PANEL = 1400, 380
LEFT, RIGHT, TOP, BOTTOM = 80, 30, 56, 64
SUN = (255, 244, 204)  # the solar band's hours
WHO = "bars: the farm's policy; line: FCFS on the studio only"


def week_chart(out: Path, hours: int, farm, base, sites: list[str], solar: Site,
               start: datetime) -> Path:
    """Draw the chart of `hours` hours from `start` to `out` (PNG): `farm` and `base` are the runs'
    tallies (per (hour, site): cost in currency, busy node-hours)."""
    from PIL import Image, ImageDraw, ImageFont

    colours = {site: PALETTE[i % len(PALETTE)] for i, site in enumerate(sites)}
    image = Image.new("RGB", (WIDTH, 2 * PANEL), "white")
    draw = ImageDraw.Draw(image)
    font, title = ImageFont.load_default(size=13), ImageFont.load_default(size=17)
    origin = start.timestamp()
    cheapest = min(b.value for b in solar.price_bands)
    sunny = [solar.price_at(origin + h * 3600 + 1800) == cheapest for h in range(hours)]
    panels = [
        (f"cost per hour by site, CNY ({WHO})", "CNY", farm.hourly_cost, base.hourly_cost, 0),
        (f"load: busy nodes by site, hourly mean ({WHO})", "nodes", farm.hourly_busy,
         base.hourly_busy, 0),
    ]
    for p, (heading, unit, cells, baseline, decimals) in enumerate(panels):
        top = p * PANEL
        x0, x1, y0, y1 = LEFT, WIDTH - RIGHT, top + TOP, top + PANEL - BOTTOM
        stacks = [sum(cells.get((h, s), 0.0) for s in sites) for h in range(hours)]
        line = [sum(v for (hh, _), v in baseline.items() if hh == h) for h in range(hours)]
        axis = nice_axis(max(stacks + line, default=0.0), unit, min_decimals=decimals)
        slot = (x1 - x0) / hours
        for h in range(hours):
            if sunny[h]:
                draw.rectangle([x0 + h * slot, y0, x0 + (h + 1) * slot, y1], fill=SUN)
        draw.text((x0, top + 14), heading, fill=INK, font=title)
        for i, label in enumerate(axis.labels()):
            y = y1 - (y1 - y0) * i / TICKS
            draw.line([(x0, y), (x1, y)], fill=GRID)
            x = x0 - 8 - draw.textlength(label, font=font)
            draw.text((x, y - 7), label, fill=INK, font=font)
        for h in range(hours):
            bottom = y1
            for site in sites:
                value = cells.get((h, site), 0.0)
                if value > 0:
                    height = (y1 - y0) * value / axis.top
                    left = x0 + h * slot
                    box = [left, bottom - height, left + slot - 1, bottom]
                    draw.rectangle(box, fill=colours[site])
                    bottom -= height
        points = [(x0 + (h + 0.5) * slot, y1 - (y1 - y0) * v / axis.top)
                  for h, v in enumerate(line)]
        if len(points) > 1:
            draw.line(points, fill=LINE, width=2)
        for day in range(0, hours, 24):
            x = x0 + day * slot
            draw.line([(x, y1), (x, y1 + 5)], fill=INK)
            label = (start + timedelta(hours=day)).strftime("%a %d")
            draw.text((x + 3, y1 + 6), label, fill=INK, font=font)
        legend = x0
        keys = [*colours.items(), ("FCFS, studio only", LINE), (f"{solar.name} solar band", SUN)]
        for name, colour in keys:
            draw.rectangle([legend, y1 + 30, legend + 12, y1 + 42], fill=colour, outline=GRID)
            draw.text((legend + 18, y1 + 29), name, fill=INK, font=font)
            legend += 36 + int(draw.textlength(name, font=font))
        if unit == "CNY":
            total = (f"total {readable(sum(cells.values()), unit)} against "
                     f"{readable(sum(baseline.values()), unit)}")
            draw.text((x1 - draw.textlength(total, font=font), y1 + 29), total, fill=INK, font=font)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    image.save(tmp, format="PNG")
    tmp.replace(out)
    return out

