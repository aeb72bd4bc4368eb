"""`unipt-bench gate`: compare a suite's memory with a baseline; exit 1 on a regression or a broken run."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

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
    from ..atomic import check_writable_dir, check_writable_file, write_atomic
    from ..gate import (
        DEFAULT_METRICS,
        benchmark_json,
        compare,
        dump,
        failed,
        junit,
        load_baseline,
        make_baseline,
    )
    from ..gate import markdown as gate_markdown
    from ..results import ResultStore
    from ..suite_file import load_suite, select_methods

    limit = parse_tolerance(tolerance)
    outputs = {"--junit": junit_file, "--markdown": markdown_file, "--benchmark-json": bench_file,
               "$GITHUB_STEP_SUMMARY": os.environ.get("GITHUB_STEP_SUMMARY"), **({"--baseline": baseline} if update else {})}
    for option, path in outputs.items():
        if path:
            check_writable_file(path, option)
    check_writable_dir(out, "--out")
    if not update:
        load_baseline(Path(baseline))  # a bad baseline fails before anything runs
    chosen = tuple(m.strip() for m in metrics.split(",")) if metrics else DEFAULT_METRICS
    unknown = [m for m in chosen if m not in DEFAULT_METRICS]
    if unknown:
        raise UserError(f"--metric: unknown {', '.join(unknown)} (known: {', '.join(DEFAULT_METRICS)})")
    loaded = load_suite(suite)
    resolve_mode(mode)
    specs = select_methods(loaded.with_mode(mode), methods)
    if configs:
        wanted = {c.strip() for c in configs.split(",")}
        unknown = wanted - {s.config for s in specs}
        if unknown:
            raise UserError(f"--configs: {', '.join(sorted(unknown))} not in {loaded.name}")
        specs = [s for s in specs if s.config in wanted]
    store = ResultStore(out)
    if not no_run:
        latest = store.latest(loaded.name)
        todo = [s for s in specs if not store.is_complete(s, latest)]
        if todo:
            click.echo(f"{loaded.name}: running {len(todo)} of {len(specs)} runs in {mode} mode")
            run_with_progress(todo, store)
    latest = store.latest(loaded.name)
    current = [latest[s.key] for s in specs if s.key in latest and latest[s.key].digest == s.digest()]
    if update:
        write_atomic(Path(baseline), dump(make_baseline(loaded.name, current)))
        click.echo(f"wrote {baseline}: {len(current)} runs of {loaded.name} ({mode})")
        return
    changes = compare(load_baseline(Path(baseline)), current, limit, chosen)
    summary = gate_markdown(loaded.name, changes, limit, strict)
    for change in changes:
        if change.verdict != "ok":
            delta = "" if change.delta is None else f" {change.delta:+,} B" if change.metric.endswith("bytes") else f" {change.delta:+,}"
            click.echo(f"  {change.verdict:<12} {change.run:<32} {change.metric:<24}"
                       f" {change.baseline if change.baseline is not None else '-'} -> "
                       f"{change.now if change.now is not None else '-'}{delta}"
                       + (f"  ({change.reason})" if change.reason else ""))
    compared = sum(c.verdict not in ("incomparable", "new", "missing") for c in changes)
    click.echo(f"{loaded.name}: {compared} figures compared at {limit:.2%}: "
               + ("FAILED" if failed(changes, strict) else "passed"))
    for path, text in ((junit_file, junit(loaded.name, changes, strict)), (markdown_file, summary),
                       (bench_file, benchmark_json(current))):
        if path:
            write_atomic(Path(path), text)
    if os.environ.get("GITHUB_STEP_SUMMARY"):
        try:
            with open(os.environ["GITHUB_STEP_SUMMARY"], "a", encoding="utf-8") as f:
                f.write(summary)
        except OSError as exc:
            raise UserError(f"$GITHUB_STEP_SUMMARY {os.environ['GITHUB_STEP_SUMMARY']}: cannot append ({exc.strerror})") from None
    if failed(changes, strict):
        sys.exit(1)
