"""DTL, Disentangled Transfer Learning (Fu et al., AAAI 2024, arXiv 2312.07856).

A Compact Side Network (CSN) beside the frozen backbone: a low-rank map reads the input of every block,
the maps' outputs accumulate into one residual R, and from block M on swish_beta(R) is added to the
block's output. Only the low-rank maps train. No block up to block M saves an activation (its input
depends on no trainable parameter); the frozen blocks after it do, since gradients pass through them to
reach the CSN. Defaults follow the official code (heekhero/DTL). docs/methods.md §DTL.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..backbones.base import Backbone, BackboneOutput, Blocks
from ..configurable import bounded
from .base import TOKEN_KINDS, Method, freeze, register_method


def swish(x: torch.Tensor, beta: float) -> torch.Tensor:
    """x * sigmoid(beta x) (models/vision_transformer.py:44-45)."""
    return x * torch.sigmoid(beta * x)


def low_rank(width: int, rank: int) -> nn.Sequential:
    """x A^T B^T with A [r, D] Kaiming-uniform (nn.Linear's default) and B [D, r] zero, no biases
    (models/vision_transformer.py:47-67)."""
    up = nn.Linear(rank, width, bias=False)
    nn.init.zeros_(up.weight)
    return nn.Sequential(nn.Linear(width, rank, bias=False), up)


class CompactSideNetwork(nn.Module):
    """The CSN (docs/methods.md §DTL): R = sum_{j<=i} LowRank_j(z_j), z_j the input of block j;
    after block i >= first, the block's output becomes z_{i+1} = Block_i(z_i) + swish_beta(R)."""

    def __init__(self, width: int, depth: int, rank: int, beta: float, first: int) -> None:
        super().__init__()
        self.maps = nn.ModuleList(low_rank(width, rank) for _ in range(depth))
        self.beta, self.first = beta, first
        self.residual: torch.Tensor | None = None  # R: [B, N, D], during a forward only

    def read(self, i: int, z: torch.Tensor) -> None:  # z: [B, N, D], the input of block i
        term = self.maps[i](z)
        self.residual = term if self.residual is None else self.residual + term

    def write(self, i: int, out: torch.Tensor) -> torch.Tensor:  # out: [B, N, D], the output of block i
        return out + swish(self.residual, self.beta) if i >= self.first else out


class CSNSlot:
    """Tells a wrapped block where the CSN is (not a Module: the CSN is registered once, on the tower)."""

    def __init__(self, csn: CompactSideNetwork, index: int) -> None:
        self.csn, self.index = csn, index


class TappedBlock(nn.Module):
    """A frozen block whose input feeds the CSN and whose output receives the CSN's residual."""

    def __init__(self, block: nn.Module, slot: CSNSlot) -> None:
        super().__init__()
        self.block = block
        self.slot = slot

    def forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor | tuple:
        csn, i = self.slot.csn, self.slot.index
        csn.read(i, x)
        out = self.block(x, *args, **kwargs)
        if isinstance(out, tuple):  # layers that also return attention weights
            return (csn.write(i, out[0]), *out[1:])
        return csn.write(i, out)


def replace_child(root: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Put `new` where `old` sits inside `root` (a ModuleList or Sequential entry, or an attribute)."""
    for module in root.modules():
        for name, child in module.named_children():
            if child is old:
                setattr(module, name, new)
                return
    raise ValueError(f"{type(old).__name__} is not a submodule of {type(root).__name__}")


class DTLTuned(nn.Module):
    """The frozen backbone with every block tapped by the CSN; the CSN's state lives for one forward."""

    def __init__(self, backbone: Backbone, csn: CompactSideNetwork) -> None:
        super().__init__()
        self.backbone = freeze(backbone)
        self.csn = csn
        for i, block in enumerate(backbone.blocks()):
            replace_child(backbone, block, TappedBlock(block, CSNSlot(csn, i)))

    def forward(self, inputs: dict[str, torch.Tensor]) -> BackboneOutput:
        try:
            return self.backbone(inputs)
        finally:
            self.csn.residual = None


@register_method("dtl")
@dataclass
class DTL(Method):
    module_names = ("csn",)
    kinds = TOKEN_KINDS
    needs = (Blocks,)
    rank: int = bounded(2, at_least=1)  # r of each low-rank map (train_vit_vtab.py:75; every VTAB script: --r 2)
    beta: float = bounded(100.0, above=0)  # swish temperature (train_vit_vtab.py:76; --beta 100.0)
    inject_from: float = bounded(0.5, at_least=0, below=1)  # M = floor(f L): add after blocks 6-11 of 12 (train_vit_vtab.py:78)

    def refusal(self, backbone: Backbone) -> str:
        """DTL's CSN is written for a stack of equal-width blocks (ViT; the official code's Swin variant adds
        per-stage machinery): CNN stages change width and resolution, and an encoder-decoder has two stacks."""
        reason = super().refusal(backbone)
        if reason and backbone.kind in ("cnn", "encdec"):
            reason += ("; the CSN accumulates one [B, N, D] residual across equal-width blocks, which CNN stages "
                       "(changing channels and resolution) and an encoder-decoder's two stacks do not have")
        return reason

    def first_injection(self, depth: int) -> int:
        return int(self.inject_from * depth)

    def build(self, backbone: Backbone, out_dim: int) -> nn.Module:
        depth = len(backbone.blocks())
        csn = CompactSideNetwork(backbone.width, depth, self.rank, self.beta, self.first_injection(depth))
        return DTLTuned(backbone, csn)

    def closed_form_trainable(self, backbone: Backbone, out_dim: int) -> int:
        """L low-rank maps A [r, D] and B [D, r]: 2 r D L (docs/methods.md §DTL)."""
        return 2 * self.rank * backbone.width * len(backbone.blocks())
