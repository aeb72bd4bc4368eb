"""Wall time of a whole suite in estimate mode with --jobs 1 and --jobs N on the local launcher, and the
speed-up (goal: at least 1.7x with --jobs 2 on a two-core machine). A benchmark, not a test: it takes
minutes per setting and its figures depend on what else the machine runs.

    python benchmarks/jobs_speedup.py [--suite flickr30k] [--jobs 1,2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

GOAL = 1.7  # speed-up of --jobs 2 over --jobs 1 on two cores


def wall_seconds(suite: str, jobs: int) -> float:
    """`unipt-bench run --suite S --mode estimate --force --jobs N` into a fresh store, timed end to end."""
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "unipt_bench.cli", "run", "--suite", suite, "--mode", "estimate", "--force",
                   "--out", out, "--jobs", str(jobs)]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        seconds = time.perf_counter() - start
    if done.returncode not in (0, 1):  # 1: some run ended in error, still a whole suite's work
        raise SystemExit(f"--jobs {jobs}: exit {done.returncode}\n{done.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="flickr30k")
    parser.add_argument("--jobs", default="1,2", help="comma-separated --jobs values; the first is the reference")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    settings = [int(j) for j in args.jobs.split(",")]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    figures = {"suite": args.suite, "cores": cores, "load_before": load, "seconds": {}}
    for jobs in settings:
        figures["seconds"][jobs] = seconds = wall_seconds(args.suite, jobs)
        print(f"{args.suite} estimate --jobs {jobs}: {seconds:.1f} s", flush=True)
    reference = figures["seconds"][settings[0]]
    for jobs in settings[1:]:
        speedup = reference / figures["seconds"][jobs]
        figures[f"speedup_{jobs}"] = speedup
        note = f" (goal {GOAL}x at --jobs 2)" if jobs == 2 else ""
        print(f"speed-up of --jobs {jobs} over --jobs {settings[0]}: {speedup:.2f}x{note}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
