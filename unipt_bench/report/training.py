"""What a report says about a training run beyond its scores: where its memory peaked, the batch shapes it saw,
the two-step profile of the same configuration beside it, the recipe values the reference code does not give,
and where its weights and tokenizer came from."""

from __future__ import annotations

from typing import Any

from ..results import RunResult
from .runs import job_of, overrides_of

SHAPES_SHOWN = 4  # most frequent batch shapes listed per tower; the rest are counted


def shape_text(dims: list[int] | str) -> str:
    """[8, 17] -> "8x17" (a stored "8x17" stays as it is)."""
    return dims if isinstance(dims, str) else "x".join(str(d) for d in dims)


def peak_at_text(peak_at: dict[str, Any] | None) -> str:
    """"step 37, backward; text 8x17, image 8x36x2048" ("" when the result does not say)."""
    if not peak_at:
        return ""
    where = [f"step {peak_at['step']}" if peak_at.get("step") is not None else "", peak_at.get("phase") or ""]
    text = ", ".join(w for w in where if w)
    shapes = peak_at.get("shapes") or {}
    if shapes:
        text += "; " + ", ".join(f"{tower} {shape_text(dims)}" for tower, dims in shapes.items())
    return text


def batch_shape_lines(batch_shapes: dict[str, dict[str, int]] | None) -> list[str]:
    """One line per tower: its most frequent batch shapes with their counts, then how many others.

    {"text": {"8x17": 12, "8x15": 9}} -> ["text: 8x17 (12), 8x15 (9) of 21 batches"]
    """
    lines = []
    for tower, counts in (batch_shapes or {}).items():
        if not isinstance(counts, dict):
            continue
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        shown = ", ".join(f"{shape} ({n})" for shape, n in ranked[:SHAPES_SHOWN])
        rest = len(ranked) - SHAPES_SHOWN
        more = f", {rest} more shape{'s' if rest > 1 else ''}" if rest > 0 else ""
        lines.append(f"{tower}: {shown}{more} of {sum(counts.values())} batches")
    return lines


def recipe_gaps(result: RunResult) -> list[str] | None:
    """The recipe keys the reference code does not give (values chosen here); None when the result has no
    resolved recipe (a failed run)."""
    train = (result.protocol or {}).get("train")
    if not isinstance(train, dict):
        return None
    return [str(k) for k in train.get("not_in_reference") or []]


def provenance_notes(result: RunResult) -> list[tuple[str, bool]]:
    """(note, warn) per tower: its weights and tokenizer. warn marks what limits what the accuracy says:
    random weights on a tower a method tunes (parameter-efficient tuning presumes pre-trained weights), and a
    word-hash tokenizer (no pre-trained vocabulary)."""
    metrics = result.metrics or {}
    weights, tokenizers = metrics.get("weights") or {}, metrics.get("tokenizer") or {}
    tuned = {t["name"]: t.get("tuned", True) for t in result.spec.get("towers", [])}
    notes = []
    for tower in dict.fromkeys([*weights, *tokenizers]):
        parts, warn = [], False
        if tower in weights:
            source = weights[tower]
            random = source == "random"
            parts.append("random weights" if random else f"weights {source}")
            warn |= random and tuned.get(tower, True)
        if tower in tokenizers:
            parts.append(f"tokenizer {tokenizers[tower]}")
            warn |= "hash" in str(tokenizers[tower])
        notes.append((f"{tower}: {', '.join(parts)}", warn))
    return notes


def profile_for(training: RunResult, profiles: list[RunResult]) -> RunResult | None:
    """The profile of the same configuration and label to show beside a training run's peak: finished, and
    preferably at the same batch, in the same mode, then an estimate (which agrees with cpu tensors)."""
    spec = training.spec
    candidates = [p for p in profiles if job_of(p) == "profile" and p.status == "ok" and p.primary_memory()
                  and p.spec["config"] == spec["config"] and p.spec["label"] == spec["label"]]
    if not candidates:
        return None

    def rank(p: RunResult) -> tuple[bool, bool, bool, bool]:
        return (p.spec["batch"] != spec["batch"], p.spec["mode"] != spec["mode"], p.spec["mode"] != "estimate",
                bool(overrides_of(p)))

    return min(candidates, key=rank)
