"""Bad input, second table: corrupt or odd files in a result store, and suites and options that used to pass
the first checks and fail later (after the data were read, in the report, or in every run).

A store file that is not a result is skipped with one warning naming it, and the other results are shown;
a bad suite or option is one `error:` line and exit 2 before any run starts. No case changes a stored file.
Commands run in this process, through the console script's `main`, as in tests/test_bad_inputs.py.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.datasets_flickr import write_flickr_precomp
from tests.test_bad_inputs import TRAIN_SUITE, invoke, suite_text
from unipt_bench.results import ResultStore, RunResult, now
from unipt_bench.suite_file import load_suite

FAR_FUTURE = "9999-01-01T00:00:00.000000Z"


def good_results(suite: Path) -> list[RunResult]:
    """An ok estimate of each run of the suite, with the figures a table and a report format."""
    results = []
    for spec in load_suite(str(suite)).with_mode("estimate"):
        figures = {"counter": "memtracker_fake", "peak_bytes": 1000, "by_category": {"activations": 400},
                   "by_phase": {"forward": {"peak_bytes": 900, "by_category": {"activations": 400}}},
                   "by_owner": {"method": {"activations": 100}}, "step_peak_bytes": [1000, 1000]}
        results.append(RunResult(spec=spec.to_dict(), status="ok", digest=spec.digest(), started=now(),
                                 finished=now(), memory={"memtracker_fake": figures},
                                 params={"trainable_params": 10, "trainable_method_params": 5,
                                         "trainable_head_params": 5, "total_params": 100},
                                 timing={"step_seconds": None, "build_seconds": 0.5}, protocol={"mode": "estimate"}))
    return results


def edited(change: Callable[[dict], None]) -> Callable[[dict, Path], None]:
    """A result file: the good unipt result as JSON, with `change` applied to it."""
    def write(good: dict, path: Path) -> None:
        data = json.loads(json.dumps(good))
        change(data)
        path.write_text(json.dumps(data))

    return write


def nested(depth: int) -> Callable[[dict, Path], None]:
    """The good result with a protocol field (one the report compares) nested `depth` lists deep."""
    def write(good: dict, path: Path) -> None:
        text = json.dumps({**good, "protocol": {"dtype": "X"}})
        path.write_text(text.replace('"X"', "[" * depth + "]" * depth))

    return write


def fifo(good: dict, path: Path) -> None:
    os.mkfifo(path)


def link_to_dev_zero(good: dict, path: Path) -> None:
    path.symlink_to("/dev/zero")


def larger_than_a_result(good: dict, path: Path) -> None:
    path.write_text(json.dumps({**good, "detail": "x" * (17 << 20)}))  # well-formed, but no run writes this much


def set_in(*keys: str, value: object) -> Callable[[dict], None]:
    def change(data: dict) -> None:
        for key in keys[:-1]:
            data = data[key]
        data[keys[-1]] = value

    return change


STORE_FILES = {
    "nested 100,000 deep": nested(100_000),
    "nested 40 deep": nested(40),
    "spec without order": edited(lambda d: d["spec"].pop("order")),
    'gpus = "2"': edited(set_in("spec", "gpus", value="2")),
    "by_category a string": edited(set_in("memory", "memtracker_fake", "by_category", "activations", value="4 KiB")),
    "step_seconds a string": edited(set_in("timing", "step_seconds", value="0.5")),
    "accuracy a string": edited(set_in("metrics", value={"selection": "accuracy", "test": {"accuracy": "50%"},
                                                          "baseline": {"accuracy": 1.0}})),
    "label holding rich markup": edited(set_in("spec", "label", value="u[/]")),
    "label ending in a newline": edited(set_in("spec", "label", value="unipt\n")),
    "a FIFO": fifo,
    "a symlink to /dev/zero": link_to_dev_zero,
    "17 MiB": larger_than_a_result,
    "finished in the far future": edited(lambda d: d.update(finished=FAR_FUTURE, status="error", message="stale")),
}


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("suite") / "tiny.toml"
    path.write_text(suite_text())
    return path


def make_store(root: Path, suite: Path, bad: dict[str, Callable[[dict, Path], None]]) -> tuple[Path, list[Path]]:
    """A store with the good results of the suite and one file per `bad` writer beside them."""
    store = root / "store"
    good = good_results(suite)
    for result in good:
        ResultStore(store).write(result)
    folder = store / "tiny" / "c"
    paths = []
    for i, write in enumerate(bad.values()):
        path = folder / f"unipt.estimate.20260101T000000.{i:06d}Z.json"
        write(json.loads(good[0].to_json()), path)
        paths.append(path)
    return store, paths


def store_state(store: Path) -> dict[Path, object]:
    """Every entry of the store as it is: a regular file's bytes, a link's target, anything else its type."""
    state: dict[Path, object] = {}
    for path in sorted(store.rglob("*")):
        if path.is_symlink():
            state[path] = os.readlink(path)
        elif path.is_file():
            state[path] = path.read_bytes()
        else:
            state[path] = path.stat().st_mode
    return state


def assert_skipped_and_shown(code: int, out: str, err: str, bad: list[Path]) -> None:
    assert code == 0, f"exit {code}; stderr: {err}"
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == len(bad), err
    for line, path in zip(sorted(lines), sorted(bad), strict=True):
        assert line.startswith(f"warning: skipped unreadable result file {path}: "), line


@pytest.mark.parametrize("case", list(STORE_FILES))
def test_results_skips_a_bad_store_file_with_one_warning_and_shows_the_rest(case, suite, tmp_path, monkeypatch,
                                                                             capsys) -> None:
    store, bad = make_store(tmp_path, suite, {case: STORE_FILES[case]})
    before = store_state(store)
    code, out, err = invoke(["results", "--suite", "tiny", "--out", str(store), "--format", "table"], monkeypatch,
                            capsys)
    assert_skipped_and_shown(code, out, err, bad)
    rows = [line for line in out.splitlines() if " c " in f" {line} "]
    assert [("unipt" in row, "lora" in row, "ok" in row) for row in rows] == [(True, False, True), (False, True, True)]
    assert store_state(store) == before


def test_report_and_run_skip_every_bad_store_file_once(suite, tmp_path, monkeypatch, capsys) -> None:
    """One store with all the bad files: `report` renders the good results and `run` finds them done; each
    warns once per bad file."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    store, bad = make_store(tmp_path, suite, STORE_FILES)
    before = store_state(store)
    report = tmp_path / "r.html"
    code, out, err = invoke(["report", "--suite", "tiny", "--results", str(store), "--out", str(report)],
                            monkeypatch, capsys)
    assert_skipped_and_shown(code, out, err, bad)
    assert "(2 results)" in out and report.is_file()
    code, out, err = invoke(["run", "--suite", str(suite), "--out", str(store), "--mode", "estimate"], monkeypatch,
                            capsys)
    assert_skipped_and_shown(code, out, err, bad)
    assert "2 already done" in out
    assert store_state(store) == before


# ---------------------------------------------------------------- suites and options: one line, exit 2

SUITES = {
    "label-newline.toml": suite_text('{ method = "unipt", label = "unipt\\n" }'),
    "name-newline.toml": suite_text().replace('name = "tiny"', 'name = "tiny\\n"'),
    "paper-list.toml": suite_text().replace("batch = 4", 'batch = 4\npaper = ["table5-bert"]'),
    "seed-2-63.toml": suite_text().replace('name = "tiny"', f'name = "tiny"\nseed = {2**63 - 1}'),
    "seq-len-4096.toml": suite_text().replace("seq_len = 8", "seq_len = 4096"),
    "joint-grid-too-long.toml": suite_text().replace('backbone = "tiny-bert", seq_len = 8',
                                                     'backbone = "tiny-joint", seq_len = 8, grid = 60'),
    "train.toml": TRAIN_SUITE.format(embed_dim=16, train='format = "precomp", steps = 2'),
}
TOO_MANY_DIGITS = "9" * 401

CASES = {
    "run: label ending in a newline": ["run", "--suite", "{root}/label-newline.toml", "--out", "{store}"],
    "run: suite name ending in a newline": ["run", "--suite", "{root}/name-newline.toml", "--out", "{store}"],
    "run: paper a list": ["run", "--suite", "{root}/paper-list.toml", "--out", "{store}"],
    "run: seed 2^63-1": ["run", "--suite", "{root}/seed-2-63.toml", "--out", "{store}"],
    "run: seq_len 4096 on tiny-bert": ["run", "--suite", "{root}/seq-len-4096.toml", "--out", "{store}"],
    "run: text and grid past tiny-joint's positions": ["run", "--suite", "{root}/joint-grid-too-long.toml", "--out", "{store}"],
    "run: --busy-threshold of 401 digits": ["run", "--suite", "{suite}", "--busy-threshold", TOO_MANY_DIGITS,
                                            "--out", "{store}"],
    "fit: --budget of 401 digits": ["fit", "--suite", "{suite}", "--budget", TOO_MANY_DIGITS, "--out", "{store}"],
    "run: --batch larger than the training split": ["run", "--suite", "{root}/train.toml", "--job", "train",
                                                    "--mode", "cpu", "--batch", "100000", "--data-root",
                                                    "{root}/data", "--out", "{store}"],
    "run: --checkpoint-dir /proc/x": ["run", "--suite", "{suite}", "--mode", "estimate", "--checkpoint-dir",
                                      "/proc/x", "--out", "{store}"],
    "report: --out file name of 300 characters": ["report", "--suite", "tiny", "--results", "{store}",
                                                  "--out", "{root}/" + "r" * 300 + ".html"],
}


@pytest.fixture(scope="module")
def world(tmp_path_factory, suite) -> dict[str, Path]:
    """The tiny suite with its runs done, odd suite files, and a small flickr30k dataset to train on."""
    root = tmp_path_factory.mktemp("bad-options")
    store = root / "store"
    for result in good_results(suite):
        ResultStore(store).write(result)
    for name, text in SUITES.items():
        (root / name).write_text(text)
    write_flickr_precomp(root / "data" / "flickr30k", images=10, eval_images=5, regions=4, dim=16)
    return {"root": root, "suite": suite, "store": store}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_suite_or_option_is_one_line_exit_2_before_any_run(case, world, monkeypatch, capsys) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    args = [arg.format(**world) for arg in CASES[case]]
    before = store_state(world["store"])
    code, _, err = invoke(args, monkeypatch, capsys)
    assert code == 2, f"exit {code}; stderr: {err}"
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert store_state(world["store"]) == before


def test_a_table_prints_rich_markup_in_names_as_written(capsys) -> None:
    """Names reach the terminal table as text: "[/]" in a stored row is shown, not parsed as markup."""
    from unipt_bench.cli.format import print_table

    row = {"config": "c[bold]", "method": "u[/]", "mode": "estimate", "status": "ok", "batch": 4, "gpus": 1,
           "trainable_params": 1, "trainable_method_params": 1, "trainable_head_params": 0, "peak_bytes": 1,
           "activations_bytes": 0, "grads_bytes": 0, "optimizer_state_bytes": 0, "step_seconds": None,
           "test_score": None}
    print_table([row])
    out = capsys.readouterr().out
    assert "u[/]" in out and "c[bold]" in out


@pytest.mark.parametrize(("backbone", "limit"), [("tiny-bert", 64), ("tiny-roberta", 64), ("tiny-clip-text", 64),
                                                  ("tiny-bigru", None), ("tiny-vit", None)])
def test_position_limit_is_the_tokens_a_position_table_holds(backbone, limit) -> None:
    """tiny-roberta's table has 66 rows, the first two (up to the padding index) never a token's."""
    import torch

    from unipt_bench.backbones import create_backbone
    from unipt_bench.suite_file import position_limit

    with torch.device("meta"):
        assert position_limit(create_backbone(backbone, "random", load=False)) == limit
