"""On a GPU: does the allocator replay match the real caching allocator? (part of benchmarks/gpu-check.sh)

For the smoke suite's BERT runs and Table 5's BERT runs (selfcheck's runs), each in a fresh process:
1. record the real allocator's history from before the model is built, profile the run in cuda mode and
   take the snapshot;
2. replay the recorded requests through unipt_bench/memory/allocator_replay.py and compare the segments
   it creates (order and size) and holds at the end with the real ones (memory/snapshot_replay.py);
3. replay the estimate's own allocation stream (no GPU involved) and put its predicted
   max_memory_reserved beside the measured one.
Writes allocator-check.json and allocator-check.md (a table for docs/gpu-calibration.md) to OUTPUT_DIR.
Usage: python benchmarks/allocator_check.py OUTPUT_DIR [--methods a,b]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
from pathlib import Path
from typing import Any

MiB = 1 << 20


def check_one(spec_data: dict[str, Any]) -> dict[str, Any]:
    """One run on the GPU (in a child process, so every run starts with an empty allocator)."""
    import torch

    from unipt_bench.config import RunSpec
    from unipt_bench.memory.snapshot_replay import replay_trace
    from unipt_bench.profile import RunOptions, profile

    spec = RunSpec.from_dict({**spec_data, "mode": "cuda"})
    torch.cuda.memory._record_memory_history(max_entries=2_000_000, stacks="python")
    result = profile(spec, RunOptions(calibrate=False, busy_threshold=None))
    snapshot = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    allocator = result["memory"]["cuda_allocator"]
    return {"key": f"{spec.suite}/{spec.config}/{spec.label}", "replayed_trace": replay_trace(snapshot),
            "measured_max_allocated": allocator.get("peak_bytes"),
            "measured_max_reserved": allocator.get("max_memory_reserved")}


def predicted(spec_data: dict[str, Any]) -> dict[str, Any] | None:
    """The estimate's replayed allocator figures for the same spec (None where the estimate has none)."""
    from unipt_bench.config import RunSpec
    from unipt_bench.profile import RunOptions, profile

    result = profile(RunSpec.from_dict({**spec_data, "mode": "estimate"}), RunOptions())
    return result["memory"].get("memtracker_fake", {}).get("allocator_replay")


def markdown(rows: list[dict[str, Any]]) -> str:
    head = ("| run | GPU trace replayed: segments equal | final segments equal | first difference | "
            "measured max reserved (MiB) | replayed from GPU trace (MiB) | predicted from estimate (MiB) |\n"
            "|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        t = r["replayed_trace"]
        pred = (r.get("predicted") or {}).get("max_reserved")
        lines.append(f"| {r['key']} | {t['segment_allocs_equal']} ({t['segment_allocs_real']} real) | "
                     f"{t['final_segments_equal']} | {t['first_difference']} | "
                     f"{(r['measured_max_reserved'] or 0) / MiB:.1f} | {t['max_reserved_replayed'] / MiB:.1f} | "
                     f"{'-' if pred is None else f'{pred / MiB:.1f}'} |")
    return head + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--methods", default=None)
    args = parser.parse_args()
    from unipt_bench.selfcheck import selfcheck_specs

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    ctx = mp.get_context("spawn")
    for spec in selfcheck_specs(gpu=True, methods=args.methods):
        data = spec.to_dict()
        with ctx.Pool(1) as pool:
            row = pool.apply(check_one, (data,))
        with ctx.Pool(1) as pool:
            row["predicted"] = pool.apply(predicted, (data,))
        rows.append(row)
        print(json.dumps(row["replayed_trace"]), flush=True)
    (out / "allocator-check.json").write_text(json.dumps(rows, indent=1))
    (out / "allocator-check.md").write_text(markdown(rows))
    print(markdown(rows))
    if not all(r["replayed_trace"]["segment_allocs_equal"] for r in rows):
        raise SystemExit("the replay created other segments than the GPU's allocator for some runs (see above)")


if __name__ == "__main__":
    main()
