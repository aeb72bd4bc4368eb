"""Trainable parameters of UniPT and LST on every paper configuration in the suites, against closed forms."""

from __future__ import annotations

import pytest
import torch

from unipt_bench.build import build, parameter_counts
from unipt_bench.config import load_suite

from .test_architectures import lst_encdec_count, unipt_encdec_count, unipt_joint_count
from .test_cnn_methods import lst_cnn_count, unipt_cnn_count

PAPER_SUITES = ("flickr30k", "mscoco", "msrvtt", "msvd", "vqa", "gqa", "refcoco")
# (backbone) -> (width D, FFN width, layers) of the transformers; channels of the CNN
TRANSFORMERS = {"bert-base": (768, 3072, 12), "clip-vit-b32-frames": (768, 3072, 12),
                "clip-text-b32": (512, 2048, 12), "clip-vil": (768, 3072, 12)}
RESNEXT = (256, 512, 1024, 2048)


def layer(d: int, ffn: int) -> int:
    return 4 * (d * d + d) + 4 * d + (d * ffn + ffn) + (ffn * d + d)


def unipt_tokens(d: int, layers: int, e: int, m: int) -> int:
    return (layers + 1) * (d * m + 3 * m) + (m * m + 3 * m) + (m * e + e) + (m + 1)


def lst_tokens(d: int, ffn: int, layers: int, e: int, r: int = 4) -> int:
    w = d // r
    return (layers + 1) * (d * w + w) + layers + layers * layer(w, ffn // r) + 2 * w + (w * e + e)


def closed_form(method: str, backbone: str, out_dim: int, options: dict) -> int:
    if backbone == "resnext101-32x8d":
        return unipt_cnn_count(RESNEXT, out_dim) if method == "unipt" else lst_cnn_count(RESNEXT, out_dim)
    if backbone == "mdetr":
        return unipt_encdec_count(256, 3) if method == "unipt" else lst_encdec_count(256, 2048, 6)
    d, ffn, layers = TRANSFORMERS[backbone]
    if method == "lst":
        return lst_tokens(d, ffn, layers, out_dim)
    if backbone == "clip-vil":
        return unipt_joint_count(d, layers + 1)
    return unipt_tokens(d, layers, out_dim, out_dim // options.get("reduction", 2))


SPECS = [
    s for suite in PAPER_SUITES for s in load_suite(suite).with_mode("estimate")
    if s.label in ("lst", "unipt") and s.config != "t5-bert-eager"
]


@pytest.mark.parametrize("spec", SPECS, ids=[f"{s.suite}/{s.key}" for s in SPECS])
def test_side_method_counts_on_paper_configurations(spec) -> None:
    with torch.device("meta"):
        built = build(spec, weights=False)
    out_dim = built.task.out_dim
    expected = sum(
        closed_form(spec.method, t.backbone, out_dim, spec.method_options) for t in spec.towers if t.tuned
    )
    assert parameter_counts(built)["trainable_method_params"] == expected
