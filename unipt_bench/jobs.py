"""Which job each run of a suite does (train on real data, or profile on the configured shapes), and the
command line's changes to the recipe (overrides), recorded in the spec.

`--job auto` trains a configuration with a recipe (a `train` table) when its dataset is under the data root
and a GPU is visible; a configuration that mirrors no paper table (the quickstart) also trains on the CPU.
Everything else is profiled, with one line per suite saying why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .config import RunSpec, TrainSpec
from .errors import UserError

JOBS = ("auto", "train", "profile")


@dataclass
class Overrides:
    """Command-line changes for a quick try: they enter each spec's `overrides` (and so its digest)."""

    max_steps: int | None = None  # training: stop after this many steps
    batch: int | None = None  # per-device batch, training and profiling
    eval_every: int | None = None  # training: validate every this many steps

    def for_spec(self, trains: bool) -> dict[str, int]:
        """The overrides that change this run: step budget and evaluation only matter when it trains."""
        given = {"batch": self.batch}
        if trains:
            given |= {"max_steps": self.max_steps, "eval_every": self.eval_every}
        return {k: v for k, v in given.items() if v is not None}


@dataclass
class Plan:
    specs: list[RunSpec]
    notes: list[str] = field(default_factory=list)  # one line per reason runs were profiled, naming their configs

    @property
    def trains(self) -> bool:
        return any(s.train is not None for s in self.specs)


def select_configs(specs: list[RunSpec], wanted: str | None, suite: str) -> list[RunSpec]:
    """Keep the runs of the comma-separated configurations in `wanted` (all when None)."""
    if wanted is None:
        return specs
    names = [w.strip() for w in wanted.split(",") if w.strip()]
    if not names:
        raise UserError(f"--configs {wanted!r} names no configuration; give names, comma-separated")
    available = list(dict.fromkeys(s.config for s in specs))
    unknown = [n for n in names if n not in available]
    if unknown:
        raise UserError(f"--configs: {', '.join(unknown)} not in {suite} (it has: {', '.join(available)})")
    return [s for s in specs if s.config in names]


def data_missing(spec: RunSpec, data_root: Path) -> str:
    """Why the spec's dataset cannot be read ("" when it can), as its task says."""
    from .tasks import TASKS

    train = TrainSpec.from_options(spec.train or {})
    return TASKS.get(spec.task).from_options(spec.task_options).data_missing(train, data_root)


def check_data(specs: list[RunSpec], data_root: Path) -> None:
    """Read every dataset a run will train on, once, in this process: a malformed file (a truncated JSON, an
    image that does not decode, features of the wrong shape) or a training split smaller than one batch stops
    the command in one line before any run starts or any result is written. Data objects may add a
    `verify()` for what loading leaves unread."""
    from .tasks import TASKS
    from .train import tower_modalities

    loaded: dict[str, object] = {}
    for spec in specs:
        if spec.train is None:
            continue
        key = json.dumps([spec.task, spec.task_options, spec.train, [t.backbone for t in spec.towers]],
                         sort_keys=True)
        if key not in loaded:
            train = TrainSpec.from_options(spec.train)
            task = TASKS.get(spec.task).from_options(spec.task_options)
            loaded[key] = data = task.load_data(train, data_root, spec.seed, tower_modalities(spec))
            if hasattr(data, "verify"):
                data.verify()
        check_batch(spec, loaded[key].size("train"))  # type: ignore[attr-defined]


def check_batch(spec: RunSpec, examples: int) -> None:
    """A training step takes batch x gpus rows of the training split (train.batch_rows): it must hold one."""
    rows = spec.batch * spec.gpus
    if examples < rows:
        raise UserError(f"{spec.suite}/{spec.config}/{spec.label}: the training split has {examples} examples, "
                        f"fewer than one batch of {rows}" + (f" ({spec.gpus} GPUs x {spec.batch})" if spec.gpus > 1
                                                             else "") + "; give a smaller --batch")


def plan(specs: list[RunSpec], job: str, data_root: Path, gpu: bool, overrides: Overrides | None = None) -> Plan:
    """Decide train or profile per spec (dropping the recipe of profiled ones) and apply the overrides.

    job "train" refuses, in one line, configurations whose data are missing; configurations without a recipe are
    profiled with a note (and if none of the selected ones has a recipe, it refuses).
    """
    if job not in JOBS:
        raise UserError(f"--job must be one of {', '.join(JOBS)}, got {job!r}")
    overrides = overrides or Overrides()
    missing: dict[str, str] = {}  # config -> why its data cannot be read
    reasons: dict[str, list[str]] = {}  # why runs were profiled -> the configurations it concerns
    out = []
    for spec in specs:
        trains = spec.train is not None and job != "profile"
        if trains and spec.config not in missing:
            missing[spec.config] = data_missing(spec, data_root)
        if trains and missing[spec.config]:
            if job == "train":
                raise UserError(f"{spec.suite}/{spec.config}: cannot train: {missing[spec.config]} "
                                f"(--data-root {data_root}); --job profile profiles it instead")
            trains = False
            reasons.setdefault(f"dataset {spec.train['dataset']} not found ({missing[spec.config]}): profiled",
                               []).append(spec.config)
        elif trains and job == "auto" and not gpu and spec.paper is not None:
            trains = False
            reasons.setdefault("no GPU, so profiled; --job train trains on the CPU", []).append(spec.config)
        if job == "train" and spec.train is None:
            reasons.setdefault("no train table (recipe) in the suite: profiled", []).append(spec.config)
        data = spec.to_dict()
        data["train"] = spec.train if trains else None
        changes = overrides.for_spec(trains)
        if "batch" in changes:
            data["batch"] = changes["batch"]
        data["overrides"] = changes
        out.append(RunSpec.from_dict(data))
    if job == "train" and not any(s.train is not None for s in out):
        raise UserError("--job train: none of the selected configurations has a train table (a recipe) to train with")
    return Plan(out, [f"{', '.join(dict.fromkeys(configs))}: {reason}" for reason, configs in reasons.items()])
