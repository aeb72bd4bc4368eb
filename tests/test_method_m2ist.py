"""M2IST: the trainable count by hand, where it applies, the frozen encoders saving nothing while the decoder
trains, the memory built from the tapped layer outputs, and estimate/cpu profiles agreeing on a grounding run."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F
from transformers import RobertaConfig

from unipt_bench.backbones import create_backbone
from unipt_bench.backbones.bert import roberta
from unipt_bench.backbones.encdec import MDETR
from unipt_bench.backbones.resnext import tiny_resnext
from unipt_bench.config import RunSpec, TowerSpec
from unipt_bench.errors import NotApplicable
from unipt_bench.methods import create_method

from .helpers import assert_estimate_equals_cpu, saved_activation_count, trainable

SMALL = {"bottleneck": 8}


def wide_text_mdetr(text_width: int = 48, text_layers: int = 3) -> MDETR:
    """tiny-mdetr with a text encoder wider (and deeper) than the joint width 32, as RoBERTa-base (768, 12
    layers) is beside MDETR's 256 and 6: the text MIA then has its own up-projection Ut."""
    text = roberta(RobertaConfig(vocab_size=512, hidden_size=text_width, num_hidden_layers=text_layers,
                                 num_attention_heads=4, intermediate_size=64, max_position_embeddings=66,
                                 type_vocab_size=1, pad_token_id=1), "random")
    return MDETR(tiny_resnext(), text, width=32, heads=4, ffn=64, layers=2, queries=8, image_size=(64, 96), seq_len=6)


def test_trainable_count_by_hand_on_tiny_mdetr() -> None:
    """D = Dt = 32, L = 2 joint layers (2 text layers adapted), m = 8; decoder FFN 64, Q = 8 queries."""
    mia = (32 * 8 + 8) + (32 * 8 + 8) + (8 * 32 + 32)  # Dv, Dt, shared U; no Ut when Dt = D
    expert = 2 * 32 + (32 * 8 + 8) + (8 * 32 + 32)  # LN + Down + Up
    decoder_layer = 8 * (32 * 32 + 32) + 3 * 64 + (32 * 64 + 64) + (64 * 32 + 32)
    fusion = 2 * decoder_layer + 64 + 8 * 32  # decoder layers, decoder norm, queries
    expected = 2 * (mia + 2 * expert) + (32 * 32 + 32) + (32 * 32 + 32) + fusion  # + Pv, Pt
    method = create_method("m2ist", SMALL)
    assert method.closed_form_trainable(create_backbone("tiny-mdetr"), 32) == expected
    assert trainable(method.apply(create_backbone("tiny-mdetr"), 32)) == expected == 32_192


def test_a_wider_text_encoder_gets_its_own_up_projection_and_only_its_first_layers_adapted() -> None:
    """Dt = 48 over 3 text layers, L = 2: Ut maps m -> Dt - D = 16; the third text layer has no adapters."""
    method = create_method("m2ist", SMALL)
    mia = (32 * 8 + 8) + (48 * 8 + 8) + (8 * 32 + 32) + (8 * 16 + 16)
    vea, lea = 2 * 32 + (32 * 8 + 8) + (8 * 32 + 32), 2 * 48 + (48 * 8 + 8) + (8 * 48 + 48)
    decoder_layer = 8 * (32 * 32 + 32) + 3 * 64 + (32 * 64 + 64) + (64 * 32 + 32)
    expected = 2 * (mia + vea + lea) + (32 * 32 + 32) + (48 * 32 + 32) + 2 * decoder_layer + 64 + 8 * 32
    assert method.closed_form_trainable(wide_text_mdetr(), 32) == expected
    tower = method.apply(wide_text_mdetr(), 32)
    assert trainable(tower) == expected
    assert tower.side.mia[0].up_t.out_features == 16
    assert len(tower.side.lea) == 2


def test_paper_scale_counts_match_the_official_modules() -> None:
    """MDETR (D = 256, Dt = 768, L = 6), m = 128: per layer the official ShareAdapter 33,024, vis_downsample
    32,896, text_downsample + text_upsample 164,480, Adapter_vis 66,944 and Adapter_text 200,576 less their
    unused cross-modal LayerNorms (512, 1,536); then Pv, Pt and the decoder as the fusion."""
    method = create_method("m2ist")
    with torch.device("meta"):
        bb = create_backbone("mdetr")
        expected = method.closed_form_trainable(bb, 256)
        tower = method.apply(bb, 256)
    adapters = 6 * (33_024 + 32_896 + 164_480 + (66_944 - 512) + (200_576 - 1_536))
    assert sum(p.numel() for m in (tower.side.mia, tower.side.vea, tower.side.lea) for p in m.parameters()) == adapters
    decoder = 6 * (8 * (256 * 256 + 256) + 3 * 512 + (256 * 2048 + 2048) + (2048 * 256 + 256)) + 512 + 100 * 256
    assert trainable(tower) == expected == adapters + (256 * 256 + 256) + (768 * 256 + 256) + decoder == 12_736_512


def test_other_kinds_and_too_small_text_encoders_are_refused() -> None:
    for name in ("tiny-bert", "tiny-clip-frames", "tiny-resnext", "tiny-joint"):
        with pytest.raises(NotApplicable, match="no design .* m2ist is a side-tuning design"):
            create_method("m2ist", SMALL).apply(create_backbone(name), 16)
    with pytest.raises(NotApplicable, match="adapts as many text layers as joint encoder layers"):
        create_method("m2ist", SMALL).apply(wide_text_mdetr(text_layers=1), 16)
    with pytest.raises(NotApplicable, match="text width 16 is narrower"):
        create_method("m2ist", SMALL).apply(wide_text_mdetr(text_width=16), 16)


def test_the_encoders_save_nothing_and_gradients_reach_only_the_side_network_and_the_decoder() -> None:
    torch.manual_seed(0)
    bb = create_backbone("tiny-mdetr")
    tower = create_method("m2ist", SMALL).apply(bb, 32).train()
    inputs = bb.dummy_inputs(2)
    assert not bb.training and bb.decoder.training
    for frozen in (bb.vision, bb.text, *bb.encoder):
        frozen_saved, all_saved = saved_activation_count(tower, frozen, inputs)
        assert frozen_saved == 0 < all_saved
    for module in (bb.vision, bb.text, bb.input_proj, bb.resizer, bb.encoder):
        assert all(p.grad is None and not p.requires_grad for p in module.parameters())
    assert all(p.grad is not None for p in (*tower.side.parameters(), *bb.decoder.parameters()))


def test_the_memory_is_built_from_the_tapped_layer_outputs() -> None:
    """The memory equals Pv(h_L + h_0 + sum_k [U ReLU(Dv a_k) + VEA(f_k)]) plus, on the text tokens,
    Pt(t_L + e + sum_k [N_k(cat[Ut r_k, U r_k]) + N'_k(LEA(phi_k))]), recomputed here from the layers' own
    modules; the decoder then runs on it."""
    torch.manual_seed(0)
    bb = wide_text_mdetr()
    tower = create_method("m2ist", SMALL).apply(bb, 32).eval()
    side, inputs = tower.side, bb.dummy_inputs(2)
    inputs["attention_mask"] = torch.ones_like(inputs["attention_mask"])  # no padding: the text layers need no mask
    with torch.no_grad():
        out = tower(inputs)
        states, pos, mask = bb.encode(inputs)
        vision, x = states[-1] + states[0], states[0]
        for k, layer in enumerate(bb.encoder):  # rerun each layer's sublayers to read a_k and f_k
            a = layer.self_attn(x + pos, x + pos, x, mask)
            h = layer.norm1(x + a)
            f = layer.ffn(h)
            x = layer.norm2(h + f)
            mia, vea = side.mia[k], side.vea[k]
            vision = vision + mia.shared(F.relu(mia.down_v(a))) + vea.up(F.relu(vea.down(vea.norm(f)))) * 0.1
        text_out = bb.text.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                 output_hidden_states=True)
        text = text_out.last_hidden_state + text_out.hidden_states[0]
        for k, layer in enumerate(bb.text.blocks()[:2]):
            hidden = text_out.hidden_states[k]  # the layer's input
            attn = layer.attention
            alpha = attn(hidden)[0]  # LN(o + x) of the attention block
            phi = layer.output.dense(layer.intermediate(alpha))
            mia, lea = side.mia[k], side.lea[k]
            r = F.relu(mia.down_t(alpha))
            text = (text + attn.output.LayerNorm(torch.cat([mia.up_t(r), mia.shared(r)], -1))
                    + layer.output.LayerNorm(lea.up(F.relu(lea.down(lea.norm(phi)))) * 0.1))
        memory = side.visu_proj(vision)
        memory[:, -6:] += side.text_proj(text)
        torch.testing.assert_close(out.hidden[0], memory)
        torch.testing.assert_close(out.last, bb.decode(memory, pos, mask)[-1])
        assert not torch.allclose(out.last, bb(inputs).last)  # the official initialisation: no zero up-projection


def test_estimate_and_cpu_profiles_agree_byte_for_byte_on_grounding() -> None:
    assert_estimate_equals_cpu(RunSpec(
        suite="t", config="c", label="m2ist", method="m2ist", method_options=SMALL, task="grounding",
        task_options={"hidden_dim": 32}, towers=[TowerSpec("grounding", "tiny-mdetr")], batch=2, gpus=1, steps=1,
        seed=0, mode="estimate"))
