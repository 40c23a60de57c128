"""B1: ingest throughput with wrk (bench/wrk_ingest.lua): 10-action batches over linked
sessions, a fixed number of connections, one warm-up run then one measured run."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import INGEST_TOKEN

LUA_SCRIPT = Path(__file__).resolve().parent / "wrk_ingest.lua"
RESULT_PREFIX = "WRK_RESULT "
ACTIONS_PER_BATCH = 10


@dataclass(frozen=True, slots=True)
class WrkLoad:
    """What wrk sends: where, to which sessions, how hard."""

    base_url: str
    product_id: str
    sessions: int
    session_prefix: str
    connections: int
    threads: int


def wrk_command(load: WrkLoad, *, seconds: float, tag: str) -> list[str]:
    binary = shutil.which("wrk")
    if binary is None:
        raise RuntimeError("wrk is not on PATH (Debian: apt-get install wrk)")
    return [
        binary,
        f"-t{load.threads}",
        f"-c{load.connections}",
        f"-d{seconds:g}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA_SCRIPT),
        load.base_url,
        "--",
        f"/actions/{load.product_id}",
        INGEST_TOKEN,
        str(load.sessions),
        load.session_prefix,
        tag,
        str(ACTIONS_PER_BATCH),
    ]


def run_wrk(load: WrkLoad, *, seconds: float, tag: str) -> dict[str, Any]:
    """One wrk run; its requests/s and latencies, and the errors it saw."""
    command = wrk_command(load, seconds=seconds, tag=tag)
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=True)
    line = next((x for x in done.stdout.splitlines() if x.startswith(RESULT_PREFIX)), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{done.stdout}\n{done.stderr}")
    raw = json.loads(line.removeprefix(RESULT_PREFIX))
    errors = sum(v for k, v in raw.items() if k.startswith("errors_"))
    return {
        "requests": raw["requests"],
        "duration_s": round(raw["duration_us"] / 1e6, 3),
        "requests_per_s": round(raw["requests"] / (raw["duration_us"] / 1e6), 1),
        "latency_p50_ms": raw["latency_p50_us"] / 1000,
        "latency_p99_ms": raw["latency_p99_us"] / 1000,
        "latency_max_ms": raw["latency_max_us"] / 1000,
        "errors": errors,
        "errors_detail": {k: v for k, v in raw.items() if k.startswith("errors_") and v},
        "command": " ".join(command[:9]) + " ...",
    }


CpuProbe = Callable[[], dict[str, float]]  # cumulative CPU seconds by process name


def cpu_per_request(
    before: dict[str, float], after: dict[str, float], result: dict[str, Any]
) -> dict[str, Any]:
    """Each process's CPU time per answered request, and how busy it was (1.0 = one core)."""
    return {
        name: {
            "cpu_ms_per_request": round(
                (after[name] - before[name]) * 1000 / result["requests"], 3
            ),
            "cores_busy": round((after[name] - before[name]) / result["duration_s"], 2),
        }
        for name in before
    }


def measure(
    load: WrkLoad, *, warmup_s: float, seconds: float, run_id: str, cpu: CpuProbe
) -> dict[str, Any]:
    """A warm-up run (discarded), then the measured one. Each run's actions are new."""
    warmup = run_wrk(load, seconds=warmup_s, tag=f"{run_id}w")
    before = cpu()
    result = run_wrk(load, seconds=seconds, tag=f"{run_id}m")
    result["cpu"] = cpu_per_request(before, cpu(), result)
    result["warmup_requests"] = warmup["requests"]
    result["connections"] = load.connections
    result["wrk_threads"] = load.threads
    result["sessions"] = load.sessions
    return result
