"""`unipt-bench list`: suites, backbones, methods, tasks, trackers and every option with its range."""

from __future__ import annotations

import sys

import click

from .app import cli


@cli.command("list")
@click.argument("what", type=click.Choice(["all", "suites", "backbones", "methods", "tasks", "trackers", "options"]),
                default="all")
def list_cmd(what: str) -> None:
    """List built-in suites, backbones, methods and tasks; `options`: every option with its default and range."""
    from ..suite_file import builtin_suites, suite_description_of

    if what in ("all", "suites"):
        click.echo("suites:")
        for name, path in sorted(builtin_suites().items()):
            click.echo(f"  {name:<14} {suite_description_of(path)}")
    if what in ("all", "backbones"):
        from ..backbones import BACKBONES

        click.echo("backbones:")
        for name in BACKBONES.names():
            info = BACKBONES.get(name)
            click.echo(f"  {name:<18} {info.description}")
    if what in ("all", "methods"):
        from ..methods import METHODS

        click.echo("methods:")
        for name in METHODS.names():
            cls = METHODS.get(name)
            doc = (cls.__module__ and sys.modules[cls.__module__].__doc__ or "").strip().splitlines()[0]
            needs = [f"needs {', '.join(c.__name__ for c in cls.needs)}"] if cls.needs else []
            needs += [f"designs for {', '.join(sorted(cls.kinds))}"] if cls.kinds else []
            click.echo(f"  {name:<10} {doc}" + (f"  [{'; '.join(needs)}]" if needs else ""))
        list_peft_types(len(METHODS.names()))
    if what in ("all", "tasks"):
        from ..tasks import TASKS

        click.echo("tasks:")
        for name in TASKS.names():
            click.echo(f"  {name:<10} {(TASKS.get(name).__doc__ or '').strip().splitlines()[0]}")
    if what in ("all", "trackers"):
        from ..memory.registry import describe

        click.echo("trackers:")
        for t in describe():
            role = "primary" if t["primary"] else "optional, " + ("on" if t["default"] else "off") + " by default"
            click.echo(f"  {t['name']:<15} {t['description']}  [{', '.join(t['modes'])}; {role}]")
    if what == "options":
        from ..config import TrainSpec
        from ..configurable import describe_options
        from ..methods import METHODS
        from ..tasks import TASKS

        tables = [(f"method {n}", METHODS.get(n)) for n in METHODS.names()]
        tables += [(f"task {n} (task_options)", TASKS.get(n)) for n in TASKS.names()]
        for title, cls in [*tables, ("train (a configuration's train table)", TrainSpec)]:
            lines = describe_options(cls)
            click.echo(f"{title}:" + ("" if lines else " no options"))
            for line in lines:
                click.echo(f"  {line}")


def list_peft_types(registered: int) -> None:
    """Every tuner type of the installed PEFT, in the methods section: the `peft:<type>` methods that run (options:
    the type's PEFT config fields; targets: the backbone's low-rank targets unless target_modules is given),
    then why the others do not run."""
    import peft

    from ..methods.peft_tuners import NOT_ESTIMABLE, peft_types, type_name

    types = peft_types()
    running = [name for name, why in types.items() if not why]
    only_real = {type_name(t): why for t, why in NOT_ESTIMABLE.items()}
    for name in running:
        note = f"; cpu and cuda modes only: it {only_real[name]}" if name in only_real else ""
        click.echo(f"  {name:<14} PEFT {peft.__version__} tuner type, its config's options  [needs LoraTargets{note}]")
    for name, why in types.items():
        if why:
            click.echo(f"  {name:<14} does not run: {why}")
    click.echo(f"  ({registered + len(running)} methods run on some backbone: {registered} built in and "
               f"{len(running)} PEFT types; {len(types) - len(running)} PEFT types do not)")
