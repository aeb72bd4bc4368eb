"""Hugging Face transformer encoders (BERT, RoBERTa, ViT, CLIP towers) behind the Backbone interface.

A family is described by where its layers, attention and projections live (`HFLayout`); the methods
find their insertion points through it instead of `if` chains on model names.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from ..errors import UserError
from .base import AttentionFunctions, Backbone, BackboneOutput, padded_mask, transformer_bias_count


@dataclass(frozen=True)
class HFLayout:
    """Attribute paths inside one family's model (relative to the model or to one layer)."""

    layers: str  # the ModuleList of transformer layers, e.g. "encoder.layer"
    attention: str  # the module that calls the attention function, e.g. "attention.self"
    attn_out: str  # attention output projection (an adapter follows it), e.g. "attention.output.dense"
    ffn_out: str  # feed-forward output projection (an adapter follows it), e.g. "output.dense"
    query: str  # leaf names peft's LoRA targets
    value: str
    modality: str  # "text" (input_ids + attention_mask) or "image" (pixel_values)


def get_path(module: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        module = getattr(module, part)
    return module


CONFIG_ONLY = "config:"  # weights "config:<source>": the source's architecture, random values (estimates)
# config fields that decide a model's shapes and what it stores for backward (attribute_map aware)
ARCHITECTURE_FIELDS = (
    "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size",
    "max_position_embeddings", "type_vocab_size", "image_size", "patch_size", "num_channels", "hidden_act",
    "hidden_dropout_prob", "attention_probs_dropout_prob", "attention_dropout", "dropout", "projection_dim",
)


def refuse_remote_code(settings: object, source: str, file: str = "config.json") -> None:
    """One-line error for a checkpoint whose `file` names its own Python classes (`auto_map`): transformers
    would import and run them (after a prompt); the benchmark never runs a checkpoint's code."""
    if isinstance(settings, dict) and "auto_map" in settings:
        raise UserError(f"{source}: its {file} asks to run the checkpoint's own Python code (auto_map), "
                        "which unipt-bench never does; use a model whose classes transformers ships")


def read_config(config_cls: type[PretrainedConfig], source: str, what: str = "load weights") -> PretrainedConfig:
    """A checkpoint's config (hub name or local folder), as `config_cls`; one-line error when unreadable or
    when it asks for remote code (read as plain JSON first, so no code is imported to find out)."""
    try:
        settings, _ = PretrainedConfig.get_config_dict(source)
        refuse_remote_code(settings, source)
        return config_cls.from_pretrained(source, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        where = "local path" if Path(source).exists() else "hub name (is it in the local cache?)"
        raise UserError(f"cannot {what} from {where} {source!r}: {str(exc).splitlines()[0]}") from None


def architecture_differences(expected: PretrainedConfig, found: PretrainedConfig) -> list[str]:
    """'field: expected -> found' for every architecture field on which two configs disagree."""
    return [f"{name}: {getattr(expected, name, None)!r} -> {getattr(found, name, None)!r}"
            for name in ARCHITECTURE_FIELDS if getattr(expected, name, None) != getattr(found, name, None)]


def load_hf_model(
    model_cls: type[PreTrainedModel], config: PretrainedConfig, weights: str, **kwargs: object
) -> PreTrainedModel:
    """Build from `config` (weights="random") or from a checkpoint (hub name or local path).

    With a checkpoint, the architecture always comes from the checkpoint's config, also for
    "config:<source>" (its architecture with random values: what estimates build), and a checkpoint
    whose architecture differs from `config` (the registered variant) is an error naming the fields.
    Loading never runs remote code and reads safetensors where the checkpoint has them.
    """
    config._attn_implementation = "sdpa"
    if weights == "random":
        return model_cls(config, **kwargs)
    source = weights.removeprefix(CONFIG_ONLY)
    found = read_config(type(config), source)
    differences = architecture_differences(config, found)
    if differences:
        raise UserError(f"weights {source!r} have another architecture than the backbone: {'; '.join(differences)}")
    found._attn_implementation = "sdpa"
    if weights.startswith(CONFIG_ONLY):
        return model_cls(found, **kwargs)
    try:
        return model_cls.from_pretrained(source, config=found, use_safetensors=None, trust_remote_code=False,
                                         **kwargs)
    except OSError as exc:
        where = "local path" if Path(source).exists() else "hub name (is it in the local cache?)"
        raise UserError(f"cannot load weights from {where} {source!r}: {str(exc).splitlines()[0]}") from None


def bert_layer(width: int, heads: int, ffn: int) -> nn.Module:
    """A BERT layer at width d: the side layer of backbones whose own layer type cannot be built narrower."""
    from transformers import BertConfig
    from transformers.models.bert.modeling_bert import BertLayer

    config = BertConfig(hidden_size=width, num_attention_heads=heads, intermediate_size=ffn)
    config._attn_implementation = "sdpa"
    return BertLayer(config)


class HFEncoder(Backbone):
    """A transformer encoder from transformers; hidden states h_0..h_L come from `output_hidden_states`."""

    kind: ClassVar[str] = "transformer"
    adapter_on_maps = False

    def __init__(self, model: PreTrainedModel, layout: HFLayout, native_side_layer: bool = True) -> None:
        super().__init__()
        self.model = model
        self.layout = layout
        self.modality = layout.modality
        cfg = model.config
        self.num_layers: int = cfg.num_hidden_layers
        self.num_heads: int = cfg.num_attention_heads
        self.width = cfg.hidden_size
        self.hidden_sizes = (cfg.hidden_size,) * (self.num_layers + 1)
        self.ffn: int = get_path(self.blocks()[0], layout.ffn_out).in_features  # feed-forward width
        # LST's side layers: this family's own layer type at width D/r when its constructor takes the
        # config's hidden_size / intermediate_size (BERT, RoBERTa, ViT, CLIP), else a BERT layer at D/r
        self.native_side_layer = native_side_layer
        size = getattr(cfg, "image_size", 224)
        self.shape_defaults = {
            "text": {"seq_len": 32},
            "image": {"image_size": size},
            "video": {"frames": 12, "image_size": size},  # CLIP4Clip: 12 frames per clip
        }[layout.modality]

    @property
    def config(self) -> PretrainedConfig:
        return self.model.config

    def forward(self, inputs: dict[str, torch.Tensor], all_hidden: bool = False) -> BackboneOutput:
        mask, frames = None, 1
        if self.layout.modality == "text":
            mask = inputs["attention_mask"]
            out = self.model(input_ids=inputs["input_ids"], attention_mask=mask, output_hidden_states=all_hidden)
        else:
            pixels = inputs["pixel_values"]  # [B, 3, H, W], or [B, F, 3, H, W] for a video
            if self.layout.modality == "video":
                frames, pixels = pixels.shape[1], pixels.flatten(0, 1)  # frames run as rows: [B*F, 3, H, W]
            out = self.model(pixel_values=pixels, output_hidden_states=all_hidden)
        hidden = tuple(out.hidden_states) if all_hidden else (out.last_hidden_state,)
        return BackboneOutput(hidden, out.last_hidden_state, mask, frames)

    def dummy_inputs(self, batch: int, **shape: int) -> dict[str, torch.Tensor]:
        shape = {**self.shape_defaults, **shape}
        if self.layout.modality == "text":
            ids = torch.randint(0, self.config.vocab_size, (batch, shape["seq_len"]))  # [B, N]
            return {"input_ids": ids, "attention_mask": padded_mask(batch, shape["seq_len"])}
        size = shape["image_size"]
        if self.layout.modality == "video":
            return {"pixel_values": torch.randn(batch, shape["frames"], 3, size, size)}  # [B, F, 3, H, W]
        return {"pixel_values": torch.randn(batch, 3, size, size)}  # [B, 3, H, W]

    # -- insertion points used by the methods -------------------------------------------------------
    def blocks(self) -> list[nn.Module]:
        return list(get_path(self.model, self.layout.layers))

    def attention_modules(self) -> list[nn.Module]:
        """The modules that call the attention function, one per layer (prefix tuning joins here)."""
        return [get_path(layer, self.layout.attention) for layer in self.blocks()]

    def adapter_sites(self) -> list[tuple[nn.Module, str, int]]:
        """(parent, attribute, width) of each projection an adapter follows: attention out, FFN out, per layer."""
        sites = []
        for layer in self.blocks():
            for path in (self.layout.attn_out, self.layout.ffn_out):
                parent_path, _, leaf = path.rpartition(".")
                sites.append((get_path(layer, parent_path) if parent_path else layer, leaf, self.width))
        return sites

    def bias_count(self) -> int:
        return transformer_bias_count(self)

    def lora_targets(self) -> tuple[nn.Module, list[str]]:
        """The module peft injects into (the transformers model itself) and the leaf names it targets."""
        return self.model, [self.layout.query, self.layout.value]

    def set_attention(self, implementation: str) -> None:
        """Switch every layer's attention function (prefix tuning registers its own)."""
        self.model.config._attn_implementation = implementation

    def missing(self, capability: type) -> str:
        if capability is AttentionFunctions and not getattr(self.model, "_supports_attention_backend", False):
            return f"{type(self.model).__name__} computes attention itself, not through transformers' attention functions"
        return super().missing(capability)

    def side_layer(self, reduction: int) -> nn.Module:
        """A layer of this family's own type at width D/r (heads unchanged, FFN width / r), as LST builds."""
        width, heads = self.width // reduction, self.num_heads
        if self.width % reduction or width % heads:
            raise UserError(f"reduction {reduction} does not divide width {self.width} into {heads} heads")
        if not self.native_side_layer:
            return bert_layer(width, heads, self.ffn // reduction)
        cfg = copy.deepcopy(self.config)
        cfg.hidden_size = width
        cfg.intermediate_size = self.ffn // reduction
        cfg._attn_implementation = "sdpa"
        return type(self.blocks()[0])(cfg)

    @staticmethod
    def run_side_layer(layer: nn.Module, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Call a `side_layer` on tokens x [B, N, d] with a [B, N] padding mask (None: no padding)."""
        attn_mask = None if mask is None else mask[:, None, None, :].bool()  # [B, 1, 1, N], True = attend
        out = layer(x, attn_mask)
        return out[0] if isinstance(out, tuple) else out

    # -- LateLayers: SHERL's split forward ---------------------------------------------------------
    @contextmanager
    def layers_only(self, start: int, stop: int, entry: torch.Tensor | None = None) -> Iterator[None]:
        """Within: the model runs layers start..stop-1 only; `entry` [B, N, D] replaces the first one's input.

        Everything else (embeddings, masks as the family builds them, final norm) runs as usual.
        """
        parent_path, _, leaf = self.layout.layers.rpartition(".")
        parent = get_path(self.model, parent_path) if parent_path else self.model
        layers = getattr(parent, leaf)
        setattr(parent, leaf, layers[start:stop])
        hook = None if entry is None else layers[start].register_forward_pre_hook(lambda _, args: (entry, *args[1:]))
        try:
            yield
        finally:
            setattr(parent, leaf, layers)
            if hook is not None:
                hook.remove()

    def early_layers_only(self, late: int) -> AbstractContextManager[None]:
        """Within: forward stops before the last `late` layers (all_hidden gives h_0..h_{L-late})."""
        return self.layers_only(0, self.num_layers - late)

    def run_late_layers(self, inputs: dict[str, torch.Tensor], entry: torch.Tensor, late: int) -> BackboneOutput:
        """The last `late` layers, then the family's final norm, on `entry` [B, N, D] in place of h_{L-late}.

        Called as a continuation of the frozen pass, not through this module's own hooks (which see the
        frozen pass only); the embeddings are recomputed and discarded (no gradient: frozen, no graph).
        """
        with self.layers_only(self.num_layers - late, self.num_layers, entry):
            return self.forward(inputs)
