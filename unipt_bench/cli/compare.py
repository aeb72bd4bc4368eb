"""`unipt-bench compare`: which PETL methods fit your model, task shape and GPU, and at what batch."""

from __future__ import annotations

import click

from ..errors import UserError
from .app import DEFAULT_OUT, cli
from .common import memory_option_flags


def list_gpus(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """--gpu list prints the table and stops."""
    if value is not None and value.strip().lower() == "list":
        from ..gpus import gpu_lines

        for line in gpu_lines():
            click.echo(line)
        ctx.exit(0)
    return value


@cli.command()
@click.option("--model", required=True,
              help="Your model: hf:<hub id or folder>, timm:<name> or a registered backbone; two towers as "
                   "text=...,image=...")
@click.option("--task", required=True,
              type=click.Choice(["retrieval", "vqa", "video-retrieval", "grounding", "classification"]))
@click.option("--batch", required=True, type=click.IntRange(min=1), help="Per-GPU batch.")
@click.option("--seq-len", type=click.IntRange(min=1), default=None, help="Tokens per text sample.")
@click.option("--image-size", type=click.IntRange(min=1), default=None, help="Image side in pixels.")
@click.option("--frames", type=click.IntRange(min=1), default=None, help="Frames per video clip.")
@click.option("--budget", default=None, help="Memory per GPU, e.g. 24GiB (or give --gpu).")
@click.option("--gpu", default=None, callback=list_gpus, is_eager=True,
              help="A GPU by name, its memory the budget (--gpu list shows the table).")
@click.option("--methods", default=None, help="Comma-separated methods (default: every registered one; full "
                                               "fine-tuning always runs, as the reference).")
@click.option("--mode", type=click.Choice(["estimate", "cuda"]), default="estimate", show_default=True,
              help="How the asked shape and the largest batch are measured (per-unit figures are estimates).")
@memory_option_flags("for every method")
@click.option("--jobs", type=click.IntRange(min=1), default=None,
              help="Methods analysed at once (default: every core in estimate mode, 1 in cuda mode).")
@click.option("--limit", type=click.IntRange(min=1), default=4096, show_default=True,
              help="Largest batch considered.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.option("--report", type=click.Path(dir_okay=False), default=None, help="Also write an HTML page here.")
@click.option("--save-suite", type=click.Path(dir_okay=False), default=None,
              help="Write the suite that reproduces the comparison (run it with `run --suite`).")
@click.option("--store", default=DEFAULT_OUT, show_default=True, type=click.Path(file_okay=False),
              help="Result store read for measured accuracy (env UNIPT_BENCH_RESULTS).")
def compare(model: str, task: str, batch: int, seq_len: int | None, image_size: int | None, frames: int | None,
            budget: str | None, gpu: str | None, methods: str | None, mode: str, checkpointing: str | None,
            approx_bp: str | None, layernorm: str | None, jobs: int | None, limit: int, fmt: str,
            report: str | None, save_suite: str | None, store: str) -> None:
    """Compare every applicable PETL method on your model: trainable parameters, peak memory by category,
    whether it fits the budget, the largest batch that does, bytes per extra sample and token, and the length
    at which its peak reaches full fine-tuning's."""
    import os
    from pathlib import Path

    from ..atomic import write_atomic
    from ..comparison import comparison_of, request_of
    from ..comparison.curve_builds import start_curve_builders
    from ..comparison.table import print_comparison, to_csv, to_json
    from .format import human_bytes

    if mode == "estimate":
        start_curve_builders()  # they import torch while this process checks the request

    memory = {"checkpointing": checkpointing, "approx_bp": approx_bp, "layernorm": layernorm}
    request = request_of(model, task, batch, seq_len, image_size, frames, budget, gpu, methods, mode, memory)
    for path, flag in ((report, "--report"), (save_suite, "--save-suite")):
        if path is not None and (Path(path).is_dir() or not Path(path).resolve().parent.is_dir()):
            raise UserError(f"{flag} {path}: its folder does not exist")
        if path is not None and not os.access(Path(path).resolve().parent, os.W_OK):
            raise UserError(f"{flag} {path}: its folder is not writable")
    total = len(request.methods)
    counter = {"done": 0}

    def started(spec) -> None:
        click.echo(f"  {spec.label}: tracing ...", err=True)

    def done(spec, row) -> None:
        counter["done"] += 1
        values = row.values
        what = (f"peak {human_bytes(values.get('peak_bytes'))}, max batch {values.get('max_batch') or '-'}"
                if values.get("status") == "ok" else values.get("status", "").replace("_", " "))
        click.echo(f"  [{counter['done']}/{total}] {spec.label}: {what} ({values.get('traces', 0)} traces, "
                   f"{values.get('seconds', 0):.1f} s)", err=True)

    click.echo(f"compare: {total} methods on {model}, {task}, {mode} mode", err=True)
    comparison = comparison_of(request, jobs=jobs, store=store, limit=limit, on_start=started, on_done=done)
    if fmt == "table":
        print_comparison(comparison)
    else:
        click.echo(to_csv(comparison) if fmt == "csv" else to_json(comparison), nl=fmt == "json")
    if save_suite:
        write_atomic(Path(save_suite), comparison.suite)
        click.echo(f"suite: {save_suite} (unipt-bench run --suite {save_suite})", err=True)
    if report:
        from ..comparison.page import render_page

        write_atomic(Path(report), render_page(comparison))
        click.echo(f"report: {report}", err=True)
