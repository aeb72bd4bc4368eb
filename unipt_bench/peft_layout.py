"""Results in the layout of PEFT's method comparison (huggingface/peft, method_comparison/), so its app loads them.

That app reads every `*.json` of a folder (processing.py `load_jsons`, line 76) and keeps, per file
(processing.py `preprocess`, line 23, at commit 0006753e): `run_info` (experiment_name, train_config with a
model_id, peft_config holding a peft_type or null for full fine-tuning, total_time, peft_branch, created_at),
`train_info` (status "success", the accelerator_memory_* figures in bytes, train_time, file_size, metrics
whose last entry has "test accuracy", "train loss", "train samples", "train total tokens") and `meta_info`
(package_info with peft-, transformers-, datasets-, torch- and bitsandbytes-version; system_info).
`load_df` (line 86) then casts the memory, size and sample figures to int and the times to float.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .atomic import write_atomic
from .results import RunResult

SUCCESS = "success"  # the only train status the app keeps (processing.py line 34)


def peft_config_of(result: RunResult) -> dict[str, Any] | None:
    """The PEFT config a `peft:` method applied (its first tuned tower's), a stand-in naming any other method,
    or None for full fine-tuning (which the app labels "full-finetuning")."""
    spec = result.spec
    recorded = (result.protocol or {}).get("peft")
    if recorded and recorded.get("configs"):
        return recorded["configs"][0]
    if spec["method"] == "full":
        return None
    return {"peft_type": spec["method"].upper(), **spec.get("method_options", {})}


def test_accuracy(result: RunResult) -> float:
    """The run's test score on its selection metric (training runs), else NaN (a profile measures no accuracy)."""
    metrics = result.metrics or {}
    selection = metrics.get("selection")
    score = (metrics.get("test") or {}).get(selection) if selection else None
    return float(score) if isinstance(score, int | float) else math.nan


def peft_record(result: RunResult) -> dict[str, Any]:
    """One result as PEFT's method comparison writes a run (MetaMathQA/utils.py `log_results`)."""
    spec = result.spec
    memory = result.primary_memory() or {}
    peak = memory.get("peak_bytes") or 0
    reserved = (result.memory or {}).get("cuda_allocator", {}).get("max_memory_reserved", peak)  # cuda runs
    timing = result.timing or {}
    step = timing.get("step_seconds") or 0.0
    seq_len = next((t["shape"].get("seq_len") for t in spec["towers"] if "seq_len" in t["shape"]), 0)
    packages = result.env.get("packages", {})
    params = result.params or {}
    return {
        "run_info": {
            "created_at": result.finished,
            "total_time": float(timing.get("build_seconds", 0.0) + timing.get("tracked_seconds", 0.0)),
            "experiment_name": f"{spec['suite']}/{spec['config']}/{spec['label']}.{spec['mode']}",
            "peft_branch": "unipt-bench",
            "train_config": {"model_id": " + ".join(t["backbone"] for t in spec["towers"]), "task": spec["task"],
                             "batch_size": spec["batch"], "steps": spec["steps"], "mode": spec["mode"],
                             "towers": spec["towers"]},
            "peft_config": peft_config_of(result),
            "error_msg": result.message or "",
        },
        "train_info": {
            "accelerator_memory_reserved_avg": int(reserved),
            "accelerator_memory_max": int(peak),
            "accelerator_memory_reserved_99th": int(reserved),
            "train_time": float(step * spec["steps"]),
            "file_size": 4 * int(params.get("trainable_params") or 0),  # float32 checkpoint of what trains
            "num_trainable_params": params.get("trainable_params"),
            "num_total_params": params.get("total_params"),
            "status": SUCCESS if result.status == "ok" else result.status,
            "metrics": [{"step": spec["steps"], "test accuracy": test_accuracy(result), "train loss": math.nan,
                         "train samples": spec["batch"] * spec["steps"],
                         "train total tokens": spec["batch"] * spec["steps"] * seq_len}],
        },
        "meta_info": {
            "package_info": {f"{name}-version": packages.get(name)
                             for name in ("peft", "transformers", "datasets", "torch", "bitsandbytes")},
            "system_info": {"platform": result.env.get("platform"), "python": result.env.get("python"),
                            "device": result.env.get("device")},
        },
    }


def write_peft_results(results: list[RunResult], folder: Path) -> list[Path]:
    """One JSON file per result in `folder` (written atomically); returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for result in results:
        spec = result.spec
        path = folder / f"{spec['config']}--{spec['label']}.{spec['mode']}.json"
        write_atomic(path, json.dumps(peft_record(result), indent=2))
        paths.append(path)
    return paths
