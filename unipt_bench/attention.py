"""Which attention kernel a profile traces: fused SDPA (today's default) or eager (the reference codes').

- "sdpa": fused scaled-dot-product attention keeps only the output and the log-sum-exp for backward.
  On the CPU (estimate and cpu modes) PyTorch fuses only without attention dropout, so tracing turns
  attention dropout off: the fused CPU kernel then stands in for CUDA's fused kernels, which apply
  dropout without storing a mask. With dropout on, CPU tracing would fall back to the math path and
  count [B, H, N, N] probabilities that a GPU never stores.
- "eager": attention as matmul -> softmax -> dropout -> matmul, storing the probabilities and the
  dropout mask, as transformers did before SDPA (and as the UniPT and LST reference codes ran).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

KERNELS = ("sdpa", "eager")
PREFIX_SDPA = "unipt_bench_prefix"
PREFIX_EAGER = "unipt_bench_prefix_eager"
EAGER_OF = {"sdpa": "eager", PREFIX_SDPA: PREFIX_EAGER}


def disable_attention_dropout(model: nn.Module) -> int:
    """Zero the dropout of every attention module (class name ending in "Attention"); returns how many."""
    from torch import nn

    changed = 0
    for module in model.modules():
        if not type(module).__name__.endswith("Attention"):
            continue
        for attr in ("dropout", "attention_dropout"):
            value = getattr(module, attr, None)
            if isinstance(value, nn.Dropout):
                value.p = 0.0
                changed += 1
            elif isinstance(value, float):
                setattr(module, attr, 0.0)
                changed += 1
    return changed


def configure_attention(model: nn.Module, kernel: str, traced_on_cpu: bool) -> dict[str, object]:
    """Switch every transformers config in `model` to `kernel`; returns what the protocol records."""
    from transformers import PretrainedConfig

    for module in model.modules():
        config = getattr(module, "config", None)
        if kernel == "eager" and isinstance(config, PretrainedConfig):
            config._attn_implementation = EAGER_OF.get(config._attn_implementation, config._attn_implementation)
    dropout_off = kernel == "sdpa" and traced_on_cpu and disable_attention_dropout(model) > 0
    return {"attention": kernel, "attention_dropout": "off (fused CPU kernel traced)" if dropout_off else "as trained"}
