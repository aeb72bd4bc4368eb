"""Where an estimate's time goes: process start, model build on the meta device, materialisation as fake
tensors, the traced steps without any tracker (fake-tensor dispatch) and with the memory tracker (its own
cost is the difference), for paper-scale configurations. A script: minutes per configuration on two cores,
and the figures depend on what else the machine runs.

    python benchmarks/where_time_goes.py --suite flickr30k --runs t5-bert/lora,t5-resnext/full
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from contextlib import ExitStack

import torch

from unipt_bench.attention import configure_attention
from unipt_bench.build import build, example_batch
from unipt_bench.memory.estimate import fake_materialise
from unipt_bench.profile import (
    MAX_MICRO_BATCHES,
    NullTracker,
    Prepared,
    RunOptions,
    make_optimizer,
    make_trackers,
    synchronizer,
)
from unipt_bench.suite_file import load_suite


def process_start() -> float:
    """Seconds for a fresh Python to import what an estimate needs (torch, transformers, timm, the package)."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import unipt_bench.profile, unipt_bench.backbones, unipt_bench.methods"],
                   check=True)
    return time.perf_counter() - started


def phases(spec) -> dict[str, float]:
    """Seconds of each stage of one estimate of `spec`, traced once without a tracker and once with."""
    out: dict[str, float] = {}
    for tracked in (False, True):
        with ExitStack() as stack:
            t0 = time.perf_counter()
            with torch.device("meta"):
                built = build(spec, weights=False)
            t1 = time.perf_counter()
            fake_materialise(built.model, stack)
            t2 = time.perf_counter()
            built.model.train()
            attention = configure_attention(built.model, spec.attention, traced_on_cpu=True)
            optimizer, params = make_optimizer(built)
            run = Prepared(built, example_batch(built, spec), optimizer, params, attention, synchronizer("estimate"))
            tracker = make_trackers(spec, run, RunOptions(trackers=[])) if tracked else NullTracker()
            t3 = time.perf_counter()
            with tracker:
                run.trace(tracker, spec.steps, min(spec.accumulate, MAX_MICRO_BATCHES))
            t4 = time.perf_counter()
        out["build (meta)"], out["materialise (fake)"] = t1 - t0, t2 - t1
        out["traced steps, tracked" if tracked else "traced steps, no tracker"] = t4 - t3
    out["tracker's own cost"] = out["traced steps, tracked"] - out["traced steps, no tracker"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="flickr30k")
    parser.add_argument("--runs", default="t5-bert/lora,t5-resnext/full", help="config/label, comma-separated")
    args = parser.parse_args()
    print(f"process start (imports): {process_start():.1f} s", flush=True)
    specs = {f"{s.config}/{s.label}": s for s in load_suite(args.suite).with_mode("estimate")}
    for name in args.runs.split(","):
        spec = specs[name]
        figures = phases(spec)
        print(f"{name} (batch {spec.batch}, {spec.steps} steps + evaluation): "
              + "; ".join(f"{k} {v:.1f} s" for k, v in figures.items()), flush=True)


if __name__ == "__main__":
    main()
