"""Wall time of `unipt-bench compare` on a BERT-base-sized model (a local folder holding BERT-base's config, no
weights): every applicable method on retrieval at batch 112, the batch limit under 24 GiB and the sequence-length
curve (goal: at most 60 s in estimate mode on two cores; measured: 55-59 s with --jobs 2 on a quiet machine
at 32, 128 and 512 tokens, 7 traces per method, one full and six spliced, docs/curves.md). A benchmark, not a
test: its figures depend on what else the machine runs.

    python benchmarks/compare_speed.py [--seq-len 32,128,512] [--jobs N] [--methods ...]   (--jobs: compare's default)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_SECONDS = 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", default="32", help="comma-separated lengths, one comparison each")
    parser.add_argument("--jobs", default=None, help="compare's --jobs (default: compare's, every core)")
    parser.add_argument("--methods", default=None)
    args = parser.parse_args()
    from transformers import BertConfig

    with tempfile.TemporaryDirectory() as folder:
        BertConfig().save_pretrained(Path(folder) / "bert-base")  # BERT-base uncased's architecture
        for seq_len in args.seq_len.split(","):
            command = [sys.executable, "-m", "unipt_bench.cli", "compare", "--model", f"hf:{folder}/bert-base",
                       "--task", "retrieval", "--batch", "112", "--seq-len", seq_len, "--budget", "24GiB",
                       *(["--jobs", args.jobs] if args.jobs else []),
                       *(["--methods", args.methods] if args.methods else [])]
            start = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            seconds = time.perf_counter() - start
            print(done.stdout)
            if done.returncode:
                raise SystemExit(f"exit {done.returncode}\n{done.stderr[-2000:]}")
            verdict = "meets" if seconds <= GOAL_SECONDS else "misses"
            print(f"seq_len {seq_len}: {seconds:.1f} s ({verdict} the {GOAL_SECONDS} s goal)")


if __name__ == "__main__":
    main()
