"""Training's memory covers the whole run: which steps are tracked, where the peak was, and the text padding
and tokenizer that make batch shapes vary as the reference's do."""

from __future__ import annotations

import torch

from unipt_bench.data.text import WordHashTokenizer, tokenizer_for
from unipt_bench.memory.base import Trackers
from unipt_bench.train_tracking import StepTracking, batch_shapes, peak_at


class SizeTracker:
    """A tracker whose step peak is the batch's element count (memory that grows with the batch)."""

    counter = "sizes"

    def __init__(self, sizes: list[int], log: list[str]) -> None:
        self.sizes, self.log, self.series = sizes, log, []

    def __enter__(self) -> SizeTracker:
        self.log.append("enter")
        return self

    def __exit__(self, *exc: object) -> None:
        self.log.append("exit")

    def mark(self, phase: str) -> None:
        pass

    def end_step(self) -> None:
        self.series.append(self.sizes[-1])

    def result(self) -> dict:
        peak = max(self.series, default=0)
        return {"counter": self.counter, "peak_bytes": peak, "by_phase": {"backward": {"peak_bytes": peak}},
                "step_peak_bytes": list(self.series)}


def text_batch(length: int) -> dict[str, dict[str, torch.Tensor]]:
    return {"text": {"input_ids": torch.zeros(4, length, dtype=torch.long), "attention_mask": torch.ones(4, length),
                     "cache_keys": torch.zeros(4, dtype=torch.long)}, "targets": {"y": torch.zeros(4)}}


def walk(mode: str, lengths: list[int], saved: dict | None = None, start: int = 0) -> tuple[StepTracking, list[str]]:
    log: list[str] = []
    sizes: list[int] = []
    tracking = StepTracking(mode, lambda: Trackers([SizeTracker(sizes, log)]), saved)
    for step, length in enumerate(lengths, start=start):
        batch = text_batch(length)
        sizes.append(4 * length)
        tracking.before_step(step, batch)
        tracking.tracker().end_step()
    tracking.close(start + len(lengths))
    return tracking, log


def test_cpu_tracks_the_first_steps_and_every_batch_larger_than_those_before() -> None:
    tracking, log = walk("cpu", [10, 12, 11, 20, 15, 30, 30])
    assert tracking.tracked_steps == [0, 1, 3, 5]
    assert log == ["enter", "exit", "enter", "exit", "enter", "exit"]  # three segments: steps 0-1, 3, 5
    figures = tracking.memory["sizes"]
    assert figures["peak_bytes"] == 4 * 30  # the largest batch
    assert figures["segments"] == [{"from_step": 0, "to_step": 2}, {"from_step": 3, "to_step": 4},
                                   {"from_step": 5, "to_step": 6}]
    assert peak_at(figures, tracking.tracked_steps, tracking.shapes_at) == {
        "phase": "backward", "step": 6, "shapes": {"text": [4, 30]}}
    assert tracking.shape_counts() == {"text": {"4x30": 2, "4x10": 1, "4x12": 1, "4x11": 1, "4x20": 1, "4x15": 1}}


def test_cuda_tracks_every_step_in_one_segment() -> None:
    tracking, log = walk("cuda", [10, 12, 11, 20])
    assert tracking.tracked_steps == [0, 1, 2, 3] and log == ["enter", "exit"]


def test_a_resumed_run_keeps_its_earlier_segments_and_biggest_batch() -> None:
    first, _ = walk("cpu", [10, 30, 12])
    resumed, _ = walk("cpu", [20, 20, 25, 40], saved=first.state(3), start=3)
    assert resumed.tracked_steps == [0, 1, 3, 4, 6]  # the resumed process's first two steps, then a record
    assert resumed.memory["sizes"]["peak_bytes"] == 4 * 40
    assert resumed.shape_counts()["text"]["4x20"] == 2


def test_batch_shapes_name_each_towers_main_input() -> None:
    batch = {"image": {"features": torch.zeros(2, 36, 8), "cache_keys": torch.zeros(2)}, **text_batch(7)}
    assert batch_shapes(batch) == {"image": [2, 36, 8], "text": [4, 7]}


def test_random_weight_bert_uncased_towers_tokenise_with_real_wordpiece() -> None:
    tokenizer = tokenizer_for("random", 30522, "bert")
    assert tokenizer.description == "WordPiece, BERT uncased vocabulary (30522 tokens)"
    out = tokenizer(["A man in a blue shirt."], 16)
    # [CLS] a man in a blue shirt . [SEP] in bert-base-uncased's vocabulary, then padding
    assert out["input_ids"][0, :9].tolist() == [101, 1037, 2158, 1999, 1037, 2630, 3797, 1012, 102]
    assert out["input_ids"].shape == (1, 16)
    assert isinstance(tokenizer_for("random", 512, "bert"), WordHashTokenizer)  # another vocabulary: no WordPiece
    assert isinstance(tokenizer_for("random", 30522, "roberta"), WordHashTokenizer)


def test_longest_padding_pads_to_the_batchs_longest_text_capped_at_the_length() -> None:
    for tokenizer in (tokenizer_for("random", 30522, "bert"), WordHashTokenizer(1000)):
        out = tokenizer(["a dog", "a dog runs on the grass"], 32, "longest")
        assert out["input_ids"].shape == (2, 8)  # [CLS] + 6 words + [SEP]
        assert out["attention_mask"].sum(dim=1).tolist() == [4, 8]
        assert tokenizer(["a dog runs on the grass"], 5, "longest")["input_ids"].shape == (1, 5)
