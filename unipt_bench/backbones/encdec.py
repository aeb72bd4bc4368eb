"""An MDETR-style encoder-decoder for grounding (Kamath et al., ICCV 2021, arXiv 2104.12763).

ResNet-101 image features (1x1 conv to width 256) and RoBERTa-base text features (resized to 256)
are concatenated into a 6-layer transformer encoder; a 6-layer decoder turns 100 object queries into
box and token predictions. DETR's post-norm layers, with positional encodings added to queries and
keys, are written out here: transformers' DETR layers check `isfinite(...).all()` in training, which
fake tensors cannot answer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import UserError
from .base import Backbone, BackboneOutput, padded_mask, register_backbone
from .bert import roberta_base as roberta_backbone
from .bert import tiny_roberta
from .hf import HFEncoder
from .resnext import ResNetStages, timm_resnet, tiny_resnext


@dataclass
class EncDecOutput(BackboneOutput):
    """hidden: encoder states (input + each layer) [B, S, D], with `memory_mask` [B, S];
    decoder_hidden: decoder states (query embeddings + each layer, after the decoder norm) [B, Q, D];
    predictions: the states the heads predict from (the last one is `last`; earlier ones are auxiliary)."""

    memory_mask: torch.Tensor | None = None
    decoder_hidden: tuple[torch.Tensor, ...] = ()
    predictions: tuple[torch.Tensor, ...] = ()


class DetrAttention(nn.Module):
    """Multi-head attention over [B, N, D] with a [B, K] key padding mask (1 = attend)."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q_proj, self.k_proj = nn.Linear(width, width), nn.Linear(width, width)
        self.v_proj, self.o_proj = nn.Linear(width, width), nn.Linear(width, width)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)  # [B, H, N, hd]

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_mask: torch.Tensor | None) -> torch.Tensor:
        mask = None if key_mask is None else key_mask[:, None, None, :].bool()  # [B, 1, 1, K]
        out = F.scaled_dot_product_attention(
            self.split(self.q_proj(query)), self.split(self.k_proj(key)), self.split(self.v_proj(value)),
            attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
        )  # [B, H, N, hd]
        return self.o_proj(out.transpose(1, 2).flatten(2))


class FeedForward(nn.Sequential):
    def __init__(self, width: int, ffn: int, dropout: float) -> None:
        super().__init__(nn.Linear(width, ffn), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn, width))


class EncoderLayer(nn.Module):
    """Post-norm DETR encoder layer: positions join queries and keys, not values."""

    def __init__(self, width: int, heads: int, ffn: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.self_attn = DetrAttention(width, heads, dropout)
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.ffn = FeedForward(width, ffn, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        q = x + pos
        x = self.norm1(x + self.drop(self.self_attn(q, q, x, mask)))
        return self.norm2(x + self.drop(self.ffn(x)))


class DecoderLayer(nn.Module):
    """Post-norm DETR decoder layer: self-attention over queries, cross-attention to the memory, FFN."""

    def __init__(self, width: int, heads: int, ffn: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.self_attn = DetrAttention(width, heads, dropout)
        self.cross_attn = DetrAttention(width, heads, dropout)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.ffn = FeedForward(width, ffn, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, query_pos: torch.Tensor, memory_pos: torch.Tensor,
                memory_mask: torch.Tensor | None) -> torch.Tensor:
        q = x + query_pos
        x = self.norm1(x + self.drop(self.self_attn(q, q, x, None)))
        x = self.norm2(x + self.drop(self.cross_attn(x + query_pos, memory + memory_pos, memory, memory_mask)))
        return self.norm3(x + self.drop(self.ffn(x)))


def sine_positions(h: int, w: int, width: int, device: torch.device) -> torch.Tensor:
    """DETR's normalised 2-D sine encoding of an h x w grid, [h*w, width]."""
    half = width // 2
    y = (torch.arange(h, device=device, dtype=torch.float32) + 1) / h * 2 * math.pi
    x = (torch.arange(w, device=device, dtype=torch.float32) + 1) / w * 2 * math.pi
    freq = 10000 ** (2 * (torch.arange(half, device=device) // 2) / half)  # [half]
    ey, ex = y[:, None] / freq, x[:, None] / freq  # [h, half], [w, half]
    ey = torch.stack([ey[:, 0::2].sin(), ey[:, 1::2].cos()], dim=2).flatten(1)
    ex = torch.stack([ex[:, 0::2].sin(), ex[:, 1::2].cos()], dim=2).flatten(1)
    return torch.cat([ey[:, None, :].expand(h, w, half), ex[None, :, :].expand(h, w, half)], dim=2).flatten(0, 1)


class MDETR(Backbone):
    """Image CNN + text encoder -> joint encoder -> query decoder. Hidden states are the encoder's and
    the decoder's; `blocks()` are their 12 layers (what `partial` with unfreeze_last=12 trains)."""

    kind: ClassVar[str] = "encdec"
    modality = "image+text"

    def __init__(self, vision: ResNetStages, text: HFEncoder, width: int = 256, heads: int = 8, ffn: int = 2048,
                 layers: int = 6, queries: int = 100, image_size: tuple[int, int] = (800, 1088),
                 seq_len: int = 20) -> None:
        super().__init__()
        self.vision, self.text = vision, text
        self.input_proj = nn.Conv2d(vision.width, width, 1)
        self.resizer = nn.Sequential(nn.Linear(text.width, width), nn.LayerNorm(width), nn.Dropout(0.1))
        self.encoder = nn.ModuleList(EncoderLayer(width, heads, ffn) for _ in range(layers))
        self.decoder = nn.ModuleList(DecoderLayer(width, heads, ffn) for _ in range(layers))
        self.decoder_norm = nn.LayerNorm(width)
        self.query_embed = nn.Embedding(queries, width)
        self.width, self.heads, self.ffn = width, heads, ffn
        self.hidden_sizes = (width,) * (layers + 1)
        self.shape_defaults = {"image_height": image_size[0], "image_width": image_size[1], "seq_len": seq_len}

    def blocks(self) -> list[nn.Module]:
        return [*self.encoder, *self.decoder]

    def bias_count(self) -> int:
        """Its CNN's and its text encoder's biases, the input projection (D), the text resizer's Linear and
        LayerNorm (2 D), L encoder layers (7 D + F), L decoder layers (12 D + F: two attentions, three
        LayerNorms) and the decoder norm (D) (docs/methods.md §3.3)."""
        d, f, layers = self.width, self.ffn, len(self.encoder)
        return (self.vision.bias_count() + self.text.bias_count() + 3 * d + layers * (7 * d + f)
                + layers * (12 * d + f) + d)

    def encode(self, inputs: dict[str, torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """The joint encoder: its states h_0..h_L [B, S = h*w + T, D] (image tokens, then text tokens), the
        positions [B, S, D] (text tokens get none) and the memory mask [B, S]."""
        grid = self.input_proj(self.vision(inputs).hidden[-1])  # [B, D, h, w]
        b, _, h, w = grid.shape
        text_mask = inputs["attention_mask"]
        words = self.resizer(self.text({"input_ids": inputs["input_ids"], "attention_mask": text_mask}).last)
        x = torch.cat([grid.flatten(2).transpose(1, 2), words], dim=1)  # [B, S = h*w + T, D]
        mask = torch.cat([text_mask.new_ones(b, h * w), text_mask], dim=1)  # [B, S]
        pos = torch.cat([sine_positions(h, w, self.width, x.device), x.new_zeros(words.shape[1], self.width)])
        pos = pos[None].expand(b, -1, -1)  # [B, S, D]: text tokens get no position
        encoder_states = [x]
        for layer in self.encoder:
            x = layer(x, pos, mask)
            encoder_states.append(x)
        return encoder_states, pos, mask

    def decode(self, memory: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        """The query decoder over `memory` [B, S, D]: the query embeddings, then each layer's output after the
        decoder norm, [B, Q, D] each."""
        query_pos = self.query_embed.weight[None].expand(memory.shape[0], -1, -1)  # [B, Q, D]
        y = torch.zeros_like(query_pos)
        decoder_states = [query_pos]
        for layer in self.decoder:
            y = layer(y, memory, query_pos, pos, mask)
            decoder_states.append(self.decoder_norm(y))
        return decoder_states

    def forward(self, inputs: dict[str, torch.Tensor], all_hidden: bool = False) -> EncDecOutput:
        encoder_states, pos, mask = self.encode(inputs)
        decoder_states = self.decode(encoder_states[-1], pos, mask)
        predictions = tuple(decoder_states[1:])  # each layer's output feeds the heads (auxiliary losses)
        return EncDecOutput(
            hidden=tuple(encoder_states) if all_hidden else (encoder_states[-1],), last=predictions[-1], mask=None,
            memory_mask=mask, decoder_hidden=tuple(decoder_states) if all_hidden else (), predictions=predictions,
        )

    def dummy_inputs(self, batch: int, **shape: int) -> dict[str, torch.Tensor]:
        shape = {**self.shape_defaults, **shape}
        ids = torch.randint(0, self.text.config.vocab_size, (batch, shape["seq_len"]))
        return {
            "pixel_values": torch.randn(batch, 3, shape["image_height"], shape["image_width"]),  # [B, 3, H, W]
            "input_ids": ids,  # [B, T]
            "attention_mask": padded_mask(batch, shape["seq_len"]),
        }


@register_backbone(
    "mdetr",
    "MDETR: ResNet-101 + RoBERTa-base into a 6+6-layer transformer (width 256, 100 queries), 800x1088 images",
    default_weights="random",
)
def mdetr(weights: str = "random") -> MDETR:
    if weights != "random":
        raise UserError("mdetr: loading MDETR checkpoints is not supported; profile it with random weights")
    return MDETR(ResNetStages(timm_resnet("resnet101", "random"), image_size=800), roberta_backbone("random"))


@register_backbone("tiny-mdetr", "MDETR with tiny CNN and text encoders, width 32, 2+2 layers, 8 queries", tiny=True)
def tiny_mdetr(weights: str = "random") -> MDETR:
    return MDETR(tiny_resnext(), tiny_roberta(), width=32, heads=4, ffn=64, layers=2, queries=8,
                 image_size=(64, 96), seq_len=6)
