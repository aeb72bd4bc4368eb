"""`unipt-bench claims`: published memory claims against what this benchmark measures in their settings."""

from __future__ import annotations

from pathlib import Path

import click

from .app import cli


@cli.command()
@click.option("--claims", "folder", default=None, type=click.Path(file_okay=False),
              help="Folder of claim records (default: the built-in claims/).")
@click.option("--mode", type=click.Choice(["estimate", "cpu", "cuda"]), default="estimate", show_default=True)
@click.option("--only", default=None, help="Comma-separated claim names (record file names without .toml).")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Result store: runs already there (same spec) are reused, new ones are stored, so `report` and "
                   "`leaderboard` show the verdicts.")
def claims(folder: str | None, mode: str, only: str | None, out: str | None) -> None:
    """Run each claim's two runs and print claimed vs measured with a verdict (within 15%: reproduced)."""
    from ..claims import builtin_claims_dir, check_claims, read_claims
    from ..errors import UserError
    from ..profile import RunOptions, profile
    from ..results import PRIMARY_COUNTER, ResultStore

    records = read_claims(Path(folder) if folder else builtin_claims_dir())
    if only:
        wanted = {name.strip() for name in only.split(",") if name.strip()}
        unknown = sorted(wanted - {c.name for c in records})
        if unknown:
            raise UserError(f"--only: no claim {', '.join(unknown)} (claims: {', '.join(c.name for c in records)})")
        records = [c for c in records if c.name in wanted]

    store = None
    if out is not None:
        from ..atomic import check_writable_dir

        check_writable_dir(out, "--out")
        store = ResultStore(out)

    def measure(spec):
        what = f"{spec.suite}/{spec.config}/{spec.label} ({mode})"
        if store is None:
            click.echo(f"measuring {what} ...", err=True)
            return profile(spec, RunOptions(trackers=[]))["memory"][PRIMARY_COUNTER[mode]]
        return stored_or_measured(spec, store, lambda: click.echo(f"measuring {what} ...", err=True))

    rows = check_claims(records, mode, measure)
    for row in rows:
        measured = row["measured"]
        figure = f"{measured:.2f}" if isinstance(measured, float) else measured
        click.echo(f"{row['claim']}: {row['source']}, {row['table']}: {row['metric']} claimed {row['claimed']:.2f}, "
                   f"measured {figure}: {row['verdict']}")
        click.echo(f"    setting: {row['setting']}")
    reproduced = sum(r["verdict"] == "reproduced" for r in rows)
    click.echo(f"{reproduced} of {len(rows)} claims reproduced within 15% ({mode} mode)")


def stored_or_measured(spec, store, announce) -> dict:
    """The primary counter's figures of `spec`: from its stored result when one with the same digest is ok, else
    profiled now (like `run`: one result file) and stored. A run that is not applicable raises NotApplicable."""
    from ..errors import NotApplicable, UserError
    from ..results import RunResult
    from ..runner import execute

    done = store.latest(spec.suite).get(spec.key)
    if done is None or done.status != "ok" or done.digest != spec.digest():
        announce()
        done = RunResult(**execute(spec.to_dict(), {"trackers": []}))
        store.write(done)
    if done.status == "not_applicable":
        raise NotApplicable(done.message or "not applicable")
    if done.status != "ok":
        raise UserError(f"{spec.suite}/{spec.config}/{spec.label}: {done.status}: {done.message}")
    return done.primary_memory()
