"""Memory options that compose with any method: ReGELU2's forward and 2-bit backward by hand, MS-LayerNorm's exact
forward and backward from its output with the saved bytes counted by hand, checkpointed blocks giving the same
gradients while keeping fewer activations, the options read from a suite and left out of the digest at their
defaults, a column of their own, and estimate/cpu profiles agreeing with each option on."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from unipt_bench.backbones import create_backbone
from unipt_bench.config import RunSpec
from unipt_bench.errors import NotApplicable, UserError
from unipt_bench.memory_options import (
    REGELU2_BREAKS,
    ReGELU2,
    ReGELU2Function,
    apply_memory_options,
    pack_flags,
    unpack_flags,
)
from unipt_bench.methods import create_method
from unipt_bench.ms_layernorm import MSLayerNorm
from unipt_bench.results import RunResult
from unipt_bench.suite_file import SuiteReader

from .conftest import make_spec
from .helpers import assert_estimate_equals_cpu


def test_regelu2_forward_is_gelu_and_backward_the_piecewise_slope() -> None:
    x = torch.tensor([-5.0, -1.0, -0.0005, 0.5, 2.0, 4.0, -3.19, 3.2, 0.0], requires_grad=True)
    y = ReGELU2Function.apply(x)
    torch.testing.assert_close(y, F.gelu(x))
    y.backward(torch.full_like(x, 2.0))
    a0, a1, a2 = -0.04922261145617846, 1.0979632065417297, -0.048740595085551286
    slopes = [0.0, a0, a0 + a1, a0 + a1, a0 + a1, a0 + a1 + a2, 0.0, a0 + a1 + a2, a0 + a1]  # intervals of x
    torch.testing.assert_close(x.grad, 2.0 * torch.tensor(slopes))
    assert REGELU2_BREAKS[0] < -3.18 and REGELU2_BREAKS[2] > 3.19


def test_regelu2_saves_two_bits_per_element() -> None:
    saved = []
    x = torch.randn(3, 7, requires_grad=True)  # 21 elements: 6 bytes
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        ReGELU2()(x)
    assert [(t.dtype, t.numel()) for t in saved] == [(torch.uint8, 6)]
    flags = torch.randint(0, 4, (21,), dtype=torch.uint8)
    assert torch.equal(unpack_flags(pack_flags(flags), 21), flags)


def test_checkpointed_blocks_give_the_same_gradients_and_keep_fewer_tensors() -> None:
    grads, saved = [], []
    for options in ({}, {"checkpointing": "blocks"}):
        torch.manual_seed(0)
        bb = create_backbone("tiny-bert").eval()
        tower = create_method("full").apply(bb, 16)
        apply_memory_options(tower, bb, options, create_method("full"))
        kept: list[torch.Tensor] = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t, kept=kept: kept.append(t) or t, lambda t: t):
            out = tower(bb.dummy_inputs(2, seq_len=8))
        out.last.pow(2).sum().backward()
        grads.append([p.grad for p in tower.parameters()])
        saved.append(len(kept))
    for plain, checkpointed in zip(*grads, strict=True):
        torch.testing.assert_close(plain, checkpointed)
    assert saved[1] < saved[0]


def test_approx_bp_swaps_the_exact_gelus_of_the_tuned_tower() -> None:
    bb = create_backbone("tiny-bert")
    tower = create_method("adapter").apply(bb, 16)
    apply_memory_options(tower, bb, {"approx_bp": "regelu2"}, create_method("adapter"))
    assert sum(isinstance(m, ReGELU2) for m in tower.modules()) == bb.num_layers


def suite(tmp_path, top: str = "", config: str = "") -> list[RunSpec]:
    path = tmp_path / "memory.toml"
    path.write_text(f'name = "probe"\ntask_options = {{ embed_dim = 32 }}\n{top}\n[[configs]]\nname = "only"\n'
                    f'batch = 4\n{config}\ntowers = [{{ name = "text", backbone = "tiny-bert" }}, '
                    f'{{ name = "image", backbone = "tiny-regions", tuned = false }}]\nmethods = ["lora"]\n')
    return SuiteReader(path).read().specs


def test_options_are_read_per_configuration_and_left_out_of_the_digest_at_their_defaults(tmp_path) -> None:
    plain = suite(tmp_path)[0]
    assert "memory" not in plain.to_dict()
    assert suite(tmp_path, config='checkpointing = "none"\napprox_bp = "none"')[0].digest() == plain.digest()
    (chosen,) = suite(tmp_path, top='approx_bp = "regelu2"', config='checkpointing = "blocks"')
    assert chosen.memory == {"checkpointing": "blocks", "approx_bp": "regelu2"}
    (both,) = suite(tmp_path, top='approx_bp = "regelu2"', config='layernorm = "ms"')
    assert RunResult(spec=both.to_dict(), status="ok", digest=both.digest()).row()["memory_options"] == \
        "approx_bp=regelu2, layernorm=ms"
    assert chosen.digest() != plain.digest()
    assert RunSpec.from_dict(chosen.to_dict()).memory == chosen.memory
    row = RunResult(spec=chosen.to_dict(), status="ok", digest=chosen.digest()).row()
    assert row["memory_options"] == "approx_bp=regelu2, checkpointing=blocks"


@pytest.mark.parametrize(("config", "message"), [
    ('checkpointing = "layers"', "checkpointing must be one of none, blocks, got 'layers'"),
    ('approx_bp = "msln"', "approx_bp must be one of none, regelu2, got 'msln'"),
    ('layernorm = "rms"', "layernorm must be one of none, ms, got 'rms'"),
])
def test_a_bad_option_is_one_line_naming_it(tmp_path, config: str, message: str) -> None:
    with pytest.raises(UserError, match=message) as info:
        suite(tmp_path, config=config)
    assert "\n" not in str(info.value) and ":7:" in str(info.value)


@pytest.mark.parametrize(("method", "memory"), [
    ("full", {"checkpointing": "blocks", "approx_bp": "regelu2"}),
    ("full", {"approx_bp": "regelu2", "layernorm": "ms"}),
    ("lora", {"checkpointing": "blocks", "layernorm": "ms"}),
])
def test_estimate_and_cpu_profiles_agree_byte_for_byte_with_the_options_on(method: str, memory: dict) -> None:
    spec = make_spec(method, batch=2, shape={"seq_len": 8})
    assert_estimate_equals_cpu(RunSpec.from_dict({**spec.to_dict(), "memory": memory}))


def test_run_sets_the_options_on_the_command_line(tmp_path, monkeypatch) -> None:
    """--checkpointing and --approx-bp replace the suite's values; the stored result's spec records them."""
    import json
    import sys

    from unipt_bench.cli import main

    suite(tmp_path, top='checkpointing = "blocks"')
    out = tmp_path / "results"
    monkeypatch.setattr(sys, "argv", ["unipt-bench", "run", "--suite", str(tmp_path / "memory.toml"), "--mode",
                                      "estimate", "--out", str(out), "--approx-bp", "regelu2", "--jobs", "1"])
    main()
    (stored,) = out.glob("probe/only/lora.estimate.*.json")
    assert json.loads(stored.read_text())["spec"]["memory"] == {"checkpointing": "blocks", "approx_bp": "regelu2"}
    monkeypatch.setattr(sys, "argv", ["unipt-bench", "run", "--suite", str(tmp_path / "memory.toml"), "--mode",
                                      "estimate", "--out", str(out), "--layernorm", "ms", "--jobs", "1"])
    main()
    memories = [json.loads(p.read_text())["spec"]["memory"] for p in out.glob("probe/only/lora.estimate.*.json")]
    assert {"checkpointing": "blocks", "layernorm": "ms"} in memories


@pytest.mark.parametrize(("method", "reason"), [("prompt", "state that lives only during the forward"),
                                                ("meft", "already recompute")])
def test_checkpointing_refuses_the_methods_it_cannot_compose_with(method: str, reason: str) -> None:
    from unipt_bench.errors import NotApplicable

    bb = create_backbone("tiny-bert")
    tuned = create_method(method)
    with pytest.raises(NotApplicable, match=f"does not compose with {method}: .*{reason}"):
        apply_memory_options(tuned.apply(bb, 16), bb, {"checkpointing": "blocks"}, tuned)


@pytest.mark.parametrize("shape", [(7,), (3, 5)])
def test_ms_layernorm_is_layernorm_forward_and_backward_in_float64(shape: tuple[int, ...]) -> None:
    """Same output as nn.LayerNorm, and the same gradients for the input, weight and bias, although backward only
    sees the output and rstd."""
    torch.manual_seed(0)
    exact = torch.nn.LayerNorm(shape, dtype=torch.float64)
    with torch.no_grad():
        exact.weight.uniform_(0.5, 1.5)
        exact.bias.normal_()
    x = torch.randn(4, 6, *shape, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(4, 6, *shape, dtype=torch.float64)
    results = []
    for norm in (exact, MSLayerNorm(exact)):
        norm.zero_grad()
        x.grad = None
        y = norm(x)
        y.backward(grad)
        results.append((y.detach(), x.grad, norm.weight.grad.clone(), norm.bias.grad.clone()))
    for want, got in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_ms_layernorm_saves_only_its_output_and_rstd() -> None:
    saved = []
    norm = MSLayerNorm(torch.nn.LayerNorm(8))
    x = torch.randn(3, 5, 8, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = norm(x)
    activations = [t for t in saved if t is not norm.weight and t is not norm.bias]
    assert [tuple(t.shape) for t in activations] == [(3, 5, 8), (3, 5, 1)]
    assert activations[0].untyped_storage().data_ptr() == y.untyped_storage().data_ptr()


@pytest.mark.parametrize("method", ["full", "lora", "bitfit"])
def test_ms_layernorm_towers_give_the_exact_output_and_gradients(method: str) -> None:
    """A float64 tiny BERT with every LayerNorm swapped: the same output and the same gradient on every
    trainable parameter (the LayerNorms' own under full fine-tuning and BitFit) as the exact model."""
    results = []
    for options in ({}, {"layernorm": "ms"}):
        torch.manual_seed(0)
        bb = create_backbone("tiny-bert").eval()
        tuned = create_method(method)
        tower = tuned.apply(bb, 16).double()
        for name, p in tower.named_parameters():  # nonzero LoRA B, so its path counts in the check
            if "lora_B" in name:
                torch.nn.init.normal_(p)
        apply_memory_options(tower, bb, options, tuned)
        out = tower(bb.dummy_inputs(2, seq_len=8)).last
        out.pow(2).sum().backward()
        results.append((out.detach(), {n: p.grad for n, p in tower.named_parameters() if p.requires_grad}))
    (plain, plain_grads), (ms, ms_grads) = results
    assert sum(isinstance(m, MSLayerNorm) for m in tower.modules()) == 1 + 2 * bb.num_layers
    torch.testing.assert_close(ms, plain, rtol=0, atol=1e-12)
    assert ms_grads.keys() == plain_grads.keys()
    for name, want in plain_grads.items():
        torch.testing.assert_close(ms_grads[name], want, rtol=1e-10, atol=1e-12, msg=name)


def saved_activation_bytes(method: str, options: dict[str, str], batch: int, seq_len: int) -> int:
    """Bytes of the distinct non-parameter storages a tiny-BERT tower saves for backward in one forward
    (with the loss's own), in eval mode so dropout hands its input on."""
    torch.manual_seed(0)
    bb = create_backbone("tiny-bert").eval()
    tuned = create_method(method)
    tower = tuned.apply(bb, 16)
    apply_memory_options(tower, bb, options, tuned)
    params = {p.untyped_storage().data_ptr() for p in tower.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in params:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        tower(bb.dummy_inputs(batch, seq_len=seq_len)).last.pow(2).sum().backward()
    return sum(storages.values())


def test_ms_layernorm_saves_the_expected_bytes_on_a_tiny_bert() -> None:
    """tiny-bert (2 layers, width 32), batch 2, 8 tokens, float32. An exact LayerNorm keeps its input x [B, L, D]
    and its mean and rstd [B, L, 1]; MS-LayerNorm keeps its output and rstd. Where the next layer keeps the output
    anyway, x and the mean are saved: 4 B (D + 1) per row; elsewhere only the mean: 4 B per row.
    Full fine-tuning: all 5 LayerNorms (embeddings, then 2 per layer) feed a trainable Linear or the loss.
    LoRA on query/value: the embeddings' LayerNorm sees no tensor that needs a gradient (nothing saved either
    way); each layer's output LayerNorm feeds the next layer's LoRA factors (or the loss); each attention-output
    LayerNorm feeds the frozen intermediate Linear only, which keeps no input."""
    batch, tokens, width, rows = 2, 8, 32, 2 * 8
    expected = {"full": 5 * rows * 4 * (width + 1), "lora": 2 * rows * 4 * (width + 1) + 2 * rows * 4}
    for method, saving in expected.items():
        plain = saved_activation_bytes(method, {}, batch, tokens)
        assert plain - saved_activation_bytes(method, {"layernorm": "ms"}, batch, tokens) == saving, method


def test_ms_layernorm_refuses_a_weight_with_a_zero() -> None:
    bb = create_backbone("tiny-bert")
    tuned = create_method("lora")
    tower = tuned.apply(bb, 16)
    with torch.no_grad():
        next(m for m in tower.modules() if isinstance(m, torch.nn.LayerNorm)).weight[3] = 0.0
    with pytest.raises(NotApplicable, match="weight equal to zero"):
        apply_memory_options(tower, bb, {"layernorm": "ms"}, tuned)


def test_the_command_line_offers_every_memory_option_and_choice() -> None:
    from unipt_bench.cli.common import MEMORY_OPTION_FLAGS
    from unipt_bench.memory_options import CHOICES

    assert {name: choices for name, (choices, _) in MEMORY_OPTION_FLAGS.items()} == CHOICES
