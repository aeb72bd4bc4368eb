"""Methods: trainable parameter counts against closed forms, what trains, where gradients flow."""

from __future__ import annotations

import pytest
import torch

from unipt_bench.backbones import BACKBONES, create_backbone
from unipt_bench.errors import NotApplicable, UserError
from unipt_bench.methods import METHODS, create_method

from .helpers import saved_activation_count, trainable

# Tiny transformer variants: width D, FFN width I, layers L, and bias vectors of width D outside the layers
# (BERT: embedding LayerNorm; CLIP text: final LayerNorm; ViT: patch conv + final LayerNorm;
# CLIP vision: pre- and post-LayerNorm).
TINY_TRANSFORMERS = {
    "tiny-bert": (32, 64, 2, 1),
    "tiny-roberta": (32, 64, 2, 1),
    "tiny-clip-text": (32, 64, 2, 1),
    "tiny-vit": (32, 64, 2, 2),
    "tiny-clip-vision": (32, 64, 2, 2),
}
E = 16  # task embedding width used in these tests


def transformer_layer(d: int, i: int) -> int:
    """Parameters of one BERT/CLIP/ViT layer at width d, FFN width i: q,k,v,o + 2 LayerNorms + FFN."""
    return 4 * (d * d + d) + 2 * 2 * d + (d * i + i) + (i * d + d)


def closed_form(method: str, d: int, i: int, layers: int, extra_bias: int, total: int) -> int:
    """Trainable parameters each method adds to (or unfreezes in) a transformer backbone."""
    states = layers + 1
    if method == "full":
        return total
    if method == "partial":
        return 0
    if method == "bitfit":  # q,k,v,o, 2 LayerNorms, FFN in and out biases per layer
        return extra_bias * d + layers * (7 * d + i)
    if method == "adapter":  # two bottlenecks of width d/16 per layer
        b = d // 16
        return layers * 2 * (d * b + b + b * d + d)
    if method == "lora":  # rank 8 on query and value
        return layers * 2 * 8 * (d + d)
    if method == "prompt":  # Embedding(30, d) -> Linear(d, 512) -> tanh -> Linear(512, 2*L*d)
        return 30 * d + (d * 512 + 512) + (512 * 2 * layers * d + 2 * layers * d)
    if method == "lst":  # r = 4: ladders for every state, one gate and one side layer per layer, LN + Up
        w = d // 4
        return states * (d * w + w) + layers + layers * transformer_layer(w, i // 4) + 2 * w + (w * E + E)
    if method == "unipt":  # m = E / 2
        m = E // 2
        return states * (d * m + m + 2 * m) + (m * m + m + 2 * m) + (m * E + E) + (m + 1)
    raise AssertionError(method)


@pytest.mark.parametrize("backbone", sorted(TINY_TRANSFORMERS))
@pytest.mark.parametrize("method", METHODS.names())
def test_trainable_count_matches_closed_form(method: str, backbone: str) -> None:
    d, i, layers, extra_bias = TINY_TRANSFORMERS[backbone]
    bb = create_backbone(backbone)
    total = sum(p.numel() for p in bb.parameters())
    tower = create_method(method).apply(bb, E)
    assert trainable(tower) == closed_form(method, d, i, layers, extra_bias, total)


def test_unipt_on_bert_base_equals_spec_closed_form() -> None:
    """SPEC_METHODS 1.1: BERT-base (D=768, 13 states), E=1024, r=2."""
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
        ("lst", 13 * (768 * 192 + 192) + 12 + 12 * transformer_layer(192, 768) + 2 * 192 + 192 * 1024 + 1024),
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
    assert trainable(tower) == transformer_layer(32, 64)
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


def test_every_method_applies_to_every_tiny_transformer_or_says_why() -> None:
    """Registry-wide: a new method or tiny backbone is covered without editing this test."""
    for name in BACKBONES.names():
        if not BACKBONES.get(name).tiny:
            continue
        for method in METHODS.names():
            bb = create_backbone(name)
            try:
                tower = create_method(method).apply(bb, E)
            except NotApplicable as exc:
                assert bb.kind not in METHODS.get(method).kinds, str(exc)
                continue
            assert bb.kind in METHODS.get(method).kinds
            assert trainable(tower) >= 0


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
