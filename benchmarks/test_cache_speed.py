"""Benchmark: epoch time of a UniPT question tower with and without the hidden-state cache.

The tower: a frozen backbone under no_grad + UniPT, on easy-vqa questions (2,048 per epoch, batches
of 32): the quickstart's pretrained MiniLM-L6 (6 layers, width 384), and BERT-base (12 layers, width
768, random weights). With the cache, the first epoch computes and stores the backbone's hidden
states; later epochs reuse them, so the saving grows with the backbone.
Run: python -m pytest benchmarks --benchmark-only
"""

from __future__ import annotations

import pytest
import torch

from unipt_bench.backbones import create_backbone, weights_source
from unipt_bench.cache import HiddenCache
from unipt_bench.config import TowerSpec
from unipt_bench.data.inputs import TowerInputs
from unipt_bench.data.vqa import load_easy_vqa
from unipt_bench.methods import create_method

QUESTIONS = 2048
BATCH = 32


WEIGHTS = {"minilm-l6": "pretrained", "bert-base": "random"}


def question_tower(name: str, cached: bool):
    torch.manual_seed(0)
    backbone = create_backbone(name, WEIGHTS[name])
    tower = create_method("unipt").apply(backbone, 256)
    if cached:
        tower.cache = HiddenCache()
    spec = TowerSpec("question", name, weights=WEIGHTS[name], shape={"seq_len": 13})
    encode = TowerInputs(spec, backbone, weights_source(name, WEIGHTS[name]))
    questions = load_easy_vqa("train").questions[:QUESTIONS]
    batches = [encode(questions[i : i + BATCH]) for i in range(0, QUESTIONS, BATCH)]
    optimizer = torch.optim.AdamW([p for p in tower.parameters() if p.requires_grad], lr=1e-4, foreach=True)

    def epoch() -> None:
        for batch in batches:
            loss = tower(batch).last.pow(2).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return epoch


@pytest.mark.parametrize("cached", [False, True], ids=["no-cache", "cache"])
@pytest.mark.parametrize("name", list(WEIGHTS))
def test_epoch_time_after_the_first(benchmark, name: str, cached: bool) -> None:
    epoch = question_tower(name, cached)
    epoch()  # the first epoch: fills the cache when there is one
    benchmark.pedantic(epoch, rounds=3, iterations=1)
