"""The backbone interface every family implements, and the one output type they all return."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

import torch
from torch import nn

from ..registry import Registry


@dataclass
class BackboneOutput:
    """What a backbone (or a method wrapping one) hands to the task head.

    hidden: every hidden state h_0..h_L when asked for (`all_hidden=True`), else only (last,);
            [B, N, D_k] for token models, [B, C_k, H_k, W_k] for a CNN.
    last:   the tokens the task head pools, [B, N, D] (a CNN's last stage flattened to [B, H*W, C]).
    mask:   [B, N] with 1 for valid tokens, or None when every token is valid.
    frames: rows per sample: a video tower runs its F frames as F consecutive rows (B = samples * F).
    """

    hidden: tuple[torch.Tensor, ...]
    last: torch.Tensor
    mask: torch.Tensor | None
    frames: int = 1


class Backbone(nn.Module):
    """A pretrained network that PETL methods adapt.

    Subclasses set `kind` ("transformer", "joint", "cnn", "encdec", "features", "rnn"), `modality` (what
    its inputs are: "text", "image", "video", "features", "text+grid", "image+text"), `hidden_sizes`
    (width of each hidden state), `width` (width of `last`) and `shape_defaults` (the profiling input
    shape keys a suite may override, e.g. {"seq_len": 32}).
    """

    kind: ClassVar[str]
    modality: str
    shape_defaults: dict[str, int]
    hidden_sizes: tuple[int, ...]
    width: int

    def forward(self, inputs: dict[str, torch.Tensor], all_hidden: bool = False) -> BackboneOutput:  # pragma: no cover
        """all_hidden=False keeps only the last state, so no earlier state outlives the forward needlessly."""
        raise NotImplementedError

    def dummy_inputs(self, batch: int, **shape: int) -> dict[str, torch.Tensor]:  # pragma: no cover
        """Inputs shaped like one real batch (for profiling; values are random)."""
        raise NotImplementedError

    def missing(self, capability: type) -> str:
        """Why this backbone lacks a capability protocol ("" when it has it); methods become not_applicable."""
        if isinstance(self, capability):
            return ""
        return f"a {self.kind} backbone ({type(self).__name__}) offers no {capability.__doc__.splitlines()[0]}"


# -- capabilities: what a method may ask of a backbone. A backbone has one when it defines its members;
# -- `Backbone.missing` may still refuse it per instance (e.g. a model that computes attention itself).


@runtime_checkable
class Blocks(Protocol):
    """repeated layers or stages, in order, that methods unfreeze or attach to"""

    def blocks(self) -> list[nn.Module]: ...


@runtime_checkable
class AdapterSites(Protocol):
    """projections (or stages) a bottleneck adapter can follow"""

    # True: the sites output feature maps [B, C, H, W] (1x1-conv bottlenecks); False: tokens [B, N, D]
    adapter_on_maps: bool

    def adapter_sites(self) -> list[tuple[nn.Module, str, int]]: ...


@runtime_checkable
class Biases(Protocol):
    """a closed form of its bias parameter count, written from its shape"""

    def bias_count(self) -> int: ...


@runtime_checkable
class LoraTargets(Protocol):
    """linear projections low-rank updates can be injected into"""

    def lora_targets(self) -> tuple[nn.Module, list[str]]: ...


@runtime_checkable
class AttentionFunctions(Protocol):
    """per-layer attention through a switchable attention function, where prefixes can join keys and values"""

    num_layers: int
    num_heads: int

    def attention_modules(self) -> list[nn.Module]: ...

    def set_attention(self, implementation: str) -> None: ...


@runtime_checkable
class SideLayers(Protocol):
    """a factory of narrow layers of the backbone's own kind, for a side network"""

    def side_layer(self, reduction: int) -> nn.Module: ...

    def run_side_layer(self, layer: nn.Module, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor: ...


@runtime_checkable
class LateLayers(Protocol):
    """a forward split before its last layers: the early hidden states, then the last layers on a new state"""

    num_layers: int

    def early_layers_only(self, late: int) -> AbstractContextManager[None]: ...

    def run_late_layers(self, inputs: dict[str, torch.Tensor], entry: torch.Tensor, late: int) -> BackboneOutput: ...


@dataclass(frozen=True)
class BackboneInfo:
    """A registered backbone variant: its factory and what it is."""

    name: str
    factory: Callable[..., Backbone]
    description: str
    tiny: bool  # a small random-init variant for tests
    default_weights: str  # "random", a hub name, or "packaged"


BACKBONES: Registry[BackboneInfo] = Registry("backbone")


def register_backbone(
    name: str, description: str, *, tiny: bool = False, default_weights: str = "random"
) -> Callable[[Callable[..., Backbone]], Callable[..., Backbone]]:
    """Decorator: register `factory(weights: str) -> Backbone` under `name`."""

    def add(factory: Callable[..., Backbone]) -> Callable[..., Backbone]:
        BACKBONES.register(name)(BackboneInfo(name, factory, description, tiny, default_weights))
        return factory

    return add


def is_bias(name: str) -> bool:
    """A parameter path whose leaf is a bias (`bias`, or a GRU's `bias_ih_l0` and the like)."""
    return name.rsplit(".", 1)[-1].startswith("bias")


def biases_outside_blocks(backbone: Backbone) -> int:
    """Bias parameters outside `backbone.blocks()` as built (embedding or final norms, a patch projection):
    what a closed form per layer leaves out."""
    in_blocks = {id(p) for block in backbone.blocks() for p in block.parameters()}
    return sum(p.numel() for name, p in backbone.named_parameters() if is_bias(name) and id(p) not in in_blocks)


def transformer_bias_count(backbone: Backbone) -> int:
    """A transformer encoder's biases (docs/methods.md §3.3): per layer q, k, v, o, two LayerNorms and the
    FFN's two projections, L (7 D + I), plus those outside the layers."""
    d, ffn = backbone.width, backbone.ffn  # type: ignore[attr-defined]
    return backbone.num_layers * (7 * d + ffn) + biases_outside_blocks(backbone)  # type: ignore[attr-defined]


def batchnorm_bias_count(backbone: Backbone) -> int:
    """A CNN's biases (docs/methods.md §3.3): one per BatchNorm channel (its convs have none)."""
    return sum(m.num_features for m in backbone.modules() if isinstance(m, nn.BatchNorm2d))


def padded_mask(batch: int, seq_len: int) -> torch.Tensor:
    """A [B, N] token mask shaped like a real padded batch: row b keeps N - (b % 4) tokens.

    Real caption batches are padded to their longest member, so most rows carry some padding; a mask
    with padding also makes every attention implementation build its mask the same way on real and
    fake tensors.
    """
    lengths = seq_len - (torch.arange(batch) % 4).clamp(max=seq_len - 1)  # [B]
    return (torch.arange(seq_len)[None, :] < lengths[:, None]).long()  # [B, N]
