"""Approx-BP's memory-sharing LayerNorm (MS-LayerNorm; Yang et al., ICML 2024; code github.com/yyyyychen/LowMemoryBP,
commit bb2980f): backward needs only the LayerNorm's output and the per-row rstd, never its input.

The layer that follows keeps that same output tensor for its own backward (a trainable Linear, a LoRA factor, the
loss), so the LayerNorm keeps no activation of its own beyond rstd. The official code saves the affine-free output
n = (x - mean) * rstd (lomem/normalization.py:12-15) and folds the affine into the following linears before
training (experiments/vit_exp/model/__init__.py:77-98); here the affine stays in the LayerNorm and backward
recovers n = (y - beta) / gamma from the output y it saved: the same bytes are kept, the model and its
parameters stay the original ones (docs/methods.md §Memory options says why).
"""

from __future__ import annotations

import torch
from torch import nn
from torch._subclasses.fake_tensor import is_fake

from .errors import NotApplicable


class MSLayerNormFunction(torch.autograd.Function):
    """y = LayerNorm(x) * gamma + beta, exactly torch's forward; saves y and rstd (one float per row) only."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, shape: tuple[int, ...], weight: torch.Tensor | None,
                bias: torch.Tensor | None, eps: float) -> torch.Tensor:
        y, _mean, rstd = torch.native_layer_norm(x, shape, weight, bias, eps)  # rstd: [..., 1] per row
        ctx.save_for_backward(y, rstd, weight, bias)
        ctx.dims = tuple(range(-len(shape), 0))
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        y, rstd, weight, bias = ctx.saved_tensors
        n = y if bias is None else y - bias  # [..., *shape]: the normalized input, from the output
        if weight is not None:
            n = n / weight
        g = grad if weight is None else grad * weight  # gradient with respect to n
        dims = ctx.dims
        dx = rstd * (g - g.mean(dims, keepdim=True) - n * (g * n).mean(dims, keepdim=True))
        rows = tuple(range(grad.dim() - len(dims)))  # the leading dimensions, summed for the affine's gradients
        dweight = (grad * n).sum(rows) if weight is not None and ctx.needs_input_grad[2] else None
        dbias = grad.sum(rows) if bias is not None and ctx.needs_input_grad[3] else None
        return dx, None, dweight, dbias, None


class MSLayerNorm(nn.Module):
    """A drop-in for an nn.LayerNorm that keeps its parameters (and their trainability) and saves its output."""

    def __init__(self, norm: nn.LayerNorm) -> None:
        super().__init__()
        self.normalized_shape = tuple(norm.normalized_shape)
        self.eps = norm.eps
        self.weight, self.bias = norm.weight, norm.bias  # the same Parameters (or None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return MSLayerNormFunction.apply(x, self.normalized_shape, self.weight, self.bias, self.eps)


def has_zero(weight: torch.Tensor | None) -> bool:
    """Whether a real weight has an element equal to zero (fake and meta weights hold no values: False)."""
    if weight is None or weight.device.type == "meta" or is_fake(weight):
        return False
    return bool((weight == 0).any())


def replace_layernorms(model: nn.Module) -> int:
    """Swap every nn.LayerNorm inside `model` for MSLayerNorm; returns how many. Refuses (NotApplicable) where
    a weight has a zero element: the output then no longer determines the normalized input."""
    swaps = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if isinstance(child, nn.LayerNorm)]
    for _parent, name, child in swaps:
        if has_zero(child.weight):
            raise NotApplicable(f"layernorm = \"ms\": {name} has a weight equal to zero, so backward cannot "
                                "recover its normalized input from its output")
    for parent, name, child in swaps:
        setattr(parent, name, MSLayerNorm(child))
    return len(swaps)
