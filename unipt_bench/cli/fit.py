"""`unipt-bench fit`: each run's largest per-GPU batch under a memory budget."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..errors import UserError
from ..launchers import LaunchSettings
from .app import cli, out_option
from .common import resolve_mode
from .format import human_bytes
from .launcher_options import jobs_option, launcher_options


@cli.command()
@click.option("--suite", required=True, help="Built-in suite name or path to a suite TOML file.")
@click.option("--budget", required=True, help="Memory per GPU, e.g. 24GiB, 80GB, 16000MiB.")
@click.option("--mode", type=click.Choice(["auto", "estimate", "cpu", "cuda"]), default="estimate", show_default=True)
@click.option("--methods", default=None, help="Comma-separated method names or labels (default: all).")
@click.option("--limit", default=4096, show_default=True, type=click.IntRange(min=1), help="Largest batch to consider.")
@out_option
@jobs_option
@launcher_options
def fit(suite: str, budget: str, mode: str, methods: str | None, limit: int, out: str, jobs: int | None,
        launch: LaunchSettings) -> None:
    """Find each run's largest per-GPU batch under a memory budget, and its memory-vs-batch line.

    Estimates answer from a memory curve (five traces per run at most, see docs/curves.md); cpu and cuda
    runs search with one run per probe."""
    from ..atomic import check_writable_dir, write_atomic
    from ..fit import Prober, fit_in_worker, fit_outcome, parse_bytes
    from ..launchers import Events, Work, get
    from ..results import ResultStore
    from ..suite_file import load_suite, select_methods

    launch.jobs = jobs
    launcher = get(launch)  # launcher options, its extra and its cluster checked before anything loads
    store = ResultStore(out)
    budget_bytes = parse_bytes(budget)
    if budget_bytes <= 0:
        raise UserError(f"--budget {budget!r}: must be more than 0 bytes")
    loaded = load_suite(suite)
    mode, why = resolve_mode(mode)
    specs = select_methods(loaded.with_mode(mode), methods)
    check_writable_dir(Path(out) / "_fits", "--out")
    click.echo(f"{loaded.name}: largest batch per GPU under {human_bytes(budget_bytes)}, {why}")
    if where := launcher.describe(launch, specs):
        click.echo(f"  {where}")

    def done(spec, record: dict) -> None:
        name = spec.config + "/" + spec.label
        if "error" in record:
            click.echo(f"  {name:<24} {record['error']}")
            return
        fixed, per_sample, best = record["line"]["fixed_bytes"], record["line"]["bytes_per_sample"], record["max_batch"]
        line = (f"{human_bytes(fixed)} + {human_bytes(round(per_sample))}/sample"
                if per_sample else "no line (peak did not grow with the batch)")
        best = f">={limit} (the --limit)" if best == limit else str(best or "none")
        how = f"{len(record['probes'])} probes"
        if "curve" in record:  # an estimate: traces made for the curve, its checks and any search
            how = f"{'memory curve' if record['method'] == 'curve' else 'search'}, {len(record['curve']['traces'])} traces"
        click.echo(f"  {name:<24} max batch {best:>6}  {line}  ({how})")
        if record.get("why_search"):
            click.echo(f"  {'':<24} searched: {record['why_search']}")
        write_atomic(store.fit_path(spec), json.dumps(record, indent=2, sort_keys=True))

    work = Work(kind="fit", local=lambda lane, spec: fit_outcome(spec, budget_bytes, limit, Prober(lane)),
                remote=lambda spec: (fit_in_worker, (spec.to_dict(), budget_bytes, limit)),
                tag=lambda spec: f"{spec.digest()}:{budget_bytes}:{limit}")
    events = Events(on_start=lambda spec: None, on_done=done,
                    lost=lambda spec, status, message: {"error": f"{status}: {message}"})
    try:
        pending = launcher.launch(work, specs, store, launch, events)
    except KeyboardInterrupt:
        click.echo("interrupted: fits finished so far are kept", err=True)
        sys.exit(130)
    for line in pending:
        click.echo(f"  pending: {line}")
    click.echo(f"fits in {out}/_fits/{loaded.name}/")
