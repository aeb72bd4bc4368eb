"""Hostile inputs and faults at the edges of the file system: a checkpoint that asks to run its own code,
outputs that are devices, FIFOs or stdout, a store that cannot take results, a disk that fills up, a
baseline of another suite. Each case is one line (or one line per lost run), its documented exit code, no
traceback, and every regular file already there stays byte for byte as it was.

Same contract and in-process style as tests/test_bad_inputs.py. Faults are simulated: `fault:enospc`
makes every fsync fail with "No space left on device" (what a full disk does to a buffered write),
`fault:erofs` every temporary file creation with "Read-only file system" (the tests may run as root,
for whom no folder is read-only).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from tests.test_bad_inputs import invoke, suite_text
from unipt_bench import atomic
from unipt_bench.gate import make_baseline
from unipt_bench.results import ResultStore, RunResult, now
from unipt_bench.runner import execute
from unipt_bench.suite_file import load_suite

REMOTE_CODE = """\
import pathlib
pathlib.Path({marker!r}).write_text("the checkpoint's own code ran")
from transformers import BertConfig, BertModel


class EvilConfig(BertConfig):
    model_type = "evil-bert"


class EvilModel(BertModel):
    config_class = EvilConfig
"""


def remote_code_folder(root: Path, marker: Path) -> Path:
    """A local checkpoint folder whose config.json asks transformers to import its own Python file."""
    folder = root / "remote-code-model"
    folder.mkdir()
    config = {"model_type": "evil-bert", "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"},
              "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
              "vocab_size": 512}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "evil.py").write_text(REMOTE_CODE.format(marker=str(marker)))
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """A store holding one ok result of the tiny suite, baselines of it, and outputs to misuse."""
    root = tmp_path_factory.mktemp("bad-inputs-io")
    suite = root / "tiny.toml"
    suite.write_text(suite_text())
    store = root / "store"
    spec = load_suite(str(suite)).with_mode("estimate")[0]
    result = RunResult(**execute(spec.to_dict()))  # a real estimate, in this process: reports render it
    ResultStore(store).write(result)
    baseline = make_baseline("tiny", [result])
    baselines = {"baseline.json": baseline, "baseline-other-suite.json": {**baseline, "suite": "smoke"},
                 "baseline-no-suite.json": {k: v for k, v in baseline.items() if k != "suite"}}
    for name, data in baselines.items():
        (root / name).write_text(json.dumps(data))
    (root / "suite-is-a-file" / "tiny").parent.mkdir()
    (root / "suite-is-a-file" / "tiny").write_text("a file where the suite's folder should be")
    os.mkfifo(root / "fifo")
    remote = remote_code_folder(root, root / "MARKER")
    (root / "remote-code.toml").write_text(suite_text().replace('"tiny-bert"', json.dumps(f"hf:{remote}")))
    return {"root": root, "suite": suite, "store": store}


GATE = ["gate", "--suite", "{suite}", "--methods", "unipt", "--no-run", "--out", "{store}"]
REPORT = ["report", "--suite", "tiny", "--results", "{store}"]

# (command and arguments with {root}, {suite} and {store} filled in, env:NAME=value, fault:KIND) -> exit code
CASES = {
    "run: an hf: folder whose config asks for remote code": (["run", "--suite", "{root}/remote-code.toml"], 2),
    "run: a file where the suite's folder should be": (["run", "--suite", "{suite}", "--mode", "estimate",
                                                        "--out", "{root}/suite-is-a-file"], 2),
    "run: a read-only store": (["run", "--suite", "{suite}", "--mode", "estimate", "--out", "{root}/new-store",
                                "fault:erofs"], 2),
    "report: disk full": ([*REPORT, "--out", "{root}/r.html", "fault:enospc"], 2),
    "report: read-only folder": ([*REPORT, "--out", "{root}/r.html", "fault:erofs"], 2),
    "report: a FIFO nobody reads": ([*REPORT, "--out", "{root}/fifo"], 2),
    "gate: baseline of another suite": ([*GATE, "--baseline", "{root}/baseline-other-suite.json"], 2),
    "gate: baseline that names no suite": ([*GATE, "--baseline", "{root}/baseline-no-suite.json"], 2),
    "gate: --update on a full disk keeps the old baseline": ([*GATE, "--baseline", "{root}/baseline.json",
                                                              "--update", "fault:enospc"], 2),
    "gate: --junit on a full disk": ([*GATE, "--baseline", "{root}/baseline.json", "--junit", "{root}/j.xml",
                                      "fault:enospc"], 2),
    "gate: --markdown on a full disk": ([*GATE, "--baseline", "{root}/baseline.json", "--markdown", "{root}/g.md",
                                         "fault:enospc"], 2),
    "gate: --junit a FIFO nobody reads": ([*GATE, "--baseline", "{root}/baseline.json", "--junit", "{root}/fifo"], 2),
    "gate: GITHUB_STEP_SUMMARY a FIFO nobody reads": ([*GATE, "--baseline", "{root}/baseline.json",
                                                       "env:GITHUB_STEP_SUMMARY={root}/fifo"], 2),
}


def fail_with(monkeypatch, kind: str) -> None:
    """Simulate a full disk (every fsync fails) or a read-only file system (no file can be created)."""
    def enospc(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def erofs(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    if kind == "enospc":
        monkeypatch.setattr(os, "fsync", enospc)
    else:
        monkeypatch.setattr(tempfile, "mkstemp", erofs)


def regular_files(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def unblock_fifo_later(fifo: Path, seconds: float) -> threading.Timer:
    """Open the FIFO for reading after `seconds`: a command that blocks on it ends (and its test fails)
    instead of hanging the test run."""
    def drain() -> None:
        with open(fifo, "rb") as f:
            f.read()

    timer = threading.Timer(seconds, drain)
    timer.daemon = True
    timer.start()
    return timer


@pytest.mark.parametrize("case", list(CASES))
def test_bad_output_is_one_line_and_changes_no_file(case, world, monkeypatch, capsys) -> None:
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("HF_MODULES_CACHE", str(world["root"] / "hf-modules"))
    template, expected = CASES[case]
    args = []
    for arg in template:
        arg = arg.format(root=world["root"], suite=world["suite"], store=world["store"])
        if arg.startswith("env:"):
            name, _, value = arg[4:].partition("=")
            monkeypatch.setenv(name, value)
        elif arg.startswith("fault:"):
            fail_with(monkeypatch, arg[6:])
        else:
            args.append(arg)
    before = regular_files(world["root"])
    timer = unblock_fifo_later(world["root"] / "fifo", 20)
    try:
        code, _, err = invoke(args, monkeypatch, capsys)
    finally:
        timer.cancel()
    assert code == expected, f"exit {code}; stderr: {err}"
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert regular_files(world["root"]) == before
    assert not (world["root"] / "MARKER").exists()


def test_remote_code_is_refused_even_when_the_user_would_say_yes(world, tmp_path) -> None:
    """transformers asks on stdin whether to run a checkpoint's own code; answering y must change nothing."""
    marker = tmp_path / "MARKER"
    folder = remote_code_folder(tmp_path, marker)
    suite = tmp_path / "remote.toml"
    suite.write_text(suite_text().replace('"tiny-bert"', json.dumps(f"hf:{folder}")))
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "hf-modules"), "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-m", "unipt_bench.cli", "run", "--suite", str(suite), "--mode", "estimate",
                           "--out", str(tmp_path / "store")], input="y\n", capture_output=True, text=True, env=env,
                          timeout=300)
    assert not marker.exists(), "the checkpoint's own Python ran"
    assert done.returncode == 2 and "[y/N]" not in done.stdout + done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: ") and str(folder) in line and "auto_map" in line


def test_a_tokenizer_that_asks_for_remote_code_is_refused(tmp_path) -> None:
    from unipt_bench.data.text import PretrainedTokenizer
    from unipt_bench.errors import UserError

    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": ["evil.T", None]}}))
    with pytest.raises(UserError, match="tokenizer_config.json asks to run the checkpoint's own Python code"):
        PretrainedTokenizer(str(tmp_path))


# ---------------------------------------------------------------- outputs that are streams, not files


def read_fifo_in_background(fifo: Path) -> tuple[threading.Thread, list[bytes]]:
    got: list[bytes] = []

    def read() -> None:
        with open(fifo, "rb") as f:
            got.append(f.read())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return reader, got


def test_report_writes_through_a_link_to_a_device_a_fifo_and_stdout(world, tmp_path, monkeypatch, capsys) -> None:
    """A link to /dev/null stays a link (and /dev/null a device); a FIFO gets the report and stays a FIFO;
    `-` prints it, the confirmation going to stderr."""
    link = tmp_path / "to-null"
    link.symlink_to("/dev/null")
    code, _, err = invoke([*(a.format(store=world["store"]) for a in REPORT), "--out", str(link)], monkeypatch, capsys)
    assert code == 0, err
    assert link.is_symlink() and os.readlink(link) == "/dev/null" and Path("/dev/null").is_char_device()

    fifo = tmp_path / "report.fifo"
    os.mkfifo(fifo)
    reader, got = read_fifo_in_background(fifo)
    code, _, err = invoke([*(a.format(store=world["store"]) for a in REPORT), "--out", str(fifo)], monkeypatch, capsys)
    reader.join(timeout=20)
    assert code == 0, err
    assert fifo.is_fifo() and got and got[0].startswith(b"<!doctype html>")

    code, out, err = invoke([*(a.format(store=world["store"]) for a in REPORT), "--out", "-"], monkeypatch, capsys)
    assert code == 0, err
    assert out.startswith("<!doctype html>") and out.rstrip().endswith("</html>") and err.startswith("wrote -")


def test_a_link_to_a_regular_file_stays_a_link(tmp_path) -> None:
    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    atomic.write_atomic(link, "new")
    assert link.is_symlink() and target.read_text() == "new"


# ---------------------------------------------------------------- results, checkpoints: nothing lost silently


def test_a_checkpoint_write_on_a_full_disk_is_one_line_and_leaves_no_partial_file(tmp_path, monkeypatch) -> None:
    """Checkpoints (train.py) are written through atomic_file in binary mode."""
    import torch

    fail_with(monkeypatch, "enospc")
    path = tmp_path / "ckpt" / "last.pt"
    with pytest.raises(atomic.WriteError) as caught:
        with atomic.atomic_file(path, "wb") as f:
            torch.save({"step": 3, "weights": torch.zeros(10)}, f)
    assert str(caught.value) == f"{path}: cannot write (No space left on device)"
    assert isinstance(caught.value, OSError)  # caches that may fail (frame cache) still catch it
    assert list(path.parent.iterdir()) == []


def test_results_lost_to_a_full_disk_are_one_line_each_and_exit_1(world, tmp_path, monkeypatch, capsys) -> None:
    """Two lanes; the store fills up after its first result: each lost run is reported, naming the store,
    the command fails, and the result written before stays."""
    from unipt_bench import runner

    store = tmp_path / "store"
    first = ResultStore(store)
    spec = load_suite(str(world["suite"])).with_mode("estimate")[0]
    first.write(RunResult(spec=spec.to_dict(), status="error", digest=spec.digest(), message="an earlier try",
                          started=now(), finished=now()))
    before = regular_files(store)
    # each run "ends" at once with an ok result; the lanes, their threads and the store are the real ones
    monkeypatch.setattr(runner.Lane, "run", lambda lane, spec, options, progress: RunResult(
        spec=spec.to_dict(), status="ok", digest=spec.digest(), started=now(), finished=now()))
    fail_with(monkeypatch, "enospc")
    code, out, err = invoke(["run", "--suite", str(world["suite"]), "--mode", "estimate", "--jobs", "2",
                             "--out", str(store)], monkeypatch, capsys)
    assert code == 1, out + err
    assert "Traceback" not in err and "Exception in thread" not in err
    lost = [line for line in out.splitlines() if "result lost, not stored in" in line]
    assert len(lost) == 2 and all(str(store) in line and "No space left on device" in line for line in lost)
    assert regular_files(store) == before
