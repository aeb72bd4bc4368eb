"""Bad input, as a hostile user gives it: every case is one line on stderr, exit 2, no traceback, and every
result file already in the store stays byte for byte as it was.

The commands run in this process (the CLI's `main`, exactly as the console script calls it), so the
table stays fast; tests/test_cli.py covers the same contract through real subprocesses.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from unipt_bench.cli import main
from unipt_bench.results import ResultStore, RunResult, now
from unipt_bench.suite_file import load_suite

SUITE = """\
name = "tiny"
task_options = {{ embed_dim = {embed_dim} }}

[[configs]]
name = "c"
batch = 4
towers = [
    {{ name = "text", backbone = "tiny-bert", seq_len = 8 }},
    {{ name = "image", backbone = "tiny-regions", tuned = false }},
]
methods = [{methods}]
"""
TRAIN_SUITE = SUITE.replace('methods = [{methods}]', 'train = {{ dataset = "flickr30k", {train} }}\nmethods = ["unipt"]')


def suite_text(methods: str = '"unipt", "lora"', embed_dim: int = 16) -> str:
    return SUITE.format(methods=methods, embed_dim=embed_dim)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """A store holding one ok result of the tiny suite, a baseline of it, a plain file and a folder to misuse."""
    root = tmp_path_factory.mktemp("bad-inputs")
    suite = root / "tiny.toml"
    suite.write_text(suite_text())
    store = root / "store"
    spec = load_suite(str(suite)).with_mode("estimate")[0]
    result = RunResult(spec=spec.to_dict(), status="ok", digest=spec.digest(), started=now(), finished=now(),
                       memory={"memtracker_fake": {"counter": "memtracker_fake", "peak_bytes": 1000}},
                       params={"trainable_params": 10})
    ResultStore(store).write(result)
    good_entry = {"digest": spec.digest(), "status": "ok", "counter": "memtracker_fake",
                  "metrics": {"peak_bytes": 1000}, "protocol": {}, "versions": {}, "spec": spec.to_dict()}
    baselines = {
        "baseline-5.json": {"schema": 1, "suite": "tiny", "entries": {"c/unipt/estimate": 5}},
        "baseline-empty-entry.json": {"schema": 1, "suite": "tiny", "entries": {"c/unipt/estimate": {}}},
        "baseline-str-metric.json": {"schema": 1, "suite": "tiny",
                                     "entries": {"c/unipt/estimate": {**good_entry, "metrics": {"peak_bytes": "1k"}}}},
        "baseline-list.json": [1, 2],
        "baseline-good.json": {"schema": 1, "suite": "tiny", "entries": {"c/unipt/estimate": good_entry}},
    }
    for name, data in baselines.items():
        (root / name).write_text(json.dumps(data))
    (root / "baseline-truncated.json").write_text('{"schema": 1, "entr')
    (root / "a-file").write_text("not a folder")
    (root / "a-folder").mkdir()
    corrupt = root / "corrupt-store" / "tiny" / "c"
    corrupt.mkdir(parents=True)
    (corrupt / "unipt.estimate.x.json").write_text('{"schema": 1, "memory": [')
    suites = {
        "non-utf8.toml": b'name = "caf\xe9"\n',
        "nested.toml": ("x = " + "[" * 5000 + "]" * 5000 + "\n").encode(),
        "malformed.toml": b'name = "x"\n[[configs]\nname = "c"\n',
        "evil-name.toml": suite_text().replace('name = "tiny"', 'name = "../evil"').encode(),
        "long-name.toml": suite_text().replace('name = "tiny"', f'name = "{"s" * 300}"').encode(),
        "long-label.toml": suite_text(f'{{ method = "unipt", label = "{"l" * 300}" }}').encode(),
        "unipt-reduction-0.toml": suite_text('{ method = "unipt", reduction = 0 }').encode(),
        "lora-rank-0.toml": suite_text('{ method = "lora", rank = 0 }').encode(),
        "lora-dropout-nan.toml": suite_text('{ method = "lora", dropout = nan }').encode(),
        "prompt-length-negative.toml": suite_text('{ method = "prompt", length = -3 }').encode(),
        "lst-temperature-0.toml": suite_text('{ method = "lst", temperature = 0.0 }').encode(),
        "embed-dim-0.toml": suite_text(embed_dim=0).encode(),
        "lr-negative.toml": TRAIN_SUITE.format(embed_dim=16, train="lr = -1.0").encode(),
        "warmup-negative.toml": TRAIN_SUITE.format(embed_dim=16, train="warmup = -3.0").encode(),
        "steps-0.toml": TRAIN_SUITE.format(embed_dim=16, train="steps = 0").encode(),
        "batch-0.toml": suite_text().replace("batch = 4", "batch = 0").encode(),
        "unknown-key.toml": suite_text().replace("batch = 4", "batch = 4\nbatchsize = 4").encode(),
    }
    for name, data in suites.items():
        (root / name).write_bytes(data)
    return {"root": root, "suite": suite, "store": store}


# (command, arguments with {root}, {suite} and {store} filled in, extra environment)
CASES = {
    # run
    "run: unknown suite": ["run", "--suite", "nosuchsuite"],
    "run: missing suite file": ["run", "--suite", "{root}/missing.toml"],
    "run: malformed TOML": ["run", "--suite", "{root}/malformed.toml"],
    "run: non-UTF-8 TOML": ["run", "--suite", "{root}/non-utf8.toml"],
    "run: deeply nested TOML": ["run", "--suite", "{root}/nested.toml"],
    "run: suite name ../evil": ["run", "--suite", "{root}/evil-name.toml"],
    "run: suite name of 300 characters": ["run", "--suite", "{root}/long-name.toml"],
    "run: label of 300 characters": ["run", "--suite", "{root}/long-label.toml"],
    "run: unipt reduction 0": ["run", "--suite", "{root}/unipt-reduction-0.toml"],
    "run: lora rank 0": ["run", "--suite", "{root}/lora-rank-0.toml"],
    "run: lora dropout nan": ["run", "--suite", "{root}/lora-dropout-nan.toml"],
    "run: negative prefix length": ["run", "--suite", "{root}/prompt-length-negative.toml"],
    "run: lst temperature 0": ["run", "--suite", "{root}/lst-temperature-0.toml"],
    "run: embed_dim 0": ["run", "--suite", "{root}/embed-dim-0.toml"],
    "run: train lr -1": ["run", "--suite", "{root}/lr-negative.toml"],
    "run: train warmup -3": ["run", "--suite", "{root}/warmup-negative.toml"],
    "run: train steps 0": ["run", "--suite", "{root}/steps-0.toml"],
    "run: batch 0": ["run", "--suite", "{root}/batch-0.toml"],
    "run: unknown key": ["run", "--suite", "{root}/unknown-key.toml"],
    "run: --methods ,": ["run", "--suite", "{suite}", "--methods", ",", "--out", "{store}"],
    "run: --methods unknown": ["run", "--suite", "{suite}", "--methods", "nosuch", "--out", "{store}"],
    "run: --out is a file": ["run", "--suite", "{suite}", "--out", "{root}/a-file", "--mode", "estimate"],
    "run: --out under a file": ["run", "--suite", "{suite}", "--out", "{root}/a-file/store", "--mode", "estimate"],
    "run: --mode unknown": ["run", "--suite", "{suite}", "--mode", "tpu"],
    "run: --nvml-interval 0": ["run", "--suite", "{suite}", "--nvml-interval", "0", "--out", "{store}"],
    "run: --nvml-interval nan": ["run", "--suite", "{suite}", "--nvml-interval", "nan", "--out", "{store}"],
    "run: --busy-threshold garbage": ["run", "--suite", "{suite}", "--busy-threshold", "lots", "--out", "{store}"],
    # results
    "results: suite ../evil": ["results", "--suite", "../evil", "--out", "{store}"],
    "results: suite not stored": ["results", "--suite", "other", "--out", "{store}"],
    "results: non-UTF-8 suite file": ["results", "--suite", "{root}/non-utf8.toml", "--out", "{store}"],
    "results: deeply nested suite file": ["results", "--suite", "{root}/nested.toml", "--out", "{store}"],
    "results: suite file named ../evil": ["results", "--suite", "{root}/evil-name.toml", "--out", "{store}"],
    "results: --format unknown": ["results", "--suite", "tiny", "--out", "{store}", "--format", "xml"],
    "results: only corrupt results": ["results", "--suite", "tiny", "--out", "{root}/corrupt-store"],
    # report
    "report: --out is a folder": ["report", "--suite", "tiny", "--results", "{store}", "--out", "{root}/a-folder"],
    "report: --out under a file": ["report", "--suite", "tiny", "--results", "{store}",
                                   "--out", "{root}/a-file/r.html"],
    "report: suite ../evil": ["report", "--suite", "../evil", "--results", "{store}", "--out", "{root}/r.html"],
    "report: no results": ["report", "--suite", "other", "--results", "{store}", "--out", "{root}/r.html"],
    # leaderboard
    "leaderboard: --out-dir is a file": ["leaderboard", "--results", "{store}", "--out-dir", "{root}/a-file"],
    "leaderboard: empty store": ["leaderboard", "--results", "{root}/a-folder", "--out-dir", "{root}/lb"],
    # gate
    **{f"gate: --tolerance {t}": ["gate", "--suite", "{suite}", "--baseline", "{root}/baseline-5.json",
                                  "--tolerance", t, "--out", "{store}", "--no-run"]
       for t in ("nan", "nan%", "inf", "-1%", "lots")},
    "gate: baseline entry 5": ["gate", "--suite", "{suite}", "--baseline", "{root}/baseline-5.json", "--out", "{store}"],
    "gate: baseline entry {}": ["gate", "--suite", "{suite}", "--baseline", "{root}/baseline-empty-entry.json",
                                "--out", "{store}"],
    "gate: baseline metric a string": ["gate", "--suite", "{suite}", "--baseline", "{root}/baseline-str-metric.json",
                                       "--out", "{store}"],
    "gate: baseline a list": ["gate", "--suite", "{suite}", "--baseline", "{root}/baseline-list.json", "--out", "{store}"],
    "gate: baseline truncated": ["gate", "--suite", "{suite}", "--baseline", "{root}/baseline-truncated.json",
                                 "--out", "{store}"],
    "gate: baseline missing": ["gate", "--suite", "{suite}", "--baseline", "{root}/none.json", "--out", "{store}"],
    "gate: --junit under a file": ["gate", "--suite", "{suite}", "--baseline", "{root}/baseline-5.json",
                                   "--junit", "{root}/a-file/j.xml", "--out", "{store}"],
    "gate: --markdown is a folder": ["gate", "--suite", "{suite}", "--baseline", "{root}/baseline-5.json",
                                     "--markdown", "{root}/a-folder", "--out", "{store}"],
    "gate: --benchmark-json under a file": ["gate", "--suite", "{suite}", "--baseline", "{root}/baseline-5.json",
                                            "--benchmark-json", "{root}/a-file/b.json", "--out", "{store}"],
    "gate: --update onto a folder": ["gate", "--suite", "{suite}", "--baseline", "{root}/a-folder", "--update",
                                     "--out", "{store}"],
    "gate: GITHUB_STEP_SUMMARY under a file": ["gate", "--suite", "{suite}", "--baseline", "{root}/baseline-5.json",
                                               "--out", "{store}", "env:GITHUB_STEP_SUMMARY={root}/a-file/s.md"],
    "gate: --metric unknown": ["gate", "--suite", "{suite}", "--baseline", "{root}/baseline-good.json",
                               "--metric", "speed", "--out", "{store}", "--no-run"],
    "gate: --configs unknown": ["gate", "--suite", "{suite}", "--baseline", "{root}/baseline-good.json",
                                "--configs", "nosuch", "--out", "{store}", "--no-run"],
    # fit
    "fit: --limit 0": ["fit", "--suite", "{suite}", "--budget", "1GiB", "--limit", "0", "--out", "{store}"],
    "fit: --limit -5": ["fit", "--suite", "{suite}", "--budget", "1GiB", "--limit", "-5", "--out", "{store}"],
    "fit: --budget garbage": ["fit", "--suite", "{suite}", "--budget", "lots", "--out", "{store}"],
    "fit: --budget 0": ["fit", "--suite", "{suite}", "--budget", "0GiB", "--out", "{store}"],
    "fit: --out is a file": ["fit", "--suite", "{suite}", "--budget", "1GiB", "--out", "{root}/a-file"],
    "fit: --methods ,": ["fit", "--suite", "{suite}", "--budget", "1GiB", "--methods", ",", "--out", "{store}"],
    "fit: suite name of 300 characters": ["fit", "--suite", "{root}/long-name.toml", "--budget", "1GiB",
                                          "--out", "{store}"],
    # launchers
    "run: --launcher unknown": ["run", "--suite", "{suite}", "--launcher", "k8s", "--out", "{store}"],
    "run: --jobs 0": ["run", "--suite", "{suite}", "--jobs", "0", "--out", "{store}"],
    "run: --ray-address unreachable": ["run", "--suite", "{suite}", "--launcher", "ray", "--ray-address", "127.0.0.1:9",
                                       "--out", "{store}"],
    "run: --ray-address without a port number": ["run", "--suite", "{suite}", "--launcher", "ray", "--ray-address",
                                                 "head:port", "--out", "{store}"],
    "run: --no-wait on the local launcher": ["run", "--suite", "{suite}", "--no-wait", "--out", "{store}"],
    "run: --partition without slurm": ["run", "--suite", "{suite}", "--partition", "gpu", "--out", "{store}"],
    "run: --slurm-arg without =": ["run", "--suite", "{suite}", "--launcher", "slurm", "--slurm-arg", "account",
                                   "--out", "{store}"],
    "run: --time garbage": ["run", "--suite", "{suite}", "--launcher", "slurm", "--time", "soon", "--out", "{store}"],
    "run: slurm without sbatch": ["run", "--suite", "{suite}", "--launcher", "slurm", "--out", "{store}",
                                  "env:PATH={root}/a-folder", "env:UNIPT_BENCH_SUBMITIT_CLUSTER=slurm"],
    "fit: --launcher unknown": ["fit", "--suite", "{suite}", "--budget", "1GiB", "--launcher", "k8s",
                                "--out", "{store}"],
    "fit: --jobs 0": ["fit", "--suite", "{suite}", "--budget", "1GiB", "--jobs", "0", "--out", "{store}"],
    "fit: --ray-address unreachable": ["fit", "--suite", "{suite}", "--budget", "1GiB", "--launcher", "ray",
                                       "--ray-address", "127.0.0.1:9", "--out", "{store}"],
}


# cases whose one line must also name what is wrong (their other inputs are valid, so no other error can answer)
MESSAGES = {
    "gate: --metric unknown": "error: --metric: unknown speed (known: ",
    "gate: --configs unknown": "error: --configs: nosuch not in tiny",
}


def invoke(args: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `unipt-bench ARGS`, run through the console script's `main`."""
    monkeypatch.setattr(sys, "argv", ["unipt-bench", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_table_is_large_enough() -> None:
    commands = {case.split(":")[0] for case in CASES}
    assert len(CASES) >= 40 and commands == {"run", "results", "report", "leaderboard", "gate", "fit"}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_changes_no_result(case, world, monkeypatch, capsys) -> None:
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    args = []
    for arg in CASES[case]:
        arg = arg.format(root=world["root"], suite=world["suite"], store=world["store"])
        if arg.startswith("env:"):
            name, _, value = arg[4:].partition("=")
            monkeypatch.setenv(name, value)
        else:
            args.append(arg)
    before = {p: p.read_bytes() for p in sorted(world["store"].rglob("*")) if p.is_file()}
    code, _, err = invoke(args, monkeypatch, capsys)
    assert code == 2, f"exit {code}; stderr: {err}"
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(MESSAGES.get(case, "error: ")), err
    after = {p: p.read_bytes() for p in sorted(world["store"].rglob("*")) if p.is_file()}
    assert after == before


def test_the_valid_baseline_passes_the_gate(world, monkeypatch, capsys) -> None:
    """So the --metric and --configs cases fail for their option alone, never for their baseline."""
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    code, out, err = invoke(["gate", "--suite", str(world["suite"]), "--baseline", f"{world['root']}/baseline-good.json",
                             "--out", str(world["store"]), "--no-run"], monkeypatch, capsys)
    assert code == 0, err
