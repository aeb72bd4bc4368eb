"""Methods: trainable parameter counts against each method's closed form, what trains, where gradients flow."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
import torch

from unipt_bench.backbones import BACKBONES, create_backbone
from unipt_bench.errors import NotApplicable, UserError
from unipt_bench.methods import METHODS, Method, create_method
from unipt_bench.methods.base import transformer_layer_params

from .helpers import saved_activation_count, trainable

TINY = [n for n in BACKBONES.names() if BACKBONES.get(n).tiny]
E = 16  # task embedding width used in these tests


@pytest.mark.parametrize("backbone", TINY)
@pytest.mark.parametrize("method", METHODS.names())
def test_trainable_count_matches_the_methods_closed_form(method: str, backbone: str) -> None:
    """Registry-wide: every method on every tiny backbone either refuses it with its reason (a missing design
    or capability), or leaves trainable exactly what its own closed form states. A new method or backbone is
    covered as registered; a method (or a backbone family) that states no closed form fails here."""
    bb = create_backbone(backbone)
    tuned = create_method(method)
    reason = tuned.refusal(bb)
    if reason:
        with pytest.raises(NotApplicable, match=f"^{re.escape(reason)}$"):
            tuned.apply(bb, E)
        return
    try:
        expected = tuned.closed_form_trainable(bb, E)
    except NotImplementedError as exc:
        pytest.fail(str(exc))
    assert trainable(tuned.apply(bb, E)) == expected


@pytest.mark.parametrize(
    ("method", "options", "backbone"),
    [
        ("unipt", {"anchor": "eot"}, "tiny-clip-text"),
        ("unipt", {"reduction": 4}, "tiny-vit"),
        ("lst", {"layers": [2]}, "tiny-bert"),
        ("lst", {"cnn_width": 16, "cnn_heads": 4}, "tiny-resnext"),
        ("partial", {"unfreeze_last": 1}, "tiny-bert"),
        ("partial", {"unfreeze_last": 2}, "tiny-resnext"),
        ("adapter", {"reduction": 8, "cnn_reduction": 4}, "tiny-resnext"),
        ("lora", {"rank": 4}, "tiny-vit"),
        ("prompt", {"length": 4, "bottleneck": 8}, "tiny-bert"),
    ],
)
def test_closed_forms_follow_the_options(method: str, options: dict, backbone: str) -> None:
    tuned = create_method(method, options)
    expected = tuned.closed_form_trainable(create_backbone(backbone), E)
    assert trainable(tuned.apply(create_backbone(backbone), E)) == expected
    assert expected != create_method(method).closed_form_trainable(create_backbone(backbone), E)  # the option counts


def test_a_method_without_a_closed_form_says_what_to_define() -> None:
    @dataclass
    class Bare(Method):
        name = "bare"

    with pytest.raises(NotImplementedError, match="'bare' states no closed form.*closed_form_trainable"):
        Bare().closed_form_trainable(create_backbone("tiny-bert"), E)


def test_unipt_on_bert_base_equals_the_documented_closed_form() -> None:
    """docs/methods.md §1.1: BERT-base (D=768, 13 states), E=1024, r=2."""
    with torch.device("meta"):
        tower = create_method("unipt").apply(create_backbone("bert-base"), 1024)
    expected = 13 * (768 * 512 + 512 + 2 * 512) + (512 * 512 + 512 + 2 * 512) + (512 * 1024 + 1024) + (512 + 1)
    assert trainable(tower) == expected == 5_921_281


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("adapter", 12 * 2 * (768 * 48 + 48 + 48 * 768 + 768)),  # 1,789,056
        ("lora", 12 * 2 * 8 * (768 + 768)),  # 294,912
        ("prompt", 30 * 768 + 768 * 512 + 512 + 512 * 18432 + 18432),  # 9,872,384
        ("bitfit", 768 + 12 * (7 * 768 + 3072)),  # 102,144
        ("lst", 13 * (768 * 192 + 192) + 12 + 12 * transformer_layer_params(192, 768) + 2 * 192 + 192 * 1024 + 1024),
    ],
)
def test_paper_scale_bert_counts(method: str, expected: int) -> None:
    """The BERT-base counts behind the paper's Table 5 Params column (method part, E = 1024)."""
    with torch.device("meta"):
        tower = create_method(method).apply(create_backbone("bert-base"), 1024)
    assert trainable(tower) == expected


def test_partial_unfreeze_last_trains_exactly_those_blocks() -> None:
    bb = create_backbone("tiny-bert")
    tower = create_method("partial", {"unfreeze_last": 1}).apply(bb, E)
    assert trainable(tower) == transformer_layer_params(32, 64)
    with pytest.raises(UserError, match="unfreeze_last"):
        create_method("partial", {"unfreeze_last": 3}).apply(create_backbone("tiny-bert"), E)


def test_bitfit_on_cnn_trains_batchnorm_biases_only() -> None:
    bb = create_backbone("tiny-resnext")
    expected = sum(m.bias.numel() for m in bb.modules() if isinstance(m, torch.nn.BatchNorm2d))
    tower = create_method("bitfit").apply(bb, E)
    assert trainable(tower) == expected > 0
    assert all(name.endswith("bias") for name, p in tower.named_parameters() if p.requires_grad)


@pytest.mark.parametrize("method", ["lora", "prompt"])
def test_attention_methods_do_not_apply_to_a_cnn(method: str) -> None:
    with pytest.raises(NotApplicable, match="cnn"):
        create_method(method).apply(create_backbone("tiny-resnext"), E)


TOKEN_BACKBONES = ["tiny-bert", "tiny-vit", "tiny-clip-text", "tiny-clip-vision"]


@pytest.mark.parametrize("backbone", TOKEN_BACKBONES)
@pytest.mark.parametrize("method", ["lst", "unipt"])
def test_side_methods_keep_gradients_out_of_the_backbone(method: str, backbone: str) -> None:
    torch.manual_seed(0)
    bb = create_backbone(backbone)
    tower = create_method(method).apply(bb, E)
    tower.train()
    backbone_saved, all_saved = saved_activation_count(tower, bb, bb.dummy_inputs(3, **bb.shape_defaults))
    assert backbone_saved == 0  # the backbone ran under no_grad: nothing kept for backward
    assert all_saved > 0  # while the side network did save its activations
    assert all(p.grad is None for p in bb.parameters())
    side_params = [p for p in tower.parameters() if p.requires_grad]
    assert side_params and all(p.grad is not None for p in side_params)


@pytest.mark.parametrize("method", ["full", "bitfit", "adapter", "lora", "prompt"])
def test_inserted_methods_backpropagate_through_the_backbone(method: str) -> None:
    """The contrast that makes the side-method test meaningful: these do save backbone activations."""
    torch.manual_seed(0)
    bb = create_backbone("tiny-bert")
    tower = create_method(method).apply(bb, E)
    backbone_saved, _ = saved_activation_count(tower, bb, bb.dummy_inputs(3, seq_len=8))
    assert backbone_saved > 0
    assert all((p.grad is not None) == p.requires_grad for p in tower.parameters())


def test_unipt_output_shape_and_mask() -> None:
    bb = create_backbone("tiny-bert")
    tower = create_method("unipt").apply(bb, E)
    inputs = bb.dummy_inputs(5, seq_len=7)
    out = tower(inputs)
    assert out.last.shape == (5, 7, E)
    assert torch.equal(out.mask, inputs["attention_mask"])


def test_unipt_padding_does_not_change_valid_tokens() -> None:
    """Padded keys get zero interaction weight: appending padding leaves the valid tokens' outputs unchanged."""
    torch.manual_seed(0)
    bb = create_backbone("tiny-bert").eval()
    tower = create_method("unipt").apply(bb, E).eval()
    ids = torch.randint(0, 512, (2, 5))
    short = tower({"input_ids": ids, "attention_mask": torch.ones(2, 5, dtype=torch.long)})
    padded_ids = torch.cat([ids, torch.zeros(2, 3, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(2, 5), torch.zeros(2, 3)], dim=1).long()
    padded = tower({"input_ids": padded_ids, "attention_mask": mask})
    torch.testing.assert_close(padded.last[:, :5], short.last, atol=1e-5, rtol=1e-4)


def test_adapter_starts_near_identity_and_lora_exactly() -> None:
    torch.manual_seed(0)
    inputs = create_backbone("tiny-bert").dummy_inputs(2, seq_len=6)
    torch.manual_seed(1)
    reference = create_backbone("tiny-bert").eval()
    base = reference(inputs).last
    for method, tol in (("lora", 1e-6), ("adapter", 1e-1)):
        torch.manual_seed(1)
        tower = create_method(method).apply(create_backbone("tiny-bert"), E).eval()
        torch.testing.assert_close(tower(inputs).last, base, atol=tol, rtol=0)


def test_prompt_prefixes_change_every_layer_and_respect_padding() -> None:
    torch.manual_seed(0)
    bb = create_backbone("tiny-bert").eval()
    inputs = bb.dummy_inputs(2, seq_len=6)
    plain = bb(inputs).last
    tower = create_method("prompt", {"length": 4, "bottleneck": 8}).apply(bb, E).eval()
    out = tower(inputs).last
    assert out.shape == plain.shape
    assert not torch.allclose(out, plain)
    assert tower.kv is None  # prefixes live only during a forward


def test_lst_layers_option_keeps_a_subset() -> None:
    bb = create_backbone("tiny-bert")
    tower = create_method("lst", {"layers": [2]}).apply(bb, E)
    assert len(tower.side.side_layers) == 1 and len(tower.side.downs) == 2
    with pytest.raises(UserError, match="layers"):
        create_method("lst", {"layers": [0]}).apply(create_backbone("tiny-bert"), E)


def test_method_options_are_validated() -> None:
    with pytest.raises(UserError, match="unknown option"):
        create_method("unipt", {"rank": 4})
    with pytest.raises(UserError, match="must be a int"):
        create_method("lora", {"rank": "8"})


@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_applies_to_some_tiny_backbone(method: str) -> None:
    """So that the registry-wide closed-form check above never passes by refusing everything."""
    tuned = create_method(method)
    assert [b for b in TINY if not tuned.refusal(create_backbone(b))], f"{method} applies to no tiny backbone"
