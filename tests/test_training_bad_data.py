"""A training run's dataset is read before any run starts: a broken dataset is one line naming the file and
what was expected, exit 2, and nothing is written (not even an error result)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.datasets import write_karpathy, write_precomp
from tests.test_bad_inputs import invoke

SUITE = """\
name = "tiny-train"
task_options = {{ embed_dim = 16 }}

[[configs]]
name = "c"
paper = "table5-bert"
batch = 4
towers = [{{ name = "text", backbone = "tiny-bert", seq_len = 8 }}, {image}]
train = {{ dataset = "flickr30k", format = "{format}", steps = 2 }}
methods = ["unipt"]
"""
REGIONS = '{ name = "image", backbone = "tiny-regions", tuned = false }'
PIXELS = '{ name = "image", backbone = "resnet-small", tuned = false, image_size = 32 }'


def break_missing_file(root: Path) -> str:
    (root / "precomp" / "test_caps.txt").unlink()
    return "test_caps.txt"


def break_truncated_json(root: Path) -> str:
    path = root / "dataset_flickr30k.json"
    path.write_text(path.read_text()[:200])
    return "dataset_flickr30k.json"


def break_image(root: Path) -> str:
    path = next((root / "images").glob("test_*.png"))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # a PNG signature and nothing of an image
    return path.name


def break_feature_shape(root: Path) -> str:
    np.save(root / "precomp" / "dev_ims.npy", np.zeros((6, 16), dtype=np.float32))  # 2-D: no regions
    return "dev_ims.npy"


CASES = {  # name: (layout, how to break it)
    "a missing file": ("precomp", break_missing_file),
    "a truncated JSON": ("karpathy", break_truncated_json),
    "an image that does not decode": ("karpathy", break_image),
    "features of the wrong shape": ("precomp", break_feature_shape),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_broken_dataset_stops_the_command_before_anything_runs(case, tmp_path, monkeypatch, capsys) -> None:
    layout, breaks = CASES[case]
    root = tmp_path / "data" / "flickr30k"
    (write_precomp if layout == "precomp" else write_karpathy)(root)
    named = breaks(root)
    suite = tmp_path / "suite.toml"
    suite.write_text(SUITE.format(image=REGIONS if layout == "precomp" else PIXELS, format=layout))
    out = tmp_path / "store"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    code, _, err = invoke(["run", "--suite", str(suite), "--job", "train", "--data-root", str(tmp_path / "data"),
                           "--out", str(out)], monkeypatch, capsys)
    assert code == 2, err
    (line,) = err.strip().splitlines()
    assert line.startswith("error: ") and named in line and "Traceback" not in err
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*"))
