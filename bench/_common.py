"""Shared pieces of the benchmarks: timing, the machine, the results table. The servers come
from ``tests.support.servers``, like the tests'."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start


@dataclass
class Result:
    key: str
    what: str
    value: float
    goal: str
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def met(self) -> bool:
        op, _, target = self.goal.partition(" ")
        return self.value >= float(target) if op == ">=" else self.value <= float(target)


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": psutil.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "cpu_model": _cpu_model(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def print_table(results: list[Result]) -> None:
    print()
    print(f"{'key':<20} {'ratio':>8}  {'goal':<7} {'met':<4} what")
    print("-" * 100)
    for r in results:
        print(f"{r.key:<20} {r.value:>8.3f}  {r.goal:<7} {'yes' if r.met else 'no':<4} {r.what}")
    print()


def write_results(results: list[Result], path: Path) -> None:
    data: dict[str, Any] = {r.key: round(r.value, 4) for r in results}
    data["raw"] = {r.key: {"what": r.what, "goal": r.goal, **r.raw} for r in results}
    data["machine"] = machine()
    path.write_text(json.dumps(data, indent=2) + "\n")
