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
def claims(folder: str | None, mode: str, only: str | None) -> None:
    """Run each claim's two runs and print claimed vs measured with a verdict (within 15%: reproduced)."""
    from ..claims import builtin_claims_dir, check_claims, read_claims
    from ..errors import UserError
    from ..profile import RunOptions, profile
    from ..results import PRIMARY_COUNTER

    records = read_claims(Path(folder) if folder else builtin_claims_dir())
    if only:
        wanted = {name.strip() for name in only.split(",") if name.strip()}
        unknown = sorted(wanted - {c.name for c in records})
        if unknown:
            raise UserError(f"--only: no claim {', '.join(unknown)} (claims: {', '.join(c.name for c in records)})")
        records = [c for c in records if c.name in wanted]

    def measure(spec):
        click.echo(f"measuring {spec.suite}/{spec.config}/{spec.label} ({mode}) ...", err=True)
        return profile(spec, RunOptions(trackers=[]))["memory"][PRIMARY_COUNTER[mode]]

    rows = check_claims(records, mode, measure)
    for row in rows:
        measured = row["measured"]
        figure = f"{measured:.2f}" if isinstance(measured, float) else measured
        click.echo(f"{row['claim']}: {row['source']}, {row['table']}: {row['metric']} claimed {row['claimed']:.2f}, "
                   f"measured {figure}: {row['verdict']}")
        click.echo(f"    setting: {row['setting']}")
    reproduced = sum(r["verdict"] == "reproduced" for r in rows)
    click.echo(f"{reproduced} of {len(rows)} claims reproduced within 15% ({mode} mode)")
