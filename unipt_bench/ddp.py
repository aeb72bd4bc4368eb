"""Data-parallel runs: a spec with gpus = N runs as N processes under torchrun, each wrapping the model in
DistributedDataParallel, and their results merge into one.

The worker starts `python -m torch.distributed.run --standalone --nproc-per-node N -m unipt_bench.ddp
<folder>`; each rank reads the job from the folder, builds the same model (same seed), wraps it in DDP
(nccl on GPUs, gloo on the CPU) with the suite's `ddp` settings, runs the same steps under its own
trackers and writes its figures there. The merged result keeps every rank's figures (`ranks`) and
takes the per-GPU peak as the largest over ranks. cuda runs always go this way; cpu runs when asked
(RunOptions.torchrun), which is how the DDP bucket model is checked without a GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from .atomic import write_atomic
from .config import RunSpec
from .errors import NotApplicable, UserError

PROGRESS = "unipt-ddp-progress "  # rank 0's progress lines on its stdout start with this
RANK_FILE = "rank{}.json"


def data_parallel(spec: RunSpec, options: Any) -> bool:
    """Whether the spec runs as several processes (cuda always, cpu when asked) rather than as one."""
    return spec.gpus > 1 and (spec.mode == "cuda" or (spec.mode == "cpu" and options.torchrun))


def check_devices(spec: RunSpec) -> None:
    """A cuda run asking for more GPUs than this node has is refused with one line."""
    import torch

    if spec.mode == "cuda" and spec.gpus > torch.cuda.device_count():
        raise UserError(f"{spec.config}/{spec.label} runs data-parallel on gpus = {spec.gpus}, but this node has "
                        f"{torch.cuda.device_count()} visible GPU(s); run it where {spec.gpus} are visible, or in "
                        "estimate mode")


def launch(spec: RunSpec, options: Any, job: str, report: Callable[[dict[str, Any]], None] = lambda info: None
           ) -> dict[str, Any]:
    """Run `job` ("profile" or "train") of `spec` under torchrun; returns the merged output of its ranks."""
    check_devices(spec)
    if spec.mode == "cuda":  # checked once, here: each rank would count the other ranks' contexts as busy
        from .profile import check_gpu_idle

        check_gpu_idle(options.busy_threshold)
        options = replace(options, busy_threshold=None)
    with tempfile.TemporaryDirectory(prefix="unipt-ddp-") as tmp:
        folder = Path(tmp)
        write_atomic(folder / "job.json", json.dumps({"spec": spec.to_dict(), "options": asdict(options), "job": job}))
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
                   f"--nproc-per-node={spec.gpus}", "-m", "unipt_bench.ddp", str(folder)]
        tail: deque[str] = deque(maxlen=20)
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process:
            assert process.stdout is not None
            for line in process.stdout:
                marked = line.find(PROGRESS)
                if marked >= 0:
                    report(json.loads(line[marked + len(PROGRESS):]))
                elif line.strip():
                    tail.append(line.rstrip())
        ranks = [read_rank(folder, k) for k in range(spec.gpus)]
    found = [r for r in ranks if r is not None]
    failed = next((r for r in found if r["status"] != "ok"), None)
    if failed is not None:
        import torch

        kinds = {"not_applicable": NotApplicable, "error": UserError, "oom": torch.OutOfMemoryError}
        raise kinds.get(failed["status"], RuntimeError)(failed["message"])
    if len(found) < spec.gpus:
        last = next((line for line in reversed(tail) if "Error" in line), tail[-1] if tail else "")
        raise RuntimeError(f"torchrun exited with code {process.returncode} and {spec.gpus - len(found)} of "
                           f"{spec.gpus} ranks wrote no result: {last.strip()}")
    return merge([r["out"] for r in found], spec, options)


def read_rank(folder: Path, rank: int) -> dict[str, Any] | None:
    path = folder / RANK_FILE.format(rank)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def merge(outs: list[dict[str, Any]], spec: RunSpec, options: Any) -> dict[str, Any]:
    """One result from every rank's: per counter, the figures of the rank with the largest peak plus every rank's
    (`ranks`); step peaks are the largest over ranks, step time the slowest rank's."""
    memory: dict[str, Any] = {}
    for counter in outs[0]["memory"]:
        per = [out["memory"][counter] for out in outs]
        top = max(range(len(per)), key=lambda k: per[k].get("peak_bytes") or 0)
        merged = {**per[top], "peak_rank": top, "ranks": per}
        if all(isinstance(f.get("step_peak_bytes"), list) for f in per):
            merged["step_peak_bytes"] = [max(step) for step in zip(*(f["step_peak_bytes"] for f in per), strict=False)]
        memory[counter] = merged
    seconds = [out["timing"].get("step_seconds") for out in outs]
    timing = {**outs[0]["timing"], "step_seconds": max((s for s in seconds if s is not None), default=None),
              "ranks": [out["timing"] for out in outs]}
    out = {**outs[0], "memory": memory, "timing": timing}
    workspace = out.pop("library_workspace_bytes", None)
    if spec.mode == "cuda" and options.calibrate and "cuda_allocator" in memory:
        from .profile import calibrate

        out["calibration"] = calibrate(spec, memory["cuda_allocator"]["peak_bytes"], workspace)
    return out


def wrapper(spec: RunSpec, device: int | None) -> Callable[[Any], Any]:
    """What wraps a rank's model: DDP with the suite's settings (DDP's defaults for the keys it leaves out)."""
    from torch.nn.parallel import DistributedDataParallel

    def wrap(model: Any) -> Any:
        return DistributedDataParallel(model, device_ids=None if device is None else [device], **spec.ddp)

    return wrap


def rank_main(folder: Path) -> int:
    """One rank: run the job with the model in DDP, write `rank<k>.json` (status, message, out)."""
    import torch
    import torch.distributed as dist

    from .memory import ddp_buckets
    from .profile import RunOptions, profile
    from .train import train_run

    job = json.loads((folder / "job.json").read_text(encoding="utf-8"))
    spec, options = RunSpec.from_dict(job["spec"]), RunOptions(**job["options"])
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    if rank != 0:  # one allocator snapshot per run: rank 0's
        options = replace(options, snapshot=None)
    cuda = spec.mode == "cuda"
    if cuda:
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if cuda else "gloo")
    result: dict[str, Any] = {"status": "ok", "message": None, "out": None}
    try:
        wrap = wrapper(spec, local if cuda else None)
        if job["job"] == "train":
            lead = rank == 0

            def report(info: dict[str, Any]) -> None:
                if lead:
                    print(PROGRESS + json.dumps(info), flush=True)

            out = train_run(spec, options, report, wrap=wrap, rank=rank, world=world)
        else:
            out = profile(spec, options, wrap=wrap)
        backend = "nccl" if cuda else "gloo"
        out["protocol"]["ddp"] = {**ddp_buckets.settings_protocol(spec.ddp), "processes": world, "backend": backend,
                                  "launcher": "python -m torch.distributed.run --standalone",
                                  "measured": "each rank's trackers, DDP's buckets included"}
        result["out"] = out
    except NotApplicable as exc:
        result.update(status="not_applicable", message=str(exc))
    except torch.OutOfMemoryError as exc:
        result.update(status="oom", message=str(exc).splitlines()[0])
    except UserError as exc:
        result.update(status="error", message=str(exc))
    except Exception as exc:  # noqa: BLE001  (a failing rank is a result; the launcher reports it)
        result.update(status="error", message=f"rank {rank}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    write_atomic(folder / RANK_FILE.format(rank), json.dumps(result))
    if result["status"] != "ok":
        os._exit(1)  # torchrun then stops the other ranks, which may wait in a collective for this one
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(rank_main(Path(sys.argv[1])))
