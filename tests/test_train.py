"""Training on real-format data: recall and accuracy rise above chance, the hidden-state cache changes
nothing but speed, runs are deterministic, and a killed run resumes from its last checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from unipt_bench.config import RunSpec, TowerSpec
from unipt_bench.profile import RunOptions
from unipt_bench.train import train_run

from .datasets import write_karpathy, write_precomp


def spec(method: str, towers: list[TowerSpec], train: dict, task: str = "retrieval", batch: int = 12,
         task_options: dict | None = None) -> RunSpec:
    return RunSpec(suite="t", config="c", label=method, method=method, method_options={}, task=task,
                   task_options=task_options or {"embed_dim": 32, "pooling": "mean", "hardest_negatives": False},
                   towers=towers, batch=batch, gpus=1, steps=2, seed=0, mode="cpu", train=train)


TEXT = TowerSpec("text", "tiny-bert", shape={"seq_len": 8})


def run(tmp_path, run_spec: RunSpec, data_root, name: str = "ckpt") -> dict:
    return train_run(run_spec, RunOptions(data_root=str(data_root), checkpoints=str(tmp_path / name)))


@pytest.fixture(scope="module")
def karpathy(tmp_path_factory):
    return write_karpathy(tmp_path_factory.mktemp("data") / "flickr30k")


@pytest.fixture(scope="module")
def precomp(tmp_path_factory):
    return write_precomp(tmp_path_factory.mktemp("data") / "flickr30k")


@pytest.mark.slow
def test_training_on_karpathy_images_beats_chance(tmp_path, karpathy) -> None:
    towers = [TowerSpec("image", "tiny-clip-vision", tuned=False), TEXT]
    out = run(tmp_path, spec("full", towers, {"dataset": "flickr30k", "steps": 60, "eval_every": 30}), karpathy.parent)
    metrics = out["metrics"]
    assert metrics["data"]["splits"]["test"] == {"images": 6, "captions": 12}
    assert metrics["test"]["rsum"] > metrics["baseline"]["rsum"]
    assert metrics["test"]["t2i_r1"] >= 50 and metrics["test"]["i2t_r1"] >= 50  # chance: 1 in 6
    assert [h["step"] for h in metrics["history"]] == [30, 60]
    assert out["memory"]["memtracker_real"]["peak_bytes"] > 0 and out["timing"]["step_seconds"] > 0


def precomp_spec(method: str, cache: str = "auto", steps: int = 40) -> RunSpec:
    towers = [TowerSpec("image", "tiny-regions", tuned=False), TEXT]
    train = {"dataset": "flickr30k", "format": "precomp", "steps": steps, "eval_every": 20, "cache": cache}
    return spec(method, towers, train)


def test_training_on_precomp_features_beats_chance(tmp_path, precomp) -> None:
    metrics = run(tmp_path, precomp_spec("unipt"), precomp.parent)["metrics"]
    assert metrics["test"]["rsum"] > metrics["baseline"]["rsum"]
    assert metrics["test"]["t2i_r1"] > 2 * 100 / 6  # more than twice chance (1 in 6)
    assert metrics["cache"]["text"]["batch_hits"] > 0  # later steps reused the frozen backbone's states


@pytest.mark.slow
def test_hidden_state_cache_changes_nothing_but_speed(tmp_path, precomp) -> None:
    cached = run(tmp_path, precomp_spec("unipt", "auto"), precomp.parent, "a")["metrics"]
    plain = run(tmp_path, precomp_spec("unipt", "off"), precomp.parent, "b")["metrics"]
    assert cached["cache"]["text"]["rows"] > 0 and plain["cache"] == {}
    assert cached["history"] == plain["history"]
    assert cached["test"] == plain["test"] and cached["final_loss"] == plain["final_loss"]


def test_validation_during_tracked_steps_is_the_evaluation_phase(tmp_path, precomp) -> None:
    train = {"dataset": "flickr30k", "format": "precomp", "steps": 2, "eval_every": 1, "cache": "off"}
    towers = [TowerSpec("image", "tiny-regions", tuned=False), TEXT]
    memory = run(tmp_path, spec("adapter", towers, train), precomp.parent)["memory"]["memtracker_real"]
    assert set(memory["by_phase"]) == {"forward", "backward", "optimizer", "evaluation"}
    assert memory["by_phase"]["evaluation"]["by_category"]["grads"] == 0
    assert len(memory["step_peak_bytes"]) == 2  # validations are not steps


def test_every_validation_and_the_test_are_in_the_training_peak(tmp_path, precomp) -> None:
    """Validation after an untracked step (steps 0-1 are tracked, step 2 is not: same-shaped batches) and the
    test are tracked too: with evaluation batches of 64 they hold the run's peak."""
    train = {"dataset": "flickr30k", "format": "precomp", "steps": 3, "eval_every": 3, "eval_batch": 64}
    towers = [TowerSpec("image", "tiny-regions", tuned=False), TEXT]
    out = run(tmp_path, spec("adapter", towers, train, batch=4), precomp.parent)
    memory = out["memory"]["memtracker_real"]
    assert out["metrics"]["tracked_steps"] == [0, 1]
    assert memory["peak_at"] == {"phase": "evaluation"}
    assert memory["peak_bytes"] == memory["by_phase"]["evaluation"]["peak_bytes"]
    assert memory["by_phase"]["evaluation"]["by_category"]["grads"] == 0
    assert out["protocol"]["tracked_steps"] == 2 and out["protocol"]["timed_steps"] == 1


@pytest.mark.slow
def test_training_is_deterministic(tmp_path, precomp) -> None:
    first = run(tmp_path, precomp_spec("lora", steps=20), precomp.parent, "a")["metrics"]
    second = run(tmp_path, precomp_spec("lora", steps=20), precomp.parent, "b")["metrics"]
    assert first["history"] == second["history"] and first["final_loss"] == second["final_loss"]


def test_a_completed_checkpoint_is_resumed_not_retrained(tmp_path, precomp) -> None:
    first = run(tmp_path, precomp_spec("bitfit", steps=20), precomp.parent, "same")
    again = run(tmp_path, precomp_spec("bitfit", steps=20), precomp.parent, "same")
    assert again["metrics"]["resumed_from_step"] == 20
    assert again["timing"]["steps_timed"] == first["timing"]["steps_timed"]  # the whole run's, kept in the checkpoint
    assert again["memory"]["memtracker_real"]["peak_bytes"] == first["memory"]["memtracker_real"]["peak_bytes"]
    assert again["metrics"]["test"] == first["metrics"]["test"]


SUITE = """
name = "resume"
task = "retrieval"
task_options = {{ embed_dim = 32, pooling = "mean", hardest_negatives = false }}

[[configs]]
name = "c"
batch = 12
towers = [{{ name = "image", backbone = "tiny-regions", tuned = false }}, {{ name = "text", backbone = "tiny-bert", seq_len = 8 }}]
train = {{ dataset = "flickr30k", format = "precomp", steps = {steps}, eval_every = 20 }}
methods = ["partial", "lora"]
"""


def cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.Popen([sys.executable, "-m", "unipt_bench.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)


@pytest.mark.slow
def test_killed_training_resumes_and_keeps_finished_results(tmp_path, precomp) -> None:
    suite = tmp_path / "resume.toml"
    suite.write_text(SUITE.format(steps=300))
    out = tmp_path / "store"
    args = ("run", "--suite", str(suite), "--out", str(out), "--data-root", str(precomp.parent), "--mode", "cpu")
    proc = cli(*args)
    try:
        deadline = time.time() + 300
        while not list(out.glob("resume/c/lora.cpu.*.ckpt/last.pt")):  # partial finished; lora has a checkpoint
            assert proc.poll() is None, proc.communicate()
            assert time.time() < deadline, "no checkpoint appeared in time"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # no chance to record anything: a hard kill
        proc.wait()
    finished = sorted(out.glob("resume/c/partial.cpu.*.json"))
    assert len(finished) == 1
    before = finished[0].read_text()
    (ckpt,) = out.glob("resume/c/lora.cpu.*.ckpt")
    import torch

    saved_step = torch.load(ckpt / "last.pt", weights_only=True)["step"]
    assert 0 < saved_step < 300
    again = cli(*args)
    stdout, stderr = again.communicate(timeout=600)
    assert again.returncode == 0, stderr
    assert "1 already done" in stdout
    assert finished[0].read_text() == before  # the finished result is untouched
    import json

    (result,) = [json.loads(p.read_text()) for p in out.glob("resume/c/lora.cpu.*.json")]
    assert result["status"] == "ok" and result["metrics"]["resumed_from_step"] >= saved_step


@pytest.mark.parametrize("method", ["adapter", "unipt"])
def test_the_training_peak_is_the_profile_at_the_peak_batch_shape(tmp_path, method) -> None:
    """Captions padded to each batch's longest: the peak is at the longest batch, and equals (to the bytes of the
    cache keys) the fake-tensor estimate of that shape, with the same attention kernel as profiling."""
    from tests.datasets_flickr import write_flickr_precomp
    from unipt_bench.profile import profile

    data = write_flickr_precomp(tmp_path / "data" / "flickr30k", images=30, eval_images=5, regions=4, dim=16)
    train = {"dataset": "flickr30k", "format": "precomp", "steps": 5, "eval_every": 5, "padding": "longest",
             "max_len": 64}  # the hidden-state cache on (its rows live in host memory, never in the peak)
    towers = [TowerSpec("image", "tiny-regions", tuned=False), TowerSpec("text", "tiny-bert", shape={"seq_len": 64})]
    out = run(tmp_path, spec(method, towers, train, batch=16), data.parent)
    figures = out["memory"]["memtracker_real"]
    where = figures["peak_at"]
    assert where["phase"] in ("forward", "backward", "optimizer")
    # the caching allocator replayed over the tracked steps: asked for exactly the tracked live bytes (plus
    # the cuBLAS workspace); reserved memory per tracked step, never falling (nothing empties the cache)
    replayed = figures["allocator_replay"]
    assert replayed["allocator"]["max_requested"] == figures["peak_bytes"] + replayed["device_memory"]["cublas_workspace"]
    reserved = list(replayed["step_reserved"].values())
    assert len(reserved) >= 2 and reserved == sorted(reserved) and max(reserved) == replayed["allocator"]["max_reserved"]
    lengths = {int(shape.split("x")[1]) for shape in out["metrics"]["batch_shapes"]["text"]}
    assert len(lengths) > 1 and where["shapes"]["text"] == [16, max(lengths)]
    at_peak = [TowerSpec("image", "tiny-regions", tuned=False),
               TowerSpec("text", "tiny-bert", shape={"seq_len": max(lengths)})]
    estimate = profile(RunSpec.from_dict({**spec(method, at_peak, None, batch=16).to_dict(), "mode": "estimate"}),
                       RunOptions())
    expected = estimate["memory"]["memtracker_fake"]["peak_bytes"]
    # the training batch also carries each tower's int64 cache keys (2 x 16 x 8 B) and a scalar or two
    assert 0 <= figures["peak_bytes"] - expected <= 2 * 16 * 8 + 16
