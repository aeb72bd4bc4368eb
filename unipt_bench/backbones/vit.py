"""ViT image encoders (transformers ViTModel): ViT-B/16 and a tiny test variant."""

from __future__ import annotations

from transformers import ViTConfig, ViTModel

from .base import register_backbone
from .hf import HFEncoder, HFLayout, load_hf_model

VIT_LAYOUT = HFLayout(
    layers="layers",
    attention="attention",
    attn_out="attention.o_proj",
    ffn_out="mlp.fc2",
    query="q_proj",
    value="v_proj",
    modality="image",
)


def vit(config: ViTConfig, weights: str) -> HFEncoder:
    return HFEncoder(load_hf_model(ViTModel, config, weights, add_pooling_layer=False), VIT_LAYOUT)


@register_backbone("vit-b16", "ViT-B/16 at 224px: 12 layers, width 768, 197 tokens, 86M",
                   default_weights="google/vit-base-patch16-224-in21k")
def vit_b16(weights: str = "random") -> HFEncoder:
    return vit(ViTConfig(), weights)  # the defaults are ViT-B/16 at 224px


@register_backbone("tiny-vit", "2-layer ViT, width 32, 32px images in 8px patches, for tests", tiny=True)
def tiny_vit(weights: str = "random") -> HFEncoder:
    config = ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32,
        patch_size=8,
    )
    return vit(config, weights)
