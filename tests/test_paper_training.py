"""The paper's flickr30k suite trains end to end on the CPU: its real t5-bert configuration (BERT-base over
BUTD region features) with the reference recipe, shortened on the command line, on a tiny Flickr30K in the
precomp format whose captions follow Flickr30K's length distribution."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.datasets_flickr import write_flickr_precomp

from .browser import dump_dom, needs_chromium


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, "-m", "unipt_bench.cli", *args], capture_output=True, text=True, env=env,
                          timeout=1200)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("paper")
    data, out = root / "data", root / "results"
    write_flickr_precomp(data / "flickr30k", images=40, eval_images=10, regions=36, dim=2048)
    done = cli("run", "--suite", "flickr30k", "--job", "train", "--configs", "t5-bert", "--methods", "unipt,adapter",
               "--max-steps", "4", "--batch", "8", "--data-root", str(data), "--out", str(out))
    return data, out, done


@pytest.mark.slow
def test_flickr30k_t5_bert_trains_with_its_recipe_shortened(trained) -> None:
    _, out, done = trained
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = {r["spec"]["label"]: r for r in map(json.loads, map(Path.read_text, out.glob("flickr30k/t5-bert/*.json")))}
    assert set(results) == {"unipt", "adapter"}
    for result in results.values():
        assert result["status"] == "ok", result.get("message")
        assert result["spec"]["overrides"] == {"batch": 8, "max_steps": 4}
        assert result["spec"]["train"]["epochs"] == 25.0  # the reference recipe, shortened by the overrides only
        assert result["protocol"]["train"]["steps"] == 4
        assert result["protocol"]["backbone_lr"] == pytest.approx(5e-5)  # VSE-infinity's BERT at 0.1 x 5e-4
        test = result["metrics"]["test"]
        assert {"i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum"} <= set(test)
        assert result["metrics"]["tokenizer"] == {"text": "WordPiece, BERT uncased vocabulary (30522 tokens)"}
        lengths = {int(shape.split("x")[1]) for shape in result["metrics"]["batch_shapes"]["text"]}
        assert len(lengths) > 1 and max(lengths) <= 32  # padded to each batch's longest caption, at most seq_len
        peak = result["memory"]["memtracker_real"]["peak_at"]
        # the peak is at the longest batch, or in an evaluation (tracked too, with its own batches)
        assert peak["phase"] == "evaluation" or peak["shapes"]["text"][1] == max(lengths)
    assert results["unipt"]["params"]["trainable_params"] > 0


@pytest.mark.slow
def test_the_report_shows_measured_accuracy_in_chromium(trained, tmp_path) -> None:
    needs_chromium()
    _, out, done = trained
    assert done.returncode == 0
    page = tmp_path / "flickr30k.html"
    rendered = cli("report", "--suite", "flickr30k", "--results", str(out), "--out", str(page))
    assert rendered.returncode == 0, rendered.stderr
    dom, _ = dump_dom(page, tmp_path / "profile")
    # what only a training table holds: its badge, and each trained run's own test Rsum in its measured column
    assert 'class="badge train">trained on flickr30k<' in dom
    trained_runs = sorted(out.glob("flickr30k/t5-bert/*.json"))
    assert len(trained_runs) == 2
    for path in trained_runs:
        rsum = json.loads(path.read_text())["metrics"]["test"]["rsum"]
        assert f'<td class="measured" data-column="test/rsum">{rsum:.2f}</td>' in dom
