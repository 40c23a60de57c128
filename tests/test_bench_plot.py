"""bench/plot.py's SVG and bench.py's rate sweep rules (no service runs here)."""

from __future__ import annotations

import argparse
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from bench import bench, plot
from bench.bench import (
    parse_args,
    parse_rates,
    rate_sweep,
    sweep_point,
    sweep_rows,
    sweep_summary,
)

SVG = "{http://www.w3.org/2000/svg}"
TARGETS = {"p50": 165.0, "p99": 200.0}


def point(rate: float, p50: float | None, p99: float | None) -> dict[str, Any]:
    return {"rate_per_s": rate, "p50": p50, "p99": p99}


SWEEP = [point(100, 158.0, 172.0), point(200, 160.0, 185.0), point(400, 171.0, 240.0)]


def render(points: list[dict[str, Any]], title: str = "B2", subtitle: str = "") -> ET.Element:
    svg = plot.latency_svg(points, title=title, subtitle=subtitle, targets=TARGETS)
    return ET.fromstring(svg)  # noqa: S314 - markup this test just made


def polylines(root: ET.Element) -> dict[str, list[tuple[float, float]]]:
    out = {}
    for line in root.iter(f"{SVG}polyline"):
        coords = [pair.split(",") for pair in line.attrib["points"].split()]
        out[line.attrib["data-series"]] = [(float(x), float(y)) for x, y in coords]
    return out


def texts(root: ET.Element, cls: str) -> list[ET.Element]:
    return [t for t in root.iter(f"{SVG}text") if t.get("class") == cls]


def test_the_svg_has_one_polyline_per_series_with_a_vertex_per_point() -> None:
    lines = polylines(render(SWEEP))
    assert sorted(lines) == ["p50", "p99"]
    assert all(len(vertices) == len(SWEEP) for vertices in lines.values())


def test_the_vertices_follow_rate_and_latency() -> None:
    lines = polylines(render(list(reversed(SWEEP))))
    p50_xs = [x for x, _ in lines["p50"]]
    assert p50_xs == sorted(p50_xs) and len(set(p50_xs)) == len(SWEEP)
    # SVG y grows downwards: the higher p99 is drawn above p50 at every rate.
    assert all(y99 < y50 for (_, y50), (_, y99) in zip(lines["p50"], lines["p99"], strict=True))


def test_a_value_above_the_clip_is_drawn_on_the_top_edge_and_labelled() -> None:
    root = render([*SWEEP, point(500, 900.0, 4321.7)])
    labels = [t.text for t in texts(root, "clipped-label")]
    assert labels == ["4322 ms"]
    assert texts(root, "y-tick")[-1].text == "1000"
    top = min(y for _, y in polylines(root)["p99"])
    assert top == pytest.approx(plot.TOP)
    assert len([p for p in root.iter(f"{SVG}polygon") if p.get("class") == "clipped"]) == 1


def test_no_value_is_labelled_when_none_is_clipped() -> None:
    root = render(SWEEP)
    assert texts(root, "clipped-label") == []
    assert [t.text for t in texts(root, "y-tick")] == ["0", "50", "100", "150", "200", "250"]
    assert [t.text for t in texts(root, "x-tick")] == ["0", "100", "200", "300", "400"]


def test_the_targets_are_dashed_lines_at_their_height() -> None:
    root = render(SWEEP)
    lines = {
        line.attrib["data-series"]: line
        for line in root.iter(f"{SVG}line")
        if line.get("class") == "target"
    }
    assert {name: line.attrib["data-ms"] for name, line in lines.items()} == {
        "p50": "165",
        "p99": "200",
    }
    assert all(line.get("stroke-dasharray") for line in lines.values())
    assert float(lines["p99"].attrib["y1"]) < float(lines["p50"].attrib["y1"])


def test_the_title_is_escaped_and_shown() -> None:
    root = render(SWEEP, title="B2 by rate", subtitle="commit abc1234 & <dirty>, 2 CPUs")
    assert [t.text for t in texts(root, "subtitle")] == ["commit abc1234 & <dirty>, 2 CPUs"]
    assert [t.text for t in texts(root, "title")] == ["B2 by rate"]


def test_a_long_subtitle_is_wrapped_not_cut() -> None:
    subtitle = ", ".join(f"part {i:02d} of the machine's description" for i in range(8))
    lines = [t.text or "" for t in texts(render(SWEEP, subtitle=subtitle), "subtitle")]
    assert len(lines) > 1 and all(len(line) <= plot.SUBTITLE_CHARS for line in lines)
    assert " ".join(lines) == subtitle


def test_plotting_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="no sweep points"):
        plot.latency_svg([], title="B2", targets=TARGETS)


# -- the sweep's rules ------------------------------------------------------------------------


def test_summary_when_no_rate_exceeds_the_target() -> None:
    summary = sweep_summary([point(300, 160, 190), point(100, 155, 170), point(200, 158, 180)])
    assert [p["rate_per_s"] for p in summary["points"]] == [100, 200, 300]
    assert summary["first_rate_over_200ms_p99"] is None
    assert summary["highest_rate_within"] == 300


def test_summary_when_the_first_rate_exceeds_the_target() -> None:
    summary = sweep_summary([point(200, 160, 230), point(100, 158, 201)])
    assert summary["first_rate_over_200ms_p99"] == 100
    assert summary["highest_rate_within"] is None


def test_summary_when_a_rate_in_the_middle_exceeds_the_target() -> None:
    points = [point(r, 160, p99) for r, p99 in ((100, 170), (300, 200), (400, 260), (500, 180))]
    summary = sweep_summary(points)
    assert summary["first_rate_over_200ms_p99"] == 400
    assert summary["highest_rate_within"] == 300


def test_a_run_without_any_note_counts_as_over_the_target() -> None:
    summary = sweep_summary([point(100, 160, 170), point(300, None, None)])
    assert summary["first_rate_over_200ms_p99"] == 300


def b2_result(rate: float, p99: float) -> dict[str, Any]:
    return {
        "rate_per_s": rate,
        "duration_s": 8.0,
        "achieved_rate_per_s": rate,
        "latency_ms": {"count": 10, "p50": 160.0, "p90": 170.0, "p99": p99},
        "service_cores_busy": 0.5,
        "service_cpu_ms_per_batch": 1.0,
        "notes": 10,
        "batches_not_delivered": 0,
    }


async def swept(
    rates: list[float], p99_by_rate: dict[float, float], already: list[dict[str, Any]]
) -> list[float]:
    async def measure(rate: float) -> dict[str, Any]:
        return b2_result(rate, p99_by_rate[rate])

    return [r["rate_per_s"] for r in await rate_sweep(rates, measure, already=already)]


P99_BY_RATE = {100.0: 170.0, 300.0: 190.0, 400.0: 250.0, 500.0: 900.0, 600.0: 3000.0}


async def test_the_sweep_stops_after_the_first_rate_over_the_target() -> None:
    rates = [600.0, 100.0, 500.0, 300.0, 400.0]
    assert await swept(rates, P99_BY_RATE, [b2_result(200, 185)]) == [100, 300, 400]


async def test_the_sweep_runs_every_rate_when_none_exceeds_the_target() -> None:
    within = dict.fromkeys(P99_BY_RATE, 150.0)
    assert await swept(list(within), within, [b2_result(200, 185)]) == [100, 300, 400, 500, 600]


async def test_the_main_run_over_the_target_stops_the_sweep_above_its_rate() -> None:
    rates = [100.0, 200.0, 300.0, 400.0]
    assert await swept(rates, P99_BY_RATE, [b2_result(200, 230)]) == [100]


def test_a_sweep_point_keeps_the_run_s_figures() -> None:
    assert sweep_point(b2_result(300, 190)) == {
        "rate_per_s": 300,
        "duration_s": 8.0,
        "achieved_rate_per_s": 300,
        "p50": 160.0,
        "p90": 170.0,
        "p99": 190,
        "service_cores_busy": 0.5,
        "service_cpu_ms_per_batch": 1.0,
        "notes": 10,
        "batches_not_delivered": 0,
    }


def test_the_table_row_names_the_first_rate_over_the_target() -> None:
    (row,) = sweep_rows(sweep_summary(SWEEP), target_rate=200)
    assert (row["id"], row["what"]) == ("B2", "rate where p99 first exceeds 200 ms")
    assert (row["baseline"], row["measured"], row["ratio"]) == (
        "200 batches/s target",
        "400 batches/s",
        "2.00",
    )
    assert (row["target"], row["met"]) == ("info", None)


def test_the_table_row_when_no_rate_exceeds_the_target() -> None:
    (row,) = sweep_rows(sweep_summary(SWEEP[:2]), target_rate=200)
    assert (row["measured"], row["ratio"]) == ("> 200 batches/s", "> 1.00")


# -- options ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "rates"),
    [("", []), ("0", []), ("400, 100,300", [100.0, 300.0, 400.0]), ("100,100", [100.0])],
)
def test_sweep_rates_are_parsed_ascending(text: str, rates: list[float]) -> None:
    assert parse_rates(text) == rates


@pytest.mark.parametrize("text", ["fast", "100,-5", "0,100"])
def test_bad_sweep_rates_are_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_rates(text)


def test_the_default_sweep() -> None:
    args = parse_args([])
    assert (args.sweep_rates, args.sweep_duration) == ([100, 250, 300, 400, 500, 600], 8.0)
    assert args.b2_info_rate in args.sweep_rates


def test_quick_shrinks_the_default_sweep_but_keeps_an_explicit_one() -> None:
    quick = parse_args(["--quick"])
    assert (quick.sweep_rates, quick.sweep_duration) == ([100, 400], 3.0)
    assert parse_args(["--quick", "--sweep-rates", ""]).sweep_rates == []
    assert parse_args(["--quick", "--sweep-rates", "250"]).sweep_rates == [250]


def test_b6_prices_a_note_as_b2_less_intake_at_the_same_rate() -> None:
    results = {
        "b1": {"service": {"cpu": {"server": {"cpu_ms_per_request": 0.7}}}},
        "b2": {"service_cpu_ms_per_batch": 3.0, "notes": 1000, "batches_sent": 2000},
        "b6_intake": {"service_cpu_ms_per_batch": 1.5},
    }
    # 2000 batches cost 3.0 ms each with their notes and 1.5 ms each without: 1000 notes
    # cost 3000 ms of CPU, 3 ms apiece.
    assert bench.b6_figures(results) == {"batch_b1": 0.7, "batch_at_b2_rate": 1.5, "note": 3.0}
    assert bench.b6_figures({**results, "b6_intake": {}})["note"] is None
