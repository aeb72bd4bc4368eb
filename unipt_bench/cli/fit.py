"""`unipt-bench fit`: each run's largest per-GPU batch under a memory budget."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..errors import UserError
from .app import cli, out_option
from .common import resolve_mode
from .format import human_bytes


@cli.command()
@click.option("--suite", required=True, help="Built-in suite name or path to a suite TOML file.")
@click.option("--budget", required=True, help="Memory per GPU, e.g. 24GiB, 80GB, 16000MiB.")
@click.option("--mode", type=click.Choice(["auto", "estimate", "cpu", "cuda"]), default="estimate", show_default=True)
@click.option("--methods", default=None, help="Comma-separated method names or labels (default: all).")
@click.option("--limit", default=4096, show_default=True, type=click.IntRange(min=1), help="Largest batch to consider.")
@out_option
def fit(suite: str, budget: str, mode: str, methods: str | None, limit: int, out: str) -> None:
    """Find each run's largest per-GPU batch under a memory budget, and its memory-vs-batch line."""
    from ..atomic import check_writable_dir, write_atomic
    from ..fit import Prober, fit_spec, parse_bytes
    from ..results import ResultStore, now
    from ..suite_file import load_suite, select_methods

    store = ResultStore(out)
    budget_bytes = parse_bytes(budget)
    if budget_bytes <= 0:
        raise UserError(f"--budget {budget!r}: must be more than 0 bytes")
    loaded = load_suite(suite)
    mode, why = resolve_mode(mode)
    specs = select_methods(loaded.with_mode(mode), methods)
    check_writable_dir(Path(out) / "_fits", "--out")
    click.echo(f"{loaded.name}: largest batch per GPU under {human_bytes(budget_bytes)}, {why}")
    probe = Prober()
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
        probe.close()
    click.echo(f"fits in {out}/_fits/{loaded.name}/")
