"""`peft:<type>` methods: every PEFT tuner type that runs profiles alike in estimate and cpu modes, trains
what PEFT itself counts, and bad options fail when a suite is read."""

from __future__ import annotations

import warnings
from contextlib import ExitStack

import pytest
from click.testing import CliRunner

from unipt_bench.backbones import create_backbone
from unipt_bench.build import parameter_counts
from unipt_bench.cli.app import cli
from unipt_bench.config import RunSpec, TowerSpec
from unipt_bench.methods import create_method
from unipt_bench.methods.peft_tuners import NOT_ESTIMABLE, peft_types, type_name
from unipt_bench.profile import RunOptions, make_trackers, prepare

from .test_bad_inputs import invoke

RUNNING = [name for name, why in peft_types().items() if not why]
REAL_ONLY = {type_name(t) for t in NOT_ESTIMABLE}
SMALL = {  # PEFT's defaults are sized for paper-scale widths: what fits a 32-wide tiny BERT
    "peft:vblora": {"vector_length": 8}, "peft:miss": {"r": 8}, "peft:road": {"group_size": 8},
    "peft:shira": {"r": 4}, "peft:c3a": {"block_size": 8}, "peft:waveft": {"n_frequency": 64},
}


def spec_of(method: str, mode: str, options: dict | None = None) -> RunSpec:
    """The cheapest run: tiny BERT (the cheapest tiny backbone with low-rank targets) against frozen regions."""
    return RunSpec(suite="peft", config="c", label=method.replace(":", "-"), method=method,
                   method_options=SMALL.get(method, {}) if options is None else options, task="retrieval",
                   task_options={"embed_dim": 8}, towers=[TowerSpec("text", "tiny-bert", shape={"seq_len": 4}),
                                                          TowerSpec("image", "tiny-regions", tuned=False)],
                   batch=2, gpus=1, steps=1, seed=0, mode=mode)


def traced(spec: RunSpec) -> tuple[dict, dict]:
    """One tracked training step (no evaluation pass, no timed steps: kept cheap), the primary tracker's figures."""
    with warnings.catch_warnings(), ExitStack() as stack:
        warnings.simplefilter("ignore")
        run = prepare(spec, stack)
        trackers = make_trackers(spec, run, RunOptions(trackers=[]))
        with trackers:
            run.step(trackers)
        counts = parameter_counts(run.built)
    (memory,) = trackers.results().values()
    return memory, counts


@pytest.mark.parametrize("method", [*RUNNING, "lora-fa"])
def test_every_running_peft_type_estimates_its_cpu_bytes_and_trains_what_peft_counts(method: str) -> None:
    """LoRA-FA too: PEFT's LoRA with A frozen, and PEFT's optimizer, whose state the estimate must follow."""
    real, counts = traced(spec_of(method, "cpu"))
    tuner = create_method(method, SMALL.get(method, {}))
    assert counts["trainable_method_params"] == tuner.closed_form_trainable(create_backbone("tiny-bert"), 8) > 0
    if method in REAL_ONLY:  # refused in estimate mode, with the reason
        assert "cpu and cuda modes only" in tuner.refusal(create_backbone("tiny-bert").to("meta"))
        return
    fake, fake_counts = traced(spec_of(method, "estimate"))
    assert fake_counts == counts
    assert fake["peak_bytes"] == real["peak_bytes"]
    assert fake["by_category"] == real["by_category"]
    assert {p: v["peak_bytes"] for p, v in fake["by_phase"].items()} == {
        p: v["peak_bytes"] for p, v in real["by_phase"].items()}


def test_a_peft_method_records_the_peft_version_and_its_resolved_config() -> None:
    import peft

    tuner = create_method("peft:lora", {"r": 4, "use_dora": True})
    tuner.apply(create_backbone("tiny-bert"), 8)
    (config,) = tuner.recorded()["peft"]["configs"]
    assert tuner.recorded()["peft"]["version"] == peft.__version__
    assert (config["r"], config["use_dora"], sorted(config["target_modules"])) == (4, True, ["query", "value"])


def suite_with(method: str) -> str:
    return f"""name = "peftbad"
[[configs]]
name = "c"
batch = 2
methods = [{method}]
towers = [{{ name = "text", backbone = "tiny-bert" }}, {{ name = "image", backbone = "tiny-regions", tuned = false }}]
"""


@pytest.mark.parametrize(("method", "named"), [
    ('"peft:nope"', "unknown PEFT type 'nope' for method 'peft:nope'"),
    ('{ method = "peft:lora", r = 0 }', "method 'peft:lora': PEFT rejects option r:"),
    ('{ method = "peft:lora", rank = 4 }', "method 'peft:lora': unknown option(s) rank"),
    ('{ method = "peft:lora", target_modules = ["nowhere"] }',
     "method 'peft:lora': option target_modules ['nowhere'] matches no module"),
    ('"peft:miss"', "method 'peft:miss': PEFT rejects the default of option r:"),  # r = 64 > tiny width 32
    ('"peft:prefix_tuning"', "method 'peft:prefix_tuning' does not run on a suite's towers: prompt learning"),
])
def test_bad_peft_options_fail_in_one_line_when_the_suite_is_read(tmp_path, monkeypatch, capsys, method: str,
                                                                   named: str) -> None:
    suite = tmp_path / "peftbad.toml"
    suite.write_text(suite_with(method))
    code, _, err = invoke(["run", "--suite", str(suite), "--out", str(tmp_path / "out")], monkeypatch, capsys)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and f"peftbad.toml:5: config 'c': {named}" in lines[0], err
    assert not (tmp_path / "out").exists()  # refused before any run


def load_like_peft_app(folder) -> list[dict]:
    """The app's reading of a result folder, re-implemented from huggingface/peft method_comparison/processing.py
    (commit 0006753e): `load_jsons` (line 76) reads every *.json; `preprocess` (line 23) skips runs whose
    train status is not "success" and takes these fields; `load_df` (line 86) casts them with these dtypes."""
    import json

    import pandas as pd

    rows = []
    for path in sorted(folder.iterdir()):
        if path.suffix != ".json":
            continue
        row = json.loads(path.read_text())
        run_info, train_info, meta_info = row["run_info"], row["train_info"], row["meta_info"]
        if train_info["status"] != "success":
            continue
        last = train_info["metrics"][-1]
        rows.append({
            "experiment_name": run_info["experiment_name"], "model_id": run_info["train_config"]["model_id"],
            "peft_type": run_info["peft_config"]["peft_type"] if run_info["peft_config"] else "full-finetuning",
            "peft_config": run_info["peft_config"],
            **{k: train_info[k] for k in ("accelerator_memory_reserved_avg", "accelerator_memory_max",
                                          "accelerator_memory_reserved_99th", "train_time", "file_size")},
            "total_time": run_info["total_time"], "test_accuracy": last["test accuracy"],
            "train_loss": last["train loss"], "train_samples": last["train samples"],
            "train_total_tokens": last["train total tokens"],
            "peft_version": meta_info["package_info"]["peft-version"], "peft_branch": run_info["peft_branch"],
            "torch_version": meta_info["package_info"]["torch-version"], "created_at": run_info["created_at"],
        })
    df = pd.DataFrame(rows).astype({
        "experiment_name": "string", "model_id": "string", "peft_type": "string", "peft_config": "string",
        "accelerator_memory_reserved_avg": int, "accelerator_memory_max": int, "accelerator_memory_reserved_99th": int,
        "total_time": float, "train_time": float, "file_size": int, "test_accuracy": float, "train_loss": float,
        "train_samples": int, "train_total_tokens": int, "peft_version": "string", "peft_branch": "string",
        "torch_version": "string", "created_at": "string"})
    df["created_at"] = pd.to_datetime(df["created_at"])
    return df.to_dict("records")


def test_results_in_peft_layout_load_with_the_peft_apps_reader(tmp_path) -> None:
    import peft

    from unipt_bench.profile import profile
    from unipt_bench.results import ResultStore, RunResult

    store = ResultStore(tmp_path / "store")
    for method in ("peft:ia3", "full", "bitfit"):
        spec = spec_of(method, "estimate")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = profile(spec, RunOptions(trackers=[]))
        store.write(RunResult(spec=spec.to_dict(), status="ok", digest=spec.digest(), started="2026-01-01T00:00:00Z",
                              finished="2026-01-01T00:00:01Z", env={"packages": {"peft": peft.__version__}}, **out))
    result = CliRunner().invoke(cli, ["results", "--suite", "peft", "--out", str(tmp_path / "store"),
                                      "--format", "peft", "--dest", str(tmp_path / "peft")])
    assert result.exit_code == 0, result.output
    rows = {r["peft_type"]: r for r in load_like_peft_app(tmp_path / "peft")}
    assert set(rows) == {"IA3", "full-finetuning", "BITFIT"}
    latest = {r.spec["method"]: r for r in store.latest("peft").values()}
    for method, peft_type in (("peft:ia3", "IA3"), ("full", "full-finetuning"), ("bitfit", "BITFIT")):
        assert rows[peft_type]["accelerator_memory_max"] == latest[method].primary_memory()["peak_bytes"] > 0
        assert rows[peft_type]["file_size"] == 4 * latest[method].params["trainable_params"]
    assert rows["IA3"]["peft_version"] == peft.__version__
    assert "target_modules" in rows["IA3"]["peft_config"]  # the resolved config, as PEFT writes it
