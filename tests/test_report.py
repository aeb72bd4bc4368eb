"""HTML reports: rendered from stored results, opened in real headless Chromium, every method row, table
and figure present, no page errors, strings escaped; the leaderboard sorts; exports."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys

import pytest

from unipt_bench.report.render import render_leaderboard, render_report
from unipt_bench.results import ResultStore, RunResult
from unipt_bench.runner import execute
from unipt_bench.suite_file import load_suite

from .browser import dump_dom, needs_chromium, screenshot

pytestmark = pytest.mark.slow  # every test here reads a store of real estimate runs (one slow fixture)

EVIL = "<script>document.title='pwned'</script>"


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A store with real estimate results of the smoke BERT runs, presented as Table 5's configuration,
    plus one result of every other status, a cuda result with a trace and calibration, and a trained one."""
    root = tmp_path_factory.mktemp("store")
    store = ResultStore(root)
    specs = [s for s in load_suite("smoke").with_mode("estimate") if s.config == "bert"]
    results = []
    for spec in specs:
        data = execute({**spec.to_dict(), "paper": "table5-bert"})
        results.append(RunResult(**data))
    ok = results[0]

    def variant(label: str, **changes) -> RunResult:
        r = copy.deepcopy(ok)
        r.spec = {**r.spec, "label": label, "method": label if label in ("lst", "unipt") else "full", **changes.pop("spec", {})}
        for key, value in changes.items():
            setattr(r, key, value)
        return r

    results += [
        variant("too-big", status="oom", memory=None, message="out of memory at batch 112 per device"),
        variant("broken", status="error", memory=None, message=f"RuntimeError: {EVIL}"),
        variant("stopped", status="interrupted", memory=None, message="interrupted by the user (Ctrl-C)"),
    ]
    hostile = variant(EVIL, spec={"order": 99})  # no suite can name a run so; a hand-edited file can
    gpu = variant("unipt-gpu", spec={"mode": "cuda", "order": 100})
    gpu.memory = {"cuda_allocator": {"counter": "cuda_allocator", "peak_bytes": 3 << 30,
                                     "by_phase": {p: {"max_memory_allocated": 2 << 30} for p in ("forward", "backward", "optimizer")},
                                     "trace": [{"step": s, "phase": p, "max_memory_allocated": (2 + s) << 30}
                                               for s in range(2) for p in ("forward", "backward", "optimizer")]}}
    gpu.calibration = {"estimate_peak_bytes": int(2.9 * 2**30), "measured_peak_bytes": 3 << 30, "ratio": 2.9 / 3}
    results.append(gpu)
    for r in results:
        store.write(r)
    (root / "smoke" / "bert" / "hostile.estimate.json").write_text(hostile.to_json(), encoding="utf-8")
    return root, store, [*results, hostile]


def test_report_has_every_row_table_and_figure_in_chromium(stored, tmp_path) -> None:
    needs_chromium()
    root, store, results = stored
    page = tmp_path / "smoke.html"
    page.write_text(render_report("smoke", list(store.latest("smoke").values()), str(root)), encoding="utf-8")
    dom, log = dump_dom(page, tmp_path / "profile")
    assert 'data-errors="0"' in dom, "the page raised script errors"
    assert "Uncaught" not in log
    estimate = dom[dom.index('data-mode="estimate"'):dom.index('data-mode="cuda"')]
    for label in ["full", "partial", "bitfit", "adapter", "lora", "prompt", "lst", "unipt", "too-big", "broken", "stopped"]:
        assert f'data-method="{label}"' in estimate, label
    for status in ("oom", "error", "interrupted"):
        assert f'data-status="{status}"' in estimate, status
    assert dom.count('<table class="results">') == 2  # estimate and cuda never share a table
    assert dom.count('<table class="provenance">') == 1 and '<table class="calibration">' in dom
    figures = re.findall(r'data-figure="([a-z_]+)"', dom)
    assert {"breakdown", "owners", "tradeoff_memory", "tradeoff_params", "traces"} <= set(figures)
    assert dom.count("<svg") >= len(figures)
    assert "Table 5 (left)" in dom and "paper memory (G)" in dom
    png = screenshot(page, tmp_path / "profile", tmp_path / "smoke.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_strings_from_results_are_escaped(stored, tmp_path) -> None:
    root, store, _ = stored
    html = render_report("smoke", list(store.latest("smoke").values()), str(root))
    assert EVIL not in html
    assert "&lt;script&gt;document.title=&#39;pwned&#39;&lt;/script&gt;" in html
    if sys.platform.startswith("linux"):
        from .browser import CHROMIUM

        if CHROMIUM:
            page = tmp_path / "escaped.html"
            page.write_text(html, encoding="utf-8")
            dom, _ = dump_dom(page, tmp_path / "profile")
            assert "<title>unipt-bench: smoke</title>" in dom  # the label's script never ran


def test_statuses_are_shown_not_blanked(stored) -> None:
    root, store, _ = stored
    html = render_report("smoke", list(store.latest("smoke").values()), str(root))
    for status, message in (("oom", "out of memory at batch 112"), ("interrupted", "Ctrl-C")):
        row = html[html.index(f'data-status="{status}"'):]
        row = row[:row.index("</tr>")]
        assert status in row and message in row and "0.00" not in row


def test_paper_view_puts_the_papers_figures_beside_the_measured_ones(stored) -> None:
    root, store, _ = stored
    html = render_report("smoke", list(store.latest("smoke").values()), str(root))
    adapter = html[html.index('data-method="adapter"'):]
    adapter = adapter[:adapter.index("</tr>")]
    assert ">2.6<" in adapter and ">8.8<" in adapter  # Table 5: Adapter 2.6M, 8.8 G
    unipt = html[html.index('data-method="unipt"'):]
    unipt = unipt[:unipt.index("</tr>")]
    assert ">0.35<" in unipt  # the paper's UniPT / Adapter memory ratio (3.1 / 8.8)


def test_results_of_different_protocols_never_share_a_table(stored) -> None:
    """Two protocols (here the allocator settings) in one configuration and mode: two tables, each with
    its own ratios and a note naming the field; failed runs (no protocol) stay with the first."""
    from unipt_bench.report.views import table_views

    _, store, _ = stored
    results = [r for r in store.latest("smoke").values() if r.spec["mode"] == "estimate"]
    expandable = {"adapter", "unipt"}
    for r in results:
        if r.spec["label"] in expandable:
            r.protocol = {**r.protocol, "allocator_conf": "expandable_segments:True"}
    views = table_views(results, with_figures=False)
    assert len(views) == 2 and {v.anchor for v in views} == {"bert-estimate", "bert-estimate-1"}
    first, second = views
    assert {r.label for r in second.rows} == expandable
    assert {"too-big", "broken", "stopped"} <= {r.label for r in first.rows}
    assert not expandable & {r.label for r in first.rows}
    assert second.protocol_note == "protocol: allocator_conf = expandable_segments:True"
    assert first.protocol_note == "protocol: allocator_conf = None"
    assert [r.ratio for r in second.rows if r.label == "adapter"] == [1.0]  # the reference within its own table
    assert [r.ratio for r in first.rows if r.label == "lst"] == [1.0]  # no adapter here: lst is the reference
    html = render_report("smoke", results, "results", with_figures=False)
    assert html.count('class="note protocol"') == 2 and 'id="bert-estimate-1"' in html


def test_leaderboard_sorts_in_chromium(stored, tmp_path) -> None:
    needs_chromium()
    root, store, _ = stored
    rows = [r.row() for r in store.latest("smoke").values()]
    page = tmp_path / "index.html"
    html = render_leaderboard(rows, ["smoke"], str(root))
    assert EVIL not in html
    # click the "trainable" header once, in the page, before the DOM is dumped
    html = html.replace("</body>", "<script>document.querySelectorAll('#leaderboard th')[6].click();</script></body>")
    page.write_text(html, encoding="utf-8")
    dom, _ = dump_dom(page, tmp_path / "profile")
    assert 'data-errors="0"' in dom
    values = [float(v) for v in re.findall(r'<td data-value="([-0-9.e]+)">[^<]*</td>\s*<td data-value="[-0-9.e]+">',
                                           dom)]
    assert values == sorted(values, reverse=True) and len(values) == len(rows)
    assert 'href="smoke.html"' in dom


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "unipt_bench.cli", *args], capture_output=True, text=True)


@pytest.mark.slow
def test_report_and_leaderboard_commands(stored, tmp_path) -> None:
    root, _, _ = stored
    done = cli("report", "--suite", "smoke", "--results", str(root), "--out", str(tmp_path / "r.html"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "r.html").read_text().startswith("<!doctype html>")
    done = cli("leaderboard", "--results", str(root), "--out-dir", str(tmp_path / "site"))
    assert done.returncode == 0, done.stderr
    assert {p.name for p in (tmp_path / "site").iterdir()} == {"index.html", "smoke.html"}
    missing = cli("report", "--suite", "nothing", "--results", str(root))
    assert missing.returncode == 2 and missing.stderr.startswith("error: no results for suite 'nothing'")


def test_exports(stored) -> None:
    root, store, _ = stored
    md = cli("results", "--suite", "smoke", "--out", str(root), "--format", "markdown")
    assert md.returncode == 0 and md.stdout.splitlines()[0].startswith("| config | method |")
    assert "&lt;script&gt;" not in md.stdout  # markdown is not HTML: shown as written, pipes escaped
    as_json = json.loads(cli("results", "--suite", "smoke", "--out", str(root), "--format", "json").stdout)
    from unipt_bench.frame import load_results

    frame = load_results("smoke", root)
    assert len(frame) == len(as_json) == len(store.latest("smoke"))
    assert str(frame["peak_bytes"].dtype) == "Int64"  # counts stay integers beside missing values
