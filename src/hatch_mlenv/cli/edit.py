"""Commands that change the definition as a user would by hand: init, add, remove."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, TypeVar

import click

import hatch_mlenv.edit as editing
from hatch_mlenv.cli._common import display, env_option, json_option, print_json, project_option
from hatch_mlenv.cli.lock import print_outcome

F = TypeVar("F", bound=Callable[..., Any])


def edit_options(command: F) -> F:
    """What `add` and `remove` both take: the project, the environment, --no-lock and --json."""
    for option in reversed((project_option, env_option, click.option(
            "--no-lock", "no_lock", is_flag=True,
            help="Only edit pyproject.toml (still checked to be a valid definition); do not lock."), json_option)):
        command = option(command)
    return command


@click.command()
@project_option
@click.option("--channel", "channels", multiple=True, metavar="CHANNEL",
              help=f"A conda channel (repeatable; default: {', '.join(editing.DEFAULT_CHANNELS)}).")
@click.option("--platform", "platforms", multiple=True, metavar="PLATFORM",
              help="A platform to lock for (repeatable; default: this machine's).")
@click.option("--python", metavar="VERSION", default=None, help="The python version, e.g. 3.11.")
@click.option("--from", "source", metavar="FILE|curated:NAME", default=None,
              help="Start from an environment.yml, a requirements.txt or a curated environment.")
def init(project: Path, channels: tuple[str, ...], platforms: tuple[str, ...], python: str | None,
         source: str | None) -> None:
    """Write [tool.mlenv] into pyproject.toml (a minimal one is created if there is none); the rest
    of the file is kept byte for byte."""
    pyproject, origin, unmapped = editing.init(project, channels=channels, platforms=platforms, python=python,
                                               source=source)
    click.echo(f"wrote [tool.mlenv] into {display(pyproject)} (from {origin}); next: `mlenv add PKG`")
    for line in unmapped:
        click.echo(f"not mapped: {line}", err=True)


def _print_edit(edit: editing.Edit, verb: str, as_json: bool) -> None:
    if as_json:
        outcome = edit.outcome
        print_json({"pyproject": str(edit.pyproject), "key": edit.key, verb: list(edit.changed),
                    "lock": None if outcome is None else
                    {"status": outcome.status, "digest": f"sha256:{outcome.digest}", "lockfile": str(edit.spec.lockfile)}})
        return
    click.echo(f"{verb} {', '.join(edit.changed)} {'to' if verb == 'added' else 'from'} {edit.key} "
               f"in {display(edit.pyproject)}")
    if edit.outcome is not None:
        print_outcome(edit.spec, edit.outcome)


@click.command()
@click.argument("specs", nargs=-1, required=True, metavar="SPEC...")
@click.option("--pip", is_flag=True, help="Add to the pip list (default: conda).")
@click.option("--platform", metavar="PLATFORM", default=None,
              help="Only for this platform: [tool.mlenv.target.PLATFORM] (one of the environment's platforms).")
@edit_options
def add(specs: tuple[str, ...], pip: bool, platform: str | None, project: Path, env: str | None, no_lock: bool,
        as_json: bool) -> None:
    """Add packages to the definition (a package already listed gets the new spec), then lock;
    if the result cannot be locked, pyproject.toml and the lock stay as they were."""
    _print_edit(editing.add(project, specs, pip=pip, env=env, platform=platform, lock=not no_lock), "added",
                as_json)


@click.command()
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
@click.option("--pip/--conda", "pip", default=None, help="Only from the pip list / only from the conda list "
              "(default: both).")
@click.option("--platform", metavar="PLATFORM", default=None,
              help="Only from [tool.mlenv.target.PLATFORM] (default: from the common lists and every target).")
@edit_options
def remove(names: tuple[str, ...], pip: bool | None, platform: str | None, project: Path, env: str | None,
           no_lock: bool, as_json: bool) -> None:
    """Remove packages from the definition by name, then lock."""
    _print_edit(editing.remove(project, names, pip=pip, env=env, platform=platform, lock=not no_lock), "removed",
                as_json)
