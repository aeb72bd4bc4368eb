"""`compare`: every method on a user's own model (local config folders, a timm CNN by name), end to end.

The comparisons trace in this process (isolate=False) to stay cheap; the command line is run once.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import RobertaConfig, ViTConfig

from unipt_bench.comparison import request_of, run_comparison
from unipt_bench.comparison.page import render_page
from unipt_bench.comparison.suite import suite_specs, suite_text
from unipt_bench.comparison.table import data_frame
from unipt_bench.errors import UserError
from unipt_bench.methods import METHODS
from unipt_bench.runner import execute

from .browser import dump_dom, needs_chromium
from .test_bad_inputs import invoke

BUDGET, LIMIT = 2**20, 256
FIGURES = ("peak_bytes", "trainable_params", "trainable_method_params", "total_params")


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("own-models")
    RobertaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=64,
                  max_position_embeddings=18).save_pretrained(root / "roberta")  # 16 positions (2 for padding)
    ViTConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16,
              patch_size=8).save_pretrained(root / "vit")
    return {"roberta": root / "roberta", "vit": root / "vit"}


@pytest.fixture(scope="module")
def roberta(folders):
    """Every registered method on the RoBERTa-like model, classification at batch 4, 8 tokens, 1 MiB."""
    request = request_of(f"hf:{folders['roberta']}", "classification", 4, seq_len=8, budget="1MiB")
    return run_comparison(request, isolate=False, limit=LIMIT)


def peak(spec, batch: int) -> int:
    data = {**spec.to_dict(), "batch": batch}
    result = execute(data, {"calibrate": False})
    assert result["status"] == "ok", result["message"]
    return result["memory"]["memtracker_fake"]["peak_bytes"]


def test_every_method_is_present_with_figures_or_the_reason_it_does_not_apply(roberta) -> None:
    rows = {r["method"]: r for r in roberta.table()}
    assert list(rows) == list(dict.fromkeys(["full", *METHODS.names()]))
    refused = [r for r in rows.values() if r["status"] == "not_applicable"]  # on RoBERTa: M2IST needs an encdec
    assert [r["method"] for r in refused] == ["m2ist"]
    assert all(r["reason"] for r in refused) and not any(r["applies"] for r in refused)
    ok = [r for r in rows.values() if r["status"] == "ok"]
    failed = {r["method"]: r["reason"] for r in rows.values() if r["status"] == "error"}
    assert list(failed) == ["sherl"] and "late_layers" in failed["sherl"]  # SHERL needs two layers; this has one
    assert len(ok) == len(rows) - 1 - len(refused)
    assert all(r["mode"] == "estimate" and r["curve_mode"].startswith("estimate") for r in ok)
    for r in ok:
        assert r["peak_bytes"] > 0 and r["trainable_params"] > 0 and r["bytes_per_sample"] > 0
        assert r["bytes_per_token"] is not None and r["fits"] == (r["peak_bytes"] <= BUDGET)
    assert rows["full"]["reaches_full_at_seq_len"] is None  # the reference itself
    same = [m for m, r in rows.items() if "as full fine-tuning does" in (r["note"] or "")]
    assert same == ["side4video"]  # its official code trains text towers fully
    assert any(r["on_front"] for r in ok)
    frame = data_frame(roberta)
    assert list(frame["method"]) == list(rows) and frame.attrs["budget_bytes"] == BUDGET


def test_the_largest_batch_fits_and_one_more_does_not(roberta) -> None:
    specs = {s.label: s for s in suite_specs(roberta.suite, "estimate")}
    checked = 0
    for row in roberta.table():
        if row["status"] == "ok" and row["max_batch"] and row["max_batch"] < LIMIT and row["method"] in ("full", "lora"):
            batch = row["max_batch"]
            assert peak(specs[row["method"]], batch) <= BUDGET < peak(specs[row["method"]], batch + 1)
            checked += 1
    assert checked == 2


def test_the_saved_suite_reproduces_every_figure_byte_for_byte(roberta, tmp_path) -> None:
    from unipt_bench.suite_file import load_suite

    path = tmp_path / "mine.toml"
    path.write_text(roberta.suite, encoding="utf-8")
    rows = {r["method"]: r for r in roberta.table()}
    for spec in load_suite(str(path)).with_mode("estimate"):  # what `run --suite mine.toml --mode estimate` runs
        result = execute(spec.to_dict(), {"calibrate": False})
        row = rows[spec.label]
        assert result["status"] == row["status"]
        if result["status"] != "ok":
            continue
        memory = result["memory"]["memtracker_fake"]
        assert memory["peak_bytes"] == row["peak_bytes"]
        assert all(memory["by_category"][c] == row[f"{c}_bytes"] for c in memory["by_category"])
        assert all(result["params"][k] == row[k] for k in FIGURES[1:])


def test_image_models_a_vit_from_its_folder_and_a_timm_cnn_by_name(folders) -> None:
    vit = run_comparison(request_of(f"hf:{folders['vit']}", "classification", 2, budget="4MiB",
                                    methods="lora,adapter,prompt"), isolate=False, limit=16)
    rows = {r["method"]: r for r in vit.table()}
    assert set(rows) == {"full", "lora", "adapter", "prompt"}
    assert rows["lora"]["status"] == "ok" and rows["lora"]["max_batch"]
    assert "image_size cannot vary" in rows["lora"]["note"]  # a ViT's position embeddings fix its image size
    assert rows["lora"]["curve_mode"] == "estimate (curve)"  # the image line failed; the batch curve still answers
    cnn = run_comparison(request_of("timm:resnet18", "classification", 2, image_size=64, budget="200MiB",
                                    methods="bitfit,prompt"), isolate=False, limit=8)
    rows = {r["method"]: r for r in cnn.table()}
    assert rows["prompt"]["status"] == "not_applicable" and not rows["prompt"]["applies"]
    assert "attention" in rows["prompt"]["reason"].lower()  # prefix tuning needs attention layers
    assert rows["bitfit"]["status"] == "ok" and rows["bitfit"]["bytes_per_pixel_row"] > 0
    assert rows["bitfit"]["trainable_params"] < rows["full"]["trainable_params"]


def test_the_page_opens_in_chromium_with_the_curves_and_the_front(roberta, tmp_path) -> None:
    needs_chromium()
    page = tmp_path / "compare.html"
    page.write_text(render_page(roberta), encoding="utf-8")
    dom, _ = dump_dom(page, tmp_path / "profile")
    for figure in ("figure-batch", "figure-length-seq_len", "figure-front"):
        assert f'id="{figure}"' in dom
    assert dom.count("<svg") >= 3 and 'data-front="yes"' in dom and "window.pageErrors = []" in dom
    assert dom.count('class="run"') == len(roberta.rows)


def test_the_command_prints_json_and_writes_the_suite_and_the_page(folders, tmp_path, monkeypatch, capsys) -> None:
    args = ["compare", "--model", f"hf:{folders['roberta']}", "--task", "classification", "--batch", "4",
            "--seq-len", "8", "--gpu", "T4", "--methods", "unipt", "--limit", "8", "--format", "json",
            "--save-suite", str(tmp_path / "mine.toml"), "--report", str(tmp_path / "page.html")]
    code, out, err = invoke(args, monkeypatch, capsys)
    assert code == 0, err
    data = json.loads(out)
    assert [r["method"] for r in data["rows"]] == ["full", "unipt"] and data["request"]["budget"] == "T4 (16 GiB)"
    assert all(r["fits"] and r["max_batch"] == 8 for r in data["rows"])  # the tiny model fits up to the limit
    assert "[2/2]" in err and (tmp_path / "page.html").is_file()
    request = request_of(f"hf:{folders['roberta']}", "classification", 4, seq_len=8, gpu="T4", methods="unipt")
    assert (tmp_path / "mine.toml").read_text() == suite_text(request)


def test_gpu_list(monkeypatch, capsys) -> None:
    code, out, _ = invoke(["compare", "--gpu", "list"], monkeypatch, capsys)
    assert code == 0 and "A100-80GB" in out and "H200" in out and "T4" in out


BAD = {
    "hub id not cached": (["--model", "hf:nobody/not-a-cached-model"], "local Hugging Face cache"),
    "task the model cannot serve": (["--task", "grounding"], "grounding takes"),
    "axis the task does not have": (["--frames", "4"], "no frames axis"),
    "unknown GPU": (["--gpu", "Z9000"], "unknown GPU"),
    "both a budget and a GPU": (["--gpu", "T4", "--budget", "1GiB"], "give one of them"),
    "budget below the weights": (["--budget", "1KiB"], "nothing fits"),
    "cuda mode without a GPU": (["--mode", "cuda"], "no CUDA GPU is visible"),  # is_available() patched False
    "longer than the position embeddings": (["--seq-len", "100000"], "takes at most"),
    "a shape the model cannot run": (["--model", "vit", "--image-size", "32"], "cannot train at --batch 4, --image-size 32"),
}


FOUND_BY_TRACING = {"a shape the model cannot run"}  # full fine-tuning's own run at the asked shape says why


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, folders, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)  # the same answer on a machine with a GPU
    extra, words = BAD[case]
    given = {extra[i]: extra[i + 1] for i in range(0, len(extra), 2)}
    if given.get("--model") in folders:  # a folder of the fixture, by name
        given["--model"] = f"hf:{folders[given['--model']]}"
    defaults = {"--model": f"hf:{folders['roberta']}", "--task": "classification", "--batch": "4",
                "--budget": "1GiB", "--save-suite": str(tmp_path / "mine.toml"), "--report": str(tmp_path / "p.html")}
    if "--gpu" in given:
        defaults.pop("--budget")
    args = ["compare", *[x for key, value in {**defaults, **given}.items() for x in (key, value)]]
    code, out, err = invoke(args, monkeypatch, capsys)
    lines = err.strip().splitlines()
    if case in FOUND_BY_TRACING:  # the progress lines before it, then the one error line
        lines = [line for line in lines if not line.startswith(("compare: ", "  "))]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], err
    assert not list(tmp_path.iterdir())


def test_memory_options_apply_to_every_method_and_reach_the_suite(folders, tmp_path) -> None:
    """compare --checkpointing blocks: every run's spec records it, the rows say so, the saved suite carries it,
    and checkpointing lowers full fine-tuning's activations against the same comparison without it."""
    model = f"hf:{folders['roberta']}"
    plain = run_comparison(request_of(model, "classification", 64, seq_len=16, budget="1GiB", methods="lora"),
                           isolate=False, limit=8)
    request = request_of(model, "classification", 64, seq_len=16, budget="1GiB", methods="lora",
                         memory={"checkpointing": "blocks", "approx_bp": None})
    assert request.memory == {"checkpointing": "blocks"}
    checked = run_comparison(request, isolate=False, limit=8)
    assert 'checkpointing = "blocks"' in checked.suite
    assert all(s.memory == {"checkpointing": "blocks"} for s in suite_specs(checked.suite, "estimate"))
    rows, before = {r["method"]: r for r in checked.table()}, {r["method"]: r for r in plain.table()}
    assert {r["memory_options"] for r in rows.values()} == {"checkpointing=blocks"}
    assert {r["memory_options"] for r in before.values()} == {""}
    assert rows["full"]["activations_bytes"] < before["full"]["activations_bytes"]
    with pytest.raises(UserError, match="layernorm must be one of none, ms"):
        request_of(model, "classification", 4, seq_len=8, budget="1GiB", memory={"layernorm": "fast"})


def test_methods_at_once_default_to_the_cores_in_estimate_mode_only(monkeypatch) -> None:
    from unipt_bench.comparison import run as comparison_run

    monkeypatch.setattr("unipt_bench.launch.cores", lambda: 8)
    assert comparison_run.default_jobs("estimate", 16, isolate=True) == 8
    assert comparison_run.default_jobs("estimate", 3, isolate=True) == 3  # no idle child process per core
    assert comparison_run.default_jobs("cuda", 16, isolate=True) == 1  # the lanes would share one GPU
    assert comparison_run.default_jobs("estimate", 16, isolate=False) == 1  # one tracker at a time in a process


def test_a_batch_curve_is_checked_off_its_grid_even_when_the_asked_batch_is_on_it() -> None:
    from unipt_bench.comparison.shape_memory import verification_point
    from unipt_bench.curves import MemoryCurve

    batch_curve = MemoryCurve({}, ["batch"], {"batch": 2}, {"batch": 1}, exact=True)
    assert verification_point(batch_curve, None, 112) == {"batch": 112}  # the asked run checks it
    assert [verification_point(batch_curve, None, b) for b in (2, 3, 4, 5)] == [{"batch": 5}] * 4
    length = MemoryCurve({}, ["text.seq_len"], {"text.seq_len": 30}, {"text.seq_len": 1}, exact=True)
    assert verification_point(length, 512, 112) == {"text.seq_len": 33}
    assert verification_point(length, 32, 112) == {"text.seq_len": 29}  # past the last position: one below


def test_a_note_every_method_shares_is_printed_once() -> None:
    from unipt_bench.comparison.table import split_notes

    fixed = "image_size cannot vary: ValueError: Input image size (256*256) doesn't match model (224*224)."
    rows = [{"method": "full", "note": fixed}, {"method": "partial", "note": f"max batch capped at --limit 4096; {fixed}"},
            {"method": "lora", "note": fixed}]
    assert split_notes(rows) == ([fixed], {"partial": "max batch capped at --limit 4096"})
    assert split_notes(rows[1:2]) == ([], {"partial": rows[1]["note"]})  # one row: nothing shared to gather
    assert split_notes([{"method": "a", "note": None}, {"method": "b", "note": "x"}]) == ([], {"b": "x"})


def test_every_trace_is_counted_and_the_curves_draw_no_batch_of_one(folders, monkeypatch) -> None:
    """The traces a comparison reports are the profiles it ran, the asked runs, the curves' traces (spliced ones
    too) and the lanes' included; the page's batch curve starts at 2, where the curve holds (a batch of 1 would
    cost a trace per method)."""
    from unipt_bench import profile

    profiles = []
    original = profile.profile
    monkeypatch.setattr(profile, "profile", lambda *args, **kwargs: profiles.append(1) or original(*args, **kwargs))
    request = request_of(f"hf:{folders['roberta']}", "classification", 4, seq_len=8, budget="1MiB",
                         methods="lora")
    comparison = run_comparison(request, isolate=False, limit=8)
    assert comparison.traces == len(profiles) == sum(row.values["traces"] for row in comparison.rows) == 14
    for row in comparison.rows:
        assert row.values["curve_mode"] == "estimate (curve)"
        assert [batch for batch, _ in row.batch_points][:2] == [2, 3]
