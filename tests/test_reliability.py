"""Defects found by hostile testing, one regression test each: the gate never passes a broken run, resumed
runs never store partial memory as the run's, checkpoints and results are written atomically and
exclusively, names never leave the store, and user text never breaks a figure.

The command-line side of bad input (one line, exit 2) is tests/test_bad_inputs.py.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
from pathlib import Path

import pytest
import torch

from unipt_bench.config import RunSpec, TowerSpec
from unipt_bench.errors import UserError
from unipt_bench.gate import compare, entry, failed, junit, make_baseline, markdown
from unipt_bench.profile import RunOptions
from unipt_bench.report import figures
from unipt_bench.results import ResultStore, RunResult
from unipt_bench.train import save_atomic, train_run

from .datasets import write_precomp

# ---------------------------------------------------------------- the gate


NOW = "2026-01-01T10:00:00.000000Z"  # a valid UTC time: the store refuses malformed ones


def result(spec: RunSpec, status: str = "ok", peak: int = 1000, message: str | None = None) -> RunResult:
    memory = {"memtracker_fake": {"counter": "memtracker_fake", "peak_bytes": peak}} if status == "ok" else None
    return RunResult(spec=spec.to_dict(), status=status, digest=spec.digest(), memory=memory, message=message,
                     protocol={"mode": "estimate"} if status == "ok" else None, started=NOW, finished=NOW)


@pytest.mark.parametrize("status", ["error", "oom", "interrupted", "not_applicable"])
@pytest.mark.parametrize("strict", [False, True])
def test_a_run_that_was_ok_and_now_fails_fails_the_gate(spec_factory, status, strict) -> None:
    spec = spec_factory("unipt")
    baseline = make_baseline("test", [result(spec)])
    changes = compare(baseline, [result(spec, status, message="RuntimeError: boom")], 0.0)
    assert [(c.verdict, c.reason) for c in changes] == [("broken", f"was ok, now {status}: RuntimeError: boom")]
    assert failed(changes, strict)
    assert "<failure" in junit("test", changes, strict) and "FAILED" in markdown("test", changes, 0.0, strict)


def test_a_run_that_never_was_ok_is_not_broken(spec_factory) -> None:
    spec, compared = spec_factory("lora"), spec_factory("unipt")  # one figure compared: a gate must judge one
    baseline = make_baseline("test", [result(spec, "not_applicable"), result(compared)])
    changes = compare(baseline, [result(spec, "not_applicable"), result(compared)], 0.0)
    assert not failed(changes, strict=True)


@pytest.mark.parametrize("tolerance", [float("nan"), float("inf"), -0.01])
def test_a_tolerance_that_is_not_a_finite_non_negative_number_is_refused(spec_factory, tolerance) -> None:
    spec = spec_factory("unipt")
    with pytest.raises(UserError, match="tolerance"):
        compare(make_baseline("test", [result(spec)]), [result(spec, peak=2000)], tolerance)


def test_a_baseline_entry_keeps_its_status_for_the_broken_check(spec_factory) -> None:
    assert entry(result(spec_factory("unipt")))["status"] == "ok"


# ---------------------------------------------------------------- resumed training


TRAIN = {"dataset": "flickr30k", "format": "precomp", "steps": 4, "eval_every": 2, "cache": "off"}


def train_spec() -> RunSpec:
    towers = [TowerSpec("image", "tiny-regions", tuned=False), TowerSpec("text", "tiny-bert", shape={"seq_len": 8})]
    return RunSpec(suite="t", config="c", label="adapter", method="adapter", method_options={}, task="retrieval",
                   task_options={"embed_dim": 32, "pooling": "mean", "hardest_negatives": False}, towers=towers,
                   batch=12, gpus=1, steps=2, seed=0, mode="cpu", train=TRAIN)


def options(data: Path, checkpoints: Path, resume: bool = True) -> RunOptions:
    return RunOptions(data_root=str(data), checkpoints=str(checkpoints), resume=resume)


def killed_in_final_evaluation(data: str, checkpoints: str) -> None:
    """Child process: train, and die by SIGKILL (no clean-up of any kind) once the test evaluation starts."""
    from unipt_bench.tasks.retrieval_data import RetrievalData

    evaluate = RetrievalData.evaluate

    def dying(self, model, split, *args, **kwargs):
        if split == "test":
            os.kill(os.getpid(), signal.SIGKILL)
        return evaluate(self, model, split, *args, **kwargs)

    RetrievalData.evaluate = dying
    train_run(train_spec(), options(Path(data), Path(checkpoints)))


@pytest.fixture(scope="module")
def precomp(tmp_path_factory) -> Path:
    return write_precomp(tmp_path_factory.mktemp("data") / "flickr30k").parent


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, precomp) -> dict:
    return train_run(train_spec(), options(precomp, tmp_path_factory.mktemp("whole") / "ckpt"))


def figures_of(memory: dict) -> dict:
    """Every figure of every counter except the segment bookkeeping, the process's RSS (not deterministic) and
    the replayed allocator (a resumed process starts with an empty allocator, as it would on a GPU)."""
    return {counter: {k: v for k, v in values.items() if k not in ("segments", "allocator_replay")}
            for counter, values in memory.items() if counter != "rss"}


def test_a_run_killed_in_its_final_evaluation_resumes_with_the_whole_runs_memory(tmp_path, precomp,
                                                                                  uninterrupted) -> None:
    checkpoints = tmp_path / "ckpt"
    child = mp.get_context("spawn").Process(target=killed_in_final_evaluation, args=(str(precomp), str(checkpoints)))
    child.start()
    child.join(timeout=300)
    assert child.exitcode == -signal.SIGKILL
    assert torch.load(checkpoints / "last.pt", weights_only=True)["step"] == TRAIN["steps"]
    resumed = train_run(train_spec(), options(precomp, checkpoints))
    assert resumed["metrics"]["resumed_from_step"] == TRAIN["steps"]
    assert figures_of(resumed["memory"]) == figures_of(uninterrupted["memory"])
    assert set(resumed["memory"]["memtracker_real"]["by_phase"]) == {"forward", "backward", "optimizer", "evaluation"}
    segments = resumed["memory"]["memtracker_real"]["segments"]
    # the first two steps with the validation after them, the last validation, the test (the resumed process's)
    assert segments == [{"from_step": 0, "to_step": 2}, {"from_step": 4, "to_step": 4}, {"from_step": 4, "to_step": 4}]
    assert resumed["metrics"]["test"] == uninterrupted["metrics"]["test"]
    assert resumed["timing"]["steps_timed"] == uninterrupted["timing"]["steps_timed"]
    assert resumed["metrics"]["final_loss"] == uninterrupted["metrics"]["final_loss"]


def test_force_trains_from_scratch_instead_of_reloading(tmp_path, precomp) -> None:
    checkpoints = tmp_path / "ckpt"
    train_run(train_spec(), options(precomp, checkpoints))
    again = train_run(train_spec(), options(precomp, checkpoints, resume=False))
    assert again["metrics"]["resumed_from_step"] is None
    assert again["memory"]["memtracker_real"]["segments"] == [{"from_step": 0, "to_step": 2}, {"from_step": 4, "to_step": 4},
                                                              {"from_step": 4, "to_step": 4}]  # steps, validation, test
    assert again["timing"]["steps_timed"] == TRAIN["steps"] - 2  # the 2 tracked steps are not timed


@pytest.mark.parametrize("damage", [b"", b"not a checkpoint", b"PK\x03\x04 truncated zip"])
def test_a_checkpoint_that_does_not_load_is_set_aside_and_the_run_starts_over(tmp_path, precomp, damage) -> None:
    checkpoints = tmp_path / "ckpt"
    checkpoints.mkdir()
    (checkpoints / "last.pt").write_bytes(damage)
    with pytest.warns(UserWarning, match="does not load"):
        out = train_run(train_spec(), options(precomp, checkpoints))
    assert out["metrics"]["resumed_from_step"] is None
    assert [p.read_bytes() for p in checkpoints.glob("last.pt.unusable-*")] == [damage]


def test_concurrent_checkpoint_writers_never_collide(tmp_path, monkeypatch) -> None:
    """Unique temporary names: two runs saving to one folder at once both succeed, each fsynced."""
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    path, errors = tmp_path / "last.pt", []

    def writer(k: int) -> None:
        try:
            for i in range(10):
                save_atomic({"step": k * 100 + i, "blob": torch.zeros(1000)}, path)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(synced) == 80 and torch.load(path, weights_only=True)["step"] % 100 < 10
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


# ---------------------------------------------------------------- the result store


def test_writers_with_the_same_time_stamp_each_keep_their_result(tmp_path, spec_factory) -> None:
    store, barrier = ResultStore(tmp_path), threading.Barrier(20)
    results = [result(spec_factory("unipt"), peak=k) for k in range(20)]

    def writer(r: RunResult) -> None:
        barrier.wait()
        store.write(r)

    threads = [threading.Thread(target=writer, args=(r,)) for r in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stored = sorted(RunResult.from_json(p.read_text()).memory["memtracker_fake"]["peak_bytes"]
                    for p in tmp_path.rglob("*.json"))
    assert stored == list(range(20))


@pytest.mark.parametrize("field,value", [("suite", "../evil"), ("config", ".."), ("label", "a/b"),
                                         ("suite", "x" * 300)])
def test_names_that_would_leave_the_store_are_refused(tmp_path, spec_factory, field, value) -> None:
    spec = RunSpec.from_dict({**spec_factory("unipt").to_dict(), field: value})
    with pytest.raises(UserError, match="name"):
        ResultStore(tmp_path).run_file(spec, "json")
    with pytest.raises(UserError, match="name"):
        ResultStore(tmp_path).latest("../evil")


# ---------------------------------------------------------------- figures


def test_dollar_signs_in_user_text_stay_text_in_figures() -> None:
    svg = figures.tradeoff(["$\\frac$", "cost $5"], [1.0, 2.0], [3.0, 4.0], "x", "y", "$^$ title")
    assert "$\\frac$" in svg and "cost $5" in svg


# ---------------------------------------------------------------- option ranges


def configurables() -> list[type]:
    from unipt_bench.config import TrainSpec
    from unipt_bench.methods import METHODS
    from unipt_bench.tasks import TASKS

    return [METHODS.get(n) for n in METHODS.names()] + [TASKS.get(n) for n in TASKS.names()] + [TrainSpec]


@pytest.mark.parametrize("cls", configurables(), ids=lambda cls: f"{cls.kind_label}-{cls.name}")
def test_every_numeric_option_declares_a_range_its_default_obeys(cls) -> None:
    from dataclasses import fields

    from unipt_bench.configurable import default_of, range_of

    for f in fields(cls):
        default = default_of(f)
        if f.type in ("int", "float", "list[int]"):
            declared = range_of(cls, f.name)
            assert declared is not None, f"{cls.name}.{f.name} has no valid range"
            assert all(declared.admits(v) for v in (default if isinstance(default, list) else [default]))


def test_an_out_of_range_option_names_its_file_and_line(tmp_path) -> None:
    from unipt_bench.suite_file import load_suite

    suite = tmp_path / "s.toml"
    suite.write_text('name = "s"\n\n[[configs]]\nname = "c"\nbatch = 4\ntowers = [\n'
                     '  { name = "text", backbone = "tiny-bert" },\n  { name = "image", backbone = "tiny-regions", '
                     'tuned = false },\n]\nmethods = [\n  "full",\n  { method = "lora", rank = 0 },\n]\n')
    with pytest.raises(UserError, match=rf"^{suite}:12: config 'c': method 'lora': option rank must be >= 1, got 0$"):
        load_suite(str(suite))


def test_log_axes_keep_their_math_tick_labels() -> None:
    """Only user text is escaped: matplotlib's own 10^k tick labels still render as math."""
    import re

    svg = figures.tradeoff(["a", "b"], [1.0, 100.0], [3.0, 4.0], "x", "y", "t", log_x=True)
    shown = re.sub(r"<!--.*?-->", "", svg, flags=re.S)  # matplotlib notes each label's source in a comment
    assert "mathdefault" not in shown
