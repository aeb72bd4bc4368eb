"""Ladder Side Tuning (Sung et al. 2022, arXiv 2206.06522), the paper's main memory-efficient competitor.

A side network fed through gated ladder connections from the hidden states of the frozen backbone
(run under no_grad): only the side network trains and gradients never enter the backbone.
Transformer: side layers of the backbone's own type at width D / r, one per layer. CNN: each stage
is average-pooled to the last grid and projected to width d by a 1x1 conv; three transformer side
layers run over the grid's tokens (the conv1 stem is not used). Encoder-decoder: a side encoder and
a side decoder, each laddered on its half of the backbone. docs/methods.md §2.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch import nn
from torch.nn import functional as F

from ..backbones.base import Backbone, BackboneOutput, SideLayers
from ..backbones.encdec import MDETR, DecoderLayer, EncDecOutput, EncoderLayer
from ..backbones.hf import HFEncoder, bert_layer
from ..configurable import Range, bounded
from ..errors import UserError
from .base import (
    TOKEN_KINDS,
    Method,
    SideTuned,
    linear_params,
    norm_params,
    register_method,
    transformer_layer_params,
)
from .unipt_cnn import pooling_rate, tokens


class Ladder(nn.Module):
    """x = Down_0(h_0); for each side layer k: gate x with Down_{k+1}(h_{k+1}), then run side layer k.

    `downs` map hidden states to side tokens [B, N, d]; one gate alpha_k (init 0, temperature T) per layer.
    """

    def __init__(self, downs: nn.ModuleList, side_layers: nn.ModuleList, run_layer: Callable, width: int,
                 out_dim: int, temperature: float, sources: list[int]) -> None:
        super().__init__()
        self.downs, self.side_layers, self.run_layer = downs, side_layers, run_layer
        self.sources = sources  # index of the hidden state feeding each down projection
        self.temperature = temperature
        self.gates = nn.Parameter(torch.zeros(len(side_layers)))
        self.up = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, out_dim))

    def ladder_input(self, k: int, out: BackboneOutput) -> torch.Tensor:
        return self.downs[k](out.hidden[self.sources[k]])  # [B, N, d]

    def forward(self, out: BackboneOutput) -> BackboneOutput:
        x = self.ladder_input(0, out)
        gates = torch.sigmoid(self.gates / self.temperature)
        for k, layer in enumerate(self.side_layers):
            x = gates[k] * x + (1 - gates[k]) * self.ladder_input(k + 1, out)
            x = self.run_layer(layer, x, out.mask)
        return replace(out, last=self.up(x))  # last: [B, N, E]


class PooledStage(nn.Module):
    """AvgPool(r_k) onto the last grid, then Conv1x1(C_k -> d), as tokens [B, h*w, d]; r_k from the actual sizes."""

    def __init__(self, channels: int, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, width, 1)

    def forward(self, stage: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        rate = pooling_rate(stage, last)
        return tokens(self.conv(F.avg_pool2d(stage, rate) if rate > 1 else stage))


class CNNLadder(Ladder):
    def ladder_input(self, k: int, out: BackboneOutput) -> torch.Tensor:
        return self.downs[k](out.hidden[k], out.hidden[-1])


class EncDecLadder(nn.Module):
    """LST for an encoder-decoder (as LST does for T5): a side encoder laddered on the encoder states, then a
    side decoder laddered on the decoder states that cross-attends to the side encoder's output. Side
    layers are the backbone's own DETR layers at width d; they see positions only through the ladders."""

    def __init__(self, backbone: MDETR, width: int, heads: int, temperature: float, out_dim: int) -> None:
        super().__init__()
        depth = len(backbone.hidden_sizes) - 1
        ffn = backbone.ffn * width // backbone.width
        self.temperature = temperature
        self.enc_downs = nn.ModuleList(nn.Linear(backbone.width, width) for _ in range(depth + 1))
        self.dec_downs = nn.ModuleList(nn.Linear(backbone.width, width) for _ in range(depth + 1))
        self.enc_gates = nn.Parameter(torch.zeros(depth))
        self.dec_gates = nn.Parameter(torch.zeros(depth))
        self.enc_layers = nn.ModuleList(EncoderLayer(width, heads, ffn) for _ in range(depth))
        self.dec_layers = nn.ModuleList(DecoderLayer(width, heads, ffn) for _ in range(depth))
        self.up = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, out_dim))

    def forward(self, out: EncDecOutput) -> EncDecOutput:
        enc, dec, mask = out.hidden, out.decoder_hidden, out.memory_mask
        x = self.enc_downs[0](enc[0])  # [B, S, d]
        no_pos = torch.zeros_like(x)
        gates = torch.sigmoid(self.enc_gates / self.temperature)
        for k, layer in enumerate(self.enc_layers):
            x = layer(gates[k] * x + (1 - gates[k]) * self.enc_downs[k + 1](enc[k + 1]), no_pos, mask)
        y = self.dec_downs[0](dec[0])  # [B, Q, d]
        no_query_pos = torch.zeros_like(y)
        gates = torch.sigmoid(self.dec_gates / self.temperature)
        for k, layer in enumerate(self.dec_layers):
            y = layer(gates[k] * y + (1 - gates[k]) * self.dec_downs[k + 1](dec[k + 1]), x, no_query_pos, no_pos, mask)
        last = self.up(y)  # [B, Q, E]
        return replace(out, last=last, predictions=(last,))


@register_method("lst")
@dataclass
class LST(Method):
    module_names = ("side",)
    kinds = TOKEN_KINDS | {"cnn", "encdec"}
    side = True
    reduction: int = bounded(4, at_least=1)  # transformer side width d = D / 4 (the paper's comparisons)
    temperature: float = bounded(0.1, above=0)  # gate temperature T
    layers: list[int] = field(default_factory=list, metadata={"range": Range(at_least=0)})  # backbone layers given a side layer; empty = all
    cnn_width: int = bounded(192, at_least=1)  # CNN side width d: 192 (= 768 / 4) gives the paper's 2.27M on ResNeXt-101
    cnn_heads: int = bounded(12, at_least=1)

    def refusal(self, backbone: Backbone) -> str:
        """Transformer designs ladder into narrow layers of the backbone's own kind: SideLayers."""
        reason = super().refusal(backbone)
        if not reason and backbone.kind in TOKEN_KINDS and backbone.missing(SideLayers):
            reason = f"lst needs SideLayers: {backbone.missing(SideLayers)}"
        return reason

    def build(self, backbone: Backbone, out_dim: int) -> nn.Module:
        if backbone.kind == "cnn":
            return SideTuned(backbone, self.cnn_ladder(backbone, out_dim))
        if backbone.kind == "encdec":
            width = backbone.width // self.reduction
            return SideTuned(backbone, EncDecLadder(backbone, width, backbone.heads, self.temperature, out_dim))
        layers = self.kept_layers(backbone)
        width = backbone.width // self.reduction
        sources = [0, *layers]
        downs = nn.ModuleList(nn.Linear(backbone.hidden_sizes[i], width) for i in sources)
        side_layers = nn.ModuleList(backbone.side_layer(self.reduction) for _ in layers)
        ladder = Ladder(downs, side_layers, backbone.run_side_layer, width, out_dim, self.temperature, sources)
        return SideTuned(backbone, ladder)

    def cnn_ladder(self, backbone: Backbone, out_dim: int) -> Ladder:
        width = self.cnn_width
        downs = nn.ModuleList(PooledStage(c, width) for c in backbone.hidden_sizes)
        side_layers = nn.ModuleList(
            bert_layer(width, self.cnn_heads, 4 * width) for _ in backbone.hidden_sizes[1:]
        )
        sources = list(range(len(backbone.hidden_sizes)))
        return CNNLadder(downs, side_layers, HFEncoder.run_side_layer, width, out_dim, self.temperature, sources)

    def kept_layers(self, backbone: Backbone) -> list[int]:
        """The backbone layers (1..L) given a side layer: `layers`, or all of them."""
        depth = len(backbone.hidden_sizes) - 1
        layers = sorted(self.layers) or list(range(1, depth + 1))
        if layers[0] < 1 or layers[-1] > depth or len(set(layers)) != len(layers):
            raise UserError(f"lst: layers must be distinct indices in 1..{depth}, got {self.layers}")
        return layers

    def closed_form_trainable(self, backbone: Backbone, out_dim: int) -> int:
        """Ladders, gates, side layers and Up (docs/methods.md §2.4).

        Transformer and joint, d = D / r over K kept layers: (K + 1) Linear(D -> d), K gates, K layers
        of the backbone's type at width d and FFN I / r, LayerNorm(d) + Linear(d -> E). CNN, d = cnn_width:
        a Conv1x1(C_k -> d) per stage, one gate and one BERT layer (FFN 4 d) per stage after the first,
        and Up. Encoder-decoder, d = D / r, FFN F / r: a side encoder and a side decoder of L layers,
        each with L + 1 ladders and L gates, and Up.
        """
        if backbone.kind == "cnn":
            d, sides = self.cnn_width, len(backbone.hidden_sizes) - 1
            ladders = sum(linear_params(c, d) for c in backbone.hidden_sizes)
            return ladders + sides + sides * transformer_layer_params(d, 4 * d) + up_params(d, out_dim)
        d = backbone.width // self.reduction
        if backbone.kind == "encdec":
            ffn, depth = backbone.ffn // self.reduction, len(backbone.encoder)
            ladders = 2 * (depth + 1) * linear_params(backbone.width, d)
            sides = depth * (transformer_layer_params(d, ffn) + decoder_layer_params(d, ffn))
            return ladders + 2 * depth + sides + up_params(d, out_dim)
        kept = len(self.kept_layers(backbone))
        side_layer = transformer_layer_params(d, backbone.ffn // self.reduction)
        return (kept + 1) * linear_params(backbone.width, d) + kept + kept * side_layer + up_params(d, out_dim)


def up_params(d: int, out_dim: int) -> int:
    """Up = Linear(d -> E) . LayerNorm(d)."""
    return norm_params(d) + linear_params(d, out_dim)


def decoder_layer_params(d: int, ffn: int) -> int:
    """A DETR decoder layer: self- and cross-attention (q, k, v, o each), three LayerNorms, FFN."""
    return 8 * linear_params(d, d) + 3 * norm_params(d) + linear_params(d, ffn) + linear_params(ffn, d)
