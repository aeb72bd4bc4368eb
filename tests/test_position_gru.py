"""GPO's position GRU as one op: the same output and gradients as nn.GRU run row by row, and one tracked
allocation whatever the sequence length (so memory curves align across lengths)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from unipt_bench.tasks.pooling import GPO, sinusoid_positions
from unipt_bench.tasks.position_gru import position_gru


@pytest.mark.parametrize("length", [1, 5, 17])
def test_output_and_gradients_equal_nn_gru(length: int) -> None:
    torch.manual_seed(0)
    gru = nn.GRU(8, 6, batch_first=True, bidirectional=True).double()
    pe = sinusoid_positions(length, 8, torch.device("cpu")).double()  # [N, 8]
    grad = torch.randn(length, 12, dtype=torch.float64)
    reference, _ = gru(pe.expand(3, length, 8))  # [3, N, 12]: every row the same
    (reference * grad).sum().backward()
    expected = [p.grad.clone() / 3 for p in gru.parameters()]  # one row's share
    gru.zero_grad()
    out = position_gru(gru, pe)
    torch.testing.assert_close(out, reference[0], rtol=0, atol=1e-13)
    (out * grad).sum().backward()
    for p, e in zip(gru.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, e, rtol=0, atol=1e-12)


def test_a_frozen_gru_gets_no_gradient_and_gpo_trains_through_it() -> None:
    torch.manual_seed(0)
    gpo = GPO(d_pe=8, d_hidden=4)
    x = torch.randn(2, 5, 3, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    gpo.gru.weight_hh_l0.requires_grad_(False)
    gpo(x, mask).sum().backward()
    assert gpo.gru.weight_hh_l0.grad is None
    assert gpo.gru.weight_ih_l0.grad is not None and gpo.score.weight.grad is not None and x.grad is not None


def test_the_op_count_does_not_depend_on_the_length() -> None:
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops += 1
            return func(*args, **(kwargs or {}))

    gpo = GPO(d_pe=8, d_hidden=4)
    counts = []
    for n in (4, 9):
        with Count() as count:
            gpo(torch.randn(2, n, 3), None).sum().backward()
        counts.append(count.ops)
    assert counts[0] == counts[1]
