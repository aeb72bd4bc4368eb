"""Evaluation metrics against values computed by hand, ties and the MSCOCO 5-fold protocol included."""

from __future__ import annotations

import pytest
import torch

from unipt_bench.tasks.metrics import (
    exact_match,
    five_fold,
    normalize_answer,
    ranks_of_best_match,
    retrieval_metrics,
    soft_score,
    vqa_accuracy,
)


def test_retrieval_metrics_by_hand() -> None:
    sim = torch.tensor([[0.9, 0.1, 0.5, 0.2],  # image 0 owns captions 0, 1: best 0.9, rank 0
                        [0.8, 0.7, 0.6, 0.3]])  # image 1 owns captions 2, 3: best 0.6, two wrong above: rank 2
    caption_image = torch.tensor([0, 0, 1, 1])
    m = retrieval_metrics(sim, caption_image)
    assert (m["i2t_r1"], m["i2t_r5"], m["i2t_r10"]) == (50.0, 100.0, 100.0)
    # captions: 0 -> rank 0; 1 -> 0.1 vs 0.7 above: rank 1; 2 -> rank 0; 3 -> rank 0
    assert (m["t2i_r1"], m["t2i_r5"], m["t2i_r10"]) == (75.0, 100.0, 100.0)
    assert m["rsum"] == 525.0


def test_ties_count_against_the_model() -> None:
    equal = torch.full((3, 3), 0.5)
    assert ranks_of_best_match(equal, torch.eye(3, dtype=torch.bool)).tolist() == [2, 2, 2]
    m = retrieval_metrics(equal, torch.arange(3))
    assert m["i2t_r1"] == m["t2i_r1"] == 0.0
    one_tie = torch.tensor([[0.5, 0.5], [0.1, 0.9]])  # image 0's own caption ties with caption 1
    assert ranks_of_best_match(one_tie, torch.eye(2, dtype=torch.bool)).tolist() == [1, 0]


def test_recall_at_k_counts_ranks_below_k() -> None:
    n = 12
    sim = torch.zeros(n, n)
    for i in range(n):  # image i's own caption has i wrong captions above it
        sim[i, i] = 1.0
        sim[i, [(i + j) % n for j in range(1, i + 1)]] = 2.0
    m = retrieval_metrics(sim, torch.arange(n))
    assert m["i2t_r1"] == pytest.approx(100 / 12)
    assert m["i2t_r5"] == pytest.approx(500 / 12)
    assert m["i2t_r10"] == pytest.approx(1000 / 12)


def test_five_fold_scores_each_fold_alone() -> None:
    """A confuser in another fold hurts the 5K protocol but not the 1K (per-fold) one."""
    sim = torch.eye(10) * 0.5
    sim[0, 9] = 0.9  # image 0 (fold 0) prefers caption 9 (fold 4)
    caption_image = torch.arange(10)
    full = retrieval_metrics(sim, caption_image)
    folds = five_fold(sim, caption_image)
    assert full["i2t_r1"] == 90.0 and full["t2i_r1"] == 90.0  # image 0 misses; caption 9 misses
    assert folds["i2t_r1"] == 100.0 and folds["t2i_r1"] == 100.0
    assert folds["rsum"] == 600.0


def test_five_fold_keeps_each_images_five_captions() -> None:
    sim = torch.zeros(10, 50)
    caption_image = torch.arange(50) // 5
    sim[torch.arange(50) // 5, torch.arange(50)] = 1.0  # every caption scores highest with its image
    assert five_fold(sim, caption_image)["rsum"] == 600.0
    with pytest.raises(ValueError, match="folds"):
        five_fold(torch.zeros(7, 7), torch.arange(7))


@pytest.mark.parametrize(("raw", "normal"), [("Two", "2"), ("The red car.", "red car"), ("yes!", "yes"),
                                             ("3.5", "3.5"), ("  A  dog ", "dog")])
def test_answer_normalisation(raw: str, normal: str) -> None:
    assert normalize_answer(raw) == normal


def test_vqa_soft_scores_by_hand() -> None:
    humans = ["yes"] * 2 + ["no"] * 8
    assert soft_score("yes", humans) == pytest.approx(2 / 3)
    assert soft_score("no", humans) == 1.0
    assert soft_score("maybe", humans) == 0.0
    assert soft_score("Two", ["2", "two", "2 "]) == 1.0
    assert vqa_accuracy(["yes", "no", "maybe"], [humans, humans, humans]) == pytest.approx(100 * (2 / 3 + 1) / 3)


def test_exact_match() -> None:
    assert exact_match(["circle", "Red", "no"], ["circle", "red", "yes"]) == pytest.approx(200 / 3)
    assert exact_match([], []) == 0.0
