"""`unipt-bench leaderboard`: an index page over every suite in the store, and each suite's report."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import UserError
from .app import DEFAULT_OUT, cli
from .common import warn_skipped


@cli.command()
@click.option("--results", "results_dir", default=DEFAULT_OUT, show_default=True, type=click.Path(file_okay=False),
              help="Result store folder.")
@click.option("--out-dir", default="reports", show_default=True, type=click.Path(file_okay=False),
              help="Folder for index.html and every suite's report.")
def leaderboard(results_dir: str, out_dir: str) -> None:
    """Render an index page across every suite in the store, linking each suite's report (also rendered)."""
    from ..atomic import check_writable_dir, write_atomic
    from ..claims import store_claims
    from ..report.leaderboard import leaderboard_rows
    from ..report.render import render_leaderboard, render_report, suite_description
    from ..results import ResultStore

    check_writable_dir(out_dir, "--out-dir")
    store = ResultStore(results_dir)
    suites = store.suites()
    if not suites:
        raise UserError(f"no results in {results_dir}; run a suite first: unipt-bench run --suite quickstart")
    claims = store_claims(store.latest)
    rows = []
    for name in suites:
        found = sorted(list(store.latest(name).values()), key=lambda r: r.display_order)
        if not found:
            continue
        mine = [row for row in claims if row["suite"] == name]
        write_atomic(Path(out_dir) / f"{name}.html",
                     render_report(name, found, results_dir, suite_description(found), claims=mine))
        rows += leaderboard_rows(found)
    warn_skipped(store)
    write_atomic(Path(out_dir) / "index.html", render_leaderboard(rows, suites, results_dir, claims))
    click.echo(f"wrote {out_dir}/index.html and {len(suites)} suite reports")
