"""Prefix tuning (Li & Liang 2021, arXiv 2101.00190): learnable key/value prefixes in every attention layer.

The prefixes come from a reparameterisation MLP (Embedding(P, D) -> Linear(D, 512) -> tanh ->
Linear(512, 2*L*D)), as trained; only it trains, and gradients flow back through the whole backbone.
The prefixes join the keys and values inside the attention function, so every transformers model that
dispatches attention through `AttentionInterface` (BERT, RoBERTa, ViT, CLIP) works unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask
from transformers.models.bert.modeling_bert import eager_attention_forward

from ..attention import PREFIX_EAGER, PREFIX_SDPA
from ..backbones.base import AttentionFunctions, Backbone, BackboneOutput
from ..configurable import bounded
from .base import Method, freeze, linear_params, register_method


class PrefixSlot:
    """Tells one attention module where its layer's prefixes are (not a Module: no registration cycle)."""

    def __init__(self, owner: PrefixTuned, layer: int) -> None:
        self.owner = owner
        self.layer = layer


def with_prefixes(attention: Callable) -> Callable:
    """An attention function that prepends this layer's prefixes to keys and values ([B, H, P + N, hd])."""

    def prefix_attention(module: nn.Module, query, key, value, attention_mask, **kwargs):  # noqa: ANN001, ANN202
        slot = getattr(module, "prefix_slot", None)
        if slot is not None:
            pk, pv = slot.owner.layer_prefixes(slot.layer, query.shape[0])  # [B, H, P, hd] each
            key = torch.cat([pk, key], dim=2)
            value = torch.cat([pv, value], dim=2)
            if attention_mask is not None:  # [B|1, 1, Nq, Nk]: every query may attend every prefix
                b, _, nq, _ = attention_mask.shape
                keep = torch.ones if attention_mask.dtype == torch.bool else torch.zeros
                pad = keep(b, 1, nq, pk.shape[2], dtype=attention_mask.dtype, device=attention_mask.device)
                attention_mask = torch.cat([pad, attention_mask], dim=-1)
        return attention(module, query, key, value, attention_mask, **kwargs)

    return prefix_attention


AttentionInterface.register(PREFIX_SDPA, with_prefixes(sdpa_attention_forward))
AttentionMaskInterface.register(PREFIX_SDPA, sdpa_mask)
AttentionInterface.register(PREFIX_EAGER, with_prefixes(eager_attention_forward))
AttentionMaskInterface.register(PREFIX_EAGER, eager_mask)


class PrefixTuned(nn.Module):
    """Backbone + prefix encoder; computes all layers' prefixes once per forward."""

    def __init__(self, backbone: Backbone, length: int, bottleneck: int) -> None:
        super().__init__()
        self.backbone = freeze(backbone)
        layers, width = backbone.num_layers, backbone.width
        self.length, self.heads = length, backbone.num_heads
        self.prefix_tokens = nn.Embedding(length, width)
        self.prefix_mlp = nn.Sequential(
            nn.Linear(width, bottleneck), nn.Tanh(), nn.Linear(bottleneck, 2 * layers * width)
        )
        self.kv: torch.Tensor | None = None  # [L, 2, H, P, hd] during a forward
        for i, attention in enumerate(backbone.attention_modules()):
            attention.prefix_slot = PrefixSlot(self, i)
        backbone.set_attention(PREFIX_SDPA)

    def layer_prefixes(self, layer: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        kv = self.kv[layer]  # [2, H, P, hd]
        return kv[0].expand(batch, -1, -1, -1), kv[1].expand(batch, -1, -1, -1)

    def forward(self, inputs: dict[str, torch.Tensor]) -> BackboneOutput:
        p = self.prefix_mlp(self.prefix_tokens.weight)  # [P, 2*L*D]
        layers = self.backbone.num_layers
        self.kv = p.view(self.length, layers, 2, self.heads, -1).permute(1, 2, 3, 0, 4)  # [L, 2, H, P, hd]
        try:
            return self.backbone(inputs)
        finally:
            self.kv = None


@register_method("prompt")
@dataclass
class Prompt(Method):
    module_names = ("prefix_tokens", "prefix_mlp")
    checkpointing_refusal = ("the prefixes reach each layer's attention through state that lives only during the "
                             "forward, so a block recomputed in backward would run without them")
    needs = (AttentionFunctions,)
    length: int = bounded(30, at_least=1)  # prefixes per layer
    bottleneck: int = bounded(512, at_least=1)  # reparameterisation MLP width

    def build(self, backbone: Backbone, out_dim: int) -> nn.Module:
        return PrefixTuned(backbone, self.length, self.bottleneck)

    def closed_form_trainable(self, backbone: Backbone, out_dim: int) -> int:
        """Embedding(P, D) + Linear(D -> b) + Linear(b -> 2 L D) (docs/methods.md §3.6)."""
        d, layers = backbone.width, backbone.num_layers
        return self.length * d + linear_params(d, self.bottleneck) + linear_params(self.bottleneck, 2 * layers * d)
