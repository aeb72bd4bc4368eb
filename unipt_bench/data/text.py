"""Tokenizers for text towers: the backbone's own (transformers) when its weights carry one; BERT's uncased
WordPiece for random-weight BERT-uncased towers (the MiniLM-L6 package ships the same 30,522-token uncased
vocabulary, so this needs no download); else a deterministic word-hashing tokenizer (tests, other vocabularies).

Padding: "max_length" pads every batch to the tower's length (a sample's tensors never depend on its batch);
"longest" pads to the batch's longest text, capped at that length, as VSE-infinity's collate does.
"""

from __future__ import annotations

import json
import re
import zlib
from pathlib import Path
from typing import Protocol

import torch

from ..errors import UserError

PAD, CLS, SEP = 0, 1, 2


BERT_UNCASED_VOCAB = 30522  # bert-base-uncased's WordPiece vocabulary, also MiniLM-L6's


class Tokenizer(Protocol):
    description: str  # what ran, recorded with training results

    def __call__(self, texts: list[str], length: int, padding: str = "max_length") -> dict[str, torch.Tensor]:
        """input_ids and attention_mask [B, L]: truncated to `length`; L = length, or the longest text."""
        ...


class WordHashTokenizer:
    """Lower-cased words hashed (CRC-32) into [3, vocab); [CLS] ... [SEP], padded with 0."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self.description = f"word hashing (CRC-32 into {vocab_size} ids)"

    def ids(self, text: str) -> list[int]:
        words = re.findall(r"\w+", text.lower())
        return [CLS] + [3 + zlib.crc32(w.encode()) % (self.vocab_size - 3) for w in words] + [SEP]

    def __call__(self, texts: list[str], length: int, padding: str = "max_length") -> dict[str, torch.Tensor]:
        rows = [self.ids(text)[:length] for text in texts]
        width = length if padding == "max_length" else max(map(len, rows))
        ids = torch.full((len(texts), width), PAD, dtype=torch.long)
        for row, tokens in enumerate(rows):
            ids[row, : len(tokens)] = torch.tensor(tokens)
        return {"input_ids": ids, "attention_mask": (ids != PAD).long()}


REMOTE_CODE_FILES = ("tokenizer_config.json", "config.json")  # where transformers looks for `auto_map`


def read_json_if_any(path: Path) -> object:
    """The JSON in `path`; None when there is none or it does not parse (the tokenizer's loading says why)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None


class PretrainedTokenizer:
    """A transformers tokenizer loaded from local files (never remote code: a folder whose config names its own
    Python classes is refused before transformers sees it)."""

    def __init__(self, source: str, description: str = "") -> None:
        from transformers import AutoTokenizer

        from ..backbones.hf import refuse_remote_code

        for file in REMOTE_CODE_FILES:
            refuse_remote_code(read_json_if_any(Path(source) / file), source, file)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
        except Exception as exc:  # the tokenizers library reports a malformed file as a plain Exception
            raise UserError(
                f"{source}: cannot load its tokenizer ({type(exc).__name__}: {exc}); expected the tokenizer files "
                "transformers writes (tokenizer.json, tokenizer_config.json, vocab.txt or vocab.json)"
            ) from None
        kind = type(self.tokenizer).__name__
        self.description = description or f"{kind} from {source} ({self.tokenizer.vocab_size} tokens)"

    def __call__(self, texts: list[str], length: int, padding: str = "max_length") -> dict[str, torch.Tensor]:
        out = self.tokenizer(texts, padding=padding, truncation=True, max_length=length, return_tensors="pt")
        return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}


def bert_uncased_wordpiece() -> Tokenizer:
    """BERT-base uncased's WordPiece, from the vocabulary the MiniLM-L6 package ships (identical, 30,522 tokens)."""
    from ..backbones.bert import minilm_path

    return PretrainedTokenizer(minilm_path(), f"WordPiece, BERT uncased vocabulary ({BERT_UNCASED_VOCAB} tokens)")


def tokenizer_for(weights: str, vocab_size: int, model_type: str | None = None) -> Tokenizer:
    """The tokenizer that goes with `weights` (a resolved source): its own files; BERT-uncased WordPiece for a
    random-weight BERT with that vocabulary; word hashing otherwise."""
    if weights != "random" and Path(weights).is_dir() and any(
        (Path(weights) / name).exists() for name in ("tokenizer.json", "vocab.txt", "vocab.json")
    ):
        return PretrainedTokenizer(weights)
    if model_type == "bert" and vocab_size == BERT_UNCASED_VOCAB:
        return bert_uncased_wordpiece()
    return WordHashTokenizer(vocab_size)
