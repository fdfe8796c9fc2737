"""What every command shares: the options that name an environment, the one way a command
loads it, printing (text on a terminal, plain lines elsewhere) and turning errors into one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import click

import hatch_mlenv.progress as progress

if TYPE_CHECKING:
    from hatch_mlenv.registry import Registry

# The stages (environment, registry, system) are imported by the functions that use them: every
# command imports this module, and `mlenv lock` with nothing to do must not pay for them.

F = TypeVar("F", bound=Callable[..., Any])


project_option = click.option(
    "--project",
    "project",
    type=click.Path(file_okay=False, path_type=Path),
    default=".",
    show_default=True,
    help="Project directory holding pyproject.toml.",
)


env_option = click.option(
    "--env", "env", metavar="NAME", default=None, help="A named environment ([tool.mlenv.envs.NAME]); default: the top level."
)


registry_option = click.option(
    "--registry",
    "registry_url",
    metavar="URL",
    default=None,
    help="local (default), sqlite:///PATH or oci://HOST[:PORT]/NAMESPACE; else $MLENV_REGISTRY, else [tool.mlenv] registry.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


REFERENCE_HELP = ("REF is a project directory (default: --project, else .), a conda-lock.yml, "
                  "or NAME, NAME:VERSION or NAME@LABEL in the registry (--registry, $MLENV_REGISTRY, "
                  "the project's `registry`, else local).")


def _lock_policy_flag(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if not value:
        return
    asked = ctx.meta.get("mlenv.lock_policy")
    if asked is not None and asked != param.name:
        raise click.UsageError("--locked and --frozen exclude each other; give one")
    ctx.meta["mlenv.lock_policy"] = param.name


def lock_options(command: F) -> F:
    """`--locked` / `--frozen`: the stale-lock policy of a command that uses a project's lock
    (`hatch_mlenv.lock.lock_policy`); read by `load_environment`, so no command handles them itself."""
    command = click.option("--frozen", is_flag=True, expose_value=False, callback=_lock_policy_flag,
                           help="Use the project's lock as it is, without checking it against the spec "
                                "(also MLENV_FROZEN=1).")(command)
    return click.option("--locked", is_flag=True, expose_value=False, callback=_lock_policy_flag,
                        help="Fail when the project's lock is stale or missing instead of relocking it, "
                             "for CI (also MLENV_LOCKED=1).")(command)


def environment_arguments(command: F) -> F:
    """`[REF] [--project DIR] [--env NAME] [--registry URL] [--locked|--frozen]`: every command that
    reads an environment."""
    command.__doc__ = f"{(command.__doc__ or '').rstrip()}\n\n{REFERENCE_HELP}"
    command = click.argument("reference", required=False, metavar="[REF]")(command)
    command = click.option("--project", "project", type=click.Path(file_okay=False, path_type=Path), default=None,
                           help="Project directory holding pyproject.toml (same as REF; default .).")(command)
    command = env_option(command)
    command = lock_options(command)
    return registry_option(command)


def load_environment(reference: str | None, project: Path | None, env: str | None, registry_url: str | None,
          policy: str | None = None, default_policy: str = "relock"):  # -> Environment
    """The one way a command gets its environment (see `Environment.load`), with the stale-lock
    policy its `--locked`/`--frozen` asked for, else `policy`, else the configured one, else
    `default_policy` (`report` for the commands that only describe a lock)."""
    if reference is not None and project is not None:
        raise click.UsageError(f"give REF ({reference}) or --project ({project}), not both")
    asked = click.get_current_context().meta.get("mlenv.lock_policy") or policy
    from hatch_mlenv.environment import Environment  # lazy: see the imports above

    return Environment.load(reference if reference is not None else (project or Path(".")), env, registry=registry_url,
                            policy=asked, default_policy=default_policy)


ignore_system_option = click.option(
    "--ignore-system-requirements", "ignore_system", is_flag=True,
    help="Go on, with a warning, on a machine without the CUDA driver, glibc or macOS the lock needs.",
)


def check_host(environment, ignore: bool, platform: str | None = None) -> None:  # noqa: ANN001
    """Refuse a machine that cannot run the lock, before any prefix is touched (or warn, with the flag)."""
    from hatch_mlenv.system import require_host  # lazy: see the imports above

    for line in require_host(environment, platform, ignore=ignore):
        click.echo(f"mlenv: warning: ignoring system requirements: {line}", err=True)


class Printer:
    """What a command prints as text. Names, paths, specs and reasons come from users and locks,
    so nothing is ever read as rich markup (`[tool.mlenv]`, `tqdm[telegram]` print as they are).
    On a terminal: rich, styled (NO_COLOR honoured), lines left to the terminal to wrap, table
    cells folded, never cut. Elsewhere (a pipe, a file): plain lines, and tables as tab-separated
    rows under a header row, whole, whatever their width."""
    def __init__(self, *, stderr: bool = False) -> None:
        self.stderr = stderr
        self.console = None
        if (sys.stderr if stderr else sys.stdout).isatty():
            from rich.console import Console

            self.console = Console(stderr=stderr, highlight=False, markup=False, emoji=False, soft_wrap=True)

    def line(self, *parts: str | tuple[str, str]) -> None:
        if self.console is None:
            click.echo("".join(p if isinstance(p, str) else p[0] for p in parts), err=self.stderr)
            return
        from rich.text import Text

        self.console.print(Text.assemble(*parts))

    def table(self, headers: tuple[str, ...], rows: list[tuple[str | tuple[str, str], ...]]) -> None:
        if self.console is None:
            for row in (headers, *rows):
                click.echo("\t".join(_tsv(p if isinstance(p, str) else p[0]) for p in row), err=self.stderr)
            return
        from rich.table import Table
        from rich.text import Text

        table = Table(*headers)
        for column in table.columns:
            column.overflow = "fold"
        for row in rows:
            table.add_row(*(Text(p) if isinstance(p, str) else Text(p[0], style=p[1]) for p in row))
        self.console.print(table)


def _tsv(cell: str) -> str:
    """One field of a tab-separated row: its tabs and line breaks written as \\t and \\n."""
    return cell.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def info(message: str) -> None:
    """A line on stderr about what a command did besides its result (`wrote FILE`); not with -q."""
    if progress.level() > progress.QUIET:
        click.echo(message, err=True)


def selected_registry(url: str | None, configured: str | None = None) -> Registry:
    """`--registry`, then $MLENV_REGISTRY, then the spec's `registry`, then `local`."""
    from hatch_mlenv.registry import open_registry, select_url  # lazy: see the imports above

    return open_registry(select_url(url, configured))


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def step_echo() -> Callable[[str], None]:
    """Build output, streamed to stderr (stdout keeps the one-line result) where progress is shown
    (a terminal, or -v); a failing build's error carries its step and output anyway."""
    if not progress.interactive():
        return progress.echo
    out = Printer(stderr=True)

    def echo(line: str) -> None:
        out.line((line, "bold" if line.startswith("Step ") else "dim"))

    return echo


def display(path: Path) -> str:
    """Relative to the working directory when inside it, else absolute."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


platform_option = click.option("--platform", metavar="PLATFORM", default=None,
                               help="The lock's platform to read (default: this machine's, else the only one).")


def lock_as_it_is(reference: str | None, project: Path | None, env: str | None, registry_url: str | None):  # noqa: ANN202
    """The environment with its lock as it is, for commands that only read it (tree, why): a
    project's stale lock is not relocked but named in a note (`--locked` refuses it)."""
    environment = load_environment(reference, project, env, registry_url, policy="frozen")
    if not environment.is_registered:
        from hatch_mlenv.lock import staleness  # lazy: see the imports above

        reason = staleness(environment.spec, environment.lock)
        if reason is not None:
            progress.note(f"{environment.spec.lockfile.name} is stale ({reason}); showing it as it is")
    return environment
