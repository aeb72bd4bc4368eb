"""Predicted reserved memory per training step: flickr30k t5-bert trained in cpu mode on realistic caption lengths.

Writes the realistic-length Flickr30K fixture (tests/datasets_flickr.py: Flickr30K's WordPiece length histogram,
VSE-infinity's precomp layout, 36 x 2048 BUTD-sized regions) to a temporary folder, trains the flickr30k suite's
t5-bert configuration on it in cpu mode (`unipt-bench run --job train --max-steps N`), and prints per method and
per tracked step: the step's padded caption length (its longest caption), the tracked allocated peak, the replayed
allocator's allocated and reserved memory (docs/allocator.md), reserved above allocated, and whether reserved grew
since step 1. Each batch is padded to its longest caption (`padding = "longest"`, as VSE-infinity's collate), so
padded lengths vary from step to step. Then the evaluations' reserved memory (they run at eval_batch 112).

cpu mode tracks the first two steps and then only the steps whose batch is larger than every one before
(unipt_bench/train_tracking.py): the replay sees those steps, its state carried over between them; the steps in
between (shorter batches) are trained but not replayed. These are replays, unverified on a GPU.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/reserved_per_step.py --steps 20 --out /tmp/reserved-store
    .venv/bin/unipt-bench report --suite flickr30k --out /tmp/reserved-store   # the report's predicted memory

Batch 112 (the suite's), 20 steps, on 2 CPU cores shared with other work: 18 minutes of training for full, 21 for
adapter, 15 for lst, 14 for unipt (with the evaluations and the test, the five default methods take 1.5 hours or so).
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ (the fixture) beside unipt_bench

from tests.datasets_flickr import write_flickr_precomp  # noqa: E402
from unipt_bench.results import ResultStore, RunResult  # noqa: E402

MiB = 1 << 20
SUITE, CONFIG = "flickr30k", "t5-bert"


def train(methods: list[str], steps: int, batch: int, data: Path, out: Path) -> float:
    """Train every method through the command line (one process per run, as users run it); the wall seconds."""
    command = [sys.executable, "-m", "unipt_bench.cli", "run", "--suite", SUITE, "--configs", CONFIG, "--mode", "cpu",
               "--job", "train", "--methods", ",".join(methods), "--max-steps", str(steps), "--batch", str(batch),
               "--data-root", str(data), "--out", str(out)]
    begin = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - begin


def rows(result: RunResult) -> list[dict[str, float | int]]:
    """One row per tracked step (counted from 1 as logged): padded length and the memory figures, in bytes."""
    figures = result.memory["memtracker_real"]
    replayed = figures["allocator_replay"]
    metrics = result.metrics or {}
    tracked, shapes = metrics["tracked_steps"], metrics["tracked_shapes"]
    peaks = dict(zip(tracked, figures["step_peak_bytes"], strict=True))  # tracker's peak per tracked step
    first = None
    out = []
    for key, reserved in replayed["step_reserved"].items():
        step = int(key)
        first = reserved if first is None else first
        out.append({"step": step + 1, "length": shapes[key]["text"][1], "tracked": peaks[step],
                    "allocated": replayed["step_allocated"][key], "reserved": reserved, "growth": reserved - first})
    return out


def table(result: RunResult) -> str:
    lines = ["| step | padded length | tracked peak (MiB) | replayed allocated (MiB) | reserved (MiB) | "
             "reserved - allocated (MiB, %) | reserved growth since step 1 (MiB) |", "|---:" * 7 + "|"]
    for r in rows(result):
        above = r["reserved"] - r["allocated"]
        lines.append(f"| {r['step']} | {r['length']} | {r['tracked'] / MiB:.1f} | {r['allocated'] / MiB:.1f} | "
                     f"{r['reserved'] / MiB:.1f} | {above / MiB:.1f} ({100 * above / r['allocated']:.1f}%) | "
                     f"{r['growth'] / MiB:+.1f} |")
    replayed = result.memory["memtracker_real"]["allocator_replay"]
    evaluations = ", ".join(f"after step {s}: {b / MiB:.1f}" for s, b in replayed["evaluation_reserved"].items())
    allocator = replayed["allocator"]
    lines.append(f"\nevaluations (batch {result.spec['train'].get('eval_batch')}), reserved MiB: {evaluations}; "
                 f"whole run: allocated {allocator['max_allocated'] / MiB:.1f}, "
                 f"reserved {allocator['max_reserved'] / MiB:.1f}, segments {allocator['peak_segments']}")
    lengths = (result.metrics or {}).get("batch_shapes", {}).get("text", {})
    lines.append("every step's text batch (shape: steps): " + ", ".join(f"{k}: {v}" for k, v in lengths.items()))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="full,lora,adapter,lst,unipt")
    parser.add_argument("--steps", type=int, default=20, help="training steps per method")
    parser.add_argument("--batch", type=int, default=112, help="per-step batch (the suite's: 112)")
    parser.add_argument("--out", type=Path, help="result store (default: a temporary folder)")
    parser.add_argument("--tables-only", action="store_true", help="print the tables of the runs already in --out")
    args = parser.parse_args()
    methods = args.methods.split(",")
    if args.tables_only and args.out is None:
        parser.error("--tables-only needs --out")
    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch) / "results"
        seconds = None
        if not args.tables_only:
            data = Path(scratch) / "data"
            # enough captions for every step without a second pass (5 per image); 10 images per evaluation split
            images = math.ceil(args.steps * args.batch / 5) + 1
            write_flickr_precomp(data / SUITE, images=images, eval_images=10, regions=36, dim=2048)
            seconds = train(methods, args.steps, args.batch, data, out)
        results = {r.spec["label"]: r for r in ResultStore(out).latest(SUITE).values()
                   if r.spec.get("config") == CONFIG and r.spec.get("train")
                   and r.spec.get("overrides") == {"batch": args.batch, "max_steps": args.steps}}
        took = f", trained in {seconds:.0f} s" if seconds is not None else ""
        print(f"\nflickr30k t5-bert, cpu mode, batch {args.batch}, {args.steps} steps{took}")
        for method in methods:
            result = results.get(method)
            if result is None or result.status != "ok":
                print(f"\n{method}: no result ({result.status if result else 'missing'})")
                continue
            print(f"\n{method} ({(result.timing or {}).get('train_seconds', 0):.0f} s of training)\n{table(result)}")


if __name__ == "__main__":
    main()
