"""The command group and the entry point: user errors print one line and exit 2, never a traceback."""

from __future__ import annotations

import os
import sys

import click

from ..errors import UserError

DEFAULT_OUT = os.environ.get("UNIPT_BENCH_RESULTS", "results")


out_option = click.option(
    "--out", "out", default=DEFAULT_OUT, show_default=True, type=click.Path(file_okay=False),
    help="Result store folder (env UNIPT_BENCH_RESULTS).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="unipt-bench")
def cli() -> None:
    """Memory-profiling benchmarks for parameter-efficient transfer learning (UniPT, LST, Adapter, LoRA, ...)."""


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
