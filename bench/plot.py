"""B2's rate sweep as an SVG chart: p50 and p99 post-link latency by offered batches/s, with
the targets as dashed lines. The markup is written here (stdlib only), so `make bench` needs
no plotting library.

The y axis is linear from 0 to the first of 250, 500 or 1000 ms that holds every value and
target, and is clipped at 1000 ms: a value above is drawn as a triangle on the top edge and
labelled with its value. Linear, because the figures that matter sit near the 165 and 200 ms
targets, where a log axis would shrink their differences; clipped, because past the rate the
service sustains the backlog grows and p99 reaches seconds, which would squash the rest.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

CLIP_MS = 1000.0
Y_TOPS = (250.0, 500.0, CLIP_MS)
SERIES = {"p50": "#1f77b4", "p99": "#d62728"}
WIDTH, HEIGHT = 840, 450
SUBTITLE_CHARS = 120  # at 11 px, what fits across the chart
LEFT, RIGHT, TOP, BOTTOM = 70, 600, 80, 390  # the plot area's edges, px
FONT = "font-family:sans-serif"


@dataclass(frozen=True, slots=True)
class Scale:
    """Data onto pixels along one axis: [0, top] onto [start, end] px, clipped at ``top``."""

    top: float
    start: float
    end: float

    def __call__(self, value: float) -> float:
        return self.start + (self.end - self.start) * min(value, self.top) / self.top


def nice_step(top: float, ticks: int = 6) -> float:
    """A tick step of 1, 2 or 5 times a power of ten giving at most about ``ticks`` steps."""
    raw = top / ticks
    magnitude = 10.0 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)


def tick_values(top: float) -> list[float]:
    step = nice_step(top)
    return [i * step for i in range(int(top / step + 1e-9) + 1)]


def x_top(rates: Sequence[float]) -> float:
    step = nice_step(max(rates))
    return math.ceil(max(rates) / step) * step


def y_top(values: Sequence[float], targets: Mapping[str, float]) -> float:
    needed = max([*values, *(ms * 1.1 for ms in targets.values())])
    return next((top for top in Y_TOPS if top >= needed), CLIP_MS)


def _el(tag: str, text: str | None = None, /, **attrs: object) -> str:
    """One element; ``class_`` is ``class``, and other underscores are hyphens."""
    rendered = "".join(
        f" {name.rstrip('_').replace('_', '-')}="
        + quoteattr(f"{value:.1f}" if isinstance(value, float) else str(value))
        for name, value in attrs.items()
    )
    return f"<{tag}{rendered}/>" if text is None else f"<{tag}{rendered}>{escape(text)}</{tag}>"


def _axes(xs: Scale, ys: Scale) -> Iterator[str]:
    for value in tick_values(ys.top):
        y = ys(value)
        yield _el("line", x1=LEFT, x2=RIGHT, y1=y, y2=y, stroke="#e5e5e5")
        yield _el("text", f"{value:g}", class_="y-tick", x=LEFT - 6, y=y + 4, text_anchor="end")
    for value in tick_values(xs.top):
        x = xs(value)
        yield _el("line", x1=x, x2=x, y1=TOP, y2=BOTTOM, stroke="#e5e5e5")
        yield _el("text", f"{value:g}", class_="x-tick", x=x, y=BOTTOM + 18, text_anchor="middle")
    yield _el("line", x1=LEFT, x2=RIGHT, y1=BOTTOM, y2=BOTTOM, stroke="#333")
    yield _el("line", x1=LEFT, x2=LEFT, y1=TOP, y2=BOTTOM, stroke="#333")
    middle_x, middle_y = (LEFT + RIGHT) / 2, (TOP + BOTTOM) / 2
    yield _el("text", "offered rate (batches/s)", x=middle_x, y=BOTTOM + 40, text_anchor="middle")
    yield _el(
        "text",
        "latency (ms)",
        x=LEFT - 48,
        y=middle_y,
        text_anchor="middle",
        transform=f"rotate(-90 {LEFT - 48} {middle_y:.1f})",
    )


def _targets(targets: Mapping[str, float], ys: Scale) -> Iterator[str]:
    """A dashed line per target, its value just right of the plot (inside it, the label would
    cross the data, which runs close to the targets); the lowest value goes under its line, the
    others above theirs, so that 165 and 200 ms stay apart on a 1000 ms axis."""
    lowest = min(targets.values())
    for name, ms in targets.items():
        y, color = ys(ms), SERIES.get(name, "#555")
        yield _el(
            "line",
            class_="target",
            data_series=name,
            data_ms=f"{ms:g}",
            x1=LEFT,
            x2=RIGHT,
            y1=y,
            y2=y,
            stroke=color,
            stroke_width=1.2,
            stroke_dasharray="6 4",
        )
        yield _el(
            "text",
            f"{ms:g}",
            class_="target-label",
            data_series=name,
            x=RIGHT + 8,
            y=y + 10 if ms == lowest else y - 2,
            fill=color,
            font_size=11,
        )


def _triangle(x: float, y: float) -> str:
    return f"{x:.1f},{y - 6:.1f} {x - 5:.1f},{y + 3:.1f} {x + 5:.1f},{y + 3:.1f}"


def _series(
    name: str, points: Sequence[Mapping[str, Any]], xs: Scale, ys: Scale, slot: int
) -> Iterator[str]:
    """The line and its markers. A clipped value's label is centred under its marker (so that
    the labels of neighbouring rates do not run into each other), haloed in white where it
    crosses a line, one row lower per ``slot`` for two series clipped at the same rate. A run
    without the value is left out."""
    color = SERIES[name]
    drawn = [(p["rate_per_s"], p[name]) for p in points if p.get(name) is not None]
    coords = " ".join(f"{xs(rate):.1f},{ys(ms):.1f}" for rate, ms in drawn)
    yield _el(
        "polyline",
        class_="series",
        data_series=name,
        points=coords,
        fill="none",
        stroke=color,
        stroke_width=2,
    )
    for rate, ms in drawn:
        x, y = xs(rate), ys(ms)
        if ms <= ys.top:
            yield _el("circle", class_="marker", data_series=name, cx=x, cy=y, r=3.5, fill=color)
            continue
        yield _el("polygon", class_="clipped", data_series=name, points=_triangle(x, y), fill=color)
        yield _el(
            "text",
            f"{ms:.0f} ms",
            class_="clipped-label",
            data_series=name,
            x=x,
            y=y + 18 + 14 * slot,
            text_anchor="middle",
            fill=color,
            font_size=11,
            stroke="white",
            stroke_width=3,
            paint_order="stroke",
        )


def _legend(targets: Mapping[str, float], clipped: bool) -> Iterator[str]:
    x, y = RIGHT + 50, TOP + 10
    yield '<g class="legend" font-size="12">'
    for name, color in SERIES.items():
        yield _el("line", x1=x, x2=x + 24, y1=y, y2=y, stroke=color, stroke_width=2)
        yield _el("circle", cx=x + 12, cy=y, r=3.5, fill=color)
        yield _el("text", name, x=x + 32, y=y + 4)
        y += 22
    for name, ms in targets.items():
        color = SERIES.get(name, "#555")
        yield _el("line", x1=x, x2=x + 24, y1=y, y2=y, stroke=color, stroke_dasharray="6 4")
        yield _el("text", f"{name} target, {ms:g} ms", x=x + 32, y=y + 4)
        y += 22
    if clipped:
        yield _el("polygon", points=_triangle(x + 12, y), fill="#555")
        yield _el("text", f"clipped at {CLIP_MS:g} ms", x=x + 32, y=y + 4)
    yield "</g>"


def latency_svg(
    points: Sequence[Mapping[str, Any]],
    *,
    title: str,
    subtitle: str = "",
    targets: Mapping[str, float],
) -> str:
    """The chart of ``points`` (dicts with ``rate_per_s`` and the ``p50``/``p99`` ms of each
    series, as bench.py's sweep stores them); ``targets``: series name -> ms."""
    if not points:
        raise ValueError("no sweep points to plot")
    ordered = sorted(points, key=lambda p: p["rate_per_s"])
    values = [p[name] for p in ordered for name in SERIES if p.get(name) is not None]
    xs = Scale(x_top([p["rate_per_s"] for p in ordered]), LEFT, RIGHT)
    ys = Scale(y_top(values, targets), BOTTOM, TOP)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}"'
        f' viewBox="0 0 {WIDTH} {HEIGHT}" style="{FONT}" font-size="12">',
        _el("title", f"{title}: {subtitle}" if subtitle else title),
        _el("rect", width=WIDTH, height=HEIGHT, fill="white"),
        _el("text", title, class_="title", x=LEFT, y=28, font_size=16, font_weight="bold"),
        *(
            _el("text", line, class_="subtitle", x=LEFT, y=48 + 14 * i, fill="#555", font_size=11)
            for i, line in enumerate(textwrap.wrap(subtitle, SUBTITLE_CHARS))
        ),
        *_axes(xs, ys),
        *_targets(targets, ys),
    ]
    for slot, name in enumerate(SERIES):
        parts += _series(name, ordered, xs, ys, slot)
    parts += _legend(targets, clipped=any(v > ys.top for v in values))
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def write_latency_svg(
    path: Path,
    points: Sequence[Mapping[str, Any]],
    *,
    title: str,
    subtitle: str = "",
    targets: Mapping[str, float],
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    svg = latency_svg(points, title=title, subtitle=subtitle, targets=targets)
    path.write_text(svg, encoding="utf-8")
    return path
