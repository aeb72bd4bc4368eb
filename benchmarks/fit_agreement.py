"""`fit` on memory curves against the search it replaces: for runs of a suite (estimate mode), the largest
batch under a budget from `fit_on_curve` and from `fit_batch` probing direct traces, the traces each made,
and whether they agree. Traces are shared (each shape traced once). A script: a paper-scale run takes tens
of minutes on two cores.

    python benchmarks/fit_agreement.py --suite flickr30k --configs t5-bert --methods lora --budget 24GiB
"""

from __future__ import annotations

import argparse
import sys

from unipt_bench.config import RunSpec
from unipt_bench.curves import Traced, add_buckets, trace, with_shape
from unipt_bench.fit import fit_batch, fit_on_curve, parse_bytes
from unipt_bench.suite_file import load_suite


class SharedTraces:
    """Each shape traced once, for the curve and the search alike."""

    def __init__(self) -> None:
        self.done: dict[str, Traced] = {}

    def __call__(self, spec: RunSpec) -> Traced:
        if spec.digest() not in self.done:
            self.done[spec.digest()] = trace(spec)
        return self.done[spec.digest()]

    def peak(self, spec: RunSpec) -> int:
        traced = self(spec)
        return add_buckets(traced.figures, traced.bucket_bytes)["peak_bytes"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="smoke")
    parser.add_argument("--configs", default=None)
    parser.add_argument("--methods", default=None)
    parser.add_argument("--budget", default="24GiB")
    parser.add_argument("--limit", type=int, default=4096)
    args = parser.parse_args()
    budget, disagree = parse_bytes(args.budget), 0
    specs = load_suite(args.suite).with_mode("estimate")
    specs = [s for s in specs if (not args.configs or s.config in args.configs.split(","))
             and (not args.methods or s.label in args.methods.split(","))]
    for spec in specs:
        tracer = SharedTraces()
        fitted = fit_on_curve(spec, budget, args.limit, tracer)
        curve_traces = len(tracer.done)
        searched = fit_batch(lambda b, spec=spec, tracer=tracer: tracer.peak(with_shape(spec, {"batch": b})),
                             budget, spec.batch, args.limit)
        same = fitted.max_batch == searched.max_batch
        disagree += not same
        print(f"{spec.config}/{spec.label}: curve {fitted.max_batch} ({fitted.method}, {curve_traces} traces), "
              f"search {searched.max_batch} ({len(searched.probes)} probes): {'same' if same else 'DIFFERENT'}",
              flush=True)
    sys.exit(1 if disagree else 0)


if __name__ == "__main__":
    main()
