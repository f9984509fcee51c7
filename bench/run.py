"""``make bench``: every figure as a ratio against a limit measured in the same run.

    .venv/bin/python -m bench.run [--only transfer_ratio,upload_ratio] [--out FILE]

Starts its own NATS, Mosquitto and InfluxDB in a temporary directory, runs each benchmark
with its baseline on the same servers, prints the table and writes ``bench/results.json``.
A benchmark never fails on time: a goal missed is a row that says ``no``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import time
import traceback
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from bench import analyze, deploy, edge_memory, ingest, upload
from bench._common import ROOT, Result, machine, print_table, write_results
from tests.support.servers import Servers, servers

Bench = Callable[[Servers, Path], Coroutine[Any, Any, Result]]

#: In the order they run; the heavy fan-out last, so a slow machine shows the others first.
BENCHES: dict[str, Bench] = {
    "upload_ratio": upload.upload,
    "transfer_ratio": deploy.transfer,
    "ingest_ratio": ingest.ingest,
    "analyze_ratio": analyze.analyze,
    "edge_memory_ratio": edge_memory.edge_memory,
    "fanout_ratio": deploy.fanout,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="", help="comma-separated keys to run")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json")
    args = parser.parse_args(argv)
    wanted = [k for k in args.only.split(",") if k] or list(BENCHES)
    unknown = set(wanted) - set(BENCHES)
    if unknown:
        parser.error(f"unknown keys {sorted(unknown)}; choose from {sorted(BENCHES)}")
    # The services log every chunk request and deployment at INFO: keep the table readable.
    logging.basicConfig(level=logging.WARNING)
    # aiomqtt warns about every publish queued behind its in-flight window: expected here.
    logging.getLogger("mqtt").setLevel(logging.ERROR)
    print("machine:", machine())
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="eaf-bench-") as tmp, servers(Path(tmp)) as s:
        for key in wanted:
            started = time.perf_counter()
            print(f"running {key} ...", flush=True)
            try:
                result = asyncio.run(BENCHES[key](s, Path(tmp) / key))
            except Exception:
                traceback.print_exc()
                print(f"{key}: FAILED to run (see above)", flush=True)
                continue
            took = time.perf_counter() - started
            result.raw["bench_wall_seconds"] = round(took, 1)
            print(f"  {key} = {result.value:.3f} (goal {result.goal}) in {took:.0f} s", flush=True)
            results.append(result)
    print_table(results)
    write_results(results, args.out)
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
