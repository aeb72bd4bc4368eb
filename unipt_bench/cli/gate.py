"""`unipt-bench gate`: compare a suite's memory with a baseline; exit 1 on a regression or a broken run."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any

import click

from ..errors import UserError
from .app import cli, out_option
from .common import resolve_mode, run_with_progress


def parse_tolerance(text: str) -> float:
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise UserError(f"--tolerance {text!r}: write a percentage (1%) or a fraction (0.01)") from None
    if not math.isfinite(value) or value < 0:
        raise UserError(f"--tolerance {text!r}: must be a finite number >= 0 (e.g. 1% or 0.01)")
    return value


@cli.command()
@click.option("--suite", required=True, help="Built-in suite name or path to a suite TOML file.")
@click.option("--baseline", required=True, type=click.Path(dir_okay=False), help="Baseline JSON file.")
@click.option("--tolerance", default="1%", show_default=True, help="Allowed relative change, e.g. 1% or 0.")
@click.option("--metric", "metrics", default=None,
              help="Comma-separated figures to compare (default: peak and every category's bytes, trainable params).")
@click.option("--mode", type=click.Choice(["estimate", "cpu", "cuda"]), default="estimate", show_default=True)
@click.option("--methods", default=None, help="Comma-separated method names or labels (default: all).")
@click.option("--configs", default=None, help="Comma-separated configuration names (default: all).")
@click.option("--update", is_flag=True, help="Write or refresh the baseline from the current results instead.")
@click.option("--strict", is_flag=True, help="Also fail on improvements beyond the tolerance (refresh the baseline).")
@click.option("--no-run", is_flag=True, help="Only read stored results; run nothing.")
@click.option("--junit", "junit_file", default=None, type=click.Path(dir_okay=False), help="Write JUnit XML here.")
@click.option("--markdown", "markdown_file", default=None, type=click.Path(dir_okay=False),
              help="Write a Markdown summary here (also appended to $GITHUB_STEP_SUMMARY when set).")
@click.option("--benchmark-json", "bench_file", default=None, type=click.Path(dir_okay=False),
              help="Write github-action-benchmark customSmallerIsBetter JSON here.")
@out_option
def gate(suite: str, baseline: str, tolerance: str, metrics: str | None, mode: str, methods: str | None,
         configs: str | None, update: bool, strict: bool, no_run: bool, junit_file: str | None,
         markdown_file: str | None, bench_file: str | None, out: str) -> None:
    """Compare a suite's memory with a baseline: exit 1 on a regression beyond the tolerance."""
    from ..atomic import write_atomic
    from ..gate import compare, dump, failed, load_baseline, make_baseline
    from ..suite_file import load_suite

    limit = parse_tolerance(tolerance)
    chosen = metric_list(metrics)
    outputs = {"--junit": junit_file, "--markdown": markdown_file, "--benchmark-json": bench_file}
    check_outputs({**outputs, **({"--baseline": baseline} if update else {})}, out)
    loaded = load_suite(suite)
    if not update:
        load_baseline(Path(baseline), loaded.name)  # a bad baseline, or another suite's, fails before anything runs
    current = current_results(loaded, mode, methods, configs, out, no_run)
    if update:
        write_atomic(Path(baseline), dump(make_baseline(loaded.name, current)))
        click.echo(f"wrote {baseline}: {len(current)} runs of {loaded.name} ({mode})")
        return
    changes = compare(load_baseline(Path(baseline), loaded.name), current, limit, chosen)
    echo_changes(loaded.name, changes, limit, strict)
    write_outputs(loaded.name, changes, current, limit, strict, outputs)
    if failed(changes, strict):
        sys.exit(1)


def metric_list(metrics: str | None) -> tuple[str, ...]:
    """--metric a,b: figures the gate knows (all of them when not given)."""
    from ..gate import DEFAULT_METRICS

    chosen = tuple(m.strip() for m in metrics.split(",")) if metrics else DEFAULT_METRICS
    unknown = [m for m in chosen if m not in DEFAULT_METRICS]
    if unknown:
        raise UserError(f"--metric: unknown {', '.join(unknown)} (known: {', '.join(DEFAULT_METRICS)})")
    return chosen


def check_outputs(outputs: dict[str, str | None], out: str) -> None:
    """Every file the gate will write, $GITHUB_STEP_SUMMARY and the store: writable, checked before any run."""
    from ..atomic import check_writable_dir, check_writable_file

    for option, path in {**outputs, "$GITHUB_STEP_SUMMARY": os.environ.get("GITHUB_STEP_SUMMARY")}.items():
        if path:
            check_writable_file(path, option)
    check_writable_dir(out, "--out")


def current_results(loaded: Any, mode: str, methods: str | None, configs: str | None, out: str,
                    no_run: bool) -> list[Any]:
    """The chosen runs' current results (same spec digest), running the ones not stored yet unless --no-run."""
    from ..jobs import select_configs
    from ..results import ResultStore
    from ..suite_file import select_methods

    resolve_mode(mode)
    specs = select_configs(select_methods(loaded.with_mode(mode), methods), configs, loaded.name)
    store = ResultStore(out)
    if not no_run:
        latest = store.latest(loaded.name)
        todo = [s for s in specs if not store.is_complete(s, latest)]
        if todo:
            click.echo(f"{loaded.name}: running {len(todo)} of {len(specs)} runs in {mode} mode")
            run_with_progress(todo, store)
    latest = store.latest(loaded.name)
    return [latest[s.key] for s in specs if s.key in latest and latest[s.key].digest == s.digest()]


def echo_changes(suite: str, changes: list[Any], limit: float, strict: bool) -> None:
    """One line per figure that is not ok, then the verdict with the number of figures compared."""
    from ..gate import compared, failed

    for change in changes:
        if change.verdict == "ok":
            continue
        unit = " B" if change.metric.endswith("bytes") else ""
        delta = "" if change.delta is None else f" {change.delta:+,}{unit}"
        before = "-" if change.baseline is None else change.baseline
        after = "-" if change.now is None else change.now
        click.echo(f"  {change.verdict:<12} {change.run:<32} {change.metric:<24} {before} -> {after}{delta}"
                   + (f"  ({change.reason})" if change.reason else ""))
    count = compared(changes)
    why = "" if count else " (every run is new, missing or incomparable: nothing to judge)"
    click.echo(f"{suite}: {count} figures compared at {limit:.2%}{why}: "
               + ("FAILED" if failed(changes, strict) else "passed"))


def write_outputs(suite: str, changes: list[Any], current: list[Any], limit: float, strict: bool,
                  outputs: dict[str, str | None]) -> None:
    """JUnit, Markdown and benchmark JSON where asked; the Markdown also appended to $GITHUB_STEP_SUMMARY."""
    from ..atomic import append_text, write_atomic
    from ..gate import benchmark_json, junit, markdown

    summary = markdown(suite, changes, limit, strict)
    texts = {"--junit": lambda: junit(suite, changes, strict), "--markdown": lambda: summary,
             "--benchmark-json": lambda: benchmark_json(current)}
    for option, path in outputs.items():
        if path:
            write_atomic(Path(path), texts[option]())
    if os.environ.get("GITHUB_STEP_SUMMARY"):
        append_text(os.environ["GITHUB_STEP_SUMMARY"], summary)
