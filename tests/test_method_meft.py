"""MEFT (docs/methods.md §MEFT): the reversible backbone keeps only its last two streams, matches the same
network run through ordinary autograd, and trains exactly its adapters."""

from __future__ import annotations

import pytest
import torch

from unipt_bench.backbones import create_backbone
from unipt_bench.errors import NotApplicable
from unipt_bench.methods import create_method
from unipt_bench.methods.meft import EncoderOutput

from .helpers import assert_estimate_equals_cpu, saved_activation_count, trainable

APPLIES = ["tiny-bert", "tiny-roberta", "tiny-joint"]


def run_plain(encoder: torch.nn.Module) -> None:
    """Make a reversible encoder run the same couplings through ordinary autograd."""

    def forward(hidden: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: object) -> EncoderOutput:
        x1, x2 = encoder.plain(hidden, hidden, attention_mask)
        return EncoderOutput(last_hidden_state=(x1 + x2) / 2)

    encoder.forward = forward


@pytest.mark.parametrize("backbone", APPLIES)
def test_backbone_keeps_only_the_last_two_streams_and_the_mask(backbone: str) -> None:
    torch.manual_seed(0)
    bb = create_backbone(backbone)
    tower = create_method("meft").apply(bb, 16).train()
    inputs = bb.dummy_inputs(2)
    assert saved_activation_count(tower, bb, inputs)[0] == 3  # y2, y1 of the last layer, the attention mask
    adapters = [p for p in tower.parameters() if p.requires_grad]
    assert adapters and all(p.grad is not None for p in adapters)
    assert all(p.grad is None for p in tower.parameters() if not p.requires_grad)
    run_plain(bb.model.encoder)
    assert saved_activation_count(tower, bb, inputs)[0] > 3 * bb.num_layers  # every layer keeps its activations


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_outputs_and_gradients_match_the_non_reversible_network(mode: str) -> None:
    """float64, dropout on in training: the backward pass replays each layer's dropout masks."""
    torch.manual_seed(0)
    bb = create_backbone("tiny-bert").double()
    tower = create_method("meft").apply(bb, 16).double().train(mode == "train")
    inputs = bb.dummy_inputs(3)
    adapters = [p for p in tower.parameters() if p.requires_grad]

    def step() -> tuple[torch.Tensor, list[torch.Tensor]]:
        torch.manual_seed(5)
        out = tower(inputs).last
        grads = torch.autograd.grad(out.pow(2).sum(), adapters)
        return out.detach(), list(grads)

    reversible_out, reversible_grads = step()
    run_plain(bb.model.encoder)
    plain_out, plain_grads = step()
    torch.testing.assert_close(reversible_out, plain_out, rtol=1e-10, atol=1e-10)
    for rev, plain in zip(reversible_grads, plain_grads, strict=True):
        torch.testing.assert_close(rev, plain, rtol=1e-9, atol=1e-10)


def test_trainable_count_by_hand_on_tiny_bert() -> None:
    """L = 2, D = 32, b = 8: per layer an FFN adapter and a G adapter, each 32*8 + 8 + 8*32 + 32."""
    bb = create_backbone("tiny-bert")
    expected = 2 * 2 * ((32 * 8 + 8) + (8 * 32 + 32))
    assert create_method("meft").closed_form_trainable(bb, 16) == expected == 2208
    assert trainable(create_method("meft").apply(bb, 16)) == 2208


@pytest.mark.parametrize(
    ("backbone", "reason"),
    [("tiny-vit", "pre-norm"), ("tiny-clip-text", "pre-norm"), ("tiny-resnext", "channels and resolution"),
     ("tiny-mdetr", "BERT encoders only")],
)
def test_not_applicable_where_no_reversible_design_is_written(backbone: str, reason: str) -> None:
    with pytest.raises(NotApplicable, match=reason):
        create_method("meft").apply(create_backbone(backbone), 16)


def test_profile_estimate_and_cpu_agree_byte_for_byte(spec_factory) -> None:
    assert_estimate_equals_cpu(spec_factory("meft"))
