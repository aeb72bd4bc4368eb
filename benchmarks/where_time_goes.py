"""Where an estimate's time goes: process start, model build on the meta device, materialisation as fake
tensors, the traced steps without any tracker (fake-tensor dispatch) and with the memory tracker (its own
cost is the difference), for paper-scale configurations. Figures are CPU seconds of this process (of the
child, for process start), which a busy machine inflates far less than wall time; wall seconds beside them.
A script: minutes per configuration on two cores.

    python benchmarks/where_time_goes.py --suite flickr30k --runs t5-bert/lora,t5-resnext/partial
"""

from __future__ import annotations

import argparse
import resource
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


def process_start() -> tuple[float, float]:
    """(CPU, wall) seconds for a fresh Python to import what an estimate needs (torch, transformers, timm, the
    package)."""
    before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run([sys.executable, "-c", "import unipt_bench.profile, unipt_bench.backbones, unipt_bench.methods"],
                   check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, time.perf_counter() - started


def phases(spec) -> dict[str, tuple[float, float]]:
    """(CPU, wall) seconds of each stage of one estimate of `spec`, traced once without a tracker and once with."""
    out: dict[str, tuple[float, float]] = {}
    clock = lambda: (time.process_time(), time.perf_counter())  # noqa: E731
    between = lambda a, b: (b[0] - a[0], b[1] - a[1])  # noqa: E731
    for tracked in (False, True):
        with ExitStack() as stack:
            t0 = clock()
            with torch.device("meta"):
                built = build(spec, weights=False)
            t1 = clock()
            fake_materialise(built.model, stack)
            t2 = clock()
            built.model.train()
            attention = configure_attention(built.model, spec.attention, traced_on_cpu=True)
            optimizer, params = make_optimizer(built)
            run = Prepared(built, example_batch(built, spec), optimizer, params, attention, synchronizer("estimate"))
            tracker = make_trackers(spec, run, RunOptions(trackers=[])) if tracked else NullTracker()
            t3 = clock()
            with tracker:
                run.trace(tracker, spec.steps, min(spec.accumulate, MAX_MICRO_BATCHES))
            t4 = clock()
        out["build (meta)"], out["materialise (fake)"] = between(t0, t1), between(t1, t2)
        out["traced steps, tracked" if tracked else "traced steps, no tracker"] = between(t3, t4)
    out["tracker's own cost"] = between(out["traced steps, no tracker"], out["traced steps, tracked"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="flickr30k")
    parser.add_argument("--runs", default="t5-bert/lora,t5-resnext/partial", help="config/label, comma-separated")
    args = parser.parse_args()
    cpu, wall = process_start()
    print(f"process start (imports): {cpu:.1f} s CPU ({wall:.1f} s wall)", flush=True)
    specs = {f"{s.config}/{s.label}": s for s in load_suite(args.suite).with_mode("estimate")}
    for name in args.runs.split(","):
        spec = specs[name]
        figures = phases(spec)
        print(f"{name} (batch {spec.batch}, {spec.steps} steps + evaluation): "
              + "; ".join(f"{k} {cpu:.1f} s CPU ({wall:.1f} s wall)" for k, (cpu, wall) in figures.items()), flush=True)


if __name__ == "__main__":
    main()
