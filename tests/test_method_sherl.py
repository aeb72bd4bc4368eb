"""SHERL: what the frozen early layers and the late layers save for backward, where gradients flow, the
trainable count by hand, the late layers as the backbone's own, and estimate/cpu profiles agreeing."""

from __future__ import annotations

import pytest
import torch

from unipt_bench.backbones import create_backbone
from unipt_bench.errors import NotApplicable
from unipt_bench.methods import create_method

from .conftest import make_spec
from .helpers import assert_estimate_equals_cpu, saved_activation_count, trainable

E = 16
TOKEN_BACKBONES = ["tiny-bert", "tiny-vit", "tiny-clip-text", "tiny-joint"]


def saved_per_block(tower: torch.nn.Module, blocks: list[torch.nn.Module], inputs: dict) -> list[int]:
    """Tensors each backbone block saves for backward during one forward of `tower`."""
    counts, current = [0] * len(blocks), {"block": None}
    hooks = []
    for i, block in enumerate(blocks):
        hooks.append(block.register_forward_pre_hook(lambda *_, i=i: current.__setitem__("block", i)))
        hooks.append(block.register_forward_hook(lambda *_: current.__setitem__("block", None)))

    def pack(t: torch.Tensor) -> torch.Tensor:
        if current["block"] is not None:
            counts[current["block"]] += 1
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        tower(inputs)
    for hook in hooks:
        hook.remove()
    return counts


@pytest.mark.parametrize("backbone", TOKEN_BACKBONES)
def test_early_layers_save_nothing_the_late_layer_does_and_only_the_module_gets_gradients(backbone: str) -> None:
    torch.manual_seed(0)
    bb = create_backbone(backbone)
    tower = create_method("sherl").apply(bb, E).train()
    inputs = bb.dummy_inputs(3)
    *early, late = saved_per_block(tower, bb.blocks(), inputs)
    assert early == [0] * len(early)  # the frozen early route ran under no_grad
    assert late > 0  # the last layer keeps its activations: gradients pass through it to the module
    backbone_call, _ = saved_activation_count(tower, bb, inputs)  # the backbone's own (frozen) call
    assert backbone_call == 0
    assert all(p.grad is None for p in bb.parameters())  # the late layer's weights stay frozen
    assert all((p.grad is not None) == p.requires_grad for p in tower.parameters())
    assert all(name.startswith("side.") for name, p in tower.named_parameters() if p.requires_grad)


def test_trainable_count_by_hand_on_tiny_bert_and_tiny_joint() -> None:
    """tiny-bert: D = 32, L = 2, K = 1 (S = 2 states), m = E / 2 = 8; tiny-joint: m = D / 2 = 16."""
    bert = 2 * (32 * 8 + 8 + 2 * 8) + (8 + 1) + 1 + (8 * 32 + 32) + 2 * 32  # S Down, g, gamma, Out + LN(D)
    joint = 2 * ((32 * 16 + 16) + 2 * (16 * 16 + 16)) + (16 + 1) + 1 + (16 * 32 + 32)  # gated Down, no LN
    for name, expected in (("tiny-bert", bert), ("tiny-joint", joint)):
        method = create_method("sherl")
        assert method.closed_form_trainable(create_backbone(name), E) == expected
        assert trainable(method.apply(create_backbone(name), E)) == expected
    assert (bert, joint) == (922, 2706)


@pytest.mark.parametrize("backbone", ["tiny-bert", "tiny-clip-text", "tiny-vit"])
def test_the_late_layers_are_the_backbones_own_with_its_masks_and_final_norm(backbone: str) -> None:
    """With Out silenced and the gate saturated, X = h_{L-K}: the tower reproduces the frozen backbone."""
    torch.manual_seed(0)
    bb = create_backbone(backbone)
    tower = create_method("sherl").apply(bb, E).eval()
    with torch.no_grad():
        tower.side.out[1].weight.zero_()
        tower.side.out[1].bias.zero_()
        tower.side.gate.fill_(100.0)
    inputs = bb.dummy_inputs(3)
    torch.testing.assert_close(tower(inputs).last, bb(inputs).last)


@pytest.mark.parametrize("backbone", ["tiny-resnext", "tiny-mdetr"])
def test_cnn_and_encoder_decoder_are_not_applicable(backbone: str) -> None:
    with pytest.raises(NotApplicable, match="no design"):
        create_method("sherl").apply(create_backbone(backbone), E)


def test_late_layers_option_is_checked() -> None:
    from unipt_bench.errors import UserError

    with pytest.raises(UserError, match="late_layers"):
        create_method("sherl", {"late_layers": 2}).apply(create_backbone("tiny-bert"), E)


def test_estimate_and_cpu_profiles_agree_byte_for_byte() -> None:
    assert_estimate_equals_cpu(make_spec("sherl"))
