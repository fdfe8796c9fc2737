"""The `mlenv` command line: parse arguments, call the library, print. Nothing else."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, TypeVar

import click

from hatch_mlenv import __version__
from hatch_mlenv.errors import EXIT_FAILURE, EXIT_USAGE, MlenvError

F = TypeVar("F", bound=Callable[..., Any])

project_option = click.option(
    "--project",
    "project",
    type=click.Path(file_okay=False, path_type=Path),
    default=".",
    show_default=True,
    help="Project directory holding pyproject.toml.",
)


class _Group(click.Group):
    """Turn every MlenvError into one clear line on stderr and its exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MlenvError as exc:
            _fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:  # a bug of ours: one line, the traceback only on request
            if os.environ.get("MLENV_DEBUG"):
                raise
            _fail(f"internal error: {type(exc).__name__}: {exc} (set MLENV_DEBUG=1 for the traceback)", EXIT_FAILURE)


def _fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="mlenv", message="%(prog)s %(version)s")
def main() -> None:
    """Locked, versioned ML environments from [tool.mlenv] in pyproject.toml."""


@main.command()
@project_option
@click.option("--check", is_flag=True, help="Do not solve: exit 1 with the reason if the lock is stale or missing.")
@click.option("--update", "update", multiple=True, metavar="NAME", help="Re-solve NAME, keeping other packages locked.")
@click.option("--force", is_flag=True, help="Solve even when the lock is fresh.")
def lock(project: Path, check: bool, update: tuple[str, ...], force: bool) -> None:
    """Lock the environment for every platform into conda-lock.yml."""
    from hatch_mlenv import lock as locking
    from hatch_mlenv.spec import load_spec

    spec = load_spec(project)
    name = _display(spec.lockfile)
    if check:
        if update or force:
            raise click.UsageError("--check cannot be combined with --update or --force")
        reason = locking.staleness(spec)
        if reason is not None:
            click.echo(f"{name} is stale: {reason}", err=True)
            sys.exit(EXIT_FAILURE)
        click.echo(f"{name} is fresh")
        return
    outcome = locking.lock(spec, update=update, force=force)
    digest = outcome.lock.digest()
    if outcome.status == "fresh":
        click.echo(f"{name} is fresh (spec unchanged); not solving. digest sha256:{digest[:12]}")
        return
    total = len(outcome.lock.packages)
    platforms = ", ".join(sorted(outcome.lock.platforms))
    verb = "locked" if outcome.status == "locked" else "re-solved, unchanged:"
    click.echo(f"{verb} {spec.name} for {platforms}: {total} packages -> {name}")
    click.echo(f"digest sha256:{digest}")


@main.command()
@project_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show(project: Path, as_json: bool) -> None:
    """Show the environment: name, digest, platforms, packages, image, lock status."""
    from hatch_mlenv import lock as locking
    from hatch_mlenv.environment import Environment
    from hatch_mlenv.lockfile import read_lock
    from hatch_mlenv.spec import load_spec

    spec = load_spec(project)
    if not spec.lockfile.exists():
        raise MlenvError(f"{spec.lockfile}: lockfile not found; run `mlenv lock` first")
    lock_ = read_lock(spec.lockfile)
    env = Environment(spec, lock_)
    reason = locking.staleness(spec, lock_)
    data = env.manifest() | {"lockfile": str(spec.lockfile), "fresh": reason is None, "stale_reason": reason}
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    console.print(f"[bold]{data['name']}[/bold]  {data['digest']}")
    console.print(f"image     {data['image']}")
    console.print(f"lockfile  {data['lockfile']} ({'fresh' if reason is None else 'stale: ' + reason})")
    table = Table("platform", "conda", "pip")
    for platform, counts in data["packages"].items():
        table.add_row(platform, str(counts["conda"]), str(counts["pip"]))
    console.print(table)
    if data["variables"] or data["secret_variables"]:
        names = sorted(data["variables"]) + [f"{n} (secret)" for n in data["secret_variables"]]
        console.print("variables " + ", ".join(names))


def _display(path: Path) -> str:
    """Relative to the working directory when inside it, else absolute."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


if __name__ == "__main__":  # pragma: no cover
    main(prog_name="mlenv")
