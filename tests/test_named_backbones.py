"""Models by name (hf:<folder>, timm:<model>) and weights whose checkpoint decides the architecture.

Each test writes its own local config folders or checkpoints: nothing comes from a hub.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel, DebertaV2Config, DistilBertConfig

from unipt_bench.config import RunSpec, TowerSpec
from unipt_bench.errors import NotApplicable, UserError
from unipt_bench.methods import METHODS
from unipt_bench.profile import profile
from unipt_bench.suite_file import load_suite

from .helpers import assert_estimate_equals_cpu

TEXT_CONFIGS = {
    "distilbert": DistilBertConfig(dim=32, hidden_dim=64, n_layers=2, n_heads=4, vocab_size=128,
                                   max_position_embeddings=64),
    "deberta-v2": DebertaV2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  vocab_size=128, max_position_embeddings=64),
}
# what each family cannot do, and a word of why: every other method must run
NOT_APPLICABLE = {("deberta-v2", "prompt"): "attention", ("deberta-v2", "meft"): "BERT and RoBERTa layers only",
                  ("distilbert", "meft"): "BERT and RoBERTa layers only",
                  **{(family, "m2ist"): "no design for a transformer" for family in TEXT_CONFIGS}}  # encdec only


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf-configs")
    for name, config in TEXT_CONFIGS.items():
        config.save_pretrained(root / name)
    return {name: root / name for name in TEXT_CONFIGS}


def text_spec(backbone: str, method: str, mode: str, weights: str = "random") -> RunSpec:
    return RunSpec(suite="named", config="c", label=method, method=method, method_options={}, task="retrieval",
                   task_options={"embed_dim": 16}, towers=[TowerSpec("text", backbone, weights=weights,
                                                                     shape={"seq_len": 8}),
                                                           TowerSpec("image", "tiny-regions", tuned=False)],
                   batch=4, gpus=1, steps=1, seed=0, mode=mode)  # one step: estimate = cpu holds per step


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS.names())
@pytest.mark.parametrize("family", list(TEXT_CONFIGS))
def test_any_transformers_encoder_by_folder_profiles_alike_in_estimate_and_cpu(folders, family, method) -> None:
    spec = text_spec(f"hf:{folders[family]}", method, "estimate")
    if (family, method) in NOT_APPLICABLE:
        with pytest.raises(NotApplicable, match=NOT_APPLICABLE[family, method]):
            profile(spec)
        return
    assert_estimate_equals_cpu(spec)


@pytest.mark.slow
@pytest.mark.parametrize("name,method", [("vit_tiny_patch16_224", "unipt"), ("vit_tiny_patch16_224", "lora"),
                                         ("resnet10t", "adapter"), ("resnet10t", "unipt")])
def test_timm_models_by_name_profile_alike_in_estimate_and_cpu(name, method) -> None:
    spec = text_spec("tiny-bert", method, "estimate")
    image = TowerSpec("image", f"timm:{name}", shape={"image_size": 32})
    spec = RunSpec.from_dict({**spec.to_dict(), "towers": [image.__dict__, {**spec.towers[0].__dict__, "tuned": False}]})
    assert_estimate_equals_cpu(spec)


def test_prefix_tuning_on_a_timm_vit_is_not_applicable_with_the_reason() -> None:
    spec = text_spec("timm:vit_tiny_patch16_224", "prompt", "estimate")
    with pytest.raises(NotApplicable, match="attention"):
        profile(spec)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """A checkpoint of tiny-bert's exact architecture, and one 64 wide."""
    from unipt_bench.backbones import create_backbone

    root = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    create_backbone("tiny-bert").model.save_pretrained(root / "same")
    wide = BertConfig(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=64)
    BertModel(wide, add_pooling_layer=False).save_pretrained(root / "wide")
    return {"same": root / "same", "wide": root / "wide"}


def suite_with_weights(tmp_path: Path, weights: Path) -> Path:
    path = tmp_path / "weights.toml"
    path.write_text(f'name = "w"\ntask_options = {{ embed_dim = 16 }}\n\n[[configs]]\nname = "c"\nbatch = 4\n'
                    f'towers = [\n    {{ name = "text", backbone = "tiny-bert", weights = "{weights}", seq_len = 8 }},\n'
                    f'    {{ name = "image", backbone = "tiny-regions", tuned = false }},\n]\nmethods = ["unipt", "full"]\n')
    return path


def test_weights_of_another_architecture_are_one_line_naming_the_fields(tmp_path, checkpoints) -> None:
    suite = suite_with_weights(tmp_path, checkpoints["wide"])
    with pytest.raises(UserError) as info:
        load_suite(str(suite))
    message = str(info.value)
    assert message.startswith(f"{suite}:8:") and "hidden_size: 32 -> 64" in message and "\n" not in message


def test_weights_of_the_same_architecture_measure_alike_in_every_mode(tmp_path, checkpoints) -> None:
    specs = load_suite(str(suite_with_weights(tmp_path, checkpoints["same"]))).with_mode("estimate")
    for spec in specs:
        assert spec.towers[0].architecture  # the digest covers the checkpoint's architecture
        assert_estimate_equals_cpu(spec)


def hf_suite(tmp_path: Path, folder: Path) -> Path:
    path = tmp_path / f"{folder.name}.toml"
    path.write_text(f'name = "h"\ntask_options = {{ embed_dim = 16 }}\n\n[[configs]]\nname = "c"\nbatch = 4\n'
                    f'towers = [{{ name = "text", backbone = "hf:{folder}", seq_len = 8 }}, '
                    f'{{ name = "image", backbone = "tiny-regions", tuned = false }}]\nmethods = ["unipt"]\n')
    return path


def test_the_digest_follows_the_named_architecture(tmp_path) -> None:
    """Two folders whose configs differ only in dropout are two models (other masks are stored): two digests."""
    digests = []
    for dropout in (0.1, 0.3):
        folder = tmp_path / f"dropout-{dropout}"
        BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                   hidden_dropout_prob=dropout).save_pretrained(folder)
        (spec,) = load_suite(str(hf_suite(tmp_path, folder))).with_mode("estimate")
        digests.append((spec.towers[0].architecture, spec.digest()))
    assert digests[0][0] and digests[0][0] != digests[1][0] and digests[0][1] != digests[1][1]


def test_registered_random_towers_keep_their_digest() -> None:
    """The architecture field is empty for them and left out of what is stored and digested, so results and
    baselines written before it existed stay current and comparable."""
    spec = load_suite("smoke").with_mode("estimate")[0]
    assert {t.architecture for t in spec.towers} == {""}
    assert all("architecture" not in t for t in spec.to_dict()["towers"])
    assert RunSpec.from_dict(spec.to_dict()).digest() == spec.digest()
