"""CLIP ViT-B/32 towers (transformers): the vision tower and the text tower, and tiny test variants."""

from __future__ import annotations

from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel

from .base import register_backbone
from .hf import HFEncoder, HFLayout, load_hf_model


def clip_layout(modality: str) -> HFLayout:
    return HFLayout(
        layers="encoder.layers",
        attention="self_attn",
        attn_out="self_attn.out_proj",
        ffn_out="mlp.fc2",
        query="q_proj",
        value="v_proj",
        modality=modality,
    )


def clip_vision(config: CLIPVisionConfig, weights: str, modality: str = "image") -> HFEncoder:
    return HFEncoder(load_hf_model(CLIPVisionModel, config, weights), clip_layout(modality))


def clip_text(config: CLIPTextConfig, weights: str) -> HFEncoder:
    return HFEncoder(load_hf_model(CLIPTextModel, config, weights), clip_layout("text"))


@register_backbone("clip-vit-b32", "CLIP ViT-B/32 vision tower at 224px: 12 layers, width 768, 50 tokens, 87M",
                   default_weights="openai/clip-vit-base-patch32")
def clip_vit_b32(weights: str = "random") -> HFEncoder:
    return clip_vision(CLIPVisionConfig(), weights)  # the defaults are ViT-B/32's vision tower


@register_backbone("clip-vit-b32-frames",
                   "CLIP ViT-B/32 vision tower over video frames (CLIP4Clip: 12 frames at 224px, each 50 tokens)",
                   default_weights="openai/clip-vit-base-patch32")
def clip_vit_b32_frames(weights: str = "random") -> HFEncoder:
    return clip_vision(CLIPVisionConfig(), weights, modality="video")


@register_backbone("clip-text-b32", "CLIP ViT-B/32 text tower: 12 layers, width 512, 63M",
                   default_weights="openai/clip-vit-base-patch32")
def clip_text_b32(weights: str = "random") -> HFEncoder:
    return clip_text(CLIPTextConfig(), weights)  # the defaults are ViT-B/32's text tower


def tiny_vision_config() -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8
    )


@register_backbone("tiny-clip-vision", "2-layer CLIP vision tower, width 32, 32px images, for tests", tiny=True)
def tiny_clip_vision(weights: str = "random") -> HFEncoder:
    return clip_vision(tiny_vision_config(), weights)


@register_backbone("tiny-clip-frames", "2-layer CLIP vision tower over 3 frames of 32px, for tests", tiny=True)
def tiny_clip_frames(weights: str = "random") -> HFEncoder:
    encoder = clip_vision(tiny_vision_config(), weights, modality="video")
    encoder.shape_defaults["frames"] = 3
    return encoder


@register_backbone("tiny-clip-text", "2-layer CLIP text tower, width 32, for tests", tiny=True)
def tiny_clip_text(weights: str = "random") -> HFEncoder:
    config = CLIPTextConfig(
        vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=64, bos_token_id=510, eos_token_id=511, pad_token_id=1,
    )
    return clip_text(config, weights)
