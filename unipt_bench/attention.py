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

from typing import TYPE_CHECKING, Any

from torch.overrides import TorchFunctionMode

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


class SdpaCalls(TorchFunctionMode):
    """Counts the calls of fused scaled-dot-product attention while active: what ran, whatever the
    configuration switched (a module outside transformers' configs keeps its own attention function)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        import torch.nn.functional as F

        if func is F.scaled_dot_product_attention:
            self.count += 1
        return func(*args, **(kwargs or {}))


def attention_that_ran(configured: dict[str, object], sdpa_calls: int) -> dict[str, object]:
    """The protocol's attention fields corrected by what ran: an eager run in which fused SDPA was called
    is recorded as "eager+sdpa", with the number of calls."""
    if configured["attention"] != "eager" or not sdpa_calls:
        return configured
    return {**configured, "attention": "eager+sdpa",
            "attention_note": f"configured eager, yet fused scaled_dot_product_attention ran {sdpa_calls} times "
                              "(a module whose attention the configuration does not switch)"}
