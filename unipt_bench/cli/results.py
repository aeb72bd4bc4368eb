"""`unipt-bench results`: the newest result of every run of a suite, as a table, CSV, JSON or Markdown."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import UserError
from .app import cli, out_option
from .common import skipped_note, suite_name, warn_skipped
from .format import markdown_table, print_table


@cli.command()
@click.option("--suite", required=True, help="Suite name (as stored).")
@out_option
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "markdown", "peft"]), default="table",
              show_default=True, help="peft: one file per result in PEFT's method comparison layout, in --dest.")
@click.option("--dest", default="peft-results", show_default=True, help="--format peft: the folder to write.")
def results(suite: str, out: str, fmt: str, dest: str) -> None:
    """Show the newest result of every run of a suite (bytes and raw counts in csv/json)."""
    from ..results import ResultStore

    store = ResultStore(out)
    latest = store.latest(suite_name(suite))
    if not latest:
        known = store.suites()
        hint = f" (stored suites: {', '.join(known)})" if known else ""
        raise UserError(f"no results for suite {suite!r} in {out}{hint}{skipped_note(store)}; "
                        f"run: unipt-bench run --suite {suite}")
    warn_skipped(store)
    rows = [r.row() for r in sorted(latest.values(), key=lambda r: r.display_order)]
    if fmt == "peft":
        from ..peft_layout import write_peft_results

        paths = write_peft_results(sorted(latest.values(), key=lambda r: r.display_order), Path(dest))
        click.echo(f"wrote {len(paths)} result files in PEFT's method comparison layout to {dest}")
    elif fmt == "json":
        click.echo(json.dumps(rows, indent=2))
    elif fmt == "csv":
        import pandas as pd

        # nullable dtypes keep counts integral where some rows (not applicable, errors) have none
        click.echo(pd.DataFrame(rows).convert_dtypes().to_csv(index=False), nl=False)
    elif fmt == "markdown":
        click.echo(markdown_table(rows))
    else:
        print_table(rows)
