"""Visual grounding (MDETR on RefCOCO/+/g): box accuracy on hand-made boxes, the Hungarian matching and the
loss against a direct transcription of MDETR's criterion, MDETR's annotation files read and their faults
reported in one line, a tiny model above the centre-box baseline, and the command line end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.nn import functional as F

from unipt_bench.backbones import create_backbone
from unipt_bench.config import RunSpec, TowerSpec, TrainSpec
from unipt_bench.data.image_text import ImageTextInputs, Letterbox, token_map, token_offsets
from unipt_bench.data.refcoco import load_split
from unipt_bench.data.text import WordHashTokenizer
from unipt_bench.errors import UserError
from unipt_bench.profile import RunOptions
from unipt_bench.suite_file import load_suite
from unipt_bench.tasks.base import Tower
from unipt_bench.tasks.boxes import corners, generalized_iou
from unipt_bench.tasks.grounding import TOKEN_CLASSES, Grounding, hungarian
from unipt_bench.tasks.grounding_data import GroundingData, accuracy, missing
from unipt_bench.train import train_run

from .datasets_refcoco import write_refcoco
from .helpers import assert_estimate_equals_cpu
from .test_bad_inputs import invoke

# -- accuracy, boxes and token maps on hand-made values -------------------------------------------------------


def test_accuracy_counts_iou_at_least_a_half_and_mdetr_s_giou_form() -> None:
    true = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 5)
    predicted = torch.tensor([
        [0.0, 0.0, 10.0, 10.0],  # IoU 1
        [0.0, 0.0, 10.0, 5.0],  # IoU 0.5 exactly: counts; the enclosing box is the true one, so GIoU 0.5 too
        [0.0, 0.0, 10.0, 4.9],  # IoU 0.49
        [1.7, 1.7, 11.7, 11.7],  # IoU 68.89 / 131.11 = 0.525, GIoU 0.525 - 5.78 / 136.89 = 0.483
        [5.0, 5.0, 15.0, 15.0],  # IoU 25 / 175
    ])
    assert accuracy(predicted, true) == {"accuracy": 60.0, "accuracy_giou": 40.0}


def test_letterbox_places_boxes_on_the_canvas_and_back() -> None:
    box = Letterbox((200, 100), (64, 64))  # scale min(64 / 200, 64 / 100) = 0.32: 64 x 32 at the top left
    assert box.scale == pytest.approx(0.32) and box.resized == (64, 32)
    canvas = box.to_canvas((50.0, 20.0, 100.0, 40.0))  # centre (100, 40) x 0.32 / 64
    torch.testing.assert_close(canvas, torch.tensor([0.5, 0.2, 0.5, 0.2]))
    torch.testing.assert_close(box.to_image(canvas), torch.tensor([50.0, 20.0, 150.0, 60.0]))


def test_token_map_marks_the_tokens_of_the_spans() -> None:
    tokenizer = WordHashTokenizer(512)
    caption = "the red square left"  # [CLS] the red square left [SEP]
    offsets = token_offsets(tokenizer, caption, 8)
    assert offsets == [None, (0, 3), (4, 7), (8, 14), (15, 19), None, None, None]
    positive = token_map(offsets, ((4, 14),), TOKEN_CLASSES)
    assert positive.shape == (TOKEN_CLASSES,) and positive.nonzero().flatten().tolist() == [2, 3]
    assert positive.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert token_map(offsets, ((5, 6),), TOKEN_CLASSES).nonzero().flatten().tolist() == [2]  # inside a word
    assert token_map(offsets, (), TOKEN_CLASSES).sum().item() == 0  # no span: no positive token


def test_image_and_text_inputs_letterbox_with_zero_padding(tmp_path) -> None:
    root = write_refcoco(tmp_path / "refcoco", train_images=1, eval_images=1, size=(64, 32), side=12)
    (first, *_) = load_split(root, "refcoco", "train")
    inputs = ImageTextInputs({"image_height": 48, "image_width": 48, "seq_len": 6}, WordHashTokenizer(512))
    out = inputs([(first.image, first.caption, first.size)] * 2)
    assert out["pixel_values"].shape == (2, 3, 48, 48) and out["input_ids"].shape == (2, 6)
    assert (out["pixel_values"][:, :, 24:] == 0).all() and (out["pixel_values"][:, :, :24] != 0).any()  # 48 x 24
    assert out["cache_keys"][0] == out["cache_keys"][1]


# -- matching and loss ---------------------------------------------------------------------------------------


def test_hungarian_matching_takes_the_cheapest_query_of_each_sample() -> None:
    cost = torch.tensor([[3.0, 0.5, 2.0], [0.1, 4.0, 1.0]])
    assert hungarian(cost).tolist() == [1, 0]
    with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
        fake = mode.from_tensor(cost)
        assert hungarian(fake).shape == (2,)  # no values to read: query 0, same tensor as a real run creates


def tiny_model(method_tuned: bool = True):
    torch.manual_seed(0)
    backbone = create_backbone("tiny-mdetr")
    task = Grounding(hidden_dim=backbone.width)
    return task.build({"grounding": Tower(backbone, backbone, method_tuned, backbone.width)}).eval(), backbone


def test_the_matching_picks_the_query_whose_box_and_tokens_fit() -> None:
    model, _ = tiny_model()
    logits = torch.zeros(1, 3, TOKEN_CLASSES)
    logits[0, 2, 1] = 8.0  # query 2 puts its mass on token 1, the referred one
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.2, 0.2], [0.32, 0.3, 0.2, 0.2]]])
    positive = torch.zeros(1, TOKEN_CLASSES)
    positive[0, 1] = 1.0
    targets = {"boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2]]), "positive": positive}
    assert model.match(logits, boxes, targets).tolist() == [2]  # query 1 has the exact box, query 2 the tokens
    assert model.match(torch.zeros(1, 3, TOKEN_CLASSES), boxes, targets).tolist() == [1]  # tokens equal: the box


def mdetr_criterion(task: Grounding, logits, boxes, queries, tokens, text_mask, targets) -> torch.Tensor:
    """MDETR's SetCriterion (MDETR/models/mdetr.py:475-572) for one box per sample, written with loops."""
    b, q, _ = logits.shape
    total = torch.zeros(())
    for i in range(b):
        prob = logits[i].softmax(-1)
        true = targets["boxes"][i]
        cost = [task.cost_class * -(prob[j] * targets["positive"][i]).sum() + task.cost_bbox * (boxes[i, j] - true).abs().sum()
                - task.cost_giou * generalized_iou(corners(boxes[i, j]), corners(true)) for j in range(q)]
        m = min(range(q), key=lambda j: cost[j].item())
        for j in range(q):
            target = targets["positive"][i] if j == m else F.one_hot(torch.tensor(TOKEN_CLASSES - 1), TOKEN_CLASSES)
            ce = -(logits[i, j].log_softmax(-1) * target).sum()
            total = total + task.ce_weight * ce * (1.0 if j == m else task.no_object_weight)
        total = total + task.l1_weight * (boxes[i, m] - true).abs().sum()
        total = total + task.giou_weight * (1 - generalized_iou(corners(boxes[i, m]), corners(true)))
        sim = queries[i] @ tokens[i].t() / task.temperature  # [Q, T]
        pos = targets["positive"][i, : sim.shape[1]] > 0
        valid = text_mask[i].bool()
        box_term = -sim[m][pos].sum() / pos.sum() + sim[m][valid].logsumexp(0)
        token_terms = [-sim[m, t] + sim[:, t].logsumexp(0) for t in range(sim.shape[1]) if pos[t]]
        total = total + task.align_weight * (box_term + sum(token_terms)) / 2
    return total / b


def test_the_loss_is_mdetr_s_criterion_summed_over_decoder_layers() -> None:
    model, backbone = tiny_model()
    inputs = backbone.dummy_inputs(3)
    positive = torch.zeros(3, TOKEN_CLASSES)
    positive[0, 1:3] = 0.5
    positive[1, 2] = 1.0
    positive[2, 1:4] = 1 / 3
    targets = {"boxes": torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.6, 0.5, 0.4, 0.2], [0.5, 0.5, 0.5, 0.5]]),
               "positive": positive}
    batch = {"grounding": inputs, "targets": targets}
    loss = model(batch)
    out = model.towers["grounding"](inputs)
    head = model.heads["grounding"]
    text_mask = inputs["attention_mask"]
    tokens = F.normalize(head.align_text(out.hidden[-1][:, -text_mask.shape[1]:]), dim=-1)
    expected = torch.zeros(())
    assert len(out.predictions) == 2  # tiny-mdetr: 2 decoder layers, one auxiliary output
    for state in out.predictions:
        logits, boxes = head(state)
        queries = F.normalize(head.align_query(state), dim=-1)
        expected = expected + mdetr_criterion(model.task, logits, boxes, queries, tokens, text_mask, targets)
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-4)


def test_prediction_is_the_query_least_likely_to_be_no_object() -> None:
    model, backbone = tiny_model()
    inputs = backbone.dummy_inputs(2)
    box, score = model.predict({"grounding": inputs})
    out = model.towers["grounding"](inputs)
    logits, boxes = model.heads["grounding"](out.predictions[-1])
    no_object = logits.softmax(-1)[..., -1]  # [2, Q]
    best = no_object.argmin(1)
    torch.testing.assert_close(box, boxes[torch.arange(2), best])
    torch.testing.assert_close(score, 1 - no_object[torch.arange(2), best])


@pytest.mark.parametrize("method", ["full", pytest.param("unipt", marks=pytest.mark.slow)])
def test_estimate_and_cpu_profiles_agree_to_the_byte_with_the_matching(method: str) -> None:
    spec = RunSpec(suite="t", config="c", label=method, method=method, method_options={}, task="grounding",
                   task_options={"hidden_dim": 32}, towers=[TowerSpec("grounding", "tiny-mdetr")], batch=2, gpus=1,
                   steps=1, seed=0, mode="estimate")
    assert_estimate_equals_cpu(spec)


def test_the_paper_suite_trains_every_dataset_with_cited_recipes() -> None:
    specs = load_suite("refcoco").with_mode("estimate", train=True)
    datasets = {s.config: s.train["dataset"] for s in specs}
    assert datasets == {"t4": "refcoco", "t4-refcoco+": "refcoco+", "t4-refcocog": "refcocog"}
    for spec in specs:
        train = TrainSpec.from_options(spec.train)
        assert (train.epochs, train.lr, train.backbone_lr_scale, train.grad_clip, train.decay_at) == (10, 5e-4, 0.1, 0.1, 0.5)
        assert spec.batch == 4 and spec.gpus == 2 and train.not_in_reference == ["select_on"]


# -- annotation files ----------------------------------------------------------------------------------------


@pytest.fixture()
def small(tmp_path):
    return write_refcoco(tmp_path / "data" / "refcoco", train_images=4, eval_images=2)


def test_the_loader_reads_mdetr_s_files_and_the_splits_of_each_dataset(small, tmp_path) -> None:
    data = GroundingData(TrainSpec(dataset="refcoco"), small.parent, 0, {"grounding": "image+text"})
    assert data.test_splits == ("val", "testA", "testB") and data.selection == "accuracy"
    assert {k: data.size(k) for k in data.splits} == {"train": 8, "val": 4, "testA": 4, "testB": 4}
    assert data.size("test") == 4  # callers that know one test split get testA
    first = data.splits["train"][0]
    assert first.caption in ("the red square", "the blue square") and first.size == (64, 64)
    assert first.spans == ((4, len(first.caption)),) and first.box[2:] == (26.0, 26.0)
    g = write_refcoco(tmp_path / "data" / "refcocog", name="refcocog", train_images=4, eval_images=2, prefix="final")
    assert missing(TrainSpec(dataset="refcocog"), g.parent) == ""
    gdata = GroundingData(TrainSpec(dataset="refcocog"), g.parent, 0, {"grounding": "image+text"})
    assert gdata.test_splits == ("val", "test") and gdata.size("test") == 4
    assert missing(TrainSpec(dataset="refcoco+"), small.parent) == (
        f"missing {small.parent / 'refcoco+' / 'mdetr_annotations' / 'finetune_refcoco+_train.json'}, "
        + ", ".join(str(small.parent / "refcoco+" / "mdetr_annotations" / f"finetune_refcoco+_{s}.json")
                    for s in ("val", "testA", "testB")) + f", {small.parent / 'refcoco+' / 'train2014'}")


def edit_annotations(root, split: str, change) -> str:
    path = root / "mdetr_annotations" / f"finetune_refcoco_{split}.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return str(path)


def negative_box(root) -> tuple[str, str]:
    path = edit_annotations(root, "val", lambda d: d["annotations"][1].update(bbox=[10, 10, -4, 8]))
    return path, "annotations[1].bbox has a negative or zero size [10, 10, -4, 8]"


def truncated(root) -> tuple[str, str]:
    path = root / "mdetr_annotations" / "finetune_refcoco_testB.json"
    path.write_text(path.read_text()[:150])
    return str(path), "is not valid JSON"


def missing_image(root) -> tuple[str, str]:
    images = json.loads((root / "mdetr_annotations" / "finetune_refcoco_testA.json").read_text())["images"]
    (root / "train2014" / images[-1]["file_name"]).unlink()
    return str(root / "train2014" / images[-1]["file_name"]), "is missing"


def second_box(root) -> tuple[str, str]:
    def change(d: dict) -> None:
        d["annotations"].append({**d["annotations"][0], "id": 99})
    return edit_annotations(root, "train", change), "has a second annotation"


def span_past_the_caption(root) -> tuple[str, str]:
    path = edit_annotations(root, "train", lambda d: d["annotations"][0].update(tokens_positive=[[4, 99]]))
    return path, "annotations[0].tokens_positive[0] must be [begin, end] with 0 <= begin < end <= "


def wrong_size(root) -> tuple[str, str]:
    edit_annotations(root, "testB", lambda d: [i.update(width=80) for i in d["images"][-2:]])
    return "finetune_refcoco_testB.json says 80x64", "image is 64x64"


FAULTS = {"a negative-size box": negative_box, "a truncated JSON": truncated, "a missing image": missing_image,
          "two boxes for one expression": second_box, "a span past the caption": span_past_the_caption,
          "an image of another size": wrong_size}
SUITE = """\
name = "tinyground"
task = "grounding"
task_options = {{ hidden_dim = 32 }}

[[configs]]
name = "c"
paper = "table4"
batch = 8
towers = [{{ name = "grounding", backbone = "tiny-mdetr", image_height = 64, image_width = 64, seq_len = 6 }}]
methods = [{methods}]

[configs.train]
dataset = "refcoco"
steps = 20
eval_every = 10
"""


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_broken_annotation_file_stops_the_command_in_one_line(fault, small, tmp_path, monkeypatch, capsys) -> None:
    named, problem = FAULTS[fault](small)
    suite = tmp_path / "suite.toml"
    suite.write_text(SUITE.format(methods='"full"'))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    out = tmp_path / "store"
    code, _, err = invoke(["run", "--suite", str(suite), "--job", "train", "--mode", "cpu", "--data-root",
                           str(small.parent), "--out", str(out)], monkeypatch, capsys)
    assert code == 2, err
    (line,) = err.strip().splitlines()
    assert line.startswith("error: ") and named in line and problem in line and "Traceback" not in err
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*"))


def test_a_dataset_the_task_does_not_read_is_refused(small) -> None:
    with pytest.raises(UserError, match="reads refcoco, refcoco\\+, refcocog, not 'flickr30k'"):
        missing(TrainSpec(dataset="flickr30k"), small.parent)


# -- training ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def squares(tmp_path_factory):
    """One square per image in one of the four corners, its colour named: 200 training expressions."""
    return write_refcoco(tmp_path_factory.mktemp("data") / "refcoco", train_images=200, eval_images=12, colors=1)


@pytest.mark.slow
def test_a_tiny_mdetr_beats_the_centre_box_baseline(squares, tmp_path) -> None:
    train = {"dataset": "refcoco", "steps": 200, "eval_every": 100, "lr": 2e-3, "warmup": 0.1, "schedule": "cosine"}
    spec = RunSpec(suite="t", config="c", label="full", method="full", method_options={}, task="grounding",
                   task_options={"hidden_dim": 32}, batch=8, gpus=1, steps=2, seed=0, mode="cpu", train=train,
                   towers=[TowerSpec("grounding", "tiny-mdetr", shape={"image_height": 64, "image_width": 64,
                                                                        "seq_len": 6})])
    out = train_run(spec, RunOptions(data_root=str(squares.parent), checkpoints=str(tmp_path / "ck")))
    metrics = out["metrics"]
    assert metrics["baseline"]["accuracy"] == 0.0  # a centred box never covers half of a corner square
    assert metrics["baseline"]["centre_box"] == pytest.approx([26 / 64, 26 / 64])
    splits = metrics["splits"]
    assert list(splits) == ["val", "testA", "testB"] and metrics["test"] == splits["val"]
    assert all(s["accuracy"] > metrics["baseline"]["accuracy"] for s in splits.values())
    # above any fixed box too: one corner is right for a quarter of the expressions at most
    assert sum(s["accuracy"] for s in splits.values()) / 3 > 25.0
    assert out["memory"]["memtracker_real"]["peak_bytes"] > 0


@pytest.mark.slow
def test_the_command_line_trains_on_refcoco_end_to_end(small, tmp_path, monkeypatch, capsys) -> None:
    suite = tmp_path / "tiny.toml"
    suite.write_text(SUITE.format(methods='"unipt"'))
    store = tmp_path / "store"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    code, _, err = invoke(["run", "--suite", str(suite), "--job", "train", "--max-steps", "4", "--batch", "4",
                           "--data-root", str(small.parent), "--mode", "cpu", "--out", str(store)], monkeypatch, capsys)
    assert code == 0, err
    (result,) = store.glob("tinyground/c/unipt.cpu.*.json")
    stored = json.loads(result.read_text())
    assert stored["status"] == "ok" and stored["spec"]["batch"] == 4
    metrics = stored["metrics"]
    assert set(metrics["splits"]) == {"val", "testA", "testB"} and metrics["test"] == metrics["splits"]["val"]
    assert all(set(s) == {"accuracy", "accuracy_giou"} for s in metrics["splits"].values())
    assert [h["step"] for h in metrics["history"]] == [4]
    assert math.isfinite(metrics["final_loss"]) and metrics["baseline"]["accuracy"] >= 0
