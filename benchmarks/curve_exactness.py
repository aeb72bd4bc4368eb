"""Memory curves against direct traces: for every run of a suite (estimate mode), build the curve on the given
axes, evaluate it at shapes not used to build it, trace those shapes directly and compare byte for byte
(peak, every category, every phase, every step). With --baseline, the curve at the spec's own shape is also
compared with the baseline's stored figures (peak and every category). A script, not a test: a paper-scale
configuration takes tens of minutes on two cores.

    python benchmarks/curve_exactness.py --suite smoke --checks "batch=7;batch=12"
    python benchmarks/curve_exactness.py --suite flickr30k --configs t5-bert --checks "batch=8" \\
        --baseline baselines/flickr30k-t5-bert.json

The curve's own verification trace (one step past its grid) is a shape not used to build it and counts as
one of the compared shapes. Exit status 1 when any curve differs from a trace.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from unipt_bench.curves import COMPARED, add_buckets, memory_curve, trace, with_shape
from unipt_bench.suite_file import load_suite


def parse_checks(text: str) -> list[dict[str, int]]:
    """"batch=7;batch=12,text.seq_len=20" -> [{"batch": 7}, {"batch": 12, "text.seq_len": 20}]."""
    return [{k: int(v) for k, v in (item.split("=") for item in group.split(","))}
            for group in text.split(";") if group]


def baseline_differences(figures: dict, entry: dict) -> list[str]:
    """Categories (and the peak) where the curve differs from a baseline entry's stored metrics."""
    metrics = entry["metrics"]
    wrong = [] if figures["peak_bytes"] == metrics["peak_bytes"] else ["peak_bytes"]
    return wrong + [c for c, v in figures["by_category"].items() if metrics.get(f"{c}_bytes", v) != v]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="smoke")
    parser.add_argument("--configs", default=None, help="comma-separated configurations (default: all)")
    parser.add_argument("--methods", default=None, help="comma-separated labels (default: all)")
    parser.add_argument("--axes", default="batch", help="comma-separated curve axes")
    parser.add_argument("--checks", default="batch=7;batch=12", help="shapes traced directly, ';'-separated")
    parser.add_argument("--baseline", default=None, help="also compare at the spec's shape with this baseline")
    parser.add_argument("--json", default=None, help="write the per-run outcomes to this file")
    args = parser.parse_args()
    specs = load_suite(args.suite).with_mode("estimate")
    if args.configs:
        specs = [s for s in specs if s.config in args.configs.split(",")]
    if args.methods:
        specs = [s for s in specs if s.label in args.methods.split(",")]
    baseline = json.load(open(args.baseline))["entries"] if args.baseline else {}
    checks, axes, rows, failed = parse_checks(args.checks), args.axes.split(","), [], False
    for spec in specs:
        started = time.perf_counter()
        try:
            curve = memory_curve(spec, axes)
        except Exception as exc:  # noqa: BLE001  (a run that cannot build: reported, as `run` would)
            print(f"{spec.config}/{spec.label}: skipped: {type(exc).__name__}: {str(exc).splitlines()[0]}", flush=True)
            continue
        built = time.perf_counter() - started
        compared, wrong = [t["shape"] for t in curve.traces if t["use"] == "verify"], []
        for shape in checks:
            direct = trace(with_shape(spec, shape))
            expected, got = add_buckets(direct.figures, direct.bucket_bytes), curve.at(**shape)
            wrong += [f"{shape}: {k}" for k in COMPARED if got[k] != expected[k]]
            compared.append(shape)
        if spec.key in baseline:
            at_spec = curve.at()
            wrong += [f"baseline: {k}" for k in baseline_differences(at_spec, baseline[spec.key])]
            compared.append("spec's shape (baseline)")
        t0 = time.perf_counter()
        curve.at(**checks[0]) if checks else curve.at()
        evaluate_ms = (time.perf_counter() - t0) * 1000
        status = "exact" if curve.exact and not wrong else ("fallback" if not curve.exact else "DIFFERS")
        failed |= status == "DIFFERS" or (not curve.exact and bool(wrong))
        grid = sum(t["use"] in ("grid", "verify") for t in curve.traces)
        print(f"{spec.config}/{spec.label}: {status}; degrees {curve.degrees}; {grid} traces to build and verify "
              f"({built:.0f} s); equal to direct traces at {len(compared)} shapes not used to build it: "
              f"{'no: ' + '; '.join(wrong) if wrong else 'yes'}; evaluated in {evaluate_ms:.1f} ms"
              + (f"; {curve.fallback_reason}" if not curve.exact else ""), flush=True)
        rows.append({"run": spec.key, "status": status, "exact": curve.exact, "wrong": wrong,
                     "compared": [str(c) for c in compared], "build_seconds": built, "evaluate_ms": evaluate_ms,
                     "degrees": curve.degrees, "fallback_reason": curve.fallback_reason})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
