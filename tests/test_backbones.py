"""Backbones: every registered variant builds; tiny ones run; paper-scale sizes match closed forms."""

from __future__ import annotations

import pytest
import torch

from unipt_bench.backbones import BACKBONES, base, create_backbone
from unipt_bench.backbones.bert import minilm_path
from unipt_bench.errors import UserError

TINY = [n for n in BACKBONES.names() if BACKBONES.get(n).tiny]
# the capability protocols methods ask for (backbones/base.py), each with the members that make it up
CAPABILITIES = {cap: sorted({*cap.__annotations__, *(n for n in vars(cap) if not n.startswith("_"))})
                for cap in vars(base).values() if getattr(cap, "_is_runtime_protocol", False)}


@pytest.mark.parametrize("name", BACKBONES.names())
def test_every_variant_builds_on_meta_without_weights(name: str) -> None:
    """A family states what it is and, for each capability whose methods it defines, every member of it (one
    missing would make every method needing the capability refuse the family)."""
    with torch.device("meta"):
        bb = create_backbone(name)
    assert isinstance(bb.kind, str) and bb.kind and isinstance(bb.modality, str) and bb.modality
    assert bb.width == bb.hidden_sizes[-1]
    assert bb.shape_defaults
    for capability, members in CAPABILITIES.items():
        if any(hasattr(bb, m) for m in members if callable(getattr(capability, m, None))):
            missing = [m for m in members if not hasattr(bb, m)]
            assert not missing, f"{name} offers part of {capability.__name__} but not {missing}"


def test_the_capabilities_are_found() -> None:
    assert {"AdapterSites", "Biases", "Blocks", "LoraTargets"} <= {c.__name__ for c in CAPABILITIES}
    assert CAPABILITIES[base.AdapterSites] == ["adapter_on_maps", "adapter_sites"]


@pytest.mark.parametrize("name", TINY)
def test_tiny_variant_forward_gives_every_hidden_state(name: str) -> None:
    torch.manual_seed(0)
    bb = create_backbone(name).eval()  # no dropout: the two forwards below must agree
    inputs = bb.dummy_inputs(3, **bb.shape_defaults)
    full = bb(inputs, all_hidden=True)
    assert len(full.hidden) == len(bb.hidden_sizes)
    rows = 3 * full.frames  # a video tower runs its frames as rows
    for state, width in zip(full.hidden, bb.hidden_sizes, strict=True):
        assert state.shape[0] == rows and width in state.shape
    assert full.last.ndim == 3 and full.last.shape[0] == rows and full.last.shape[-1] == bb.width
    if full.mask is not None:
        assert full.mask.shape == full.last.shape[:2]
    only_last = bb(inputs)
    assert len(only_last.hidden) == 1
    torch.testing.assert_close(only_last.last, full.last)


def test_bert_base_size_is_the_closed_form() -> None:
    with torch.device("meta"):
        bb = create_backbone("bert-base")
    d, ffn, vocab = 768, 3072, 30522
    layer = 4 * (d * d + d) + 2 * 2 * d + (d * ffn + ffn) + (ffn * d + d)
    embeddings = vocab * d + 512 * d + 2 * d + 2 * d
    assert sum(p.numel() for p in bb.parameters()) == embeddings + 12 * layer == 108_891_648
    assert bb.hidden_sizes == (768,) * 13


def test_resnext101_stages_and_size() -> None:
    with torch.device("meta"):
        bb = create_backbone("resnext101-32x8d")
    assert bb.hidden_sizes == (256, 512, 1024, 2048)
    # torchvision's resnext101_32x8d has 88,791,336 parameters including the 2048 -> 1000 classifier
    assert sum(p.numel() for p in bb.parameters()) == 88_791_336 - (2048 * 1000 + 1000)
    assert bb.shape_defaults == {"image_size": 512}


def test_cnn_stage_grids_follow_the_input_size() -> None:
    bb = create_backbone("tiny-resnext")
    out = bb(bb.dummy_inputs(2, image_size=64), all_hidden=True)
    assert [h.shape[-1] for h in out.hidden] == [16, 8, 4, 2]
    assert out.last.shape == (2, 4, bb.width)


def test_minilm_loads_the_packaged_pretrained_weights_offline() -> None:
    from safetensors.torch import load_file

    bb = create_backbone("minilm-l6", "pretrained").eval()
    stored = load_file(f"{minilm_path()}/model.safetensors")
    key = next(k for k in stored if k.endswith("encoder.layer.0.attention.self.query.weight"))
    torch.testing.assert_close(bb.model.encoder.layer[0].attention.self.query.weight, stored[key])
    out = bb(bb.dummy_inputs(2, seq_len=8), all_hidden=True)
    assert len(out.hidden) == 7 and out.last.shape == (2, 8, 384)


def test_missing_weights_are_a_clear_user_error(tmp_path) -> None:
    with pytest.raises(UserError, match="cannot load weights"):
        create_backbone("tiny-bert", str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="cannot load weights"):
        create_backbone("bert-base", "pretrained")  # offline: the hub name is not cached


def test_unknown_backbone_suggests_a_close_name() -> None:
    with pytest.raises(UserError, match="did you mean 'bert-base'"):
        create_backbone("bert-bse")
