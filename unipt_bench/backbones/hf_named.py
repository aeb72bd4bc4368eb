"""`hf:<hub id or local folder>`: any transformers encoder, built from its config with no code of ours per family.

The config is read from the folder (or, for a hub id, fetched once into the Hugging Face cache); the
model is built from it with `AutoModel` (random values unless the tower asks for the checkpoint's
weights), and the insertion points methods need are found in the model itself (`discover_layout`):
the ModuleList of `num_hidden_layers` layers, the query/value projections by their names in
transformers' families, the attention output as the next square projection, the feed-forward output
as the layer's last projection back to the model width.
"""

from __future__ import annotations

from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel

from ..errors import UserError
from .hf import CONFIG_ONLY, HFEncoder, HFLayout, architecture_differences, read_config

PREFIX = "hf:"
QUERY_NAMES = ("query", "q_proj", "q_lin", "query_proj")
KEY_NAMES = ("key", "k_proj", "k_lin", "key_proj")
VALUE_NAMES = ("value", "v_proj", "v_lin", "value_proj")
# families whose layer class takes (config) and runs as layer(x, mask), so LST can build it narrower
NATIVE_SIDE_LAYER_TYPES = {"bert", "roberta", "vit", "clip_text_model", "clip_vision_model"}


def linears(module: nn.Module) -> list[tuple[str, nn.Linear]]:
    return [(name, m) for name, m in module.named_modules() if isinstance(m, nn.Linear)]


def discover_layout(model: PreTrainedModel) -> HFLayout:
    """Where a transformers encoder keeps its layers and projections; a clear error for other models."""
    config, name = model.config, type(model).__name__
    layers = next((path for path, m in model.named_modules()
                   if isinstance(m, nn.ModuleList) and len(m) == config.num_hidden_layers and len(m)), None)
    if layers is None:
        raise UserError(f"{name}: no list of {config.num_hidden_layers} layers found; is it an encoder?")
    layer = model.get_submodule(layers)[0]
    found = linears(layer)
    leaf = {path: path.rpartition(".")[2] for path, _ in found}
    query = next((p for p, _ in found if leaf[p] in QUERY_NAMES), None)
    value = next((p for p, _ in found if leaf[p] in VALUE_NAMES), None)
    if query is None or value is None:
        raise UserError(f"{name}: no query/value projections ({', '.join(QUERY_NAMES)}) found in its layers")
    width = config.hidden_size
    after_value = found[[p for p, _ in found].index(value) + 1:]
    attn_out = next((p for p, m in after_value if m.in_features == m.out_features == width
                     and leaf[p] not in QUERY_NAMES + KEY_NAMES + VALUE_NAMES), None)
    ffn_out = next((p for p, m in reversed(found) if m.out_features == width and m.in_features != width), None)
    if attn_out is None or ffn_out is None:
        raise UserError(f"{name}: no attention output or feed-forward output projection found in its layers")
    modality = {"input_ids": "text", "pixel_values": "image"}.get(model.main_input_name)
    if modality is None:
        raise UserError(f"{name}: inputs {model.main_input_name!r} are neither token ids nor pixel values")
    return HFLayout(layers=layers, attention=query.rpartition(".")[0], attn_out=attn_out, ffn_out=ffn_out,
                    query=leaf[query], value=leaf[value], modality=modality)


def named_config(source: str) -> PretrainedConfig:
    config = read_config(AutoConfig, source, "read the model config")
    if getattr(config, "is_encoder_decoder", False):
        raise UserError(f"hf:{source}: an encoder-decoder ({config.model_type}); name an encoder")
    if config.model_type == "clip":
        raise UserError(f"hf:{source}: a two-tower CLIP config; name one tower's folder (clip_text_model or "
                        "clip_vision_model config)")
    return config


def hf_backbone(source: str, weights: str = "random") -> HFEncoder:
    """The encoder `source` names; weights "random", the same source (or "pretrained"), or another checkpoint
    of the same architecture; "config:<...>" builds the architecture with random values."""
    config = named_config(source)
    model_cls = AutoModel._model_mapping[type(config)]
    # fused attention where the family has it; families that compute attention themselves run eager
    config._attn_implementation = "sdpa" if model_cls._supports_sdpa else "eager"
    if weights == "random" or weights.startswith(CONFIG_ONLY):
        model = model_cls(config)
    else:
        differences = architecture_differences(config, read_config(AutoConfig, weights))
        if differences:
            raise UserError(f"weights {weights!r} have another architecture than hf:{source}: {'; '.join(differences)}")
        try:
            model = model_cls.from_pretrained(weights, config=config, use_safetensors=None, trust_remote_code=False)
        except OSError as exc:
            raise UserError(f"cannot load weights from {weights!r}: {str(exc).splitlines()[0]}") from None
    if hasattr(model, "pooler"):
        model.pooler = None  # methods pool themselves; an unused pooler would only add parameters
    return HFEncoder(model, discover_layout(model), native_side_layer=config.model_type in NATIVE_SIDE_LAYER_TYPES)
