"""Speed goals of estimates, end to end on a quiet machine (a script, not a test: minutes per setting, and the
figures depend on what else the machine runs):

- `run --suite flickr30k --mode estimate` with the default --jobs: at most 90 s;
- a Ray estimate run costs at most 1.5x the same run on the local launcher (estimate tasks reuse Ray
  workers, so each run no longer pays a fresh worker's imports);
- `fit` in estimate mode: at most five traces per run (the record's curve lists them).

    python benchmarks/speed_goals.py [--suite flickr30k] [--ray-suite smoke] [--fit-suite smoke --budget 4MiB]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

RUN_SECONDS = 90.0
RAY_RATIO = 1.5
FIT_TRACES = 5


def timed(*args: str) -> float:
    """Wall seconds of `unipt-bench ARGS` in a fresh process."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "unipt_bench.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode not in (0, 1):  # 1: some run ended in error, still a whole suite's work
        raise SystemExit(f"{' '.join(args)}: exit {done.returncode}\n{done.stderr[-2000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="flickr30k", help="suite of the run goal ('' to skip)")
    parser.add_argument("--ray-suite", default="smoke", help="suite of the Ray goal ('' to skip)")
    parser.add_argument("--fit-suite", default="smoke", help="suite of the fit goal ('' to skip)")
    parser.add_argument("--budget", default="4MiB")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    with tempfile.TemporaryDirectory() as out:
        if args.suite:
            seconds = timed("run", "--suite", args.suite, "--mode", "estimate", "--force", "--out", f"{out}/run")
            print(f"run --suite {args.suite} --mode estimate: {seconds:.0f} s (goal <= {RUN_SECONDS:.0f} s)", flush=True)
        if args.ray_suite:
            local = timed("run", "--suite", args.ray_suite, "--mode", "estimate", "--force", "--out", f"{out}/l")
            ray = timed("run", "--suite", args.ray_suite, "--mode", "estimate", "--force", "--out", f"{out}/r",
                        "--launcher", "ray")
            print(f"{args.ray_suite}: local {local:.0f} s, Ray {ray:.0f} s: {ray / local:.2f}x "
                  f"(goal <= {RAY_RATIO}x)", flush=True)
        if args.fit_suite:
            seconds = timed("fit", "--suite", args.fit_suite, "--budget", args.budget, "--out", f"{out}/f")
            traces = [len(json.load(open(path)).get("curve", {}).get("traces", []))
                      for path in glob.glob(f"{out}/f/_fits/**/*.json", recursive=True)]
            print(f"fit --suite {args.fit_suite}: {seconds:.0f} s, traces per run at most {max(traces, default=0)} "
                  f"(goal <= {FIT_TRACES})", flush=True)


if __name__ == "__main__":
    main()
