"""Tokenizers for text towers: the backbone's own (transformers) when its weights carry one, else a
deterministic word-hashing tokenizer for random-weight backbones (tests, profiling shapes)."""

from __future__ import annotations

import re
import zlib
from pathlib import Path
from typing import Protocol

import torch

from ..errors import UserError

PAD, CLS, SEP = 0, 1, 2


class Tokenizer(Protocol):
    def __call__(self, texts: list[str], length: int) -> dict[str, torch.Tensor]:
        """input_ids and attention_mask [B, length]: truncated and padded to exactly `length`."""
        ...


class WordHashTokenizer:
    """Lower-cased words hashed (CRC-32) into [3, vocab); [CLS] ... [SEP], padded with 0."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size

    def ids(self, text: str) -> list[int]:
        words = re.findall(r"\w+", text.lower())
        return [CLS] + [3 + zlib.crc32(w.encode()) % (self.vocab_size - 3) for w in words] + [SEP]

    def __call__(self, texts: list[str], length: int) -> dict[str, torch.Tensor]:
        ids = torch.full((len(texts), length), PAD, dtype=torch.long)
        for row, text in enumerate(texts):
            tokens = self.ids(text)[:length]
            ids[row, : len(tokens)] = torch.tensor(tokens)
        return {"input_ids": ids, "attention_mask": (ids != PAD).long()}


class PretrainedTokenizer:
    """A transformers tokenizer loaded from local files (never remote code)."""

    def __init__(self, source: str) -> None:
        from transformers import AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source)
        except Exception as exc:  # the tokenizers library reports a malformed file as a plain Exception
            raise UserError(
                f"{source}: cannot load its tokenizer ({type(exc).__name__}: {exc}); expected the tokenizer files "
                "transformers writes (tokenizer.json, tokenizer_config.json, vocab.txt or vocab.json)"
            ) from None

    def __call__(self, texts: list[str], length: int) -> dict[str, torch.Tensor]:
        out = self.tokenizer(texts, padding="max_length", truncation=True, max_length=length, return_tensors="pt")
        return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}


def tokenizer_for(weights: str, vocab_size: int) -> Tokenizer:
    """The tokenizer that goes with `weights` (a resolved source); word hashing for random weights."""
    if weights != "random" and Path(weights).is_dir() and any(
        (Path(weights) / name).exists() for name in ("tokenizer.json", "vocab.txt", "vocab.json")
    ):
        return PretrainedTokenizer(weights)
    return WordHashTokenizer(vocab_size)
