"""Memory options that compose with any method: activation checkpointing of the backbone's blocks, and
Approx-BP's activation-light GELU (ReGELU2) and memory-sharing LayerNorm (MS-LayerNorm).

- `checkpointing = "blocks"`: each block of the backbone (its Blocks capability) runs under
  torch.utils.checkpoint (non-reentrant): the forward keeps only each block's inputs, and the block's
  forward runs again during backward to rebuild what it saves. Under no_grad (a side method's frozen
  backbone) a block runs as usual.
- `approx_bp = "regelu2"`: every exact (erf) GELU of the tuned tower becomes ReGELU2 (Approx-BP, Yang et al.,
  ICML 2024; code github.com/yyyyychen/LowMemoryBP, commit bb2980f): the forward is GELU,
  the backward uses the derivative of a 3-piece ReLU combination, so backward needs only which of four
  intervals each input fell in: 2 bits per element, 4 elements packed per byte, instead of the input.
- `layernorm = "ms"`: every nn.LayerNorm of the tuned tower becomes Approx-BP's MS-LayerNorm (ms_layernorm.py):
  the same forward and exact gradients, but backward needs only the output (which the following layer keeps
  anyway) and one rstd per row, instead of the input, mean and rstd. The official code merges each affine into
  the following linears instead; keeping the affine and inverting it in backward keeps the same bytes and the
  original parameters. A separate option, not an approx_bp value: the two compose freely, as in the official
  RoBERTa runs (experiments/roberta_exp/run_glue.py:462-468: mergeln, activation, activation_and_mergeln).
Values other than the defaults ("none") are recorded in RunSpec.memory, so they enter the spec's digest.
docs/methods.md §Memory options.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .backbones.base import Backbone, Blocks
from .errors import NotApplicable, UserError
from .methods.base import Method
from .ms_layernorm import replace_layernorms

CHOICES = {"checkpointing": ("none", "blocks"), "approx_bp": ("none", "regelu2"), "layernorm": ("none", "ms")}
DEFAULTS = {name: values[0] for name, values in CHOICES.items()}

# ReGELU2's backward slopes a_k and breakpoints c_k: lomem/csrc/regelu2_cuda.cu:8-9. The derivative is
# sum_k a_k [x > c_k] (:26-28); the flag counts the breakpoints below x (:19).
REGELU2_SLOPES = (-0.04922261145617846, 1.0979632065417297, -0.048740595085551286)
REGELU2_BREAKS = (-3.1858810036855245, -0.001178821281161997, 3.190832613414926)


def check(options: dict[str, object], what: str) -> dict[str, str]:
    """The non-default options of `options` (one line naming the bad option and its choices otherwise)."""
    chosen = {}
    for name, value in options.items():
        if name not in CHOICES:
            raise UserError(f"{what}: unknown memory option {name!r} (known: {', '.join(CHOICES)})")
        if value not in CHOICES[name]:
            raise UserError(f"{what}: {name} must be one of {', '.join(CHOICES[name])}, got {value!r}")
        if value != DEFAULTS[name]:
            chosen[name] = value
    return chosen


def pack_flags(flags: torch.Tensor) -> torch.Tensor:
    """Interval indices 0..3 (uint8, any shape) -> 2 bits each, 4 per byte: [ceil(n / 4)] uint8."""
    flat = flags.flatten()
    flat = F.pad(flat, (0, -flat.numel() % 4)).view(-1, 4)
    return flat[:, 0] | (flat[:, 1] << 2) | (flat[:, 2] << 4) | (flat[:, 3] << 6)


def unpack_flags(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """The inverse of pack_flags: [numel] uint8 interval indices."""
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8, device=packed.device)
    return ((packed[:, None] >> shifts) & 3).flatten()[:numel]


class ReGELU2Function(torch.autograd.Function):
    """y = GELU(x) (lomem/csrc/regelu2_cuda.cu:18); saves the packed interval flags only (lomem/activation.py:9-10)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        flags = sum((x > c).to(torch.uint8) for c in REGELU2_BREAKS)  # [x.shape] in 0..3
        ctx.save_for_backward(pack_flags(flags))
        ctx.shape = x.shape
        return F.gelu(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (packed,) = ctx.saved_tensors
        flags = unpack_flags(packed, grad.numel()).view(ctx.shape)
        slope = sum(a * (flags > k).to(grad.dtype) for k, a in enumerate(REGELU2_SLOPES))
        return grad * slope


class ReGELU2(nn.Module):
    """A drop-in for an exact GELU module: GELU forward, ReGELU2's 2-bit backward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ReGELU2Function.apply(x)


def is_exact_gelu(module: nn.Module) -> bool:
    """nn.GELU without the tanh approximation, or transformers' erf GELU (GELUActivation: BERT, ViT, RoBERTa)."""
    if isinstance(module, nn.GELU):
        return module.approximate == "none"
    return type(module).__name__ == "GELUActivation"


def replace_gelus(model: nn.Module) -> int:
    """Swap every exact GELU module inside `model` for ReGELU2; returns how many."""
    swaps = [(parent, name) for parent in model.modules() for name, child in parent.named_children()
             if is_exact_gelu(child)]
    for parent, name in swaps:
        setattr(parent, name, ReGELU2())
    return len(swaps)


def checkpointed(forward, *args, **kwargs):
    """A block's forward under non-reentrant checkpointing when autograd records it, else as is."""
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def checkpoint_blocks(backbone: Backbone) -> None:
    """Run each of the backbone's blocks under activation checkpointing."""
    if backbone.missing(Blocks):
        raise UserError(f"checkpointing = \"blocks\": {backbone.missing(Blocks)}")
    for block in backbone.blocks():
        block.forward = functools.partial(checkpointed, block.forward)


def apply_memory_options(tower: nn.Module, backbone: Backbone, options: dict[str, str], method: Method) -> None:
    """Apply the (checked) options to a tuned tower built by `method` and to its backbone."""
    if options.get("checkpointing") == "blocks":
        if method.checkpointing_refusal:
            raise NotApplicable(f"checkpointing = \"blocks\" does not compose with {method.name}: "
                                f"{method.checkpointing_refusal}")
        checkpoint_blocks(backbone)
    if options.get("approx_bp") == "regelu2":
        replace_gelus(tower)
    if options.get("layernorm") == "ms" and not replace_layernorms(tower):
        raise NotApplicable("layernorm = \"ms\": the tuned tower has no nn.LayerNorm to replace")
