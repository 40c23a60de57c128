"""B1: ingest throughput with wrk (bench/wrk_ingest.lua): 10-action batches over linked
sessions, a fixed number of connections, one warm-up run then one measured run. Running wrk and
reading its result (and its own CPU) is shared with B8 (bench/posthog_intake.py)."""

from __future__ import annotations

import json
import resource
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


def wrk_prefix(
    script: Path, base_url: str, *, connections: int, threads: int, seconds: float
) -> list[str]:
    """wrk with a Lua script against a server, up to the ``--`` before the script's arguments."""
    binary = shutil.which("wrk")
    if binary is None:
        raise RuntimeError("wrk is not on PATH (Debian: apt-get install wrk)")
    return [
        binary,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds:g}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        base_url,
        "--",
    ]


def wrk_command(load: WrkLoad, *, seconds: float, tag: str) -> list[str]:
    return [
        *wrk_prefix(
            LUA_SCRIPT,
            load.base_url,
            connections=load.connections,
            threads=load.threads,
            seconds=seconds,
        ),
        f"/actions/{load.product_id}",
        INGEST_TOKEN,
        str(load.sessions),
        load.session_prefix,
        tag,
        str(ACTIONS_PER_BATCH),
    ]


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_wrk_command(command: list[str], *, seconds: float) -> tuple[dict[str, Any], float]:
    """Run wrk; the ``WRK_RESULT`` its script's done() printed, and the CPU seconds wrk used
    (all of its threads, from its start to its exit: the bench's children's CPU, which grows
    only when a child is reaped, and wrk is the only one that ends while it runs)."""
    cpu_before = _children_cpu_s()
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=True)
    cpu_s = _children_cpu_s() - cpu_before
    line = next((x for x in done.stdout.splitlines() if x.startswith(RESULT_PREFIX)), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{done.stdout}\n{done.stderr}")
    return json.loads(line.removeprefix(RESULT_PREFIX)), cpu_s


def run_wrk(load: WrkLoad, *, seconds: float, tag: str) -> dict[str, Any]:
    """One wrk run (bench/wrk_ingest.lua)."""
    command = wrk_command(load, seconds=seconds, tag=tag)
    raw, cpu_s = run_wrk_command(command, seconds=seconds)
    return wrk_summary(raw, command, cpu_s)


def wrk_summary(raw: dict[str, Any], command: list[str], cpu_s: float) -> dict[str, Any]:
    """A run's requests/s and latencies, the errors it saw, and wrk's own CPU (``wrk_cpu``:
    per answered request, and how busy it was, 1.0 = one core)."""
    errors = sum(v for k, v in raw.items() if k.startswith("errors_"))
    duration_s = raw["duration_us"] / 1e6
    return {
        "requests": raw["requests"],
        "duration_s": round(duration_s, 3),
        "requests_per_s": round(raw["requests"] / duration_s, 1),
        "latency_p50_ms": raw["latency_p50_us"] / 1000,
        "latency_p99_ms": raw["latency_p99_us"] / 1000,
        "latency_max_ms": raw["latency_max_us"] / 1000,
        "errors": errors,
        "errors_detail": {k: v for k, v in raw.items() if k.startswith("errors_") and v},
        "wrk_cpu": {
            "cpu_ms_per_request": round(cpu_s * 1000 / max(raw["requests"], 1), 3),
            "cores_busy": round(cpu_s / duration_s, 2),
        },
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
    result["cpu"] = {**cpu_per_request(before, cpu(), result), "wrk": result.pop("wrk_cpu")}
    result["warmup_requests"] = warmup["requests"]
    result["connections"] = load.connections
    result["wrk_threads"] = load.threads
    result["sessions"] = load.sessions
    return result
