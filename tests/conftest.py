"""Shared fixtures: tests run on CPU, offline, with tiny backbones."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub access in tests
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402

from unipt_bench.config import RunSpec, TowerSpec  # noqa: E402


def make_spec(
    method: str = "unipt",
    backbone: str = "tiny-bert",
    mode: str = "estimate",
    options: dict | None = None,
    batch: int = 4,
    embed_dim: int = 16,
    second: TowerSpec | None = None,
    shape: dict | None = None,
) -> RunSpec:
    """A two-tower retrieval spec: the tuned `backbone` tower plus a small untuned second tower."""
    first = TowerSpec("a", backbone, shape=shape or {})
    return RunSpec(
        suite="test", config="c", label=method, method=method, method_options=options or {}, task="retrieval",
        task_options={"embed_dim": embed_dim}, towers=[first, second or TowerSpec("b", "tiny-regions", tuned=False)],
        batch=batch, gpus=1, steps=2, seed=0, mode=mode,
    )


@pytest.fixture
def spec_factory():
    return make_spec
