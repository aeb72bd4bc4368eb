"""`timm:<model name>`: any timm CNN (its last four feature stages) or ViT (every block's tokens) by name.

CNNs are built `features_only`: timm itself says which modules are the stages and how many channels
each gives (`feature_info`), so adapters, UniPT and LST find them without code per family. ViTs
(timm's VisionTransformer and its subclasses) run their own forward here to keep h_0..h_L.
Weights: "random", or "pretrained" for timm's default pretrained tag of that model (downloaded by
timm, so only on machines that reach its hub or hold its cache).
"""

from __future__ import annotations

from typing import ClassVar

import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ..errors import UserError
from .base import Backbone, BackboneOutput, batchnorm_bias_count, transformer_bias_count
from .hf import CONFIG_ONLY, HFEncoder, bert_layer

PREFIX = "timm:"
STAGES = 4  # the last four feature levels: conv2..conv5 on a ResNet, the four stages of most CNNs


def stage_path(net: nn.Module, name: str) -> str:
    """A feature stage's module path in a features_only net (FeatureListNet flattens "a.b" to "a_b")."""
    for path in (name, name.replace(".", "_")):
        try:
            net.get_submodule(path)
            return path
        except AttributeError:
            continue
    raise UserError(f"{type(net).__name__}: feature stage {name!r} not found")


class TimmStages(Backbone):
    """A timm CNN's feature stages; hidden[k] is [B, C_k, H_k, W_k], `last` the final stage as tokens."""

    kind: ClassVar[str] = "cnn"
    modality = "image"
    adapter_on_maps = True
    bias_count = batchnorm_bias_count

    def __init__(self, net: nn.Module, image_size: int) -> None:
        super().__init__()
        self.net = net
        self.paths = [stage_path(net, name) for name in net.feature_info.module_name()]
        self.hidden_sizes = tuple(net.feature_info.channels())
        self.width = self.hidden_sizes[-1]
        self.shape_defaults = {"image_size": image_size}

    def blocks(self) -> list[nn.Module]:
        return [self.net.get_submodule(path) for path in self.paths]

    def adapter_sites(self) -> list[tuple[nn.Module, str, int]]:
        """(parent, attribute, channels) of each stage: an adapter follows each."""
        sites = []
        for path, channels in zip(self.paths, self.hidden_sizes, strict=True):
            parent, _, attr = path.rpartition(".")
            sites.append((self.net.get_submodule(parent), attr, channels))
        return sites

    def forward(self, inputs: dict[str, torch.Tensor], all_hidden: bool = False) -> BackboneOutput:
        stages = self.net(inputs["pixel_values"])  # [B, C_k, H_k, W_k] per stage
        last = stages[-1].flatten(2).transpose(1, 2)  # [B, H*W, C]
        return BackboneOutput(tuple(stages) if all_hidden else (stages[-1],), last, None)

    def dummy_inputs(self, batch: int, **shape: int) -> dict[str, torch.Tensor]:
        size = shape.get("image_size", self.shape_defaults["image_size"])
        return {"pixel_values": torch.randn(batch, 3, size, size)}  # [B, 3, H, W]


class TimmViT(Backbone):
    """A timm VisionTransformer: hidden = the tokens entering block 1 and leaving every block, [B, N, D]."""

    kind: ClassVar[str] = "transformer"
    modality = "image"
    adapter_on_maps = False
    bias_count = transformer_bias_count  # timm's fused qkv bias holds q, k and v's: 3 D
    run_side_layer = staticmethod(HFEncoder.run_side_layer)

    def __init__(self, model: VisionTransformer) -> None:
        super().__init__()
        self.model = model
        self.num_layers = len(model.blocks)
        self.num_heads: int = model.blocks[0].attn.num_heads
        self.width: int = model.embed_dim
        self.ffn: int = model.blocks[0].mlp.fc2.in_features
        self.hidden_sizes = (self.width,) * (self.num_layers + 1)
        self.shape_defaults = {"image_size": model.default_cfg.get("input_size", (3, 224, 224))[-1]}

    def forward(self, inputs: dict[str, torch.Tensor], all_hidden: bool = False) -> BackboneOutput:
        m = self.model
        x = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(inputs["pixel_values"]))))  # [B, N, D]
        hidden = [x]
        for block in m.blocks:
            x = block(x)
            if all_hidden:
                hidden.append(x)
        last = m.norm(x)
        return BackboneOutput(tuple(hidden) if all_hidden else (last,), last, None)

    def dummy_inputs(self, batch: int, **shape: int) -> dict[str, torch.Tensor]:
        size = shape.get("image_size", self.shape_defaults["image_size"])
        return {"pixel_values": torch.randn(batch, 3, size, size)}  # [B, 3, H, W]

    def blocks(self) -> list[nn.Module]:
        return list(self.model.blocks)

    def adapter_sites(self) -> list[tuple[nn.Module, str, int]]:
        """The attention output and MLP output projections of every block."""
        return [site for block in self.model.blocks
                for site in ((block.attn, "proj", self.width), (block.mlp, "fc2", self.width))]

    def lora_targets(self) -> tuple[nn.Module, list[str]]:
        """timm fuses query, key and value into one projection: LoRA adapts `qkv`."""
        return self.model, ["qkv"]

    def side_layer(self, reduction: int) -> nn.Module:
        width = self.width // reduction
        if self.width % reduction or width % self.num_heads:
            raise UserError(f"reduction {reduction} does not divide width {self.width} into {self.num_heads} heads")
        return bert_layer(width, self.num_heads, self.ffn // reduction)


def timm_backbone(name: str, weights: str = "random") -> Backbone:
    """The timm model `name` as a backbone (a ViT, or a CNN's stages)."""
    if not timm.is_model(name):
        raise UserError(f"timm has no model {name!r} (see timm.list_models())")
    pretrained = weights not in ("random",) and not weights.startswith(CONFIG_ONLY)
    if pretrained and weights not in ("pretrained", f"{PREFIX}{name}"):
        raise UserError(f"timm:{name}: weights may be 'random' or 'pretrained' (timm's default tag), got {weights!r}")
    try:
        with torch.device("meta"):  # which family it is, at no memory cost
            is_vit = isinstance(timm.create_model(name, pretrained=False), VisionTransformer)
        if is_vit:
            # dynamic_img_size: profiles may use other image sizes; position embeddings are resampled then
            return TimmViT(timm.create_model(name, pretrained=pretrained, num_classes=0, dynamic_img_size=True))
        net = timm.create_model(name, pretrained=pretrained, features_only=True, out_indices=tuple(range(-STAGES, 0)))
    except (RuntimeError, OSError, AttributeError) as exc:
        raise UserError(f"timm:{name}: {str(exc).splitlines()[0]}") from None
    return TimmStages(net, net.pretrained_cfg.get("input_size", (3, 224, 224))[-1])
