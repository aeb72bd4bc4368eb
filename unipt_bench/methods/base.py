"""The method interface: hyperparameters as dataclass fields, `apply(backbone)` returns the tuned tower."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

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

    `kinds` lists the backbone kinds it applies to; other kinds raise NotApplicable. `side` methods run
    the backbone under torch.no_grad(), so the backbone keeps no activations for backward.
    """

    kind_label = "method"
    kinds: ClassVar[frozenset[str]] = TOKEN_KINDS
    side: ClassVar[bool] = False
    module_names: ClassVar[tuple[str, ...]] = ()  # names of the modules it adds (memory attribution)

    def apply(self, backbone: Backbone, out_dim: int) -> nn.Module:
        """Adapt `backbone`; return a module mapping inputs to a BackboneOutput.

        out_dim is the task's embedding width E; side methods project to it, the others keep the
        backbone's width (the task head projects).
        """
        if backbone.kind not in self.kinds:
            raise NotApplicable(
                f"{self.name} does not apply to a {backbone.kind} backbone (applies to: {', '.join(sorted(self.kinds))})"
            )
        return self.build(backbone, out_dim)

    def build(self, backbone: Backbone, out_dim: int) -> nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    def output_width(self, backbone: Backbone, out_dim: int) -> int:
        """Width of the tuned tower's `last` tokens: side methods project to out_dim."""
        return out_dim if self.side else backbone.width



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
        keys = inputs.get("cache_keys") if self.cache is not None else None
        out = None if keys is None else self.cache.lookup(keys, next(self.side.parameters()).device)
        if out is None:
            with torch.no_grad():
                out = self.backbone(inputs, all_hidden=True)
            if keys is not None:
                self.cache.add(keys, out)
        return self.side(out)
