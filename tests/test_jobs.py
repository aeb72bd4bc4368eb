"""Which job each run does (`--job auto|train|profile`) and how command-line overrides enter the spec."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest

from tests.datasets_flickr import write_flickr_precomp
from unipt_bench.config import RunSpec
from unipt_bench.errors import UserError
from unipt_bench.jobs import Overrides, plan, select_configs
from unipt_bench.suite_file import load_suite

RECIPE = {"dataset": "flickr30k", "format": "precomp", "steps": 10}


@cache
def flickr30k():
    return load_suite("flickr30k")


def specs(paper: str | None = "table5-bert") -> list[RunSpec]:
    """flickr30k's t5-bert runs for unipt and adapter, with a minimal recipe and the paper table given."""
    chosen = [s for s in flickr30k().with_mode("cpu") if s.config == "t5-bert" and s.label in ("unipt", "adapter")]
    return [RunSpec.from_dict({**s.to_dict(), "train": dict(RECIPE), "paper": paper}) for s in chosen]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_flickr_precomp(root / "flickr30k", images=10, eval_images=5, regions=2, dim=16)
    return root


def test_auto_profiles_when_the_dataset_is_missing_and_says_where_it_looked(tmp_path) -> None:
    planned = plan(specs(), "auto", tmp_path, gpu=True)
    assert all(s.train is None for s in planned.specs)
    (note,) = planned.notes
    assert "dataset flickr30k not found" in note and str(tmp_path / "flickr30k" / "precomp" / "train_ims.npy") in note


def test_auto_trains_a_paper_suite_only_on_a_gpu(data_root) -> None:
    assert all(s.train == RECIPE for s in plan(specs(), "auto", data_root, gpu=True).specs)
    on_cpu = plan(specs(), "auto", data_root, gpu=False)
    assert all(s.train is None for s in on_cpu.specs)
    assert on_cpu.notes == ["t5-bert: no GPU, so profiled; --job train trains on the CPU"]
    assert all(s.train == RECIPE for s in plan(specs(), "train", data_root, gpu=False).specs)
    assert all(s.train == RECIPE for s in plan(specs(paper=None), "auto", data_root, gpu=False).specs)


def test_job_train_refuses_missing_data_in_one_line(tmp_path) -> None:
    with pytest.raises(UserError, match=r"flickr30k/t5-bert: cannot train: missing .*train_ims.npy") as caught:
        plan(specs(), "train", tmp_path, gpu=True)
    assert "\n" not in str(caught.value)


def test_job_train_needs_a_recipe() -> None:
    smoke = load_suite("smoke").with_mode("cpu")[:2]
    with pytest.raises(UserError, match="none of the selected configurations has a train table"):
        plan(smoke, "train", Path("nowhere"), gpu=True)


def test_job_profile_drops_the_recipe_and_keeps_the_profile_digest(data_root) -> None:
    profiled = plan(specs(), "profile", data_root, gpu=True, overrides=Overrides(max_steps=4, eval_every=2))
    plain = [RunSpec.from_dict({**s.to_dict(), "train": None}) for s in specs()]
    assert [s.digest() for s in profiled.specs] == [s.digest() for s in plain]  # step budgets change no profile
    assert all(s.overrides == {} and "overrides" not in s.to_dict() for s in profiled.specs)


def test_overrides_are_recorded_and_change_the_digest(data_root) -> None:
    full = plan(specs(), "train", data_root, gpu=False).specs
    short = plan(specs(), "train", data_root, gpu=False, overrides=Overrides(max_steps=4, batch=8, eval_every=2)).specs
    assert short[0].overrides == {"batch": 8, "max_steps": 4, "eval_every": 2}
    assert short[0].batch == 8 and full[0].batch == 112
    assert {s.digest() for s in short}.isdisjoint({s.digest() for s in full})
    profiled = plan(specs(), "profile", data_root, gpu=False, overrides=Overrides(batch=8)).specs
    assert profiled[0].overrides == {"batch": 8} and profiled[0].batch == 8


def test_select_configs() -> None:
    every = flickr30k().with_mode("estimate")
    assert {s.config for s in select_configs(every, "t5-bert,t1", "flickr30k")} == {"t5-bert", "t1"}
    assert select_configs(every, None, "flickr30k") == every
    with pytest.raises(UserError, match="--configs: nope not in flickr30k"):
        select_configs(every, "nope", "flickr30k")
    with pytest.raises(UserError, match="names no configuration"):
        select_configs(every, ",", "flickr30k")
