"""Evaluation metrics: retrieval recall (R@1/5/10 both directions, Rsum, MSCOCO 5-fold 1K), video retrieval's
median and mean rank, VQA accuracy.

Ties count against the model: a candidate scoring exactly as high as the correct one ranks above it,
so a model that scores everything equally gets no credit.
"""

from __future__ import annotations

import re

import torch

KS = (1, 5, 10)


def ranks_of_best_match(scores: torch.Tensor, matches: torch.Tensor) -> torch.Tensor:
    """For each query (row of scores [Q, C]), the 0-based rank of its best-scoring correct candidate.

    matches [Q, C] is True where a candidate is correct. The rank is the number of wrong candidates
    scoring at least as high as the best correct one (ties count against).
    """
    best = scores.masked_fill(~matches, float("-inf")).max(dim=1, keepdim=True).values  # [Q, 1]
    return ((scores >= best) & ~matches).sum(dim=1)  # [Q]


def recall(ranks: torch.Tensor) -> dict[str, float]:
    return {f"r{k}": 100.0 * (ranks < k).sum().item() / len(ranks) for k in KS}


def retrieval_metrics(similarity: torch.Tensor, caption_image: torch.Tensor) -> dict[str, float]:
    """similarity [I, T] between I images and T captions; caption_image [T] is each caption's image index.

    i2t: each image retrieves captions (any of its captions counts); t2i: each caption retrieves its
    image. Returns R@1/5/10 per direction (in %) and Rsum, their total.
    """
    images = torch.arange(similarity.shape[0], device=similarity.device)
    matches = caption_image[None, :] == images[:, None]  # [I, T]
    i2t = recall(ranks_of_best_match(similarity, matches))
    t2i = recall(ranks_of_best_match(similarity.t(), matches.t()))
    out = {f"i2t_{k}": v for k, v in i2t.items()} | {f"t2i_{k}": v for k, v in t2i.items()}
    out["rsum"] = sum(i2t.values()) + sum(t2i.values())
    return out


def rank_summary(ranks: torch.Tensor) -> dict[str, float]:
    """Median and mean of the 1-based ranks (MdR, MnR; lower is better). An even count's median is the mean of
    the two middle ranks (NumPy's, as CLIP4Clip/metrics.py:20 computes it)."""
    ones = ranks.double() + 1
    return {"mdr": ones.quantile(0.5).item(), "mnr": ones.mean().item()}


def video_retrieval_metrics(similarity: torch.Tensor, caption_video: torch.Tensor) -> dict[str, float]:
    """similarity [T, V] between T captions and V videos; caption_video [T] is each caption's video index.

    t2v: each caption ranks the videos (its own is the one match). v2t: each video ranks the videos' caption
    groups, a group scoring as its best caption (CLIP4Clip's multi-caption protocol, CLIP4Clip/metrics.py:63-70;
    with one caption per video it is plain caption ranking). Per direction: R@1/5/10 (in %), MdR and MnR;
    Rsum is the six recalls' total. Ties count against the model.
    """
    t, v = similarity.shape
    videos = torch.arange(v, device=similarity.device)
    matches = caption_video[:, None] == videos[None, :]  # [T, V]
    t2v = ranks_of_best_match(similarity, matches)  # [T]
    group_index = caption_video[None, :].expand(v, t)  # [V, T]
    groups = torch.full((v, v), float("-inf"), dtype=similarity.dtype, device=similarity.device)
    groups = groups.scatter_reduce(1, group_index, similarity.t(), reduce="amax")  # [V videos, V caption groups]
    v2t = ranks_of_best_match(groups, torch.eye(v, dtype=torch.bool, device=similarity.device))  # [V]
    out: dict[str, float] = {}
    for name, ranks in (("t2v", t2v), ("v2t", v2t)):
        out |= {f"{name}_{k}": x for k, x in (recall(ranks) | rank_summary(ranks)).items()}
    out["rsum"] = sum(out[f"{d}_r{k}"] for d in ("t2v", "v2t") for k in KS)
    return out


def five_fold(similarity: torch.Tensor, caption_image: torch.Tensor, folds: int = 5) -> dict[str, float]:
    """MSCOCO 1K protocol: split the images into `folds` consecutive folds (with their captions), score
    each fold alone, and average the metrics over folds."""
    n = similarity.shape[0]
    if n % folds:
        raise ValueError(f"{n} images do not split into {folds} equal folds")
    size = n // folds
    per_fold = []
    for f in range(folds):
        lo, hi = f * size, (f + 1) * size
        captions = ((caption_image >= lo) & (caption_image < hi)).nonzero().flatten()
        per_fold.append(retrieval_metrics(similarity[lo:hi][:, captions], caption_image[captions] - lo))
    return {key: sum(m[key] for m in per_fold) / folds for key in per_fold[0]}


# -- VQA ---------------------------------------------------------------------------------------------
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
            "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_PUNCTUATION = re.compile(r"[;/\[\]\"{}()=+\\_\-><@`,?!*#%^&$]")


def normalize_answer(answer: str) -> str:
    """A simplified form of the VQA evaluation's normalisation: lower case, punctuation (but a decimal
    point) removed, number words as digits, articles dropped."""
    text = answer.lower().replace("\n", " ").replace("\t", " ").strip()
    text = _PUNCTUATION.sub("", text)
    text = re.sub(r"(?<!\d)\.(?!\d)", "", text)
    words = [_NUMBERS.get(w, w) for w in text.split() if w not in _ARTICLES]
    return " ".join(words)


def soft_score(answer: str, human_answers: list[str]) -> float:
    """VQA accuracy of one predicted answer: min(#humans who gave it / 3, 1)."""
    given = normalize_answer(answer)
    return min(sum(normalize_answer(h) == given for h in human_answers) / 3.0, 1.0)


def vqa_accuracy(predictions: list[str], human_answers: list[list[str]]) -> float:
    """Mean soft score in % (VQAv2)."""
    if not predictions:
        return 0.0
    return 100.0 * sum(soft_score(p, h) for p, h in zip(predictions, human_answers, strict=True)) / len(predictions)


def exact_match(predictions: list[str], answers: list[str]) -> float:
    """Share of predictions equal to the answer, in % (GQA, easy-vqa)."""
    if not predictions:
        return 0.0
    hits = sum(normalize_answer(p) == normalize_answer(a) for p, a in zip(predictions, answers, strict=True))
    return 100.0 * hits / len(predictions)
