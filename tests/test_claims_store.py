"""Claim verdicts from a result store: computed from stored results without running anything, one row per mode,
"not measured" with the reason where a run is missing or did not count; the report and the leaderboard show
them; `claims --out` stores its runs and reuses them."""

from __future__ import annotations

import json

from unipt_bench.claims import read_claims, stored_claims
from unipt_bench.report.render import render_leaderboard, render_report
from unipt_bench.results import ResultStore, RunResult
from unipt_bench.suite_file import load_suite

from .test_bad_inputs import invoke
from .test_claims import SUITE, record


def fake(spec, peak: int, activations: int, status: str = "ok", memory: dict | None = None) -> RunResult:
    """A stored result of `spec` with a made-up primary counter (MemTracker's, as in estimate and cpu)."""
    counter = "memtracker_fake" if spec.mode == "estimate" else "memtracker_real"
    data = {**spec.to_dict(), **({"memory": memory} if memory else {})}
    return RunResult(spec=data, status=status, digest=spec.digest(), finished="2026-01-01T00:00:00Z",
                     params={"trainable_params": 1000, "trainable_method_params": 900, "trainable_head_params": 100,
                             "total_params": 10000} if status == "ok" else None,
                     memory={counter: {"counter": counter, "peak_bytes": peak,
                                       "by_category": {"activations": activations}}} if status == "ok" else None,
                     message=None if status == "ok" else "no such layer here")


def claims_folder(tmp_path, records: dict[str, str]):
    (tmp_path / "claims" / "suites").mkdir(parents=True)
    (tmp_path / "claims" / "suites" / "tiny.toml").write_text(
        SUITE.replace('methods = ["bitfit", { method = "bitfit", label = "bitfit-again" }]',
                      'methods = ["bitfit", { method = "bitfit", label = "bitfit-again" }, "full", "lora", "adapter"]'))
    for name, text in records.items():
        (tmp_path / "claims" / f"{name}.toml").write_text(text)
    return read_claims(tmp_path / "claims")


def tiny_specs(tmp_path, mode: str) -> dict:
    return {s.label: s for s in load_suite(str(tmp_path / "claims" / "suites" / "tiny.toml")).with_mode(mode)}


def test_verdicts_come_from_the_stored_runs_one_row_per_mode(tmp_path) -> None:
    """bitfit / bitfit-again is 110 / 100 in estimate mode and 150 / 100 on the cpu: a claimed 1.0 is reproduced
    by the estimate (within 15%) and not by the cpu; activations give 30 / 60. adapter was not stored, lora was
    not applicable, and a run with memory options set does not count for a claim's setting."""
    claims = claims_folder(tmp_path, {
        "close": record(1.0),
        "acts": record(0.5, metric="activations"),
        "lonely": record(1.0, numerator="adapter"),
        "refused": record(1.0, numerator="lora"),
        "options": record(1.0, denominator="full", numerator="bitfit-again"),
    })
    store = ResultStore(tmp_path / "store")
    estimate, cpu = tiny_specs(tmp_path, "estimate"), tiny_specs(tmp_path, "cpu")
    for result in (fake(estimate["bitfit"], 110, 30), fake(estimate["bitfit-again"], 100, 60),
                   fake(cpu["bitfit"], 150, 30), fake(cpu["bitfit-again"], 100, 60),
                   fake(estimate["full"], 500, 400, memory={"layernorm": "ms"}),
                   fake(estimate["lora"], 0, 0, status="not_applicable")):
        store.write(result)
    rows = {(r["claim"], r["mode"]): r for r in stored_claims(claims, store.latest)}
    assert (rows["close", "estimate"]["measured"], rows["close", "estimate"]["verdict"]) == (1.1, "reproduced")
    assert (rows["close", "cpu"]["measured"], rows["close", "cpu"]["verdict"]) == (1.5, "not reproduced")
    assert (rows["acts", "estimate"]["measured"], rows["acts", "estimate"]["verdict"]) == (0.5, "reproduced")
    for name, why in (("lonely", "estimate: no run c/adapter; cpu: no run c/adapter"), ("refused", "lora is not applicable (no such"),
                      ("options", "full ran with memory options")):
        row = rows[name, None]
        assert row["verdict"] == "not measured" and row["measured"] is None and why in row["note"], row
    assert rows["close", "cpu"]["suite"] == "claims-tiny" and rows["close", "cpu"]["config"] == "c"


def test_a_claim_without_stored_runs_is_not_measured_and_says_which(tmp_path) -> None:
    claims = claims_folder(tmp_path, {"close": record(1.0)})
    (row,) = stored_claims(claims, ResultStore(tmp_path / "empty").latest)
    assert row["verdict"] == "not measured" and row["mode"] is None
    assert row["note"] == "runs c/bitfit and c/bitfit-again of suite claims-tiny are not in the store"


def test_the_report_and_the_leaderboard_show_the_claims_table(tmp_path) -> None:
    claims = claims_folder(tmp_path, {"close": record(1.0), "far": record(2.0), "lonely": record(1.0, numerator="full")})
    store = ResultStore(tmp_path / "store")
    estimate = tiny_specs(tmp_path, "estimate")
    results = [fake(estimate["bitfit"], 110, 30), fake(estimate["bitfit-again"], 100, 60)]
    for result in results:
        store.write(result)
    rows = stored_claims(claims, store.latest)
    for page in (render_report("claims-tiny", results, "store", claims=rows),
                 render_leaderboard([r.row() for r in results], ["claims-tiny"], "store", rows)):
        assert page.startswith("<!doctype html>") and "<h2>Published claims</h2>" in page
        cells = {name: page.split(f'data-claim="{name}"')[1].split("</tr>")[0] for name in ("close", "far", "lonely")}
        assert 'data-verdict="reproduced"' in cells["close"] and "<td>1.10</td>" in cells["close"]
        assert 'data-verdict="not reproduced"' in cells["far"] and "<td>2.00</td>" in cells["far"]
        assert 'data-verdict="not measured"' in cells["lonely"] and "estimate: no run c/full" in cells["lonely"]
        assert "estimate" in cells["close"] and "Table 9" in cells["close"] and "a paper" in cells["close"]
    unmeasured = [r for r in rows if r["claim"] == "lonely"]
    assert "Published claims" not in render_leaderboard([], [], "store", unmeasured)  # nothing measured: no table
    assert "Published claims" not in render_report("claims-tiny", results, "store")


def test_leaderboard_and_report_commands_read_the_built_in_claims_from_the_store(tmp_path, monkeypatch, capsys) -> None:
    """UniPT Table 5's LoRA / Adapter claim (claimed 1.00) from two stored flickr30k estimates, 95 / 100."""
    specs = {s.label: s for s in load_suite("flickr30k").with_mode("estimate") if s.config == "t5-bert"}
    store = ResultStore(tmp_path / "store")
    store.write(fake(specs["lora"], 95, 10))
    store.write(fake(specs["adapter"], 100, 10))
    code, _, err = invoke(["leaderboard", "--results", str(tmp_path / "store"), "--out-dir", str(tmp_path / "site")],
                          monkeypatch, capsys)
    assert code == 0, err
    for page in ("index.html", "flickr30k.html"):
        html = (tmp_path / "site" / page).read_text()
        row = html.split('data-claim="unipt-t5-bert-lora-vs-adapter"')[1].split("</tr>")[0]
        assert 'data-verdict="reproduced"' in row and "<td>0.95</td>" in row, page
    index = (tmp_path / "site" / "index.html").read_text()
    assert 'data-claim="side4video-vs-adapter" data-verdict="not measured"' in index
    assert 'data-claim="side4video-vs-adapter"' not in (tmp_path / "site" / "flickr30k.html").read_text()
    code, _, err = invoke(["report", "--suite", "flickr30k", "--results", str(tmp_path / "store"),
                           "--out", str(tmp_path / "r.html")], monkeypatch, capsys)
    assert code == 0, err
    assert 'data-claim="unipt-t5-bert-lora-vs-adapter" data-verdict="reproduced"' in (tmp_path / "r.html").read_text()


def test_claims_out_stores_its_runs_and_reuses_them(tmp_path, monkeypatch, capsys) -> None:
    claims_folder(tmp_path, {"close": record(1.1)})
    args = ["claims", "--claims", str(tmp_path / "claims"), "--out", str(tmp_path / "store")]
    code, out, err = invoke(args, monkeypatch, capsys)
    assert code == 0 and err.count("measuring") == 2 and "measured 1.00: reproduced" in out, err
    stored = sorted((tmp_path / "store" / "claims-tiny" / "c").glob("*.json"))
    assert sorted(p.name.split(".")[0] for p in stored) == ["bitfit", "bitfit-again"]
    assert all(json.loads(p.read_text())["status"] == "ok" for p in stored)
    code, out, err = invoke(args, monkeypatch, capsys)
    assert code == 0 and "measuring" not in err and "measured 1.00: reproduced" in out, err
    assert sorted((tmp_path / "store" / "claims-tiny" / "c").glob("*.json")) == stored
