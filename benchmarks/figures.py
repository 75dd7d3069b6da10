"""A benchmark's figures, each with the baseline it names and their ratio, printed as a table."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Figure:
    """One measured figure and, where it has one, its baseline measured in the same run."""

    benchmark: str
    what: str
    value: float
    unit: str
    baseline: str | None = None
    baseline_value: float | None = None
    target: str | None = None

    @property
    def ratio(self) -> float | None:
        if self.baseline_value in (None, 0):
            return None
        return self.value / self.baseline_value

    def to_json(self) -> dict:
        return {**asdict(self), "ratio": self.ratio}

    def line(self) -> str:
        text = f"{self.what}: {_fmt(self.value)} {self.unit}"
        if self.baseline is not None:
            ratio = f"{self.ratio:.2f}" if self.ratio >= 0.1 else f"{self.ratio:.3f}"  # a small share: 0.089, not 0.09
            text += f"; {self.baseline}: {_fmt(self.baseline_value)} {self.unit}; ratio {ratio}x"
        if self.target:
            text += f" (target {self.target})"
        return text


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"


def show(figures: list[Figure]) -> None:
    for figure in figures:
        print(f"[{figure.benchmark}] {figure.line()}")
