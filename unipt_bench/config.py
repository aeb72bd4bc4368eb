"""The spec types: what one run is (RunSpec, its towers and training), and the names that become paths.

Suite files are read into these by suite_file.py; everything else takes them as they are.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

from .configurable import Configurable, bounded
from .errors import UserError

MODES = ("estimate", "cpu", "cuda")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")  # the whole name: always NAME_RE.fullmatch
NAME_MAX = 64  # suite, config and method names become file names (with a time stamp beside them)


@dataclass
class TowerSpec:
    name: str
    backbone: str
    tuned: bool = True  # False: a task-specific encoder trained in full with the head (no PETL method)
    weights: str = "random"
    shape: dict[str, int] = field(default_factory=dict)  # profiling input shape, e.g. {"seq_len": 32}
    pooling: str | None = None  # how the task head pools this tower (None: the task's default)
    # a fingerprint of the architecture when it comes from outside the package (a checkpoint's config,
    # an hf: or timm: name), so that the digest changes when that architecture does; "" otherwise
    architecture: str = ""


@dataclass
class TrainSpec(Configurable):
    """A training run: dataset, budget, schedule and evaluation (the `train` table of a configuration)."""

    name: ClassVar[str] = "train"
    kind_label: ClassVar[str] = "table"
    dataset: str = ""  # easy-vqa, flickr30k, mscoco, vqav2, gqa, msrvtt, msvd, refcoco, refcoco+, refcocog
    format: str = ""  # the dataset's layout, checked by its loader (retrieval: "karpathy" or "precomp"); "": its default
    path: str = ""  # dataset folder under the data root (default: the dataset's name)
    steps: int = bounded(300, at_least=1)  # optimizer steps (unless `epochs` is set)
    epochs: float = bounded(0.0, at_least=0)  # > 0: passes over the training split (steps = epochs x batches per epoch)
    eval_every: int = bounded(100, at_least=1)  # validate (and checkpoint) every this many steps
    eval_batch: int = bounded(256, at_least=1)
    optimizer: str = "adamw"  # "adamw" or "adam" (Adam with L2 weight decay added to the gradient)
    lr: float = bounded(0.0, at_least=0)  # 0: the task recipe's learning rate
    backbone_lr_scale: float = bounded(1.0, above=0)  # learning-rate factor of the pre-trained backbone's own weights
    tower_lr_scales: dict = field(default_factory=dict)  # per tower: its backbone's factor instead, e.g. {image = 0.01}
    weight_decay: float = bounded(-1.0, at_least=-1)  # -1: the task recipe's
    grad_clip: float = bounded(-1.0, at_least=-1)  # max gradient norm; 0: none; -1: the task recipe's
    warmup: float = bounded(0.05, at_least=0, at_most=1)  # fraction of the steps with a linear warm-up
    schedule: str = "cosine"  # after the warm-up: "cosine" or "linear" to 0, "step" (x0.1 at decay_at), "constant"
    decay_at: float = bounded(0.6, at_least=0, at_most=1)  # step schedule: fraction of the steps where the rate drops
    hardest_after: float = bounded(0.0, at_least=0)  # VSE: epochs with every negative before hardest negatives only
    padding: str = "max_length"  # text: "max_length" (the tower's seq_len) or "longest" (the batch's longest, capped)
    max_len: int = bounded(0, at_least=0)  # text truncation in training (0: the tower's seq_len)
    amp: str = "none"  # "none", "bf16" or "fp16" (fp16 on a GPU)
    cache: str = "auto"  # hidden-state cache for side methods: "auto" (when inputs are deterministic), "off"
    val_size: int = bounded(1000, at_least=0)  # held out from train for model selection when the dataset has no val split
    max_train: int = bounded(0, at_least=0)  # use only this many training examples (0: all)
    max_eval: int = bounded(0, at_least=0)  # evaluate on at most this many examples (0: all)
    num_answers: int = bounded(0, at_least=0)  # VQA answer vocabulary size (0: every training answer)
    select_on: str = ""  # validation metric that picks the best checkpoint ("": the task's, e.g. rsum, accuracy)
    not_in_reference: list = field(default_factory=list)  # recipe keys the reference code does not give (reported)

    def __post_init__(self) -> None:
        choices = {"schedule": ("cosine", "linear", "step", "constant"), "amp": ("none", "bf16", "fp16"),
                   "cache": ("auto", "off"), "optimizer": ("adamw", "adam"), "padding": ("max_length", "longest")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise UserError(f"train.{key} must be one of {', '.join(allowed)}, got {getattr(self, key)!r}")
        if not self.dataset:
            raise UserError("train needs a dataset (easy-vqa, flickr30k, mscoco, vqav2, gqa, msrvtt, msvd, "
                            "refcoco, refcoco+ or refcocog)")
        for tower, scale in self.tower_lr_scales.items():
            if not isinstance(scale, int | float) or isinstance(scale, bool) or not 0 < scale < float("inf"):
                raise UserError(f"train.tower_lr_scales.{tower} must be a positive number, got {scale!r}")
        unknown = sorted(set(map(str, self.not_in_reference)) - {f.name for f in fields(self)})
        if unknown:
            raise UserError(f"train.not_in_reference names unknown keys: {', '.join(unknown)}")


@dataclass
class DdpSpec(Configurable):
    """DistributedDataParallel's settings for runs on several GPUs (the `ddp` table of a configuration).

    A key left out keeps DDP's own default, which is also what is passed to DDP: naming bucket_cap_mb
    (even as 25) makes DDP's first bucket as large as the others instead of 1 MiB.
    """

    name: ClassVar[str] = "ddp"
    kind_label: ClassVar[str] = "table"
    bucket_cap_mb: float = bounded(25.0, above=0)  # DDP's default bucket size (MiB)
    gradient_as_bucket_view: bool = False  # DDP's default: gradients are tensors of their own, copied into buckets


@dataclass
class RunSpec:
    """Everything one run needs; its digest decides whether a stored result is still current."""

    suite: str
    config: str
    label: str  # the method's name in this configuration (unique within it)
    method: str
    method_options: dict[str, Any]
    task: str
    task_options: dict[str, Any]
    towers: list[TowerSpec]
    batch: int  # per-device batch
    gpus: int  # data-parallel devices the configuration's global batch is split over
    steps: int
    seed: int
    mode: str
    accumulate: int = 1  # micro-batches per optimizer step (gradient accumulation)
    attention: str = "sdpa"  # attention kernel traced: "sdpa" (fused) or "eager" (see attention.py)
    train: dict[str, Any] | None = None  # a TrainSpec's fields: train on real data; None: profile only
    title: str = ""
    paper: str | None = None  # the paper table this configuration mirrors, e.g. "table5-bert"
    # command-line changes to the suite's recipe (max_steps, batch, eval_every): part of the digest, so a
    # shortened run never replaces, compares with or gates against a full one; omitted when empty
    overrides: dict[str, Any] = field(default_factory=dict)
    # DistributedDataParallel settings as written in the suite (DdpSpec fields), for gpus > 1; omitted when empty
    ddp: dict[str, Any] = field(default_factory=dict)
    # memory options that compose with any method (memory_options.py), only those not at their default; omitted
    # when empty, so a spec without them keeps its digest
    memory: dict[str, str] = field(default_factory=dict)
    order: int = 0  # position in the suite (display only; not part of the digest)

    @property
    def key(self) -> str:
        """config/label/mode, then "/train" for a training run and its overrides ("/batch8-max_steps4"): a profile
        and a training of one method, or a shortened and a full one, are different runs with results of their own."""
        key = f"{self.config}/{self.label}/{self.mode}"
        if self.train is not None:
            key += "/train"
        if self.overrides:
            key += "/" + "-".join(f"{k}{v}" for k, v in sorted(self.overrides.items()))
        return key

    def to_dict(self) -> dict[str, Any]:
        """As stored in results: a tower's `architecture` and the spec's `overrides` and `ddp` only where they are
        set (registered, random-weight towers, full recipes and DDP's defaults are written, and digested, as before
        those fields)."""
        data = asdict(self)
        for tower in data["towers"]:
            if not tower["architecture"]:
                del tower["architecture"]
        for key in ("overrides", "ddp", "memory"):
            if not data[key]:
                del data[key]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSpec:
        towers = [TowerSpec(**t) for t in data["towers"]]
        return cls(**{**data, "towers": towers})

    def digest(self) -> str:
        data = self.to_dict()
        data.pop("order")
        data.pop("title")
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Suite:
    name: str
    description: str
    path: str
    specs: list[RunSpec]  # mode is filled in by `with_mode`
    trackers: list[str] | None = None  # the trackers to run (the primary one always runs); None: all

    def with_mode(self, mode: str, train: bool = False) -> list[RunSpec]:
        """The runs in `mode`; profiles (recipes dropped) unless `train`, where jobs.plan decides per run."""
        return [RunSpec.from_dict({**s.to_dict(), "mode": mode, **({} if train else {"train": None})})
                for s in self.specs]


def name_problem(value: object) -> str:
    """Why `value` cannot be a suite, config, label or tower name ("" when it can): names become paths."""
    if not isinstance(value, str):
        return f"must be a string, got {value!r}"
    if len(value) > NAME_MAX:
        return f"{value[:24]!r}... is {len(value)} characters long (at most {NAME_MAX})"
    if not NAME_RE.fullmatch(value):
        return f"{value!r} may hold only letters, digits and _ . + - (and start with a letter or digit)"
    return ""


def check_name(value: object, what: str) -> str:
    """`value` if it is a valid name, else a one-line UserError naming `what` it is."""
    problem = name_problem(value)
    if problem:
        raise UserError(f"{what} name {problem}")
    return value  # type: ignore[return-value]
