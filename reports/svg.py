"""Self-contained inline SVG charts (no JavaScript, no CDN: the report is read offline).

    svg = line_chart([Series("holdout AUC", [(0, 0.71), (1, 0.72)])], title="AUC per day",
                     x_label="run date", y_label="AUC", x_tick_labels={0: "2026-02-01", 1: "2026-02-02"})

Every text that reaches the SVG is escaped with html.escape, so series names and labels may
come from untrusted records.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Iterable, Sequence

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")

# Plot area margins in pixels: left room for y tick labels, bottom for x ticks and the axis label.
# The legend is one row under the title; the right margin leaves room for a centred last x label.
_MARGIN_LEFT, _MARGIN_RIGHT, _MARGIN_TOP, _MARGIN_BOTTOM = 64, 44, 48, 52
_LEGEND_Y = 34
_LEGEND_CHAR_PX = 6  # approximate width of one 10px sans-serif character


@dataclass(frozen=True)
class Series:
    """One named line of a chart: points (x, y); a y of None leaves a gap in the line."""

    name: str
    points: Sequence[tuple[float, float | None]]
    color: str = ""  # empty: the next colour of PALETTE
    dashed: bool = False
    markers: bool = True
    lines: bool = True


@dataclass(frozen=True)
class ReferenceLine:
    """A horizontal dashed line at y (a threshold), labelled at the right end."""

    y: float
    label: str
    color: str = "#888888"


@dataclass(frozen=True)
class _Scale:
    lo: float
    hi: float
    px_lo: float
    px_hi: float
    log: bool = False

    def __call__(self, v: float) -> float:
        a, b, x = (math.log10(self.lo), math.log10(self.hi), math.log10(v)) if self.log else (self.lo, self.hi, v)
        t = 0.5 if b == a else (x - a) / (b - a)
        return self.px_lo + t * (self.px_hi - self.px_lo)


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About `count` round tick values (1, 2, 5 x 10^k steps) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"tick range must be finite, got [{lo}, {hi}]")
    if hi < lo:
        raise ValueError(f"tick range must have lo <= hi, got [{lo}, {hi}]")
    if hi == lo:
        return [lo]
    raw = (hi - lo) / max(1, count)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks, v = [], first
    while v <= hi + step * 1e-9:
        ticks.append(round(v, 12))
        v += step
    return ticks


def log_ticks(lo: float, hi: float) -> list[float]:
    """Tick values for a log axis over [lo, hi] (lo > 0): powers of 10, plus 2x and 5x when few."""
    if lo <= 0 or hi < lo:
        raise ValueError(f"a log axis needs 0 < lo <= hi, got [{lo}, {hi}]")
    first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    mults = (1,) if last - first > 3 else (1, 2, 5)
    ticks = [m * 10 ** k for k in range(first, last + 1) for m in mults]
    return [t for t in ticks if lo * (1 - 1e-9) <= t <= hi * (1 + 1e-9)] or [lo]


def format_number(v: float) -> str:
    """Short tick text: 0.725, 1.2k, 3M, 0.001."""
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:g}M"
    if a >= 1e4:
        return f"{v / 1e3:g}k"
    if a >= 1:
        return f"{v:g}"
    return f"{v:.4g}"


def _text(x: float, y: float, s: str, *, anchor: str = "middle", size: int = 11, extra: str = "") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}" '
            f'font-family="sans-serif" fill="#222"{extra}>{html.escape(s)}</text>')


def _finite_points(series: Iterable[Series]) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for s in series for x, y in s.points
            if y is not None and math.isfinite(float(x)) and math.isfinite(float(y))]


def line_chart(series: Sequence[Series], *, title: str, x_label: str, y_label: str,
               x_tick_labels: dict[float, str] | None = None, x_log: bool = False,
               x_range: tuple[float, float] | None = None, y_range: tuple[float, float] | None = None,
               reference_lines: Sequence[ReferenceLine] = (), diagonal: bool = False,
               width: int = 640, height: int = 320) -> str:
    """An inline <svg> line/marker chart with labelled axes, ticks, a legend and optional
    threshold lines; `diagonal` draws y = x (the reliability plot's perfect calibration).

    `x_tick_labels` maps x positions to tick texts (categorical axes such as dates); without it
    numeric ticks are chosen. Raises ValueError when no series has a finite point.
    """
    pts = _finite_points(series)
    if not pts:
        raise ValueError(f"chart {title!r} has no finite points to draw")
    if x_log and any(x <= 0 for x, _ in pts):
        raise ValueError(f"chart {title!r}: a log x axis needs x > 0, got {min(x for x, _ in pts)}")
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    ys += [r.y for r in reference_lines if math.isfinite(r.y)]
    x_lo, x_hi = x_range or (min(xs), max(xs))
    y_lo, y_hi = y_range or (min(ys), max(ys))
    if y_range is None:
        pad = (y_hi - y_lo) * 0.08 or max(abs(y_hi) * 0.05, 1e-3)
        y_lo, y_hi = y_lo - pad, y_hi + pad
    if x_hi == x_lo and not x_log:
        x_lo, x_hi = x_lo - 0.5, x_hi + 0.5

    left, right = _MARGIN_LEFT, width - _MARGIN_RIGHT
    top, bottom = _MARGIN_TOP, height - _MARGIN_BOTTOM
    sx = _Scale(x_lo, x_hi, left + 8, right - 8, log=x_log)
    sy = _Scale(y_lo, y_hi, bottom, top)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}">',
           f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fff"/>',
           _text(width / 2, 18, title, size=13, extra=' font-weight="bold"')]

    # grid and y ticks
    for t in nice_ticks(y_lo, y_hi):
        y = sy(t)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="#e5e5e5"/>')
        out.append(_text(left - 6, y + 4, format_number(t), anchor="end"))
    # x ticks
    if x_tick_labels:
        keys = sorted(k for k in x_tick_labels if x_lo <= k <= x_hi)
        stride = max(1, math.ceil(len(keys) / 8))  # at most ~8 labels stay readable
        chosen = keys[::stride] + ([keys[-1]] if keys and (len(keys) - 1) % stride else [])
        x_ticks = [(k, x_tick_labels[k]) for k in chosen]
    else:
        values = log_ticks(x_lo, x_hi) if x_log else nice_ticks(x_lo, x_hi)
        x_ticks = [(v, format_number(v)) for v in values]
    for v, label in x_ticks:
        x = sx(v)
        out.append(f'<line x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom + 4}" stroke="#444"/>')
        out.append(_text(x, bottom + 16, label))
    # axes and their labels
    out.append(f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#444"/>')
    out.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="#444"/>')
    out.append(_text((left + right) / 2, height - 10, x_label + (" (log scale)" if x_log else "")))
    out.append(_text(14, (top + bottom) / 2, y_label, extra=f' transform="rotate(-90 14 {(top + bottom) / 2:.1f})"'))

    if diagonal:
        lo, hi = max(x_lo, y_lo), min(x_hi, y_hi)
        if hi > lo:
            out.append(f'<line x1="{sx(lo):.1f}" y1="{sy(lo):.1f}" x2="{sx(hi):.1f}" y2="{sy(hi):.1f}" '
                       f'stroke="#888" stroke-dasharray="4 3"/>')
    for ref in reference_lines:
        if math.isfinite(ref.y) and y_lo <= ref.y <= y_hi:
            y = sy(ref.y)
            color = html.escape(ref.color)
            out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="{color}" '
                       f'stroke-dasharray="6 4"/>')
            out.append(_text(right - 4, y - 4, ref.label, anchor="end", size=10))

    legend_x = left
    for i, s in enumerate(series):
        color = html.escape(s.color or PALETTE[i % len(PALETTE)])
        dash = ' stroke-dasharray="5 3"' if s.dashed else ""
        if s.lines:
            for run in _runs(s.points):
                if len(run) > 1:
                    d = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in run)
                    out.append(f'<polyline points="{d}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
        if s.markers:
            for x, y in s.points:
                if y is not None and math.isfinite(float(y)):
                    out.append(f'<circle cx="{sx(float(x)):.1f}" cy="{sy(float(y)):.1f}" r="3" fill="{color}">'
                               f'<title>{html.escape(f"{s.name}: {format_number(float(y))}")}</title></circle>')
        out.append(f'<line x1="{legend_x}" y1="{_LEGEND_Y}" x2="{legend_x + 16}" y2="{_LEGEND_Y}" stroke="{color}" '
                   f'stroke-width="2"{dash}/>')
        out.append(_text(legend_x + 20, _LEGEND_Y + 4, s.name, anchor="start", size=10))
        legend_x += 32 + _LEGEND_CHAR_PX * len(s.name)
    out.append("</svg>")
    return "".join(out)


def _runs(points: Sequence[tuple[float, float | None]]) -> list[list[tuple[float, float]]]:
    """Consecutive stretches of finite points (a None or NaN y breaks the line)."""
    runs: list[list[tuple[float, float]]] = [[]]
    for x, y in points:
        if y is None or not math.isfinite(float(y)):
            if runs[-1]:
                runs.append([])
        else:
            runs[-1].append((float(x), float(y)))
    return [r for r in runs if r]
