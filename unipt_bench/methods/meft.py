"""MEFT, Memory-Efficient Fine-Tuning (Liao et al., NeurIPS 2023, arXiv 2306.00477): the backbone made reversible.

MEFT1, as released (BaohaoLiao/mefts): every BERT layer becomes a reversible coupling of two streams,
y1 = lambda x1 + F(x2), y2 = beta x2 + G(y1), output (y2, y1), with F the frozen layer plus an adapter
parallel to its feed-forward block and G an adapter. Both streams start as the embeddings h_0; the
output is their mean. A custom autograd Function keeps only the last layer's two streams and rebuilds
every layer's inputs from its outputs in the backward pass. Only the adapters train. docs/methods.md §MEFT.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutputWithPastAndCrossAttentions as EncoderOutput

from ..backbones.base import Backbone
from ..backbones.hf import HFEncoder
from ..configurable import bounded
from .adapter import bottleneck_params
from .base import TOKEN_KINDS, Method, freeze, register_method


def reseed() -> int:
    """Seed the generators with a new seed and return it, as the official code does before F and before G
    (models/modeling_revbert.py:113-126), so the backward pass can redraw the same dropout masks. The seed is
    one step of a linear congruential generator from the last one: deterministic, and no state tensor kept."""
    seed = (torch.initial_seed() * 6364136223846793005 + 1442695040888963407) % 2**63
    torch.manual_seed(seed)
    return seed


def meft_adapter(config: object, bottleneck: int) -> nn.Sequential:
    """Down(D -> b), the model's activation, dropout, Up(b -> D) (models/modules.py:6-32); Linear weights
    N(0, initializer_range), biases zero (models/modeling_revbert.py:537-544)."""
    width = config.hidden_size
    adapter = nn.Sequential(nn.Linear(width, bottleneck), ACT2FN[config.hidden_act],
                            nn.Dropout(config.hidden_dropout_prob), nn.Linear(bottleneck, width))
    for linear in (adapter[0], adapter[3]):
        nn.init.normal_(linear.weight, std=config.initializer_range)
        nn.init.zeros_(linear.bias)
    return adapter


class Coupling(nn.Module):
    """One reversible layer (MEFT1, models/modeling_revbert.py:128-183): F = the frozen BERT layer with an
    adapter parallel to its feed-forward block, G = an adapter."""

    def __init__(self, layer: nn.Module, config: object, bottleneck: int, lam: float, beta: float) -> None:
        super().__init__()
        self.layer = layer
        self.ffn_adapter = meft_adapter(config, bottleneck)
        self.rev_adapter = meft_adapter(config, bottleneck)
        self.lam, self.beta = lam, beta

    def f(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:  # [B, N, D] -> [B, N, D]
        u = self.layer.attention(x, mask)[0]  # post-norm attention block: [B, N, D]
        change = self.ffn_adapter(u)
        return self.layer.output(self.layer.intermediate(u), u + change)  # LayerNorm(FFN(u) + A(u) + u)

    def g(self, y: torch.Tensor) -> torch.Tensor:
        return self.rev_adapter(y)

    def adapter_params(self) -> list[nn.Parameter]:
        """F's adapter parameters, then G's: the order `reverse` returns their gradients in."""
        return [*self.ffn_adapter.parameters(), *self.rev_adapter.parameters()]

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, mask: torch.Tensor | None,
                seeds: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x1, x2) -> (y2, y1). In training, F and G each draw from a fresh seed, collected in `seeds`."""
        if self.training:
            (seeds if seeds is not None else []).append(reseed())
        y1 = self.lam * x1 + self.f(x2, mask)
        if self.training:
            (seeds if seeds is not None else []).append(reseed())
        y2 = self.beta * x2 + self.g(y1)
        return y2, y1  # the streams swap (models/modeling_revbert.py:180)

    def reverse(self, out: tuple[torch.Tensor, torch.Tensor], grads: tuple[torch.Tensor, torch.Tensor],
                mask: torch.Tensor | None, seeds: list[int]) -> tuple:
        """From the outputs (y2, y1) and their gradients: the inputs (x1, x2), their gradients, and the
        adapters' gradients (as `adapter_params` orders them); models/modeling_revbert.py:185-258."""
        (y2, y1), (dy2, dy1) = out, grads
        f_params, g_params = list(self.ffn_adapter.parameters()), list(self.rev_adapter.parameters())
        with torch.enable_grad():
            if seeds:
                torch.manual_seed(seeds[1])
            y1 = y1.detach().requires_grad_()
            g_y1 = self.g(y1)
            dy1_via_g, *g_grads = torch.autograd.grad(g_y1, [y1, *g_params], dy2)
        x2 = ((y2 - g_y1.detach()) / self.beta).requires_grad_()
        dy1 = dy1 + dy1_via_g
        with torch.enable_grad():
            if seeds:
                torch.manual_seed(seeds[0])
            f_x2 = self.f(x2, mask)
            dx2_via_f, *f_grads = torch.autograd.grad(f_x2, [x2, *f_params], dy1)
        x1 = (y1.detach() - f_x2.detach()) / self.lam
        return (x1, x2.detach()), (self.lam * dy1, self.beta * dy2 + dx2_via_f), f_grads + g_grads


class ReversibleStack(torch.autograd.Function):
    """Runs the couplings without building a graph and keeps only the last outputs (and the attention mask);
    backward rebuilds each layer's inputs from its outputs, last layer first (modeling_revbert.py:382-426)."""

    @staticmethod
    def forward(ctx, x1: torch.Tensor, x2: torch.Tensor, mask: torch.Tensor | None, couplings: nn.ModuleList,
                *params: nn.Parameter) -> tuple[torch.Tensor, torch.Tensor]:
        seeds: list[int] = []  # F's and G's seed per layer, in training
        for coupling in couplings:
            x1, x2 = coupling(x1, x2, mask, seeds)
        ctx.save_for_backward(x1, x2, mask)
        ctx.couplings, ctx.seeds = couplings, seeds
        return x1, x2

    @staticmethod
    def backward(ctx, d1: torch.Tensor, d2: torch.Tensor) -> tuple:
        y1, y2, mask = ctx.saved_tensors
        out, grads, param_grads = (y1, y2), (d1, d2), []
        for i in reversed(range(len(ctx.couplings))):
            seeds = ctx.seeds[2 * i:2 * i + 2]
            out, grads, layer_grads = ctx.couplings[i].reverse(out, grads, mask, seeds)
            param_grads = layer_grads + param_grads
        return grads[0], grads[1], None, None, *param_grads


class ReversibleEncoder(nn.Module):
    """Takes the place of a BERT model's encoder: h_0 -> (h_0, h_0) -> couplings -> mean of the two streams."""

    def __init__(self, couplings: nn.ModuleList) -> None:
        super().__init__()
        self.couplings = couplings

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                **_: object) -> EncoderOutput:
        x1 = x2 = hidden_states  # [B, N, D] (models/modeling_revbert.py:470)
        if torch.is_grad_enabled():
            params = [p for coupling in self.couplings for p in coupling.adapter_params()]
            x1, x2 = ReversibleStack.apply(x1, x2, attention_mask, self.couplings, *params)
        else:
            x1, x2 = self.plain(x1, x2, attention_mask)
        return EncoderOutput(last_hidden_state=(x1 + x2) / 2)  # (models/modeling_revbert.py:514-515)

    def plain(self, x1: torch.Tensor, x2: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The same network through ordinary autograd (every layer keeps its activations)."""
        for coupling in self.couplings:
            x1, x2 = coupling(x1, x2, mask)
        return x1, x2


def bert_layers(backbone: Backbone) -> list[nn.Module] | None:
    """The post-norm BERT layers (attention -> intermediate -> output with its LayerNorm) of a transformers
    BERT-family encoder, or None when the backbone is not one."""
    if not isinstance(backbone, HFEncoder) or backbone.config.model_type not in ("bert", "roberta"):
        return None  # the couplings call BERT's own layer parts with BERT's extended attention mask
    layers = backbone.blocks()
    parts = ("attention", "intermediate", "output")
    return layers if all(hasattr(layer, part) for layer in layers for part in parts) else None


NO_DESIGN = {
    "cnn": "a reversible coupling needs two equal-width streams whose input is rebuilt from the output, and "
           "ResNet stages change channels and resolution (strided blocks are not invertible)",
    "encdec": "the official code releases reversible BERT encoders only; MDETR's DETR encoder and decoder "
              "(with cross-attention to the encoder's output) have no coupling written here",
}


@register_method("meft")
@dataclass
class MEFT(Method):
    module_names = ("ffn_adapter", "rev_adapter")
    checkpointing_refusal = "its reversible layers replace the blocks and already recompute their activations in backward"
    kinds = TOKEN_KINDS
    bottleneck: int = bounded(8, at_least=1)  # adapter width (scripts/bert_glue.sh:7, DIM=8)
    lam: float = bounded(0.1, above=0)  # lambda, the x1 factor of MEFT1 (scripts/bert_glue.sh:13)
    beta: float = bounded(1.0, above=0)  # beta, the x2 factor of MEFT1 (scripts/bert_glue.sh:14)

    def refusal(self, backbone: Backbone) -> str:
        """MEFT1 is written here for post-norm BERT layers, as released (BERT only); docs/methods.md §MEFT."""
        if backbone.kind in NO_DESIGN:
            return f"meft has no reversible design for a {backbone.kind} backbone: {NO_DESIGN[backbone.kind]}"
        reason = super().refusal(backbone)
        if not reason and bert_layers(backbone) is None:
            reason = (f"meft's couplings are written for post-norm BERT layers (attention, then the feed-forward "
                      f"block with its adapter before the output LayerNorm), as the official code releases them "
                      f"(BERT and RoBERTa layers only); {type(backbone).__name__}'s layers are "
                      f"{type(backbone.blocks()[0]).__name__} (pre-norm, or coupled otherwise), for which no "
                      f"coupling is written here")
        return reason

    def build(self, backbone: Backbone, out_dim: int) -> nn.Module:
        freeze(backbone)
        config = backbone.config
        couplings = nn.ModuleList(Coupling(layer, config, self.bottleneck, self.lam, self.beta)
                                  for layer in bert_layers(backbone))
        backbone.model.encoder = ReversibleEncoder(couplings)
        return backbone

    def closed_form_trainable(self, backbone: Backbone, out_dim: int) -> int:
        """Two adapters Down(D -> b) + Up(b -> D) per layer: 2 L (2 D b + b + D) (docs/methods.md §MEFT)."""
        return 2 * len(backbone.blocks()) * bottleneck_params(backbone.width, self.bottleneck)
