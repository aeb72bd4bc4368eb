"""ResNeXt image encoders (timm): ResNeXt-101 32x8d and a tiny test variant; the four stage outputs are the hidden states."""

from __future__ import annotations

from typing import ClassVar

import timm
import torch
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import nn

from ..errors import UserError
from .base import Backbone, BackboneOutput, batchnorm_bias_count, register_backbone
from .hf import CONFIG_ONLY


class ResNetStages(Backbone):
    """A timm ResNet/ResNeXt without its classifier; hidden = the outputs of stages conv2..conv5.

    hidden[k] is [B, C_k, H_k, W_k]; `last` is the conv5 output flattened to tokens [B, H_4*W_4, C_4].
    """

    kind: ClassVar[str] = "cnn"
    modality = "image"
    adapter_on_maps = True
    bias_count = batchnorm_bias_count

    def __init__(self, net: ResNet, image_size: int) -> None:
        super().__init__()
        net.reset_classifier(0)
        self.net = net
        self.hidden_sizes = tuple(info["num_chs"] for info in net.feature_info[1:])  # conv2..conv5 channels
        self.width = self.hidden_sizes[-1]
        self.shape_defaults = {"image_size": image_size}

    def stages(self) -> list[nn.Module]:
        return [self.net.layer1, self.net.layer2, self.net.layer3, self.net.layer4]

    def blocks(self) -> list[nn.Module]:
        return self.stages()

    def adapter_sites(self) -> list[tuple[nn.Module, str, int]]:
        """(parent, attribute, channels) of each stage conv2..conv5: an adapter follows each."""
        return [(self.net, f"layer{k}", c) for k, c in enumerate(self.hidden_sizes, start=1)]

    def stem(self, pixels: torch.Tensor) -> torch.Tensor:
        net = self.net
        return net.maxpool(net.act1(net.bn1(net.conv1(pixels))))  # [B, 64, H/4, W/4]

    def forward(self, inputs: dict[str, torch.Tensor], all_hidden: bool = False) -> BackboneOutput:
        x = self.stem(inputs["pixel_values"])
        hidden = []
        for stage in self.stages():
            x = stage(x)  # [B, C_k, H_k, W_k]
            if all_hidden:
                hidden.append(x)
        last = x.flatten(2).transpose(1, 2)  # [B, H_4*W_4, C_4]
        return BackboneOutput(tuple(hidden) if all_hidden else (x,), last, None)

    def dummy_inputs(self, batch: int, **shape: int) -> dict[str, torch.Tensor]:
        size = shape.get("image_size", self.shape_defaults["image_size"])
        return {"pixel_values": torch.randn(batch, 3, size, size)}  # [B, 3, H, W]


def timm_resnet(name: str, weights: str) -> ResNet:
    """timm's model `name`, random or with weights from a timm pretrained tag or a local file
    ("config:<source>": that source's architecture, which must be `name`, with random values)."""
    source = weights.removeprefix(CONFIG_ONLY)
    tag_model = source.removeprefix("timm:").split(".")[0] if source.startswith("timm:") else name
    if tag_model != name:
        raise UserError(f"weights {source!r} are for {tag_model}, another architecture than {name}")
    if weights == "random" or weights.startswith(CONFIG_ONLY):
        return timm.create_model(name, pretrained=False)
    overlay = None if weights.startswith("timm:") else {"file": weights}
    try:
        if overlay is None:
            return timm.create_model(weights.removeprefix("timm:"), pretrained=True)
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay)
    except (OSError, RuntimeError) as exc:
        raise UserError(f"cannot load ResNeXt weights {weights!r}: {str(exc).splitlines()[0]}") from None


@register_backbone(
    "resnext101-32x8d",
    "ResNeXt-101 32x8d (timm) at 512px: stages of 256/512/1024/2048 channels, 86.7M",
    default_weights="timm:resnext101_32x8d.fb_wsl_ig1b_ft_in1k",
)
def resnext101_32x8d(weights: str = "random") -> ResNetStages:
    return ResNetStages(timm_resnet("resnext101_32x8d", weights), image_size=512)


@register_backbone("resnet-small", "ResNet with one basic block per stage, 32-256 channels (1.2M), for 64px images")
def resnet_small(weights: str = "random") -> ResNetStages:
    if weights != "random":
        raise UserError("resnet-small has no pretrained weights; it trains from random initialisation")
    return ResNetStages(ResNet(BasicBlock, (1, 1, 1, 1), stem_width=32, channels=(32, 64, 128, 256)), image_size=64)


@register_backbone("tiny-resnext", "ResNeXt with one block per stage, 32-256 channels, 64px, for tests", tiny=True)
def tiny_resnext(weights: str = "random") -> ResNetStages:
    net = ResNet(Bottleneck, (1, 1, 1, 1), cardinality=4, base_width=16, stem_width=8, channels=(8, 16, 32, 64))
    return ResNetStages(net, image_size=64)
