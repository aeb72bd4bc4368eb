"""A joint cross-modal transformer (CLIP-ViL style, Shen et al. 2022, arXiv 2107.06383) for VQA.

Visual grid features of a frozen CLIP visual encoder (RN50x4: 2560 channels) are projected to the
transformer width and concatenated with the question's word embeddings; a 12-layer BERT-style
single-stream transformer runs over both. The grid features are inputs: the visual encoder stays
frozen in every PETL setting of the paper (only full fine-tuning trains it, which is not profiled).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn
from transformers import BertConfig, BertModel

from .base import BackboneOutput, padded_mask, register_backbone
from .bert import BERT_LAYOUT
from .hf import HFEncoder, load_hf_model

MAX_GRID = 25 * 25  # CLIP-ViL's learned visual positions cover a 25 x 25 grid


class JointEncoder(HFEncoder):
    """Text tokens [B, T] and grid features [B, G, C] -> one transformer over T + G tokens (joint mask)."""

    kind: ClassVar[str] = "joint"

    def __init__(self, model: BertModel, visual_dim: int, seq_len: int, grid: int) -> None:
        super().__init__(model, BERT_LAYOUT)
        self.modality = "text+grid"
        width = model.config.hidden_size
        self.visual = nn.Sequential(nn.Linear(visual_dim, width), nn.LayerNorm(width))
        self.visual_positions = nn.Embedding(MAX_GRID, width)
        self.visual_dim = visual_dim
        self.shape_defaults = {"seq_len": seq_len, "grid": grid}

    def forward(self, inputs: dict[str, torch.Tensor], all_hidden: bool = False) -> BackboneOutput:
        text = self.model.embeddings.word_embeddings(inputs["input_ids"])  # [B, T, D]
        grid = inputs["grid"]  # [B, G, C]
        positions = torch.arange(grid.shape[1], device=grid.device)
        visual = self.visual(grid) + self.visual_positions(positions)  # [B, G, D]
        mask = torch.cat([inputs["attention_mask"], torch.ones_like(grid[..., 0], dtype=torch.long)], dim=1)
        types = torch.cat([torch.zeros_like(inputs["input_ids"]), torch.ones_like(mask[:, text.shape[1]:])], dim=1)
        out = self.model(
            inputs_embeds=torch.cat([text, visual], dim=1), attention_mask=mask, token_type_ids=types,
            output_hidden_states=all_hidden,
        )
        hidden = tuple(out.hidden_states) if all_hidden else (out.last_hidden_state,)
        return BackboneOutput(hidden, out.last_hidden_state, mask)  # [B, T + G, D]

    def dummy_inputs(self, batch: int, **shape: int) -> dict[str, torch.Tensor]:
        shape = {**self.shape_defaults, **shape}
        ids = torch.randint(0, self.config.vocab_size, (batch, shape["seq_len"]))
        return {
            "input_ids": ids,  # [B, T]
            "attention_mask": padded_mask(batch, shape["seq_len"]),
            "grid": torch.randn(batch, shape["grid"], self.visual_dim),  # [B, G, C]
        }


@register_backbone(
    "clip-vil",
    "CLIP-ViL joint transformer: 12 BERT-base layers over 20 question tokens + a 12x20 grid of CLIP RN50x4 "
    "features (2560-d, 384x640 images)",
    default_weights="bert-base-uncased",
)
def clip_vil(weights: str = "random") -> JointEncoder:
    model = load_hf_model(BertModel, BertConfig(type_vocab_size=2), weights, add_pooling_layer=False)
    return JointEncoder(model, visual_dim=2560, seq_len=20, grid=12 * 20)


@register_backbone("tiny-joint", "2-layer joint transformer, width 32, 6 grid features of 16 dims, for tests",
                   tiny=True)
def tiny_joint(weights: str = "random") -> JointEncoder:
    config = BertConfig(vocab_size=512, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64)
    return JointEncoder(load_hf_model(BertModel, config, weights, add_pooling_layer=False), 16, 8, 6)
