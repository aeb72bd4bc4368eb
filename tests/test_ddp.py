"""Data-parallel runs: DDP's gradient buckets in the estimate equal what a real DDP allocates (counted by the
profiler, which sees every CPU allocation), ranks under torchrun merge into one result, DDP settings come
from the suite, rows are dealt out as DistributedSampler does, and too many GPUs are refused."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn

from unipt_bench.config import RunSpec, TowerSpec
from unipt_bench.ddp import wrapper
from unipt_bench.errors import UserError
from unipt_bench.memory.ddp_buckets import CATEGORY, allocated_bytes, bucket_layout
from unipt_bench.profile import RunOptions, profile
from unipt_bench.runner import execute
from unipt_bench.suite_file import load_suite
from unipt_bench.train import batch_rows, train_run

from .conftest import make_spec
from .datasets import write_precomp

CLOSE = 0.001  # the acceptance bound: estimate and measured peaks within 0.1%


@pytest.fixture
def one_process_group(tmp_path):
    """A gloo process group of one process (this one): a real DDP reducer without a second process."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def ddp_spec(mode: str, **ddp: object) -> RunSpec:
    """Tiny BERT fine-tuned in full, batch 4 per device on 2 GPUs; mean pooling, since these tests compare with
    every CPU allocation and GPO's fused GRU op keeps internal scratch that only the allocator sees
    (tasks/position_gru.py), some 100 KB here, more than the 0.1% bound on this tiny model."""
    data = make_spec("full", mode=mode, batch=4).to_dict()
    data["task_options"] = {**data["task_options"], "pooling": "mean"}
    return RunSpec.from_dict({**data, "gpus": 2, "ddp": ddp})


def gradient_bytes(spec: RunSpec) -> int:
    single = profile(RunSpec.from_dict({**spec.to_dict(), "gpus": 1, "ddp": {}, "mode": "estimate"}))
    return 4 * single["params"]["trainable_params"]  # fp32


class MixedDtypes(nn.Module):
    """Two dtypes and uneven sizes, so that the bucket caps and the dtype boundaries both matter."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(600, 600), nn.Linear(600, 600), nn.Linear(600, 10).double()
        self.d = nn.Linear(600, 600)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 600)
        return self.c(self.d(self.b(self.a(x))).double()).sum()


@pytest.mark.parametrize("settings", [{}, {"bucket_cap_mb": 1}], ids=["defaults", "cap-1MiB"])
def test_bucket_layout_is_the_one_ddp_rebuilds(one_process_group, settings: dict) -> None:
    model = MixedDtypes()
    ddp = nn.parallel.DistributedDataParallel(model, **settings)
    for _ in range(3):  # buckets are rebuilt at the second forward, and logged after it
        ddp(torch.randn(4, 600)).backward()
    real = [int(size) for size in ddp._get_ddp_logging_data()["rebuilt_bucket_sizes"].split(",")]
    modelled = [allocated_bytes(dtype, numel) for dtype, numel in bucket_layout(model, settings)]
    assert sorted(modelled) == sorted(real)
    assert len(real) == (3 if not settings else 4)  # 1 MiB first bucket, then 25 MiB; or 1 MiB each


@pytest.mark.parametrize("view", [False, True], ids=["grads-apart", "grads-as-bucket-views"])
def test_estimate_with_buckets_equals_a_real_ddp(one_process_group, view: bool) -> None:
    """A real DDP (one gloo process) counted by the profiler against the fake-tensor estimate with buckets."""
    spec = ddp_spec("cpu", gradient_as_bucket_view=view)
    real = profile(spec, RunOptions(count_allocations=True), wrap=wrapper(spec, None))["memory"]["cpu_allocations"]
    estimate = profile(RunSpec.from_dict({**spec.to_dict(), "mode": "estimate"}))
    figures = estimate["memory"]["memtracker_fake"]
    assert figures["by_category"][CATEGORY] == gradient_bytes(spec)  # the buckets hold every gradient
    assert sum(figures["by_category"].values()) == figures["peak_bytes"]
    assert abs(real["peak_bytes"] - figures["peak_bytes"]) <= CLOSE * figures["peak_bytes"]
    if view:  # gradients are views into the buckets: nothing counted twice
        assert figures["by_category"]["grads"] == 0
    assert estimate["protocol"]["ddp"]["gradient_as_bucket_view"] is view


@pytest.mark.slow
def test_two_gloo_processes_under_torchrun_match_the_estimate() -> None:
    """The acceptance run: gpus = 2 in cpu mode as two torchrun processes; each rank's peak of live bytes
    (every CPU allocation) equals the estimate with DDP's buckets, and the estimate without them is lower
    by the gradient bytes."""
    spec = ddp_spec("cpu")
    result = execute(spec.to_dict(), {"torchrun": True, "count_allocations": True})
    assert result["status"] == "ok", result["message"]
    with_buckets = profile(RunSpec.from_dict({**spec.to_dict(), "mode": "estimate"}))["memory"]["memtracker_fake"]
    without = profile(RunSpec.from_dict({**spec.to_dict(), "mode": "estimate", "gpus": 1, "ddp": {}}))
    measured = result["memory"]["cpu_allocations"]
    assert len(measured["ranks"]) == 2
    assert measured["peak_bytes"] == max(rank["peak_bytes"] for rank in measured["ranks"])
    for rank in measured["ranks"]:
        assert abs(rank["peak_bytes"] - with_buckets["peak_bytes"]) <= CLOSE * with_buckets["peak_bytes"]
    grads = gradient_bytes(spec)
    missing = measured["peak_bytes"] - without["memory"]["memtracker_fake"]["peak_bytes"]
    assert abs(missing - grads) <= CLOSE * with_buckets["peak_bytes"]
    ddp = result["protocol"]["ddp"]
    assert (ddp["processes"], ddp["backend"], ddp["gradient_as_bucket_view"]) == (2, "gloo", False)


def test_more_gpus_than_the_node_has_is_refused() -> None:
    gpus = max(2, torch.cuda.device_count() + 1)
    spec = RunSpec.from_dict({**make_spec("full", mode="cuda").to_dict(), "gpus": gpus})
    result = execute(spec.to_dict())
    assert result["status"] == "error"
    assert f"gpus = {gpus}" in result["message"] and "\n" not in result["message"]


def test_one_gpu_runs_are_unchanged() -> None:
    """gpus = 1: no `ddp` in the spec (digests as before) and no bucket category or protocol entry."""
    spec = make_spec("full")
    assert "ddp" not in spec.to_dict()
    out = profile(spec)
    assert CATEGORY not in out["memory"]["memtracker_fake"]["by_category"] and "ddp" not in out["protocol"]


SUITE = """
name = "s"
[[configs]]
name = "c"
batch = 8
ddp = {{ {ddp} }}
towers = [{{ name = "text", backbone = "tiny-bert", seq_len = 8 }}, {{ name = "image", backbone = "tiny-regions", tuned = false }}]
methods = [{{ method = "full", gpus = 2 }}, "bitfit"]
"""


def test_suite_ddp_table_is_recorded_as_written(tmp_path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(SUITE.format(ddp="bucket_cap_mb = 10"))
    full, bitfit = load_suite(str(path)).specs
    assert (full.gpus, full.batch, full.ddp) == (2, 4, {"bucket_cap_mb": 10.0})
    assert bitfit.gpus == 1 and "ddp" not in bitfit.to_dict()  # one GPU: DDP's settings do not apply
    assert full.digest() != RunSpec.from_dict({**full.to_dict(), "ddp": {}}).digest()
    path.write_text(SUITE.format(ddp="bucket_size = 10"))
    with pytest.raises(UserError, match=r"s\.toml.*bucket_size"):
        load_suite(str(path))


def test_rows_are_dealt_out_as_distributed_sampler_does() -> None:
    """Each rank's rows at each step are those torch's DistributedSampler (shuffled, drop_last) gives that rank,
    batched as a DataLoader batches them. batch_rows seeds epoch e's permutation with seed x 100003 + e: the
    sampler's own seed + epoch with its seed set to seed x 100003."""
    from torch.utils.data import DistributedSampler

    size, batch, world, seed = 25, 4, 2, 1
    per_epoch = size // (batch * world)  # 3 steps of 2 x 4 rows
    for step in (0, 2, 3, 7):  # 3 and 7: the second and third epochs
        epoch, offset = divmod(step, per_epoch)
        for rank in range(world):
            sampler = DistributedSampler(range(size), num_replicas=world, rank=rank, shuffle=True,
                                         seed=seed * 100_003, drop_last=True)
            sampler.set_epoch(epoch)
            expected = list(sampler)[offset * batch:(offset + 1) * batch]
            assert batch_rows(size, batch, step, seed, rank, world) == expected, (step, rank)
        together = batch_rows(size, batch * world, step, seed)  # and the ranks together make one big batch
        assert [batch_rows(size, batch, step, seed, r, world) for r in range(world)] == [together[0::2], together[1::2]]


def test_ranks_train_on_their_share_and_rank_0_alone_evaluates(one_process_group, tmp_path) -> None:
    """Training through DDP's wrapper (rank 0 of a one-process group) validates and tests; a rank other than 0
    trains the same steps on its rows and returns its memory but no metrics."""
    root = write_precomp(tmp_path / "data" / "flickr30k")
    towers = [TowerSpec("image", "tiny-regions", tuned=False), TowerSpec("text", "tiny-bert", shape={"seq_len": 8})]
    spec = RunSpec(suite="t", config="c", label="bitfit", method="bitfit", method_options={}, task="retrieval",
                   task_options={"embed_dim": 16, "pooling": "mean", "hardest_negatives": False}, towers=towers,
                   batch=6, gpus=2, steps=2, seed=0, mode="cpu",
                   train={"dataset": "flickr30k", "format": "precomp", "steps": 2, "eval_every": 2, "cache": "off"})

    def options(name: str) -> RunOptions:
        return RunOptions(data_root=str(root.parent), checkpoints=str(tmp_path / name))

    lead = train_run(spec, options("lead"), wrap=wrapper(spec, None), rank=0, world=1)
    other = train_run(spec, options("other"), rank=1, world=2)
    assert [h["step"] for h in lead["metrics"]["history"]] == [2] and "rsum" in lead["metrics"]["test"]
    assert other["metrics"] is None
    assert len(other["memory"]["memtracker_real"]["step_peak_bytes"]) == 2  # both steps, tracked
    assert not (tmp_path / "other").exists()  # only rank 0 writes checkpoints


def test_bucket_bytes_appear_in_the_rows_and_the_breakdown() -> None:
    """The bucket category is a column of `results` (and a part of the report's stacked bars): the parts add up
    to the peak."""
    from unipt_bench.results import RunResult

    spec = ddp_spec("estimate")
    out = profile(spec)
    result = RunResult(spec=spec.to_dict(), status="ok", digest=spec.digest(), started="", finished="",
                       memory=out["memory"], params=out["params"])
    row = result.row()
    figures = out["memory"]["memtracker_fake"]
    assert row["ddp_buckets_bytes"] == figures["by_category"][CATEGORY] > 0
    parts = [k for k in row if k.endswith("_bytes") and k != "peak_bytes" and not k.startswith("predicted_")]
    assert sum(row[k] for k in parts) == row["peak_bytes"]  # (predicted_*: the replayed allocator's figures)
