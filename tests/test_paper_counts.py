"""Trainable parameters of UniPT and LST on every paper configuration in the suites, against closed forms."""

from __future__ import annotations

import pytest
import torch

from unipt_bench.backbones import create_backbone
from unipt_bench.build import build, parameter_counts
from unipt_bench.suite_file import load_suite

PAPER_SUITES = ("flickr30k", "mscoco", "msrvtt", "msvd", "vqa", "gqa", "refcoco")
SPECS = [
    s for suite in PAPER_SUITES for s in load_suite(suite).with_mode("estimate")
    if s.method in ("lst", "unipt") and s.config != "t5-bert-eager"
]


@pytest.mark.parametrize("spec", SPECS, ids=[f"{s.suite}/{s.key}" for s in SPECS])
def test_side_method_counts_on_paper_configurations(spec) -> None:
    """Each tuned tower leaves trainable what the method's closed form states for its backbone."""
    with torch.device("meta"):
        built = build(spec, weights=False)
        expected = sum(
            built.method.closed_form_trainable(create_backbone(t.backbone), built.task.out_dim)
            for t in spec.towers if t.tuned
        )
    assert parameter_counts(built)["trainable_method_params"] == expected
