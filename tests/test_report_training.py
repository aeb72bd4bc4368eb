"""Reports of suites with training results: measured accuracy beside the paper's, the training peak beside the
two-step profile, shortened runs apart from full ones, recipe gaps, weights and tokenizer notes, the paper's
values as a second figure series, a headline per table, sticky headers; the leaderboard ranks by measured
accuracy; a profile-only report keeps its view. Results are synthetic (the training result contract), stored
in a temporary store."""

from __future__ import annotations

import re

import pytest

from unipt_bench.config import RunSpec, TowerSpec
from unipt_bench.report.leaderboard import leaderboard_rows
from unipt_bench.report.measured import measured_columns
from unipt_bench.report.paper import TABLES
from unipt_bench.report.render import render_leaderboard, render_report
from unipt_bench.report.views import table_views
from unipt_bench.results import ResultStore, RunResult

from .browser import dump_dom, needs_chromium, screenshot

GIB = 2**30
SUITE = "paper5"
TRAIN = {"dataset": "flickr30k", "steps": 300, "not_in_reference": ["warmup", "schedule"]}
GAPS = ["warmup", "schedule"]
# method -> (training peak GiB, test rsum, profile peak GiB): unipt and adapter are on the accuracy-memory front
FULL = {"adapter": (4.0, 150.0, 3.0), "bitfit": (3.8, 120.0, 2.9), "lst": (2.4, 110.0, 2.0), "unipt": (1.6, 140.0, 1.2)}
SHORT = {"adapter": (1.0, 15.0), "unipt": (0.5, 20.0)}  # --max-steps 4 --batch 8
SHORT_OVERRIDES = {"max_steps": 4, "batch": 8}
EVIL = "<script>document.title='pwned'</script>"


def spec(label: str, mode: str, order: int, train: dict | None = None, overrides: dict | None = None,
         config: str = "t5-bert", paper: str | None = "table5-bert", batch: int = 112) -> RunSpec:
    towers = [TowerSpec("image", "butd-regions", tuned=False), TowerSpec("text", "bert-base")]
    return RunSpec(suite=SUITE, config=config, label=label, method=label, method_options={}, task="retrieval",
                   task_options={}, towers=towers, batch=batch, gpus=1, steps=2, seed=0, mode=mode, train=train,
                   title=f"{config}: BERT-base text tower", paper=paper, overrides=overrides or {}, order=order)


def memory(mode: str, peak_gib: float, peak_at: dict | None = None) -> dict:
    counter = {"estimate": "memtracker_fake", "cpu": "memtracker_real"}[mode]
    peak = int(peak_gib * GIB)
    figures = {"counter": counter, "peak_bytes": peak,
               "by_category": {"params": peak // 2, "activations": peak - peak // 2},
               "by_phase": {"forward": {"peak_bytes": peak // 2}, "backward": {"peak_bytes": peak}}}
    if peak_at:
        figures["peak_at"] = peak_at
    return {counter: figures}


def params(label: str) -> dict:
    method = {"adapter": 2_600_000, "bitfit": 900_000, "lst": 7_500_000, "unipt": 5_900_000}.get(label, 1_000_000)
    return {"trainable_params": method + 500_000, "trainable_method_params": method,
            "trainable_head_params": 500_000, "total_params": 120_000_000}


def retrieval_metrics(rsum: float) -> dict:
    """R@K that add up to `rsum` (i2t R@1 = rsum / 10, t2i R@1 = rsum / 20)."""
    i2t = [rsum / 10, rsum / 5, rsum / 4]
    t2i = [rsum / 20, rsum / 8]
    t2i.append(rsum - sum(i2t) - sum(t2i))
    return {**{f"i2t_r{k}": v for k, v in zip((1, 5, 10), i2t, strict=True)},
            **{f"t2i_r{k}": v for k, v in zip((1, 5, 10), t2i, strict=True)}, "rsum": rsum}


def trained(label: str, order: int, peak_gib: float, rsum: float, overrides: dict | None = None,
            status: str = "ok") -> RunResult:
    s = spec(label, "cpu", order, TRAIN, overrides, batch=(overrides or {}).get("batch", 112))
    if status != "ok":
        return RunResult(spec=s.to_dict(), status=status, digest=s.digest(), message="out of memory at batch 112",
                         started="2026-01-01T00:00:00Z", finished="2026-01-01T00:00:01Z")
    peak_at = {"step": 37, "phase": "backward", "shapes": {"image": [112, 36, 2048], "text": [112, 31]}}
    metrics = {"test": retrieval_metrics(rsum), "best": {"step": 200, "score": rsum + 5}, "history": [],
               "baseline": {"rsum": 3.0}, "selection": "rsum", "data": {}, "final_loss": 0.125,
               "batch_shapes": {"text": {"112x31": 12, "112x29": 30, "112x27": 5, "112x25": 2, "112x24": 1},
                                "image": {"112x36x2048": 50}},
               "tokenizer": {"text": "word-hash"},
               "weights": {"image": "random", "text": "random"}}
    return RunResult(spec=s.to_dict(), status="ok", digest=s.digest(), params=params(label),
                     memory=memory("cpu", peak_gib, peak_at), protocol={"amp": None, "train": {**TRAIN, "lr": 2e-4}},
                     metrics=metrics, started="2026-01-01T00:00:00Z", finished="2026-01-01T00:10:00Z")


def profiled(label: str, order: int, peak_gib: float, finished: str = "2026-01-01T00:00:05Z") -> RunResult:
    s = spec(label, "estimate", order)
    return RunResult(spec=s.to_dict(), status="ok", digest=s.digest(), params=params(label),
                     memory=memory("estimate", peak_gib), protocol={"amp": None}, started=finished, finished=finished)


@pytest.fixture
def store(tmp_path):
    return make_store(tmp_path / "results")


def make_store(root) -> ResultStore:
    """Full training runs, a failed one, two shortened ones and the profiles of the same configuration, plus an
    older profile of unipt that a newer one replaces."""
    store = ResultStore(root)
    results = []
    for order, (label, (peak, rsum, profile)) in enumerate(FULL.items()):
        results += [trained(label, order, peak, rsum), profiled(label, order, profile)]
    results.append(trained("prompt", 4, 0, 0, status="oom"))
    results += [trained(label, order, peak, rsum, SHORT_OVERRIDES) for order, (label, (peak, rsum))
                in enumerate(SHORT.items())]
    results.append(profiled("unipt", 3, 9.0, finished="2025-12-31T00:00:00Z"))  # older: replaced
    for r in results:
        store.write(r)
    return store


def section(html: str, anchor: str) -> str:
    start = html.index(f'id="{anchor}"')
    end = html.find("<section", start)
    return html[start:end if end > 0 else len(html)]


def row_of(html: str, label: str) -> str:
    row = html[html.index(f'data-method="{label}"'):]
    return row[:row.index("</tr>")]


def test_the_store_keeps_training_and_profile_results_of_one_run_apart(store) -> None:
    found = list(store.latest(SUITE).values())
    kinds = sorted((r.spec["label"], bool(r.spec.get("train")), bool(r.spec.get("overrides"))) for r in found)
    assert len(found) == 4 + 4 + 1 + 2  # full training, profiles (the newer unipt), the oom, shortened
    assert kinds.count(("unipt", False, False)) == 1 and kinds.count(("unipt", True, False)) == 1
    assert kinds.count(("unipt", True, True)) == 1
    unipt = next(r for r in found if r.spec["label"] == "unipt" and not r.spec.get("train"))
    assert unipt.memory["memtracker_fake"]["peak_bytes"] == int(1.2 * GIB)  # the newer profile


def test_training_table_has_measured_columns_beside_the_papers(store) -> None:
    views = table_views(list(store.latest(SUITE).values()), with_figures=False)
    assert [(v.anchor, v.job) for v in views] == [
        ("t5-bert-cpu-train", "train"), ("t5-bert-cpu-train-short-batch8-max_steps4", "train"),
        ("t5-bert-estimate", "profile")]
    full = views[0]
    assert [(c.label, c.paper) for c in full.measured] == [
        ("i2t R@1", "T-I"), ("i2t R@5", None), ("i2t R@10", None), ("t2i R@1", "I-T"), ("t2i R@5", None),
        ("t2i R@10", None), ("Rsum", "Rsum")]
    html = render_report(SUITE, list(store.latest(SUITE).values()), "results", with_figures=False)
    table = section(html, "t5-bert-cpu-train")
    header = re.findall(r"<th[^>]*>([^<]*)</th>", table[:table.index("</thead>")])
    assert header[header.index("i2t R@1"):header.index("chance") + 1] == [
        "i2t R@1", "paper T-I", "i2t R@5", "i2t R@10", "t2i R@1", "paper I-T", "t2i R@5", "t2i R@10", "Rsum",
        "paper Rsum", "chance"]
    assert {"training peak (paper G)", "training peak (GiB)", "profile peak (GiB)", "training / profile",
            "peak at"} <= set(header)
    unipt = row_of(table, "unipt")
    assert 'data-column="test/i2t_r1">14.00<' in unipt and 'data-column="test/rsum">140.00<' in unipt
    assert '<td class="paper">80.2</td>' in unipt and '<td class="paper">510.5</td>' in unipt  # Table 5: UniPT
    assert ">0.40<" in unipt and ">0.35<" in unipt  # ratio to adapter, measured and the paper's (3.1 / 8.8)
    # the estimate of the same configuration (cpu tensors and estimates agree): 1.6 GiB / 1.2 GiB
    assert '<td class="profile">1.20 <span class="qualifier">(estimate)</span></td>' in unipt and "<td>1.33</td>" in unipt
    assert "step 37, backward; image 112x36x2048, text 112x31" in unipt
    assert "Not in the reference code (values chosen here): schedule, warmup." in table
    assert 'data-status="oom"' in table and "out of memory at batch 112" in row_of(table, "prompt")


def test_each_table_opens_with_its_headline(store) -> None:
    views = {v.anchor: v for v in table_views(list(store.latest(SUITE).values()), with_figures=False)}
    assert views["t5-bert-cpu-train"].headline == (
        "On the measured accuracy-memory front (test rsum vs training peak): unipt at 0.40x adapter's memory "
        "(paper: 0.35x), rsum 140.00 (paper Rsum: 510.5); adapter at 1.00x (paper: 1.00x), rsum 150.00 "
        "(paper Rsum: 511.3).")
    assert views["t5-bert-estimate"].headline == (
        "unipt has the lowest peak, 0.40x adapter's memory (paper: 0.35x); adapter the highest, 1.00x (paper: 1.00x).")
    html = render_report(SUITE, list(store.latest(SUITE).values()), "results", with_figures=False)
    for anchor, view in views.items():
        table = section(html, anchor)
        assert table.index('<p class="headline">') < table.index("<table"), anchor
        assert f'<p class="headline">{view.headline.replace(chr(39), "&#39;")}</p>' in table


def test_shortened_runs_have_their_own_table_and_badge(store) -> None:
    html = render_report(SUITE, list(store.latest(SUITE).values()), "results", with_figures=False)
    short = section(html, "t5-bert-cpu-train-short-batch8-max_steps4")
    assert '<span class="badge shortened">shortened: batch 8, max_steps 4</span>' in short
    assert "never with the suite's own recipe" in short
    assert set(re.findall(r'<tr class="run" data-method="([^"]+)"', short)) == set(SHORT)
    full = section(html, "t5-bert-cpu-train")
    assert "shortened" not in full and len(re.findall(r'<tr class="run"', full)) == len(FULL) + 1
    assert "train (shortened: batch 8, max_steps 4)" in html  # provenance names the kind of each run


def test_training_details_batch_shapes_weights_and_gaps(store) -> None:
    html = render_report(SUITE, list(store.latest(SUITE).values()), "results", with_figures=False)
    details = section(html, "t5-bert-cpu-train")
    details = details[details.index('<table class="training">'):]
    lst = row_of(details, "lst")
    assert "text: 112x29 (30), 112x31 (12), 112x27 (5), 112x25 (2), 1 more shape of 50 batches" in lst
    assert "image: 112x36x2048 (50) of 50 batches" in lst
    assert '<li class="warn">text: random weights, tokenizer word-hash</li>' in lst
    assert "<li>image: random weights</li>" in lst  # trained from scratch (untuned): no warning
    assert "warmup, schedule" in lst and "115.00 at step 200" in lst and "0.1250" in lst


def test_tradeoff_figures_plot_measured_values_with_the_papers_as_a_second_series(store) -> None:
    views = table_views(list(store.latest(SUITE).values()))
    full = views[0]
    assert set(full.figures) >= {"tradeoff_memory", "tradeoff_params"}
    svg = full.figures["tradeoff_memory"]
    assert "measured" in svg and "paper, Rsum (memory per GPU)" in svg and "test rsum (measured)" in svg
    assert "training peak, GiB" in svg
    for label in ("unipt", "adapter", "lst", "bitfit", "lora", "prompt"):  # lora and prompt: the paper's only
        assert f">{label}<" in svg, label
    assert "paper, Rsum" in full.figures["tradeoff_params"]
    profile = views[-1]  # profile tables keep the paper's values as their only series
    assert "(the paper&#x27;s, not measured here)" in profile.figures["tradeoff_memory"] or \
        "(the paper's, not measured here)" in profile.figures["tradeoff_memory"]
    assert "memory per GPU" not in profile.figures["tradeoff_memory"]


def test_the_leaderboard_ranks_by_measured_accuracy(store, tmp_path) -> None:
    rows = leaderboard_rows(list(store.latest(SUITE).values()))
    ranked = [(r["method"], r["rank"], r["anchor"]) for r in rows if r["job"] == "train"]
    assert ranked == [
        ("adapter", 1, "t5-bert-cpu-train"), ("unipt", 2, "t5-bert-cpu-train"), ("bitfit", 3, "t5-bert-cpu-train"),
        ("lst", 4, "t5-bert-cpu-train"), ("prompt", None, "t5-bert-cpu-train"),
        ("unipt", 1, "t5-bert-cpu-train-short-batch8-max_steps4"),
        ("adapter", 2, "t5-bert-cpu-train-short-batch8-max_steps4")]
    assert [r["method"] for r in rows if r["job"] == "profile"] == list(FULL)  # suite order, no rank
    unipt = next(r for r in rows if r["method"] == "unipt" and r["rank"] == 2)
    assert (unipt["paper_metric"], unipt["paper_score"], unipt["test_score"]) == ("Rsum", 510.5, 140.0)
    html = render_leaderboard(rows, [SUITE], "results")
    assert 'href="paper5.html#t5-bert-cpu-train-short-batch8-max_steps4"' in html
    assert '<span class="badge shortened">shortened: batch 8, max_steps 4</span>' in html
    order = re.findall(r'<td class="name">([a-z]+)</td><td class="name">[^<]*</td><td class="text">cpu, train', html)
    assert order == ["adapter", "unipt", "bitfit", "lst", "prompt", "unipt", "adapter"]
    ranks = re.findall(r'rsum ([0-9.]+) <span class="rank"[^>]*>#(\d)</span></td>\s*<td class="text paper">Rsum ([0-9.]+)<',
                       html)
    assert ranks == [("150.00", "1", "511.3"), ("140.00", "2", "510.5"), ("120.00", "3", "503.9"),
                     ("110.00", "4", "501.9"), ("20.00", "1", "510.5"), ("15.00", "2", "511.3")]


def test_report_with_measured_columns_opens_in_chromium(store, tmp_path) -> None:
    needs_chromium()
    html = render_report(SUITE, list(store.latest(SUITE).values()), "results")
    probe = ("<script>var th = document.querySelector('table.results thead th');"
             "var td = document.querySelector('table.results tbody td');"
             "document.body.dataset.sticky = getComputedStyle(th).position + ',' + getComputedStyle(td).position;"
             "</script></body>")
    page = tmp_path / "paper5.html"
    page.write_text(html.replace("</body>", probe), encoding="utf-8")
    dom, log = dump_dom(page, tmp_path / "profile")
    assert 'data-errors="0"' in dom and "Uncaught" not in log
    assert 'data-sticky="sticky,sticky"' in dom  # the header row and the first column stay in view
    assert dom.count('<table class="results">') == 3 and dom.count('<table class="training">') == 2
    assert dom.count('data-column="test/rsum"') == len(FULL) + len(SHORT) + 2  # two headers, every ok row
    assert {"tradeoff_memory", "tradeoff_params", "breakdown"} <= set(re.findall(r'data-figure="([a-z_]+)"', dom))
    png = screenshot(page, tmp_path / "profile", tmp_path / "paper5.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_profile_only_report_keeps_its_view(store) -> None:
    profiles = [r for r in list(store.latest(SUITE).values()) if not r.spec.get("train")]
    html = render_report(SUITE, profiles, "results", with_figures=False)
    assert 'data-job="train"' not in html and "training peak" not in html and 'class="measured"' not in html
    assert '<table class="training">' not in html and "Not in the reference code" not in html
    table = section(html, "t5-bert-estimate")
    header = re.findall(r"<th[^>]*>([^<]*)</th>", table[:table.index("</thead>")])
    assert header == ["method", "status", "batch / GPU", "trainable (M)", "method (M)", "paper Params (M)",
                      "peak (paper G)", "paper memory (G)", "difference (G)", "peak (GiB)", "ratio", "paper ratio",
                      "forward (GiB)", "backward (GiB)", "optimizer (GiB)", "evaluation (GiB)"]
    rows = leaderboard_rows(profiles)
    assert all(r["rank"] is None and r["anchor"] == "t5-bert-estimate" for r in rows)


def test_a_training_table_without_a_paper_and_one_run() -> None:
    """The quickstart's shape: VQA accuracy, no paper table, one method trained."""
    s = spec("unipt", "cpu", 0, {"dataset": "easy-vqa"}, config="easy-vqa", paper=None)
    r = RunResult(spec=s.to_dict(), status="ok", digest=s.digest(), params=params("unipt"), memory=memory("cpu", 0.25),
                  protocol={"train": {"dataset": "easy-vqa", "not_in_reference": []}},
                  metrics={"test": {"accuracy": 71.25}, "baseline": {"accuracy": 37.3}, "selection": "accuracy",
                           "best": {"step": 100, "score": 70.0}, "tokenizer": {"text": EVIL},
                           "batch_shapes": {"text": {EVIL: 3}}})
    (view,) = table_views([r], with_figures=False)
    assert [(c.label, c.paper) for c in view.measured] == [("accuracy", None)] and view.paper_only == []
    assert view.headline == "Only unipt finished training: test accuracy 71.25 (chance 37.30) at a 0.25 GiB training peak."
    html = render_report("quick", [r], "results", with_figures=False)
    assert "Every recipe value is the reference code's." in html
    assert '<td class="measured" data-column="test/accuracy">71.25</td>' in html and "<td>37.30</td>" in html
    assert EVIL not in html and "&lt;script&gt;" in html  # strings from a result file are escaped


def test_splits_pair_with_the_papers_columns() -> None:
    """Grounding: accuracy per split beside Table 4's RefCOCO columns; MSCOCO: 1K and 5K beside Table 1's."""
    splits = {"val": {"accuracy": 80.0}, "testA": {"accuracy": 84.0}, "testB": {"accuracy": 75.0}}
    columns = measured_columns([{"test": splits["val"], "splits": splits}], TABLES["table4"], "refcoco")
    assert [(c.label, c.paper) for c in columns] == [
        ("val accuracy", "RefCOCO val"), ("testA accuracy", "RefCOCO testA"), ("testB accuracy", "RefCOCO testB")]
    coco = {"test": {"rsum": 400.0, "i2t_r1": 50.0, "1k_rsum": 500.0, "1k_t2i_r1": 60.0}}
    columns = measured_columns([coco], TABLES["table1"], "mscoco")
    assert [(c.label, c.paper) for c in columns] == [
        ("i2t R@1", "COCO5K T-I"), ("Rsum", "COCO5K Rsum"), ("1K t2i R@1", "COCO1K I-T"), ("1K Rsum", "COCO1K Rsum")]
    gqa = measured_columns([{"test": {"accuracy": 55.0}, "splits": {"testdev": {"accuracy": 55.0}}}],
                           TABLES["table3"], "gqa")
    assert [(c.label, c.paper) for c in gqa] == [("testdev accuracy", "GQA test-dev")]


def test_report_and_leaderboard_commands_show_training_and_profile_results(store, tmp_path) -> None:
    from click.testing import CliRunner

    from unipt_bench.cli import cli

    done = CliRunner().invoke(cli, ["report", "--suite", SUITE, "--results", str(store.root),
                                    "--out", str(tmp_path / "r.html")])
    assert done.exit_code == 0, done.output
    assert f"({len(list(store.latest(SUITE).values()))} results)" in done.output
    html = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert {'id="t5-bert-cpu-train"', 'id="t5-bert-estimate"', 'id="t5-bert-cpu-train-short-batch8-max_steps4"'} <= \
        set(re.findall(r'id="t5-bert[^"]*"', html))
    done = CliRunner().invoke(cli, ["leaderboard", "--results", str(store.root), "--out-dir", str(tmp_path / "site")])
    assert done.exit_code == 0, done.output
    index = (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    assert index.count("<tr>") == 1 + len(list(store.latest(SUITE).values()))  # the header and a row per result
    assert (tmp_path / "site" / f"{SUITE}.html").read_text(encoding="utf-8").count('<table class="results">') == 3


def test_a_training_run_is_compared_with_the_closest_profile() -> None:
    """Same batch first, then the same mode, then an estimate; failed profiles never."""
    from unipt_bench.report.training import profile_for

    def profile(mode: str, batch: int, status: str = "ok") -> RunResult:
        s = spec("unipt", mode, 0, batch=batch, overrides={"batch": batch} if batch != 112 else None)
        return RunResult(spec=s.to_dict(), status=status, digest=s.digest(), memory=memory(mode, 1.0))

    estimate, cpu, small, failed = profile("estimate", 112), profile("cpu", 112), profile("estimate", 8), \
        profile("cpu", 8, "oom")
    full, short = trained("unipt", 0, 2.0, 100.0), trained("unipt", 0, 1.0, 10.0, SHORT_OVERRIDES)
    assert profile_for(full, [estimate, cpu, small, failed]) is cpu
    assert profile_for(full, [small, estimate]) is estimate
    assert profile_for(short, [estimate, cpu, small, failed]) is small
    assert profile_for(full, [failed]) is None


def test_memory_headline_when_the_reference_is_the_smallest() -> None:
    results = [profiled("adapter", 0, 1.0), profiled("prompt", 1, 1.5), profiled("lora", 2, 1.25)]
    (view,) = table_views(results, with_figures=False)
    assert view.headline == ("adapter (the reference) has the lowest peak; prompt the highest, 1.50x adapter's memory "
                             "(paper: 1.07x).")
    (view,) = table_views([profiled("lora", 2, 1.25)], with_figures=False)
    assert view.headline == "lora: peak 1.25 GiB, estimated (fake tensors)."


def test_a_training_run_shows_its_predicted_reserved_memory_per_tracked_step() -> None:
    """cpu training replays the caching allocator over the tracked steps: the report lists, per tracked step
    counted from 1 as the log counts, reserved / allocated and the step's batch shapes (padded to its longest
    caption), and the evaluations' reserved memory apart from the steps."""
    r = trained("unipt", 0, 1.6, 140.0)
    mib = 2**20
    replayed = {"allocator": {"max_allocated": 1500 * mib, "max_reserved": 1800 * mib,
                              "fragmentation_at_peak": 300 * mib, "peak_segments": 90},
                "device_memory": {"cuda_context": 512 * mib, "cudnn_workspace_bound": 0, "total": 2312 * mib},
                "step_reserved": {"0": 1024 * mib, "1": 1536 * mib, "6": 1792 * mib},
                "step_allocated": {"0": 1000 * mib, "1": 1200 * mib, "6": 1500 * mib},
                "evaluation_reserved": {"20": 1800 * mib}}
    r.memory["memtracker_real"]["allocator_replay"] = replayed
    r.metrics["tracked_steps"] = [0, 1, 6]
    r.metrics["tracked_shapes"] = {str(s): {"image": [112, 36, 2048], "text": [112, n]}
                                   for s, n in ((0, 31), (1, 40), (6, 52))}
    html = render_report(SUITE, [r], "results", with_figures=False)
    predicted = html[html.index('<table class="predicted">'):]
    unipt = row_of(predicted, "unipt")
    assert ("1: 1.000 / 0.977 (image 112x36x2048, text 112x31), 2: 1.500 / 1.172 (image 112x36x2048, text 112x40), "
            "7: 1.750 / 1.465 (image 112x36x2048, text 112x52)") in unipt
    assert "after step 20: 1.758" in unipt and "<td>1.200</td>" in unipt  # reserved / allocated over the run
