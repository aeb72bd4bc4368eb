"""E3VA, Parameter, Memory and Time Efficient Visual Adapter (Yin et al., ACM MM 2023, arXiv 2306.09729).

Adapters on a "gradient backpropagation highway" parallel to the frozen backbone (Fig. 2): the output of
every layer's attention module and MLP (the intermediate activations Fig. 2 sends to E3VA) feeds its own
low-rank adapter; the adapters sit side by side, not stacked, and their outputs sum along the highway,
which joins the backbone's output through a trainable norm. The backbone runs under no_grad: gradients
reach only the adapters and the norm. docs/methods.md §E3VA.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from ..backbones.base import AdapterSites, Backbone, BackboneOutput
from ..configurable import bounded
from ..errors import UserError
from .base import TOKEN_KINDS, Method, SideTuned, linear_params, norm_params, register_method


def highway_adapter(width: int, bottleneck: int) -> nn.Sequential:
    """Down(D -> b), GELU, Up(b -> D), Up zero: the highway starts empty, the output starts at Norm(h_L)."""
    up = nn.Linear(bottleneck, width)
    nn.init.zeros_(up.weight)
    nn.init.zeros_(up.bias)
    return nn.Sequential(nn.Linear(width, bottleneck), nn.GELU(), up)


class SiteActivations(nn.Module):
    """The backbone, reporting as `hidden` the outputs of its adapter sites (attention out, MLP out per layer)."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone
        self.sites = [getattr(parent, attr) for parent, attr, _ in backbone.adapter_sites()]  # not registered twice

    def forward(self, inputs: dict[str, torch.Tensor], all_hidden: bool = True) -> BackboneOutput:
        captured: list[torch.Tensor] = []  # a_1, m_1, ..., a_L, m_L: [B, N, D] each
        handles = [site.register_forward_hook(lambda _m, _i, out: captured.append(out)) for site in self.sites]
        try:
            out = self.backbone(inputs)
        finally:
            for handle in handles:
                handle.remove()
        return replace(out, hidden=tuple(captured))


class Highway(nn.Module):
    """s = sum_k Adapter_k(a_k) over the 2 L site activations; last = Norm(h_L + s) (docs/methods.md §E3VA)."""

    def __init__(self, width: int, sites: int, bottleneck: int) -> None:
        super().__init__()
        self.adapters = nn.ModuleList(highway_adapter(width, bottleneck) for _ in range(sites))
        self.norm = nn.LayerNorm(width)

    def forward(self, out: BackboneOutput) -> BackboneOutput:
        highway = sum(adapter(a) for adapter, a in zip(self.adapters, out.hidden, strict=True))  # [B, N, D]
        return replace(out, hidden=(out.last,), last=self.norm(out.last + highway))  # last: [B, N, D]


@register_method("e3va")
@dataclass
class E3VA(Method):
    module_names = ("side",)
    kinds = TOKEN_KINDS
    needs = (AdapterSites,)
    side = True
    reduction: int = bounded(16, at_least=1)  # adapter width b = D / 16 (this benchmark's adapter width)

    def refusal(self, backbone: Backbone) -> str:
        """E3VA's highway carries one width through a stack of blocks; at a stage change it inherits the
        backbone's own downsampling layer (Swin's patch merging, Fig. 2)."""
        reason = super().refusal(backbone)
        if reason and backbone.kind == "cnn":
            reason += ("; the highway inherits the backbone's separate downsampling layers (Swin's patch merging), "
                       "and a ResNet stage downsamples inside its first residual block, so there is none to inherit")
        return reason

    def bottleneck(self, backbone: Backbone) -> int:
        if backbone.width % self.reduction:
            raise UserError(f"e3va: reduction {self.reduction} does not divide the width {backbone.width}")
        return backbone.width // self.reduction

    def build(self, backbone: Backbone, out_dim: int) -> nn.Module:
        sites = len(backbone.adapter_sites())
        return SideTuned(SiteActivations(backbone), Highway(backbone.width, sites, self.bottleneck(backbone)))

    def output_width(self, backbone: Backbone, out_dim: int) -> int:
        return backbone.width  # the highway joins the backbone's output: width D

    def closed_form_trainable(self, backbone: Backbone, out_dim: int) -> int:
        """2 L adapters Down(D -> b) + Up(b -> D), and Norm(D): 2 L (2 D b + b + D) + 2 D (docs/methods.md §E3VA)."""
        d, b = backbone.width, self.bottleneck(backbone)
        sites = len(backbone.adapter_sites())
        return sites * (linear_params(d, b) + linear_params(b, d)) + norm_params(d)
