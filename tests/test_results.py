"""RunResult and ResultStore: one file per run, never overwritten, atomic; `latest`, `is_complete`, rows; results written by
launch_runs."""

from __future__ import annotations

import dataclasses
import json

import pytest

from unipt_bench import runner
from unipt_bench.launchers import LaunchSettings
from unipt_bench.memory.base import CATEGORIES
from unipt_bench.results import SCHEMA_VERSION, ResultStore, RunResult
from unipt_bench.runner import Lane, launch_runs

T1 = "2026-01-01T10:00:00.000001Z"
T2 = "2026-01-01T10:00:00.000002Z"
T3 = "2026-01-02T09:00:00.000000Z"


def result_for(spec, status="ok", finished=T1, **fields) -> RunResult:
    return RunResult(spec=spec.to_dict(), status=status, digest=spec.digest(), started=finished, finished=finished,
                     **fields)


def json_files(root):
    return sorted(p for p in root.rglob("*") if p.is_file())


# ---------------------------------------------------------------- writing


def test_write_puts_the_result_under_suite_and_config(tmp_path, spec_factory):
    """<root>/<suite>/<config>/<label>.<mode>.<stamp>.json, readable back as the same result."""
    result = result_for(spec_factory("unipt"))
    path = ResultStore(tmp_path).write(result)
    assert path == tmp_path / "test" / "c" / "unipt.estimate.20260101T100000.000001Z.json"
    assert RunResult.from_json(path.read_text()) == result


def test_write_never_overwrites(tmp_path, spec_factory):
    """Two results of one run finished in the same microsecond give two files, both intact."""
    store = ResultStore(tmp_path)
    spec = spec_factory("unipt")
    first = store.write(result_for(spec, status="error", message="first"))
    second = store.write(result_for(spec, status="ok"))
    assert first != second
    assert json_files(tmp_path) == sorted([first, second])
    assert RunResult.from_json(first.read_text()).message == "first"
    assert RunResult.from_json(second.read_text()).status == "ok"


def test_write_leaves_no_temporary_files(tmp_path, spec_factory):
    store = ResultStore(tmp_path)
    for finished in (T1, T1, T2):
        store.write(result_for(spec_factory("unipt"), finished=finished))
    names = [p.name for p in json_files(tmp_path)]
    assert len(names) == 3
    assert not [n for n in names if n.startswith(".tmp")]


def test_write_failure_removes_its_temporary_file(tmp_path, spec_factory, monkeypatch):
    """A write that fails half-way leaves neither the target nor a temporary file."""
    import unipt_bench.atomic as atomic

    def failing_link(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "link", failing_link)
    with pytest.raises(OSError, match="disk full"):
        ResultStore(tmp_path).write(result_for(spec_factory("unipt")))
    assert json_files(tmp_path) == []


def test_result_json_is_versioned(spec_factory):
    data = json.loads(result_for(spec_factory("unipt")).to_json())
    assert data["schema"] == SCHEMA_VERSION == 1
    data["schema"] = 2
    with pytest.raises(ValueError, match="schema 2"):
        RunResult.from_json(json.dumps(data))


# ---------------------------------------------------------------- reading: latest, is_complete, corrupt files


def test_latest_picks_the_newest_result_per_key(tmp_path, spec_factory):
    """Per config/label/mode the result finished last wins, whatever order the files were written in."""
    store = ResultStore(tmp_path)
    unipt, lora = spec_factory("unipt"), spec_factory("lora")
    store.write(result_for(unipt, status="ok", finished=T3))
    store.write(result_for(unipt, status="error", finished=T1))
    store.write(result_for(lora, status="error", finished=T1))
    store.write(result_for(lora, status="oom", finished=T2))
    cpu = dataclasses.replace(unipt, mode="cpu")
    store.write(result_for(cpu, status="interrupted", finished=T2))
    latest = store.latest("test")
    assert {key: r.status for key, r in latest.items()} == {
        "c/unipt/estimate": "ok",
        "c/lora/estimate": "oom",
        "c/unipt/cpu": "interrupted",
    }


def test_latest_breaks_a_timestamp_tie_by_the_later_write(tmp_path, spec_factory):
    store = ResultStore(tmp_path)
    spec = spec_factory("unipt")
    store.write(result_for(spec, status="error", finished=T1))
    store.write(result_for(spec, status="ok", finished=T1))
    assert store.latest("test")["c/unipt/estimate"].status == "ok"


def test_latest_of_an_unknown_suite_is_empty(tmp_path):
    assert ResultStore(tmp_path).latest("nothing") == {}
    assert ResultStore(tmp_path / "missing").suites() == []


def test_suites_lists_only_folders_with_results(tmp_path, spec_factory):
    store = ResultStore(tmp_path)
    store.write(result_for(spec_factory("unipt")))
    (tmp_path / "empty" / "c").mkdir(parents=True)
    assert store.suites() == ["test"]


@pytest.mark.parametrize("status", ["ok", "oom", "not_applicable"])
def test_final_statuses_are_complete(tmp_path, spec_factory, status):
    store = ResultStore(tmp_path)
    spec = spec_factory("unipt")
    store.write(result_for(spec, status=status))
    assert store.is_complete(spec, store.latest("test"))


@pytest.mark.parametrize("status", ["error", "interrupted"])
def test_failed_runs_are_not_complete(tmp_path, spec_factory, status):
    store = ResultStore(tmp_path)
    spec = spec_factory("unipt")
    store.write(result_for(spec, status=status))
    assert not store.is_complete(spec, store.latest("test"))


@pytest.mark.parametrize(
    "change", [{"batch": 8}, {"method_options": {"reduction": 4}}, {"steps": 3}], ids=lambda c: next(iter(c))
)
def test_a_changed_spec_is_not_complete(tmp_path, spec_factory, change):
    """A result for the same key but an older spec (other digest) does not count as done."""
    store = ResultStore(tmp_path)
    spec = spec_factory("unipt")
    store.write(result_for(spec, status="ok"))
    changed = dataclasses.replace(spec, **change)
    assert changed.key == spec.key
    assert not store.is_complete(changed, store.latest("test"))


def test_display_only_changes_keep_a_run_complete(tmp_path, spec_factory):
    store = ResultStore(tmp_path)
    spec = spec_factory("unipt")
    store.write(result_for(spec, status="ok"))
    assert store.is_complete(dataclasses.replace(spec, order=3, title="renamed"), store.latest("test"))


def test_a_run_without_a_result_is_not_complete(tmp_path, spec_factory):
    store = ResultStore(tmp_path)
    store.write(result_for(spec_factory("unipt")))
    assert not store.is_complete(spec_factory("lora"), store.latest("test"))


def valid_result_data(spec_factory) -> dict:
    return json.loads(result_for(spec_factory("unipt")).to_json())


@pytest.mark.parametrize(
    "text",
    ['{"schema": 1, "status": "ok"', "", '{"schema": 99}', '{"schema": 1, "status": "ok"}', "[]",
     '{"schema": 1, "spec": {}, "status": "ok", "digest": "x"}', b"\xff\xfe\x00".decode("latin-1")],
    ids=["truncated", "empty", "other-schema", "missing-fields", "not-an-object", "empty-spec", "not-utf8"],
)
def test_a_corrupt_result_file_is_skipped_and_named(tmp_path, spec_factory, text):
    """One bad file never hides the other results: it is skipped and recorded with its reason."""
    store = ResultStore(tmp_path)
    store.write(result_for(spec_factory("unipt")))
    bad = tmp_path / "test" / "c" / "broken.estimate.json"
    bad.write_bytes(text.encode("latin-1"))
    assert list(store.latest("test")) == ["c/unipt/estimate"]
    assert [path for path, _ in store.skipped] == [bad]


@pytest.mark.parametrize("change", [
    {"memory": [1, 2]}, {"memory": {"memtracker_fake": 5}}, {"memory": {"memtracker_fake": {"peak_bytes": "big"}}},
    {"memory": {"memtracker_fake": {"peak_bytes": 1, "by_category": []}}}, {"params": {"trainable_params": 1.5}},
    {"status": "fine"}, {"timing": "fast"}, {"message": 3}, {"env": None}, {"spec": {"mode": "gpu"}},
], ids=["memory-list", "counter-int", "peak-str", "categories-list", "params-float", "status", "timing", "message",
        "env", "mode"])
def test_result_fields_are_checked_on_read(tmp_path, spec_factory, change):
    """Schema, not just top-level keys: a malformed figure fails on read, naming the field."""
    data = valid_result_data(spec_factory)
    for key, value in change.items():
        data[key] = {**data[key], **value} if key == "spec" else value
    with pytest.raises(ValueError, match="malformed result"):
        RunResult.from_json(json.dumps(data))


def test_a_leftover_temporary_file_is_ignored(tmp_path, spec_factory):
    """A half-written temporary file (writer killed before its rename) is not a result."""
    store = ResultStore(tmp_path)
    store.write(result_for(spec_factory("unipt")))
    (tmp_path / "test" / "c" / ".tmp-abc123.json").write_text('{"schema": 1, "sta')
    assert list(store.latest("test")) == ["c/unipt/estimate"]


# ---------------------------------------------------------------- rows


def test_row_of_an_ok_result_flattens_the_primary_counter(spec_factory):
    """Estimate mode reads memtracker_fake; every category becomes a <category>_bytes column."""
    by_category = {cat: 10 * (i + 1) for i, cat in enumerate(CATEGORIES)}
    result = result_for(
        spec_factory("unipt"),
        params={"trainable_params": 5, "trainable_method_params": 3, "trainable_head_params": 2, "total_params": 9},
        memory={
            "memtracker_fake": {"counter": "memtracker_fake", "peak_bytes": 1234, "by_category": by_category},
            "rss": {"counter": "rss", "peak_bytes": 999_999},
        },
        timing={"step_seconds": None},
    )
    row = result.row()
    assert row["peak_bytes"] == 1234
    assert row["counter"] == "memtracker_fake"
    assert {cat: row[f"{cat}_bytes"] for cat in CATEGORIES} == by_category
    assert (row["trainable_params"], row["trainable_method_params"], row["trainable_head_params"],
            row["total_params"]) == (5, 3, 2, 9)
    assert (row["suite"], row["config"], row["method"], row["mode"], row["status"]) == (
        "test", "c", "unipt", "estimate", "ok")
    assert row["towers"] == "tiny-bert + tiny-regions (trained)"
    assert (row["batch"], row["gpus"]) == (4, 1)


def test_row_of_a_not_applicable_result_has_no_figures(spec_factory):
    """Missing figures are None (blank), never 0: a not_applicable run measured nothing."""
    result = result_for(spec_factory("lora", backbone="tiny-resnext"), status="not_applicable",
                        message="lora does not apply to a cnn backbone")
    row = result.row()
    empty = ["trainable_params", "trainable_method_params", "trainable_head_params", "total_params", "peak_bytes",
             "counter", "step_seconds", *(f"{cat}_bytes" for cat in CATEGORIES)]
    assert {k: row[k] for k in empty} == dict.fromkeys(empty)
    assert row["status"] == "not_applicable"
    assert row["message"] == "lora does not apply to a cnn backbone"


# ---------------------------------------------------------------- launch_runs (local lanes, in-process)


def launch_in_process(monkeypatch, specs, store, **kwargs):
    """launch_runs as the CLI calls it, its local lanes running each spec in this process (so that a test can
    patch profiling)."""
    monkeypatch.setattr(runner, "Lane", lambda env=None: Lane(isolate=False, env=env))
    results, pending = launch_runs(specs, store, settings=LaunchSettings("local", jobs=1), **kwargs)
    assert pending == []
    return results


def test_launch_runs_records_not_applicable(tmp_path, spec_factory, monkeypatch):
    """LoRA on a CNN backbone: a not_applicable result is returned and written, with the reason."""
    store = ResultStore(tmp_path)
    spec = spec_factory("lora", backbone="tiny-resnext")
    seen = []
    results = launch_in_process(monkeypatch, [spec], store, on_start=seen.append, on_result=seen.append)
    (result,) = results
    assert result.status == "not_applicable"
    assert "lora" in result.message and "cnn" in result.message
    assert (result.memory, result.params) == (None, None)
    assert result.digest == spec.digest()
    assert seen == [spec, result]
    stored = store.latest("test")[spec.key]
    assert stored.status == "not_applicable"
    assert store.is_complete(spec, store.latest("test"))


def test_a_failing_profile_becomes_an_error_result(tmp_path, spec_factory, monkeypatch):
    """An exception inside profiling is a result: status error, a one-line message, the traceback in detail."""
    import unipt_bench.profile

    def boom(spec, options=None):
        raise RuntimeError("shapes do not match\nsecond line of detail")

    monkeypatch.setattr(unipt_bench.profile, "profile", boom)
    store = ResultStore(tmp_path)
    spec = spec_factory("unipt")
    (result,) = launch_in_process(monkeypatch, [spec], store)
    assert result.status == "error"
    assert result.message == "RuntimeError: shapes do not match"
    assert "Traceback" in result.detail
    assert result.env["packages"]["torch"]
    assert store.latest("test")[spec.key].message == "RuntimeError: shapes do not match"
    assert not store.is_complete(spec, store.latest("test"))


def test_out_of_memory_becomes_an_oom_result(tmp_path, spec_factory, monkeypatch):
    import torch

    import unipt_bench.profile

    def oom(spec, options=None):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore")

    monkeypatch.setattr(unipt_bench.profile, "profile", oom)
    store = ResultStore(tmp_path)
    spec = spec_factory("unipt", batch=6)
    (result,) = launch_in_process(monkeypatch, [spec], store)
    assert result.status == "oom"
    assert result.message == "out of memory at batch 6 per device: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert store.is_complete(spec, store.latest("test"))


def test_ctrl_c_records_interrupted_and_reraises(tmp_path, spec_factory, monkeypatch):
    """Ctrl-C during a run writes an interrupted result for it, keeps earlier ones, and stops the suite."""
    import unipt_bench.profile

    calls = []

    def interrupt_second(spec, options=None):
        calls.append(spec.label)
        if spec.label == "lora":
            raise KeyboardInterrupt
        raise RuntimeError("first fails")

    monkeypatch.setattr(unipt_bench.profile, "profile", interrupt_second)
    store = ResultStore(tmp_path)
    specs = [spec_factory("unipt"), spec_factory("lora"), spec_factory("bitfit")]
    with pytest.raises(KeyboardInterrupt):
        launch_in_process(monkeypatch, specs, store)
    assert calls == ["unipt", "lora"]
    assert {k: r.status for k, r in store.latest("test").items()} == {
        "c/unipt/estimate": "error",
        "c/lora/estimate": "interrupted",
    }
