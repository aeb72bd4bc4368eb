"""The `unipt-bench` command line: list, run, results. Torch is imported only by commands that need it."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from .errors import UserError

DEFAULT_OUT = os.environ.get("UNIPT_BENCH_RESULTS", "results")
out_option = click.option(
    "--out", "out", default=DEFAULT_OUT, show_default=True, type=click.Path(file_okay=False),
    help="Result store folder (env UNIPT_BENCH_RESULTS).",
)


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def human_count(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.2f}M" if n >= 10_000 else str(n)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="unipt-bench")
def cli() -> None:
    """Memory-profiling benchmarks for parameter-efficient transfer learning (UniPT, LST, Adapter, LoRA, ...)."""


@cli.command("list")
@click.argument("what", type=click.Choice(["all", "suites", "backbones", "methods", "tasks", "trackers", "options"]),
                default="all")
def list_cmd(what: str) -> None:
    """List built-in suites, backbones, methods and tasks; `options`: every option with its default and range."""
    from .suite_file import builtin_suites, suite_description_of

    if what in ("all", "suites"):
        click.echo("suites:")
        for name, path in sorted(builtin_suites().items()):
            click.echo(f"  {name:<14} {suite_description_of(path)}")
    if what in ("all", "backbones"):
        from .backbones import BACKBONES

        click.echo("backbones:")
        for name in BACKBONES.names():
            info = BACKBONES.get(name)
            click.echo(f"  {name:<18} {info.description}")
    if what in ("all", "methods"):
        from .methods import METHODS

        click.echo("methods:")
        for name in METHODS.names():
            cls = METHODS.get(name)
            doc = (cls.__module__ and sys.modules[cls.__module__].__doc__ or "").strip().splitlines()[0]
            needs = [f"needs {', '.join(c.__name__ for c in cls.needs)}"] if cls.needs else []
            needs += [f"designs for {', '.join(sorted(cls.kinds))}"] if cls.kinds else []
            click.echo(f"  {name:<10} {doc}" + (f"  [{'; '.join(needs)}]" if needs else ""))
    if what in ("all", "tasks"):
        from .tasks import TASKS

        click.echo("tasks:")
        for name in TASKS.names():
            click.echo(f"  {name:<10} {(TASKS.get(name).__doc__ or '').strip().splitlines()[0]}")
    if what in ("all", "trackers"):
        from .memory.registry import describe

        click.echo("trackers:")
        for t in describe():
            role = "primary" if t["primary"] else "optional"
            click.echo(f"  {t['name']:<15} {t['description']}  [{', '.join(t['modes'])}; {role}]")
    if what == "options":
        from .config import TrainSpec
        from .configurable import describe_options
        from .methods import METHODS
        from .tasks import TASKS

        tables = [(f"method {n}", METHODS.get(n)) for n in METHODS.names()]
        tables += [(f"task {n} (task_options)", TASKS.get(n)) for n in TASKS.names()]
        for title, cls in [*tables, ("train (a configuration's train table)", TrainSpec)]:
            lines = describe_options(cls)
            click.echo(f"{title}:" + ("" if lines else " no options"))
            for line in lines:
                click.echo(f"  {line}")


def resolve_mode(mode: str, trains: bool = False) -> tuple[str, str]:
    """(mode, a sentence saying why). `trains`: the suite trains on real data, which estimates cannot."""
    import torch

    if mode != "auto":
        if mode == "cuda" and not torch.cuda.is_available():
            raise UserError("--mode cuda needs a CUDA GPU and none is visible; use --mode estimate or --mode cpu")
        if mode == "estimate" and trains:
            return mode, "estimate mode (as asked): training configurations are profiled on fake tensors, not trained"
        return mode, f"{mode} mode (as asked)"
    if torch.cuda.is_available():
        return "cuda", f"cuda mode on {torch.cuda.get_device_name(0)}"
    if trains:
        return "cpu", "cpu mode: no GPU found, and training needs real tensors"
    return "estimate", "estimate mode: no GPU found, so memory comes from fake tensors (exact bytes, no data, no downloads)"


@cli.command()
@click.option("--suite", required=True, help="Built-in suite name or path to a suite TOML file.")
@click.option("--mode", type=click.Choice(["auto", "estimate", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto: cuda when a GPU is visible, else estimate.")
@click.option("--methods", default=None, help="Comma-separated method names or labels to run (default: all).")
@out_option
@click.option("--force", is_flag=True, help="Run again even when a current result exists.")
@click.option("--busy-threshold", default="1GiB", show_default=True,
              help="cuda: refuse runs while other processes hold more GPU memory than this ('none': never refuse).")
@click.option("--memory-snapshot", is_flag=True, help="cuda: save each run's allocator snapshot beside its result.")
@click.option("--calibrate/--no-calibrate", default=True, show_default=True,
              help="cuda: also estimate each run on fake tensors and store estimate / measured.")
@click.option("--nvml-interval", default=0.01, show_default=True, help="cuda: seconds between NVML samples.")
@click.option("--data-root", default=os.environ.get("UNIPT_BENCH_DATA", "data"), show_default=True,
              type=click.Path(file_okay=False), help="Where training suites find datasets (env UNIPT_BENCH_DATA).")
@click.option("--trackers", default=None,
              help="Comma-separated trackers to run (default: the suite's list, else all; see `list trackers`).")
def run(suite: str, mode: str, methods: str | None, out: str, force: bool, busy_threshold: str,
        memory_snapshot: bool, calibrate: bool, nvml_interval: float, data_root: str, trackers: str | None) -> None:
    """Profile every run of a suite and store one JSON result per run."""
    from .atomic import check_writable_dir
    from .fit import parse_bytes
    from .results import ResultStore
    from .suite_file import load_suite, select_methods

    if not math.isfinite(nvml_interval) or nvml_interval <= 0:
        raise UserError(f"--nvml-interval {nvml_interval}: must be a positive number of seconds")
    options = {
        "busy_threshold": None if busy_threshold.lower() == "none" else parse_bytes(busy_threshold),
        "calibrate": calibrate,
        "nvml_interval": nvml_interval,
        "data_root": data_root,
        "resume": not force,  # --force trains from scratch, never from an earlier run's checkpoint
    }
    loaded = load_suite(suite)
    mode, why = resolve_mode(mode, trains=any(s.train for s in loaded.specs))
    specs = select_methods(loaded.with_mode(mode), methods)
    check_writable_dir(out, "--out")
    options["trackers"] = loaded.trackers if trackers is None else tracker_list(trackers)
    store = ResultStore(out)
    latest = store.latest(loaded.name)
    todo = [s for s in specs if force or not store.is_complete(s, latest)]
    click.echo(f"{loaded.name}: {len(specs)} runs in {why}")
    if len(todo) < len(specs):
        click.echo(f"  {len(specs) - len(todo)} already done (same spec); --force runs them again")
    results = run_with_progress(todo, store, options, memory_snapshot)
    summarize(loaded.name, results, out)
    if any(r.status == "error" for r in results):
        sys.exit(1)


def run_with_progress(specs: list, store: Any, options: dict[str, Any] | None = None, snapshots: bool = False) -> list:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .runner import run_specs

    console = Console(highlight=False)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console, transient=True)
    started: dict[str, float] = {}
    with progress:
        bar = progress.add_task("starting", total=len(specs))

        def on_start(spec: Any) -> None:
            started[spec.key] = time.perf_counter()
            progress.update(bar, description=f"{spec.config}/{spec.label}")

        def on_result(result: Any) -> None:
            spec = result.run_spec
            seconds = time.perf_counter() - started.get(spec.key, time.perf_counter())
            row = result.row()
            detail = (
                f"peak {human_bytes(row['peak_bytes']):>10}  trainable {human_count(row['trainable_params']):>8}"
                if result.status == "ok" else (result.message or "")
            )
            if result.status == "ok" and row["test_score"] is not None:
                detail += f"  test {row['metric']} {row['test_score']:.2f} (baseline {row['baseline_score']:.2f})"
            console.print(f"  {spec.config + '/' + spec.label:<24} {result.status:<15} {detail}  ({seconds:.1f} s)",
                          markup=False, soft_wrap=True)
            progress.advance(bar)

        def on_progress(spec: Any, info: dict[str, Any]) -> None:
            name = f"{spec.config}/{spec.label}"
            if info.get("event") == "step":
                progress.update(bar, description=f"{name} step {info['step']}/{info['steps']} loss {info['loss']:.3f} "
                                                 f"{info['samples_per_s']:.0f}/s")
            elif info.get("event") == "eval":
                scores = ", ".join(f"{k} {v:.2f}" for k, v in info.items() if k not in ("event", "step"))
                console.print(f"  {name:<24} step {info['step']}: validation {scores}", markup=False, soft_wrap=True)

        try:
            return run_specs(specs, store, on_start=on_start, on_result=on_result, options=options, snapshots=snapshots,
                             on_progress=on_progress)
        except KeyboardInterrupt:
            progress.stop()
            click.echo("interrupted: finished runs are kept; run the same command to resume", err=True)
            sys.exit(130)


def summarize(suite: str, results: list, out: str) -> None:
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    if results:
        click.echo("done: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
    click.echo(f"results in {out}/{suite}/; see them with: unipt-bench results --suite {suite}"
               + ("" if out == DEFAULT_OUT else f" --out {out}"))


@cli.command()
@click.option("--suite", required=True, help="Suite name (as stored).")
@out_option
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "markdown"]), default="table",
              show_default=True)
def results(suite: str, out: str, fmt: str) -> None:
    """Show the newest result of every run of a suite (bytes and raw counts in csv/json)."""
    from .results import ResultStore

    store = ResultStore(out)
    latest = store.latest(suite_name(suite))
    if not latest:
        known = store.suites()
        hint = f" (stored suites: {', '.join(known)})" if known else ""
        raise UserError(f"no results for suite {suite!r} in {out}{hint}{skipped_note(store)}; "
                        f"run: unipt-bench run --suite {suite}")
    warn_skipped(store)
    rows = [r.row() for r in sorted(latest.values(), key=lambda r: r.display_order)]
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
    elif fmt == "csv":
        import pandas as pd

        # nullable dtypes keep counts integral where some rows (not applicable, errors) have none
        click.echo(pd.DataFrame(rows).convert_dtypes().to_csv(index=False), nl=False)
    elif fmt == "markdown":
        click.echo(markdown_table(rows))
    else:
        print_table(rows)


@cli.command()
@click.option("--suite", required=True, help="Built-in suite name or path to a suite TOML file.")
@click.option("--budget", required=True, help="Memory per GPU, e.g. 24GiB, 80GB, 16000MiB.")
@click.option("--mode", type=click.Choice(["auto", "estimate", "cpu", "cuda"]), default="estimate", show_default=True)
@click.option("--methods", default=None, help="Comma-separated method names or labels (default: all).")
@click.option("--limit", default=4096, show_default=True, type=click.IntRange(min=1), help="Largest batch to consider.")
@out_option
def fit(suite: str, budget: str, mode: str, methods: str | None, limit: int, out: str) -> None:
    """Find each run's largest per-GPU batch under a memory budget, and its memory-vs-batch line."""
    from .atomic import check_writable_dir, write_atomic
    from .config import RunSpec
    from .fit import fit_spec, parse_bytes
    from .results import ResultStore, now
    from .runner import Worker
    from .suite_file import load_suite, select_methods

    store = ResultStore(out)
    budget_bytes = parse_bytes(budget)
    if budget_bytes <= 0:
        raise UserError(f"--budget {budget!r}: must be more than 0 bytes")
    loaded = load_suite(suite)
    mode, why = resolve_mode(mode)
    specs = select_methods(loaded.with_mode(mode), methods)
    check_writable_dir(Path(out) / "_fits", "--out")
    click.echo(f"{loaded.name}: largest batch per GPU under {human_bytes(budget_bytes)}, {why}")
    worker: Worker | None = None
    options = {"calibrate": False}  # a probe needs its peak only, not an estimate beside it

    def probe(spec: RunSpec) -> dict[str, Any]:
        """Estimate probes share one worker; cpu and GPU probes each get a fresh process (no carried-over
        allocator state, even after an out-of-memory probe)."""
        nonlocal worker
        if worker is not None and mode != "estimate":
            worker.close()
            worker = None
        if worker is None:
            worker = Worker()
        return worker.run(spec, options)

    try:
        for spec in specs:
            try:
                fitted = fit_spec(spec, budget_bytes, probe, limit)
            except UserError as exc:
                click.echo(f"  {spec.config + '/' + spec.label:<24} {exc}")
                continue
            line = (f"{human_bytes(fitted.fixed_bytes)} + {human_bytes(round(fitted.bytes_per_sample))}/sample"
                    if fitted.bytes_per_sample else "no line (peak did not grow with the batch)")
            best = f">={limit} (the --limit)" if fitted.max_batch == limit else str(fitted.max_batch or "none")
            click.echo(f"  {spec.config + '/' + spec.label:<24} max batch {best:>6}  {line}  ({len(fitted.probes)} probes)")
            record = {"spec": spec.to_dict(), "mode": mode, "finished": now(), **fitted.to_dict()}
            write_atomic(store.fit_path(spec), json.dumps(record, indent=2, sort_keys=True))
    except KeyboardInterrupt:
        click.echo("interrupted: fits finished so far are kept", err=True)
        sys.exit(130)
    finally:
        if worker is not None:
            worker.close()
    click.echo(f"fits in {out}/_fits/{loaded.name}/")


@cli.command()
@click.option("--gpu", is_flag=True, help="Compare estimates with max_memory_allocated on the GPU (needs one).")
@click.option("--methods", default=None, help="Comma-separated method names to check (default: all).")
@click.option("--overhead-rounds", default=20, show_default=True, type=click.IntRange(min=0),
              help="With --gpu: interleaved untracked/tracked steps timed for the tracking overhead (0: skip).")
@out_option
def selfcheck(gpu: bool, methods: str | None, out: str, overhead_rounds: int) -> None:
    """Check the estimates: against cpu tensors here, against the GPU allocator with --gpu.

    Without --gpu: the smoke suite's BERT runs in estimate and cpu mode must agree within 0.1%.
    With --gpu: those runs and the paper's Table 5 BERT runs are measured in cuda mode, each with its
    fake-tensor estimate; the goal is a ratio within 3%. Then the cuda trackers' overhead on the step
    time of Table 5's BERT UniPT run (goal: at most 1%). Exits 1 when a run or the overhead misses its goal.
    """
    from .results import ResultStore
    from .selfcheck import run_selfcheck

    if gpu:
        resolve_mode("cuda")  # a clear error without a GPU
    store = ResultStore(out)
    rows, tolerance = run_selfcheck(gpu, methods, store, lambda specs: run_with_progress(specs, store))
    extra = f" {'cuBLAS ws':>10} {'w/o ws':>7}" if gpu else ""
    click.echo(f"{'run':<36} {'estimate':>12} {'measured':>12} {'ratio':>7}{extra}  verdict")
    for row in rows:
        ratio = "-" if row.ratio is None else f"{row.ratio:.4f}"
        verdict = "ok" if row.within(tolerance) else (row.status if row.status != "ok" else "MISS")
        if gpu:
            without = row.ratio_without_workspace
            extra = f" {human_bytes(row.workspace):>10} {'-' if without is None else f'{without:.4f}':>7}"
        click.echo(f"{row.key:<36} {human_bytes(row.estimate):>12} {human_bytes(row.measured):>12} {ratio:>7}{extra}"
                   f"  {verdict}")
    misses = [r for r in rows if not r.within(tolerance)]
    against = "max_memory_allocated" if gpu else "cpu tensors"
    click.echo(f"{len(rows) - len(misses)} of {len(rows)} within {tolerance:.1%} of {against}")
    overhead_ok = True
    if gpu and overhead_rounds:
        overhead_ok = report_overhead(overhead_rounds)
    elif not gpu:
        click.echo("GPU calibration: not run (add --gpu on a machine with a CUDA GPU)")
    if misses or not overhead_ok:
        sys.exit(1)


def report_overhead(rounds: int) -> bool:
    """Print the cuda trackers' overhead on one paper-scale run's step time and its verdict; True when within goal."""
    from .overhead import GOAL_PERCENT, measure_overhead
    from .selfcheck import overhead_spec

    spec = overhead_spec()
    click.echo(f"tracking overhead on {spec.suite}/{spec.config}/{spec.label} (cuda allocator peaks per phase + NVML "
               f"sampler), {rounds} interleaved rounds ...")
    result = measure_overhead(spec, rounds)
    verdict = "ok" if result.within_goal else "MISS"
    click.echo(f"step time median: untracked {result.untracked_median * 1e3:.2f} ms, tracked "
               f"{result.tracked_median * 1e3:.2f} ms: overhead {result.percent:+.2f}% (goal: at most "
               f"{GOAL_PERCENT:g}%)  {verdict}")
    return result.within_goal


@cli.command()
@click.option("--suite", required=True, help="Suite name (as stored) or suite file.")
@click.option("--results", "results_dir", default=DEFAULT_OUT, show_default=True, type=click.Path(file_okay=False),
              help="Result store folder.")
@click.option("--out", "out_file", default=None, type=click.Path(dir_okay=False),
              help="HTML file to write (default: reports/<suite>.html).")
def report(suite: str, results_dir: str, out_file: str | None) -> None:
    """Render one self-contained HTML report of a suite's stored results."""
    from .atomic import check_writable_file, write_atomic
    from .report.render import render_report, suite_description
    from .results import ResultStore

    name = suite_name(suite)
    path = Path(out_file or f"reports/{name}.html")
    check_writable_file(path, "--out")
    store = ResultStore(results_dir)
    found = list(store.latest(name).values())
    if not found:
        raise UserError(f"no results for suite {name!r} in {results_dir}{skipped_note(store)}; "
                        f"run: unipt-bench run --suite {suite}")
    warn_skipped(store)
    write_atomic(path, render_report(name, found, results_dir, suite_description(found)))
    click.echo(f"wrote {path} ({len(found)} results)")


@cli.command()
@click.option("--results", "results_dir", default=DEFAULT_OUT, show_default=True, type=click.Path(file_okay=False),
              help="Result store folder.")
@click.option("--out-dir", default="reports", show_default=True, type=click.Path(file_okay=False),
              help="Folder for index.html and every suite's report.")
def leaderboard(results_dir: str, out_dir: str) -> None:
    """Render an index page across every suite in the store, linking each suite's report (also rendered)."""
    from .atomic import check_writable_dir, write_atomic
    from .report.render import render_leaderboard, render_report, suite_description
    from .results import ResultStore

    check_writable_dir(out_dir, "--out-dir")
    store = ResultStore(results_dir)
    suites = store.suites()
    if not suites:
        raise UserError(f"no results in {results_dir}; run a suite first: unipt-bench run --suite quickstart")
    rows = []
    for name in suites:
        found = sorted(store.latest(name).values(), key=lambda r: r.display_order)
        if not found:
            continue
        write_atomic(Path(out_dir) / f"{name}.html", render_report(name, found, results_dir, suite_description(found)))
        rows += [r.row() for r in found]
    warn_skipped(store)
    write_atomic(Path(out_dir) / "index.html", render_leaderboard(rows, suites, results_dir))
    click.echo(f"wrote {out_dir}/index.html and {len(suites)} suite reports")


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
    from .atomic import check_writable_dir, check_writable_file, write_atomic
    from .gate import (
        DEFAULT_METRICS,
        benchmark_json,
        compare,
        dump,
        failed,
        junit,
        load_baseline,
        make_baseline,
    )
    from .gate import markdown as gate_markdown
    from .results import ResultStore
    from .suite_file import load_suite, select_methods

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


def tracker_list(text: str) -> list[str]:
    """--trackers a,b: registered names (one-line error otherwise)."""
    from .memory.registry import check_selection

    names = [t.strip() for t in text.split(",") if t.strip()]
    check_selection(names)
    return names


def skipped_note(store: Any) -> str:
    """For a 'no results' error: the result files that were there but could not be read."""
    if not store.skipped:
        return ""
    path, reason = store.skipped[0]
    more = f" and {len(store.skipped) - 1} more" if len(store.skipped) > 1 else ""
    return f" (unreadable: {path}: {reason}{more})"


def warn_skipped(store: Any) -> None:
    """One warning line per unreadable result file; the readable ones are shown all the same."""
    for path, reason in store.skipped:
        click.echo(f"warning: skipped unreadable result file {path}: {reason}", err=True)


def suite_name(suite: str) -> str:
    """Accept a suite path as well as a name: stored results are keyed by the suite's name."""
    from .config import check_name
    from .suite_file import read_toml

    if suite.endswith(".toml"):
        data = read_toml(Path(suite))
        if "name" not in data:
            raise UserError(f"{suite}: the suite file has no name")
        return check_name(data["name"], f"{suite}: the suite")
    return check_name(suite, "--suite: the suite")


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """A GitHub-flavoured Markdown table of the main columns (sizes in human units)."""
    header = ["config", "method", "mode", "status", "batch", "trainable", "peak", "counter", "test"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        test = f"{r['metric']} {r['test_score']:.2f}" if r.get("test_score") is not None else ""
        cells = [r["config"], r["method"], r["mode"], r["status"], str(r["batch"]), human_count(r["trainable_params"]),
                 human_bytes(r["peak_bytes"]), r["counter"] or "", test]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def print_table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(show_lines=False)
    columns = ["config", "method", "mode", "status", "batch", "trainable", "method params", "head params",
               "peak", "activations", "grads", "optimizer", "step s"]
    trained = any(r["test_score"] is not None for r in rows)
    if trained:
        columns += ["test", "baseline"]
    for col in columns:
        table.add_column(col, justify="left" if col in ("config", "method", "mode", "status") else "right")
    for r in rows:
        step = r["step_seconds"]
        table.add_row(
            r["config"], r["method"], r["mode"], r["status"], f"{r['batch']}x{r['gpus']}" if r["gpus"] > 1 else str(r["batch"]),
            human_count(r["trainable_params"]), human_count(r["trainable_method_params"]),
            human_count(r["trainable_head_params"]), human_bytes(r["peak_bytes"]), human_bytes(r["activations_bytes"]),
            human_bytes(r["grads_bytes"]), human_bytes(r["optimizer_state_bytes"]),
            "-" if step is None else f"{step:.3f}",
            *([f"{r['metric']} {r['test_score']:.2f}" if r["test_score"] is not None else "-",
               f"{r['baseline_score']:.2f}" if r["baseline_score"] is not None else "-"] if trained else []),
        )
    Console(highlight=False, width=None if sys.stdout.isatty() else 200).print(table)


def main() -> None:
    """Entry point: user errors and usage errors print one line and exit 2, never a traceback."""
    try:
        cli.main(standalone_mode=False)
    except UserError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except click.ClickException as exc:  # usage errors: bad option values, unknown commands
        context = f"{exc.ctx.command_path}: " if getattr(exc, "ctx", None) else ""
        click.echo(f"error: {context}{exc.format_message()}", err=True)
        sys.exit(2)
    except click.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
