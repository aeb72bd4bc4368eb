"""Memory gates: unchanged code passes, one extra saved activation fails naming run, category and bytes,
results are byte-identical run to run, CI outputs have their documented shapes, the user-model API."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
import torch

from unipt_bench.gate import benchmark_json, compare, dump, failed, junit, make_baseline, markdown
from unipt_bench.methods import unipt as unipt_module
from unipt_bench.results import RunResult
from unipt_bench.runner import execute
from unipt_bench.suite_file import load_suite

BERT = [s for s in load_suite("smoke").with_mode("estimate") if s.config == "bert" and s.label in ("unipt", "lora")]


def run_all() -> list[RunResult]:
    return [RunResult(**execute(s.to_dict())) for s in BERT]


@pytest.fixture(scope="module")
def baseline() -> dict:
    return make_baseline("smoke", run_all())


def test_unchanged_code_passes(baseline) -> None:
    changes = compare(baseline, run_all(), tolerance=0.0)
    assert changes and all(c.verdict == "ok" for c in changes)
    assert not failed(changes, strict=True)


def test_one_extra_saved_activation_fails_the_gate(baseline, monkeypatch) -> None:
    original = unipt_module.ParallelTransformer.forward

    def keeps_one_more(self, out):
        result = original(self, out)
        # exp saves its output for backward: one more activation, [B, N, 128 E], large enough to lift the
        # forward above the optimizer step, where this tiny run peaks
        extra = torch.exp(result.last.repeat(1, 1, 128))[..., : result.last.shape[-1]]
        return type(result)(result.hidden, result.last + 0 * extra, result.mask, result.frames)

    monkeypatch.setattr(unipt_module.ParallelTransformer, "forward", keeps_one_more)
    changes = compare(baseline, run_all(), tolerance=0.01)
    assert failed(changes, strict=False)
    grown = [c for c in changes if c.verdict == "regression"]
    assert {c.run for c in grown} == {"bert/unipt/estimate"}
    activations = next(c for c in grown if c.metric == "activations_bytes")
    spec = next(s for s in BERT if s.label == "unipt")
    last_bytes = spec.batch * spec.towers[0].shape["seq_len"] * 16 * 128 * 4  # one [B, N, 128 E] fp32 tensor
    assert activations.delta >= last_bytes
    summary = markdown("smoke", changes, 0.01, strict=False)
    assert "FAILED" in summary and "bert/unipt/estimate" in summary and "activations_bytes" in summary
    assert f"{activations.delta:+,}" in summary
    assert all(c.verdict == "ok" for c in changes if c.run == "bert/lora/estimate")


@pytest.mark.slow
def test_gate_results_are_byte_identical_run_to_run(baseline) -> None:
    first, second = run_all(), run_all()
    assert dump(make_baseline("smoke", first)) == dump(make_baseline("smoke", second)) == dump(baseline)
    assert benchmark_json(first) == benchmark_json(second)
    changes = [compare(baseline, r, 0.0) for r in (first, second)]
    assert junit("smoke", changes[0], False) == junit("smoke", changes[1], False)
    assert markdown("smoke", changes[0], 0.0, False) == markdown("smoke", changes[1], 0.0, False)


def tampered(baseline: dict, metric: str, factor: float) -> dict:
    copy = json.loads(json.dumps(baseline))
    entry = copy["entries"]["bert/unipt/estimate"]
    entry["metrics"][metric] = int(entry["metrics"][metric] * factor)
    return copy


@pytest.mark.slow
def test_junit_xml_has_the_usual_shape(baseline) -> None:
    changes = compare(tampered(baseline, "peak_bytes", 0.5), run_all(), 0.01)
    root = ET.fromstring(junit("smoke", changes, strict=False))
    assert root.tag == "testsuites"
    (suite,) = root.findall("testsuite")
    assert suite.get("tests") == "2" and suite.get("failures") == "1" and suite.get("errors") == "0"
    cases = suite.findall("testcase")
    assert {c.get("name") for c in cases} == {"unipt/estimate", "lora/estimate"}
    assert all(c.get("classname") == "smoke.bert" for c in cases)
    (failure,) = [f for c in cases for f in c.findall("failure")]
    assert "peak_bytes regression" in failure.get("message") and failure.text


@pytest.mark.slow
def test_benchmark_json_has_the_documented_fields() -> None:
    data = json.loads(benchmark_json(run_all()))
    assert data and all(set(d) == {"name", "unit", "value", "extra"} for d in data)
    assert all(isinstance(d["value"], int) and d["unit"] == "bytes" for d in data)
    assert data[0]["name"] == "smoke/bert/lora/estimate peak_bytes"


@pytest.mark.slow
def test_improvements_fail_only_when_strict(baseline) -> None:
    changes = compare(tampered(baseline, "peak_bytes", 2.0), run_all(), 0.01)
    assert [c.verdict for c in changes if c.metric == "peak_bytes" and "unipt" in c.run] == ["improvement"]
    assert not failed(changes, strict=False) and failed(changes, strict=True)


@pytest.mark.slow
def test_other_protocols_are_incomparable_not_compared(baseline) -> None:
    other = json.loads(json.dumps(baseline))
    other["entries"]["bert/unipt/estimate"]["protocol"]["attention"] = "eager"
    other["entries"]["bert/lora/estimate"]["digest"] = "0" * 16
    changes = compare(other, run_all(), 0.0)
    assert [c.verdict for c in changes] == ["incomparable", "incomparable"]
    assert "attention" in changes[1].reason and "spec changed" in changes[0].reason
    assert failed(changes, strict=False)  # nothing was compared: the gate judged nothing, so it fails
    assert "No figure was compared" in markdown("smoke", changes, 0.0, strict=False)
    other["entries"]["bert/lora/estimate"]["digest"] = baseline["entries"]["bert/lora/estimate"]["digest"]
    changes = compare(other, run_all(), 0.0)  # one run compared, the other incomparable: passes
    assert {c.verdict for c in changes} == {"ok", "incomparable"} and not failed(changes, strict=True)


@pytest.mark.slow
def test_missing_runs_fail_and_new_runs_are_reported(baseline) -> None:
    results = run_all()
    changes = compare(baseline, results[:1], 0.0)
    assert any(c.verdict == "missing" for c in changes) and failed(changes, strict=False)
    partial = json.loads(json.dumps(baseline))
    del partial["entries"]["bert/lora/estimate"]
    changes = compare(partial, results, 0.0)
    assert any(c.verdict == "new" for c in changes) and not failed(changes, strict=False)


def test_a_baseline_without_figures_fails_the_gate(baseline) -> None:
    """Entries that hold no metrics compare nothing: the gate fails instead of passing with 0 figures."""
    empty = json.loads(json.dumps(baseline))
    for entry in empty["entries"].values():
        entry["metrics"] = {}
    changes = compare(empty, run_all(), 0.0)
    assert changes and {c.verdict for c in changes} == {"incomparable"} and failed(changes, strict=False)
    root = ET.fromstring(junit("smoke", changes, strict=False))
    assert root.find("testsuite").get("failures") == "1"


def test_a_baseline_records_its_suite_and_another_suite_is_refused(baseline, tmp_path) -> None:
    from unipt_bench.errors import UserError
    from unipt_bench.gate import load_baseline

    path = tmp_path / "smoke.json"
    path.write_text(dump(baseline))
    assert load_baseline(path, "smoke")["suite"] == "smoke"
    with pytest.raises(UserError, match="a baseline of suite 'smoke', not 'flickr30k'"):
        load_baseline(path, "flickr30k")
    path.write_text(dump({k: v for k, v in baseline.items() if k != "suite"}))
    with pytest.raises(UserError, match="names no suite"):
        load_baseline(path, "smoke")


@pytest.mark.parametrize("name", ["smoke.json", "flickr30k-t5-bert.json"])
def test_the_committed_baselines_name_their_suite(name) -> None:
    from pathlib import Path

    from unipt_bench.gate import load_baseline

    path = Path(__file__).parent.parent / "baselines" / name
    suite = name.split("-")[0].removesuffix(".json")
    assert load_baseline(path, suite)["entries"]


SUITE = """
name = "gated"
task = "retrieval"
task_options = { embed_dim = 16 }

[[configs]]
name = "c"
batch = 4
towers = [{ name = "text", backbone = "tiny-bert", seq_len = 8 }, { name = "image", backbone = "tiny-regions", tuned = false }]
methods = ["unipt", "lora"]
"""


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "unipt_bench.cli", *args], capture_output=True, text=True)


@pytest.mark.slow
def test_gate_command_end_to_end(tmp_path) -> None:
    suite = tmp_path / "gated.toml"
    suite.write_text(SUITE)
    base = tmp_path / "baseline.json"
    store = ("--out", str(tmp_path / "store"))
    done = cli("gate", "--suite", str(suite), "--baseline", str(base), "--update", *store)
    assert done.returncode == 0, done.stderr
    assert json.loads(base.read_text())["entries"].keys() == {"c/lora/estimate", "c/unipt/estimate"}
    outputs = {"--junit": tmp_path / "gate.xml", "--markdown": tmp_path / "gate.md", "--benchmark-json": tmp_path / "b.json"}
    flags = [x for k, v in outputs.items() for x in (k, str(v))]
    passed = cli("gate", "--suite", str(suite), "--baseline", str(base), "--tolerance", "0%", *flags, *store)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "passed" in passed.stdout and all(p.is_file() for p in outputs.values())
    data = json.loads(base.read_text())
    data["entries"]["c/unipt/estimate"]["metrics"]["activations_bytes"] -= 512
    base.write_text(json.dumps(data))
    regressed = cli("gate", "--suite", str(suite), "--baseline", str(base), "--no-run", *flags, *store)
    assert regressed.returncode == 1
    assert re.search(r"regression\s+c/unipt/estimate\s+activations_bytes.*\+512 B", regressed.stdout)
    assert "FAILED" in (tmp_path / "gate.md").read_text()
    bad = cli("gate", "--suite", str(suite), "--baseline", str(tmp_path / "none.json"), "--no-run", *store)
    assert bad.returncode == 2 and bad.stderr.startswith("error: no baseline at")


def test_readme_user_model_example_runs(tmp_path, monkeypatch) -> None:
    """The README's ten-line example, executed as written (with the baseline in a temporary folder)."""
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Gate your own model"):]
    code = section[section.index("```python") + len("```python"):section.index("```", section.index("```python") + 9)]
    assert len(code.strip().splitlines()) <= 12
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tests").mkdir()
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    test = next(v for k, v in namespace.items() if k.startswith("test_"))
    monkeypatch.setenv("UNIPT_BENCH_UPDATE_BASELINES", "1")
    test()  # writes the baseline
    monkeypatch.delenv("UNIPT_BENCH_UPDATE_BASELINES")
    test()  # compares: unchanged, passes
    baseline = next((tmp_path / "tests").glob("*.json"))
    data = json.loads(baseline.read_text())
    data["by_category"]["activations"] -= 1
    baseline.write_text(json.dumps(data))
    with pytest.raises(AssertionError, match="activations bytes"):
        test()


def test_estimate_memory_counts_a_linear_model_exactly(tmp_path) -> None:
    from unipt_bench.api import estimate_memory

    est = estimate_memory(
        model=lambda: torch.nn.Linear(1000, 10),
        batch=lambda: torch.randn(32, 1000),
        loss=lambda model, x: model(x).square().mean(),
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
    )
    weights = (1000 * 10 + 10) * 4
    assert est.by_category["params"] == weights and est.trainable_params == 1000 * 10 + 10
    assert est.by_category["inputs"] == 32 * 1000 * 4
    assert est.peak_bytes >= weights * 2  # parameters and their gradients coexist
