"""GPO's bidirectional GRU over position encodings, run as one fused op.

The GRU's input is the same [N, d_pe] sine encoding for every row of a padded batch, so its output is the
same for every row: it runs once, on one row. Run step by step it issues some 30 ops per position and
direction, so the number of ops a trace records (and the time a fake-tensor estimate takes) would grow
with the sequence length, which breaks the alignment of memory curves across lengths. Here it counts as
one op, as cuDNN's fused RNN does on a GPU: the trackers see its output [N, 2h] allocated in the forward,
and the weights' gradients in the backward. Its per-step intermediates are internal to the op: they are
recomputed in the backward and never tracked by the tensor trackers. An allocator-level counter
(cpu_allocations, CUDA's max_memory_allocated) does see that scratch while the op runs: about 100 KB for a
36-token GPO on the CPU (tests/test_ddp.py), negligible beside a paper-scale run.
Gradients equal nn.GRU's (tests/test_position_gru.py).
"""

from __future__ import annotations

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor
from torch.utils._python_dispatch import _disable_current_modes


def run_gru(pe: torch.Tensor, weights: list[torch.Tensor], hidden: int) -> torch.Tensor:
    """nn.GRU(bidirectional, batch_first) over one row: [N, d_pe] -> [N, 2 * hidden]."""
    hx = pe.new_zeros(2, 1, hidden)  # [directions, batch 1, hidden]
    out, _ = torch._VF.gru(pe[None], hx, weights, True, 1, 0.0, False, True, True)
    return out[0]


class PositionGRU(torch.autograd.Function):
    """out = BiGRU(pe) as one op: real tensors are computed with the dispatch modes (the trackers) off and
    copied into an output the trackers saw allocated; fake tensors only allocate that output."""

    @staticmethod
    def forward(ctx, pe: torch.Tensor, hidden: int, *weights: torch.Tensor) -> torch.Tensor:
        ctx.hidden = hidden
        ctx.save_for_backward(pe, *weights)
        out = pe.new_empty(pe.shape[0], 2 * hidden)  # [N, 2h]: the op's one tracked allocation
        if not isinstance(pe, FakeTensor):
            with _disable_current_modes(), torch.no_grad():
                out.copy_(run_gru(pe, list(weights), hidden))
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        pe, *weights = ctx.saved_tensors
        wanted = [i for i, needs in enumerate(ctx.needs_input_grad[2:]) if needs]
        grads: list[torch.Tensor | None] = [None] * len(weights)
        for i in wanted:
            grads[i] = weights[i].new_empty(weights[i].shape)  # tracked, like any op's outputs
        if wanted and not isinstance(pe, FakeTensor):
            with _disable_current_modes(), torch.enable_grad():
                leaves = [w.detach().requires_grad_(i in wanted) for i, w in enumerate(weights)]
                out = run_gru(pe.detach(), leaves, ctx.hidden)
                computed = torch.autograd.grad(out, [leaves[i] for i in wanted], grad)
                for i, value in zip(wanted, computed, strict=True):
                    grads[i].copy_(value)
        return None, None, *grads


def position_gru(gru: nn.GRU, pe: torch.Tensor) -> torch.Tensor:
    """`gru` (bidirectional, one layer, batch_first) over the encodings pe [N, d_pe] -> [N, 2h]."""
    return PositionGRU.apply(pe, gru.hidden_size, *gru._flat_weights)
