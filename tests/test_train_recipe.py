"""A recipe resolved against its data and the command line: step budget, per-part learning rates, clipping."""

from __future__ import annotations

import pytest
import torch

from unipt_bench.build import build
from unipt_bench.config import RunSpec, TrainSpec
from unipt_bench.errors import UserError
from unipt_bench.suite_file import load_suite
from unipt_bench.train_recipe import (
    build_optimizer,
    grad_clip,
    hardest_from_step,
    resolve_budget,
    weight_decay,
)


def smoke(config: str, label: str, **changes) -> RunSpec:
    (spec,) = [s for s in load_suite("smoke").with_mode("cpu") if s.config == config and s.label == label]
    return RunSpec.from_dict({**spec.to_dict(), **changes})


def test_epochs_become_steps_and_overrides_shorten_them() -> None:
    spec = smoke("bert", "full", batch=10)
    train = TrainSpec(dataset="flickr30k", epochs=2.5, eval_every=1000)
    assert resolve_budget(train, spec, 105).steps == 25  # 10 full batches per epoch (the last 5 dropped)
    assert resolve_budget(train, spec, 105).eval_every == 25  # never later than the last step
    short = RunSpec.from_dict({**spec.to_dict(), "overrides": {"max_steps": 4, "eval_every": 2}})
    assert (resolve_budget(train, short, 105).steps, resolve_budget(train, short, 105).eval_every) == (4, 2)
    assert resolve_budget(TrainSpec(dataset="flickr30k", steps=7), spec, 105).steps == 7
    assert hardest_from_step(TrainSpec(dataset="flickr30k", hardest_after=1.0), spec, 105) == 10
    with pytest.raises(UserError, match="fewer than one batch of 10"):
        resolve_budget(train, spec, 9)


def test_each_towers_backbone_trains_at_its_own_rate() -> None:
    built = build(smoke("vit-clip", "full"))
    train = TrainSpec(dataset="flickr30k", lr=1e-3, backbone_lr_scale=0.1, tower_lr_scales={"image": 0.01})
    optimizer, params = build_optimizer(built, train)
    rates = {group["part"]: group["lr"] for group in optimizer.param_groups}
    assert rates == pytest.approx({"other": 1e-3, "backbone:text": 1e-4, "backbone:image": 1e-5})
    counted = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    assert counted == sum(p.numel() for p in built.model.parameters() if p.requires_grad)
    assert counted == sum(p.numel() for p in params)
    assert isinstance(optimizer, torch.optim.AdamW)
    with pytest.raises(UserError, match="names no tower of this configuration: audio"):
        build_optimizer(built, TrainSpec(dataset="flickr30k", tower_lr_scales={"audio": 0.5}))


def test_a_method_that_leaves_the_backbone_frozen_has_one_group() -> None:
    built = build(smoke("bert", "unipt"))
    optimizer, _ = build_optimizer(built, TrainSpec(dataset="flickr30k", backbone_lr_scale=0.1, optimizer="adam"))
    assert [g["part"] for g in optimizer.param_groups] == ["other"]
    assert type(optimizer).__name__ == "Adam"


def test_the_task_recipe_fills_what_the_table_leaves_out() -> None:
    built = build(smoke("bert", "unipt"))
    assert grad_clip(TrainSpec(dataset="flickr30k"), built) == built.task.recipe.grad_clip
    assert grad_clip(TrainSpec(dataset="flickr30k", grad_clip=0.0), built) is None
    assert weight_decay(TrainSpec(dataset="flickr30k"), built) == built.task.recipe.weight_decay
    assert weight_decay(TrainSpec(dataset="flickr30k", weight_decay=0.0), built) == 0.0


def test_bad_tower_rates_are_refused() -> None:
    with pytest.raises(UserError, match="tower_lr_scales.image must be a positive number"):
        TrainSpec(dataset="flickr30k", tower_lr_scales={"image": 0})


def test_schedules_after_the_warm_up() -> None:
    from unipt_bench.train import schedule

    linear = schedule(TrainSpec(dataset="flickr30k", steps=11, warmup=0.2, schedule="linear"))  # 2 warm-up steps
    assert [linear(s) for s in (0, 1, 2, 7, 11)] == pytest.approx([0.5, 1.0, 1.0, 1 - 5 / 9, 0.0])
    cosine = schedule(TrainSpec(dataset="flickr30k", steps=10, warmup=0.0))
    assert [cosine(s) for s in (0, 5, 10)] == pytest.approx([1.0, 0.5, 0.0])
    step = schedule(TrainSpec(dataset="flickr30k", steps=10, warmup=0.0, schedule="step", decay_at=0.6))
    assert [step(s) for s in (5, 6)] == pytest.approx([1.0, 0.1])
