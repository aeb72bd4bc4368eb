"""The `unipt-bench` command as a user runs it: a real subprocess, real exit codes and stderr.

The GPU is hidden from every child (CUDA_VISIBLE_DEVICES=""), so mode selection and the `--mode cuda`
refusal are the same on every machine. The slow commands run once per module (fixtures), and the
commands that need no result store run concurrently.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace

import pytest

from unipt_bench.config import RunSpec
from unipt_bench.suite_file import builtin_suites, load_suite

pytestmark = pytest.mark.slow  # end to end: every test reads commands run in subprocesses

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
ENV.pop("UNIPT_BENCH_RESULTS", None)

CSV_COLUMNS = [
    "suite", "config", "towers", "method", "mode", "status", "trainable_params", "trainable_method_params",
    "trainable_head_params", "total_params", "peak_bytes", "params_bytes", "grads_bytes", "activations_bytes",
    "temporaries_bytes", "optimizer_state_bytes", "step_seconds",
]
FIGURES = [c for c in CSV_COLUMNS[6:] if c != "step_seconds"]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "unipt_bench.cli", *args],
        capture_output=True, text=True, env=ENV, cwd=cwd, timeout=300,
    )


def stored_files(out: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def smoke_runs(*methods: str) -> set[tuple[str, str]]:
    """(config, label) pairs of the smoke suite whose method or label is one of these, as --methods selects."""
    specs = load_suite("smoke").with_mode("estimate")
    return {(s.config, s.label) for s in specs if s.method in methods or s.label in methods}


# ---------------------------------------------------------------- bad input: one line, exit 2

BAD_SUITE = """\
name = "badmethod"
task_options = { embed_dim = 32 }

[[configs]]
name = "only"
batch = 4
towers = [
    { name = "text", backbone = "tiny-bert", seq_len = 12 },
    { name = "image", backbone = "tiny-regions", tuned = false },
]
methods = ["unipt", "nosuch"]
"""


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """Every command that needs no stored results, run concurrently; name -> CompletedProcess."""
    tmp = tmp_path_factory.mktemp("cli-quick")
    (tmp / "malformed.toml").write_text('name = "x"\n[[configs]\nname = "c"\n')
    (tmp / "badmethod.toml").write_text(BAD_SUITE)
    commands = {
        "unknown suite name": ["run", "--suite", "nosuchsuite"],
        "suite file missing": ["run", "--suite", str(tmp / "missing.toml")],
        "malformed toml": ["run", "--suite", str(tmp / "malformed.toml")],
        "unknown method in suite": ["run", "--suite", str(tmp / "badmethod.toml")],
        "bad mode": ["run", "--suite", "smoke", "--mode", "bogus"],
        "unknown --methods": ["run", "--suite", "smoke", "--methods", "nosuchmethod"],
        "cuda without gpu": ["run", "--suite", "smoke", "--mode", "cuda"],
        "results with nothing stored": ["results", "--suite", "smoke", "--out", str(tmp / "empty")],
        "unknown command": ["frobnicate"],
        "list": ["list"],
    }
    with ThreadPoolExecutor(max_workers=len(commands)) as pool:
        done = {name: pool.submit(cli, *args, cwd=tmp) for name, args in commands.items()}
        return {name: future.result() for name, future in done.items()}


BAD_INPUT = {
    "unknown suite name": f"unknown suite 'nosuchsuite'; built-in suites: {', '.join(sorted(builtin_suites()))}",
    "suite file missing": "suite file not found: ",
    "malformed toml": "malformed.toml: malformed TOML: ",
    "unknown method in suite": "badmethod.toml:11: config 'only': unknown method 'nosuch'",
    "bad mode": "Invalid value for '--mode': 'bogus'",
    "unknown --methods": "--methods: nosuchmethod not in this suite",
    "cuda without gpu": "--mode cuda needs a CUDA GPU and none is visible",
    "results with nothing stored": "no results for suite 'smoke' in ",
    "unknown command": "No such command 'frobnicate'",
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_one_error_line_and_exit_2(quick, case):
    """No traceback: exactly one non-empty stderr line, `error: ...`, and exit code 2."""
    proc = quick[case]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    assert BAD_INPUT[case] in lines[0]


def test_list_prints_suites_backbones_and_methods(quick):
    """Every built-in suite, and every backbone and method the built-in suites use, is listed in its section."""
    proc = quick["list"]
    assert proc.returncode == 0, proc.stderr
    sections: dict[str, set[str]] = {}
    for line in proc.stdout.splitlines():
        if not line.startswith(" "):
            current = sections.setdefault(line.rstrip(":"), set())
        elif line.strip():
            current.add(line.split()[0])
    assert set(sections) == {"suites", "backbones", "methods", "tasks", "trackers"}
    assert sections["suites"] == set(builtin_suites())
    used_backbones, used_methods = set(), set()
    for path in builtin_suites().values():
        for config in tomllib.loads(path.read_text(encoding="utf-8"))["configs"]:
            used_backbones |= {t["backbone"] for t in config.get("towers", [])}
            used_methods |= {m if isinstance(m, str) else m["method"] for m in config["methods"]}
    assert used_backbones <= sections["backbones"]
    assert used_methods <= sections["methods"]
    assert "retrieval" in sections["tasks"]


# ---------------------------------------------------------------- a real run, then results, re-run and --force


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """run -> results (csv, json) -> the same run again -> a forced run; outputs and files after each step."""
    tmp = tmp_path_factory.mktemp("cli-smoke")
    out = tmp / "store"
    run = ["run", "--suite", "smoke", "--methods", "unipt,lora", "--out", str(out)]
    s = SimpleNamespace(out=out)
    s.first = cli(*run, cwd=tmp)
    s.files_first = stored_files(out)
    s.csv = cli("results", "--suite", "smoke", "--out", str(out), "--format", "csv", cwd=tmp)
    s.json = cli("results", "--suite", "smoke", "--out", str(out), "--format", "json", cwd=tmp)
    s.table = cli("results", "--suite", "smoke", "--out", str(out), cwd=tmp)
    s.again = cli(*run, cwd=tmp)
    s.files_again = stored_files(out)
    s.forced = cli("run", "--suite", "smoke", "--methods", "unipt", "--force", "--out", str(out), cwd=tmp)
    s.files_forced = stored_files(out)
    s.json_forced = cli("results", "--suite", "smoke", "--out", str(out), "--format", "json", cwd=tmp)
    return s


def expected_statuses(*methods: str) -> dict[tuple[str, str], str]:
    """lora does not apply to the CNN config; every other smoke run of these methods is ok."""
    return {run: "not_applicable" if run == ("cnn", "lora") else "ok" for run in smoke_runs(*methods)}


def test_run_succeeds_in_estimate_mode(smoke):
    """Without a GPU, auto mode picks estimate and says why; lora on the CNN config is not applicable."""
    runs = smoke_runs("unipt", "lora")
    assert smoke.first.returncode == 0, smoke.first.stderr
    assert "Traceback" not in smoke.first.stderr
    assert f"smoke: {len(runs)} runs in estimate mode: no GPU found" in smoke.first.stdout
    assert f"done: 1 not_applicable, {len(runs) - 1} ok" in smoke.first.stdout


def test_run_writes_one_file_per_run(smoke):
    files = list(smoke.files_first)
    assert len(files) == len(smoke_runs("unipt", "lora")) >= 5
    assert {(p.parent.name, p.name.split(".")[0]) for p in files} == smoke_runs("unipt", "lora")
    assert all(p.relative_to(smoke.out).parts[0] == "smoke" and p.suffix == ".json" for p in files)


def csv_rows(proc) -> list[dict[str, str]]:
    assert proc.returncode == 0, proc.stderr
    return list(csv.DictReader(io.StringIO(proc.stdout)))


def test_results_csv_has_one_row_per_run(smoke):
    rows = csv_rows(smoke.csv)
    assert set(CSV_COLUMNS) <= set(rows[0])
    assert {(r["config"], r["method"]) for r in rows} == smoke_runs("unipt", "lora")
    assert len(rows) == len(smoke_runs("unipt", "lora"))
    assert {r["suite"] for r in rows} == {"smoke"}
    assert {r["mode"] for r in rows} == {"estimate"}


def test_results_csv_statuses_and_figures(smoke):
    """ok runs have positive byte counts; the not_applicable run (lora on the CNN) has blank figures."""
    rows = {(r["config"], r["method"]): r for r in csv_rows(smoke.csv)}
    assert {k: r["status"] for k, r in rows.items()} == expected_statuses("unipt", "lora")
    assert {("bert", "unipt"), ("vit-clip", "lora"), ("cnn", "lora")} <= set(rows)
    for key, row in rows.items():
        if row["status"] == "ok":
            assert float(row["peak_bytes"]) > 0 and float(row["trainable_params"]) > 0, key
            assert row["step_seconds"] == ""  # estimate mode runs no kernels, so reports no time
        else:
            assert {c: row[c] for c in FIGURES} == dict.fromkeys(FIGURES, ""), key
    bert = rows[("bert", "unipt")]
    assert bert["towers"] == "tiny-bert + tiny-regions (trained)"
    assert float(bert["trainable_params"]) == float(bert["trainable_method_params"]) + float(
        bert["trainable_head_params"])


def test_results_csv_counts_are_integers(smoke):
    """Parameter counts and byte counts are whole numbers and print as such."""
    for row in csv_rows(smoke.csv):
        if row["status"] == "ok":
            for column in FIGURES:
                assert row[column].isdigit(), (column, row[column])


def test_results_json_matches_the_csv(smoke):
    assert smoke.json.returncode == 0, smoke.json.stderr
    rows = json.loads(smoke.json.stdout)
    assert {(r["config"], r["method"]): r["status"] for r in rows} == {
        (r["config"], r["method"]): r["status"] for r in csv_rows(smoke.csv)
    }
    for row in rows:
        if row["status"] == "ok":
            assert isinstance(row["peak_bytes"], int) and isinstance(row["trainable_params"], int)
        else:
            assert row["peak_bytes"] is None and row["trainable_params"] is None


def test_results_table_lists_every_run(smoke):
    assert smoke.table.returncode == 0, smoke.table.stderr
    for config, method in smoke_runs("unipt", "lora"):
        assert any(config in line and method in line for line in smoke.table.stdout.splitlines())
    assert "not_applicable" in smoke.table.stdout


def test_stored_result_files(smoke):
    """Schema 1, the full spec, the environment with package versions, memory counters in bytes."""
    spec_fields = {f.name for f in fields(RunSpec)}
    for path, raw in smoke.files_first.items():
        data = json.loads(raw)
        assert data["schema"] == 1
        assert set(data["spec"]) == spec_fields - {"ddp", "overrides", "memory"}  # written only where set (none here)
        spec = RunSpec.from_dict(data["spec"])
        assert (spec.suite, spec.mode, spec.config) == ("smoke", "estimate", path.parent.name)
        assert data["digest"] == spec.digest()
        assert data["env"]["packages"]["torch"] and data["env"]["packages"]["unipt-bench"]
        assert data["env"]["python"]
        assert data["started"] <= data["finished"]
        if data["status"] == "ok":
            assert set(data["memory"]) == {"memtracker_fake"}
            for name, counter in data["memory"].items():
                assert counter["counter"] == name
                assert type(counter["peak_bytes"]) is int and counter["peak_bytes"] > 0
                assert all(type(v) is int for v in counter["by_category"].values())
                assert counter["peak_bytes"] == sum(counter["by_category"].values())
                assert set(counter["by_phase"]) == {"forward", "backward", "optimizer", "evaluation"}
                assert len(counter["step_peak_bytes"]) == spec.steps
        else:
            assert data["status"] == "not_applicable" and data["memory"] is None
            assert "needs" in data["message"] or "no design" in data["message"]


def test_running_again_skips_finished_runs(smoke):
    """The same command again runs nothing and writes nothing."""
    assert smoke.again.returncode == 0, smoke.again.stderr
    assert f"{len(smoke_runs('unipt', 'lora'))} already done" in smoke.again.stdout
    assert not [line for line in smoke.again.stdout.splitlines() if line.startswith("done:")]
    assert smoke.files_again == smoke.files_first


def test_force_runs_again_and_keeps_old_files(smoke):
    """--force writes new files beside the old ones, which stay byte for byte."""
    assert smoke.forced.returncode == 0, smoke.forced.stderr
    assert "already done" not in smoke.forced.stdout
    assert f"done: {len(smoke_runs('unipt'))} ok" in smoke.forced.stdout
    new = set(smoke.files_forced) - set(smoke.files_first)
    assert {(p.parent.name, p.name.split(".")[0]) for p in new} == smoke_runs("unipt")
    assert {p: smoke.files_forced[p] for p in smoke.files_first} == smoke.files_first


def test_results_after_force_still_one_row_per_run(smoke):
    assert smoke.json_forced.returncode == 0, smoke.json_forced.stderr
    rows = json.loads(smoke.json_forced.stdout)
    assert sorted((r["config"], r["method"]) for r in rows) == sorted(smoke_runs("unipt", "lora"))
