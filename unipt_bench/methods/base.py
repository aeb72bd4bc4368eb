"""The method interface: hyperparameters as dataclass fields, `apply(backbone)` returns the tuned tower."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..backbones.base import Backbone, BackboneOutput
from ..configurable import Configurable
from ..errors import NotApplicable
from ..registry import Registry

METHODS: Registry[type[Method]] = Registry("method")
TOKEN_KINDS = frozenset({"transformer", "joint"})  # transformer encoders, mono-modal or joint cross-modal


register_method = METHODS.named


@dataclass
class Method(Configurable):
    """A PETL method. Contract of `apply`: afterwards `requires_grad` marks exactly what trains.

    A method applies to every backbone that offers the capabilities in `needs` (protocols in
    backbones/base.py); a method with one design per architecture (the side networks) lists the kinds
    it has a design for in `kinds` (None: no such restriction). Anything else raises NotApplicable with
    the reason. `side` methods run the backbone under torch.no_grad(), so it keeps no activations.
    """

    kind_label = "method"
    kinds: ClassVar[frozenset[str] | None] = None
    needs: ClassVar[tuple[type, ...]] = ()
    side: ClassVar[bool] = False
    module_names: ClassVar[tuple[str, ...]] = ()  # the modules it adds (tests: such a method owns what trains)
    checks_backbones: ClassVar[bool] = False  # check_backbone runs on each tuned tower when a suite is read
    checkpointing_refusal: ClassVar[str] = ""  # why checkpointing the backbone's blocks cannot compose with it

    def apply(self, backbone: Backbone, out_dim: int) -> nn.Module:
        """Adapt `backbone`; return a module mapping inputs to a BackboneOutput.

        out_dim is the task's embedding width E; side methods project to it, the others keep the
        backbone's width (the task head projects).
        """
        reason = self.refusal(backbone)
        if reason:
            raise NotApplicable(reason)
        return self.build(backbone, out_dim)

    def refusal(self, backbone: Backbone) -> str:
        """Why this method does not apply to `backbone` ("" when it does): a missing design or capability."""
        if self.kinds is not None and backbone.kind not in self.kinds:
            return (f"{self.name} has no design for a {backbone.kind} backbone "
                    f"(designs: {', '.join(sorted(self.kinds))})")
        for capability in self.needs:
            missing = backbone.missing(capability)
            if missing:
                return f"{self.name} needs {capability.__name__}: {missing}"
        return ""

    def check_backbone(self, backbone: Backbone) -> None:
        """Raise UserError for options that cannot work on `backbone` (a meta copy, when a suite is read)."""

    def recorded(self) -> dict[str, Any]:
        """What a result's protocol records about how `apply` built the method (merged into the protocol)."""
        return {}

    def optimizer(self, model: nn.Module, lr: float, betas: tuple[float, float],
                  weight_decay: float) -> torch.optim.Optimizer | None:
        """The method's own optimizer over `model`'s trainable parameters, or None for the run's AdamW."""
        return None

    def build(self, backbone: Backbone, out_dim: int) -> nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    def output_width(self, backbone: Backbone, out_dim: int) -> int:
        """Width of the tuned tower's `last` tokens: side methods project to out_dim."""
        return out_dim if self.side else backbone.width

    def closed_form_trainable(self, backbone: Backbone, out_dim: int) -> int:
        """Trainable parameters `apply(backbone, out_dim)` leaves, written from the backbone's shape.

        Each method states its count as docs/methods.md gives it, next to its own code, and the tests
        compare it with what `apply` actually leaves trainable on every backbone the method applies to.
        Call it on the backbone before `apply` (inserted methods change the backbone).
        """
        raise NotImplementedError(
            f"method {self.name!r} states no closed form of its trainable parameters: define "
            f"closed_form_trainable(backbone, out_dim) on its class (see docs/methods.md)"
        )


def linear_params(i: int, o: int) -> int:
    """Linear(i -> o) or Conv1x1(i -> o) with a bias: i*o + o (docs/methods.md §0)."""
    return i * o + o


def norm_params(d: int) -> int:
    """LayerNorm(d) or BatchNorm(d): a weight and a bias of d each."""
    return 2 * d


def down_params(i: int, o: int) -> int:
    """A projection followed by a norm: Linear(i -> o) + LayerNorm(o), or Conv1x1(i -> o) + BatchNorm(o)."""
    return linear_params(i, o) + norm_params(o)


def transformer_layer_params(d: int, ffn: int) -> int:
    """One BERT/RoBERTa/CLIP/ViT layer (or DETR encoder layer) of width d and FFN width ffn:
    q, k, v, o projections, two norms, FFN in and out (docs/methods.md §0)."""
    return 4 * linear_params(d, d) + 2 * norm_params(d) + linear_params(d, ffn) + linear_params(ffn, d)


def freeze(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.requires_grad_(False)
    return module


class SideTuned(nn.Module):
    """A frozen backbone run under no_grad (and in eval mode) beside a trainable side network.

    Gradients never enter the backbone and it saves no activations; only its hidden states are kept
    until the side network has consumed them.
    """

    def __init__(self, backbone: Backbone, side: nn.Module) -> None:
        super().__init__()
        self.backbone = freeze(backbone)
        self.side = side
        self.cache = None  # a HiddenCache, attached by training when the tower's inputs are deterministic

    def train(self, mode: bool = True) -> SideTuned:
        super().train(mode)
        self.backbone.eval()  # frozen features: no dropout, deterministic (cacheable) hidden states
        return self

    def forward(self, inputs: dict[str, torch.Tensor]) -> BackboneOutput:
        return self.side(self.frozen_states(inputs))

    def frozen_states(self, inputs: dict[str, torch.Tensor]) -> BackboneOutput:
        """The backbone's hidden states h_0..h_L, computed under no_grad or read from the cache."""
        keys = inputs.get("cache_keys") if self.cache is not None else None
        out = None if keys is None else self.cache.lookup(keys, next(self.side.parameters()).device)
        if out is None:
            with torch.no_grad():
                out = self.backbone(inputs, all_hidden=True)
            if keys is not None:
                self.cache.add(keys, out)
        return out
