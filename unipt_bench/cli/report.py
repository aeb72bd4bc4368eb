"""`unipt-bench report`: one self-contained HTML report of a suite's stored results."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import UserError
from .app import DEFAULT_OUT, cli
from .common import skipped_note, suite_name, warn_skipped


@cli.command()
@click.option("--suite", required=True, help="Suite name (as stored) or suite file.")
@click.option("--results", "results_dir", default=DEFAULT_OUT, show_default=True, type=click.Path(file_okay=False),
              help="Result store folder.")
@click.option("--out", "out_file", default=None, type=click.Path(dir_okay=False),
              help="HTML file to write (default: reports/<suite>.html; - for stdout).")
def report(suite: str, results_dir: str, out_file: str | None) -> None:
    """Render one self-contained HTML report of a suite's stored results."""
    from ..atomic import check_writable_file, is_stream, write_atomic
    from ..claims import store_claims
    from ..report.render import render_report, suite_description
    from ..results import ResultStore

    name = suite_name(suite)
    path = Path(out_file or f"reports/{name}.html")
    check_writable_file(path, "--out")
    store = ResultStore(results_dir)
    found = list(store.latest(name).values())
    if not found:
        raise UserError(f"no results for suite {name!r} in {results_dir}{skipped_note(store)}; "
                        f"run: unipt-bench run --suite {suite}")
    warn_skipped(store)
    claims = [row for row in store_claims(store.latest) if row["suite"] == name]  # this suite's settings only
    write_atomic(path, render_report(name, found, results_dir, suite_description(found), claims=claims))
    click.echo(f"wrote {path} ({len(found)} results)", err=is_stream(path))  # stdout may hold the report
