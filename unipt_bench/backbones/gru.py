"""A bidirectional GRU text encoder over word embeddings (VSE-infinity's small text side, Table 5 ResNeXt)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from .base import Backbone, BackboneOutput, padded_mask, register_backbone


class BiGRUText(Backbone):
    """Word embeddings -> 1-layer bidirectional GRU; the two directions are averaged (VSE-infinity).

    Trained from scratch with the task head, so suites mark its tower `tuned = false`. Runs over the
    padded sequence (no packing), so padded steps feed the backward direction; the mask travels on.
    """

    kind: ClassVar[str] = "rnn"
    modality = "text"

    def __init__(self, vocab_size: int, word_dim: int, width: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, word_dim)
        self.gru = nn.GRU(word_dim, width, batch_first=True, bidirectional=True)
        self.vocab_size = vocab_size
        self.width = width
        self.hidden_sizes = (word_dim, width)
        self.shape_defaults = {"seq_len": 32}

    def forward(self, inputs: dict[str, torch.Tensor], all_hidden: bool = False) -> BackboneOutput:
        words = self.embed(inputs["input_ids"])  # [B, N, word_dim]
        both, _ = self.gru(words)  # [B, N, 2 * width]
        out = (both[..., : self.width] + both[..., self.width :]) / 2  # [B, N, width]
        return BackboneOutput((words, out) if all_hidden else (out,), out, inputs["attention_mask"])

    def blocks(self) -> list[nn.Module]:
        """Its one recurrent layer (what partial fine-tuning can unfreeze)."""
        return [self.gru]

    def bias_count(self) -> int:
        """b_ih and b_hh of 3 gates in both directions: 12 H (docs/methods.md §3.3)."""
        return 12 * self.width

    def dummy_inputs(self, batch: int, **shape: int) -> dict[str, torch.Tensor]:
        seq_len = shape.get("seq_len", self.shape_defaults["seq_len"])
        ids = torch.randint(0, self.vocab_size, (batch, seq_len))
        return {"input_ids": ids, "attention_mask": padded_mask(batch, seq_len)}


@register_backbone("bigru", "Bi-GRU text encoder: 10k-word vocabulary, 300-d words, 1024 wide (VSE-infinity)")
def bigru(weights: str = "random") -> BiGRUText:
    return BiGRUText(vocab_size=10000, word_dim=300, width=1024)


@register_backbone("tiny-bigru", "Bi-GRU text encoder, 16 wide, for tests", tiny=True)
def tiny_bigru(weights: str = "random") -> BiGRUText:
    return BiGRUText(vocab_size=512, word_dim=8, width=16)
