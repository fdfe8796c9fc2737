"""The `mlenv` command line: parse arguments, call the library, print. Nothing else."""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, TypeVar

import click

from hatch_mlenv import __version__, progress
from hatch_mlenv.errors import EXIT_FAILURE, EXIT_USAGE, MlenvError, UsageError
from hatch_mlenv.export import FORMATS as EXPORT_FORMATS

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
    (`hatch_mlenv.lock.lock_policy`); read by `_load`, so no command handles them itself."""
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


def _load(reference: str | None, project: Path | None, env: str | None, registry_url: str | None,
          policy: str | None = None, default_policy: str = "relock"):  # -> Environment
    """The one way a command gets its environment (see `Environment.load`), with the stale-lock
    policy its `--locked`/`--frozen` asked for, else `policy`, else the configured one, else
    `default_policy` (`report` for the commands that only describe a lock)."""
    from hatch_mlenv.environment import Environment

    if reference is not None and project is not None:
        raise click.UsageError(f"give REF ({reference}) or --project ({project}), not both")
    asked = click.get_current_context().meta.get("mlenv.lock_policy") or policy
    return Environment.load(reference if reference is not None else (project or Path(".")), env, registry=registry_url,
                            policy=asked, default_policy=default_policy)


ignore_system_option = click.option(
    "--ignore-system-requirements", "ignore_system", is_flag=True,
    help="Go on, with a warning, on a machine without the CUDA driver, glibc or macOS the lock needs.",
)


def _check_host(environment, ignore: bool, platform: str | None = None) -> None:  # noqa: ANN001
    """Refuse a machine that cannot run the lock, before any prefix is touched (or warn, with the flag)."""
    from hatch_mlenv.system import require_host

    for line in require_host(environment, platform, ignore=ignore):
        click.echo(f"mlenv: warning: ignoring system requirements: {line}", err=True)


class _Group(click.Group):
    """Turn every MlenvError into one clear line on stderr and its exit code."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        if parent is None:  # each invocation starts from the variables (MLENV_QUIET, MLENV_PROGRESS)
            progress.configure(None)
        return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MlenvError as exc:
            _fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except click.UsageError as exc:
            command = f"{ctx.command_path} {ctx.invoked_subcommand or ''}".strip()
            _fail(f"{exc.format_message()} (see `{command} --help`)", EXIT_USAGE)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except OSError as exc:  # the file system said no: name the path and what to do
            _fail(_os_error(exc), EXIT_FAILURE)
        except Exception as exc:  # a bug of ours: one line, the traceback only on request
            if os.environ.get("MLENV_DEBUG"):
                raise
            _fail(f"internal error: {type(exc).__name__}: {exc} (set MLENV_DEBUG=1 for the traceback)", EXIT_FAILURE)


_WHAT_TO_DO = {
    errno.ENOSPC: "no space left on the device; free some space and run it again",
    errno.EDQUOT: "over the disk quota; free some space and run it again",
    errno.EACCES: "permission denied; check the owner and mode of the path, or choose another one",
    errno.EPERM: "operation not permitted; check the owner and mode of the path, or choose another one",
    errno.EROFS: "read-only file system; choose a writable location",
    errno.ENOENT: "no such file or directory",
    errno.EISDIR: "is a directory where a file is expected; move it away",
    errno.ENOTDIR: "a part of the path is a file where a directory is expected",
}


def _os_error(exc: OSError) -> str:
    path = exc.filename if exc.filename is not None else "(unknown path)"
    also = f" (and {exc.filename2})" if exc.filename2 is not None else ""
    reason = _WHAT_TO_DO.get(exc.errno or 0, exc.strerror or str(exc))
    return f"{path}{also}: {reason}"


def _fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


class _Printer:
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


def _info(message: str) -> None:
    """A line on stderr about what a command did besides its result (`wrote FILE`); not with -q."""
    if progress.level() > progress.QUIET:
        click.echo(message, err=True)


def _output_level(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if not value:
        return
    asked = ctx.meta.get("mlenv.output")
    if asked is not None and asked != param.name:
        raise click.UsageError("-q/--quiet and -v/--verbose exclude each other; give one")
    ctx.meta["mlenv.output"] = param.name
    progress.configure(progress.QUIET if param.name == "quiet" else progress.VERBOSE)


def _with_output_options(command: click.Command) -> None:
    """`-q/--quiet` and `-v/--verbose` on every command and group, before or after its name."""
    command.params.append(click.Option(
        ["-q", "--quiet"], is_flag=True, expose_value=False, is_eager=True, callback=_output_level,
        help="No progress and no notes on stderr (also MLENV_QUIET=1); results, warnings and errors stay."))
    command.params.append(click.Option(
        ["-v", "--verbose"], is_flag=True, expose_value=False, is_eager=True, callback=_output_level,
        help="Progress on stderr even when it is not a terminal (also MLENV_PROGRESS=1)."))
    for sub in getattr(command, "commands", {}).values():
        _with_output_options(sub)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="mlenv", message="%(prog)s %(version)s")
def main() -> None:
    """Locked, versioned ML environments from [tool.mlenv] in pyproject.toml."""


@main.command()
@project_option
@env_option
@click.option("--check", is_flag=True, help="Do not solve: exit 1 with the reason if the lock is stale or missing.")
@click.option("--update", "update", multiple=True, metavar="NAME[,NAME...]",
              help="Re-solve NAME, keeping other packages locked (repeatable: --update a --update b, or --update a,b).")
@click.option("--force", is_flag=True, help="Solve even when the lock is fresh.")
@json_option
def lock(project: Path, env: str | None, check: bool, update: tuple[str, ...], force: bool, as_json: bool) -> None:
    """Lock the environment for every platform into conda-lock.yml."""
    from hatch_mlenv import lock as locking
    from hatch_mlenv.spec import load_spec

    update = tuple(n.strip() for item in update for n in item.split(",") if n.strip())
    spec = load_spec(project, env)
    name = _display(spec.lockfile)

    def report(status: str, digest: str | None, reason: str | None = None) -> None:
        _print_json({"name": spec.name, "lockfile": str(spec.lockfile), "status": status,
                     "digest": f"sha256:{digest}" if digest else None, "platforms": sorted(spec.platforms),
                     "reason": reason})

    if check:
        if update or force:
            raise click.UsageError("--check cannot be combined with --update or --force")
        reason = locking.staleness(spec)
        if as_json:
            report("fresh" if reason is None else "stale", None, reason)
        elif reason is not None:
            click.echo(f"{name} is stale: {reason}", err=True)
        else:
            click.echo(f"{name} is fresh")
        if reason is not None:
            sys.exit(EXIT_FAILURE)
        return
    outcome = locking.lock(spec, update=update, force=force)
    digest = outcome.digest
    if as_json:
        report(outcome.status, digest)
        return
    if outcome.status == "fresh":
        click.echo(f"{name} is fresh (spec unchanged); not solving. digest sha256:{digest[:12]}")
        return
    written = outcome.load(spec)
    total = len(written.packages)
    platforms = ", ".join(sorted(written.platforms))
    verb = "locked" if outcome.status == "locked" else "re-solved, unchanged:"
    click.echo(f"{verb} {spec.name} for {platforms}: {total} packages -> {name}")
    click.echo(f"digest sha256:{digest}")


@main.command()
@environment_arguments
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show(reference: str | None, project: Path | None, env: str | None, as_json: bool, registry_url: str | None) -> None:
    """Show the environment: name, digest, platforms, packages, image, lock status."""
    from hatch_mlenv.errors import MissingLockError
    from hatch_mlenv.registry import describe

    try:  # show says whether the lock is stale rather than relocking (`--locked` refuses a stale one)
        environment = _load(reference, project, env, registry_url, policy="frozen")
    except MissingLockError as exc:  # nothing to show yet: a failure (1), not a broken file (2)
        raise MlenvError(f"{exc.path}: lockfile not found; run `mlenv lock` first") from None
    data = describe(environment)
    reason = data["stale_reason"]
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    out = _Printer()
    out.line((data["name"], "bold"), f"  {data['digest']}")
    out.line(f"image     {data['image']}")
    if data["fresh"] is None:
        out.line(f"lockfile  stored with {data['reference']}")
    else:
        out.line(f"lockfile  {data['lockfile']} ({'fresh' if reason is None else 'stale: ' + reason})")
    if data.get("version"):
        out.line(f"version   {data['name']}:{data['version']} in {data['registry']}")
    commit = data.get("provenance", {}).get("git_commit")
    if commit:
        out.line(f"commit    {commit[:12]}{' (dirty)' if data['provenance']['git_dirty'] else ''}")
    out.table(("platform", "conda", "pip"),
              [(platform, str(counts["conda"]), str(counts["pip"])) for platform, counts in data["packages"].items()])
    if data["variables"] or data["secret_variables"]:
        names = sorted(data["variables"]) + [f"{n} (secret)" for n in data["secret_variables"]]
        out.line("variables " + ", ".join(names))
    if data["system_requirements"]:
        out.line("requires  " + ", ".join(f"{k} {v}" for k, v in data["system_requirements"].items()))
    for platform, needs in data["needs"].items():
        out.line(f"needs     {platform}: " + ", ".join(f"{n} {need['constraint']}" for n, need in needs.items()))




def _registry(url: str | None, configured: str | None = None):  # -> Registry
    """`--registry`, then $MLENV_REGISTRY, then the spec's `registry`, then `local`."""
    from hatch_mlenv.registry import open_registry, select_url

    return open_registry(select_url(url, configured))


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


@main.command()
@project_option
@env_option
@click.option("--lockfile", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Register this conda-lock.yml instead of the project's.")
@click.option("--name", help="Environment name (required with --lockfile).")
@click.option("--label", "labels", multiple=True, metavar="LABEL", help="Also point LABEL at the version (repeatable).")
@lock_options
@registry_option
@json_option
def register(project: Path, env: str | None, lockfile: Path | None, name: str | None, labels: tuple[str, ...], registry_url: str | None, as_json: bool) -> None:
    """Register the locked environment as a new version (or find its existing one)."""
    from hatch_mlenv.registry import register_environment, register_lockfile

    if lockfile is not None:
        if not name:
            raise click.UsageError("--lockfile needs --name")
        registration = register_lockfile(_registry(registry_url), lockfile, name, labels=labels)
    else:
        if name:
            raise click.UsageError("--name goes with --lockfile; the project's name is [tool.mlenv] name")
        environment = _load(None, project, env, None)
        registration = register_environment(_registry(registry_url, environment.spec.registry), environment,
                                            labels=labels)
    version = registration.version
    if as_json:
        _print_json(version.summary() | {"created": registration.created})
        return
    state = "new" if registration.created else "existing, nothing created"
    click.echo(f"{version.ref} sha256:{version.digest} ({state})")


@main.command(name="list")
@click.option("--all", "include_archived", is_flag=True, help="Include environments whose versions are all archived.")
@registry_option
@json_option
def list_(include_archived: bool, registry_url: str | None, as_json: bool) -> None:
    """List environments: name, latest version, labels."""
    summaries = _registry(registry_url).list(include_archived=include_archived)
    for s in summaries:
        _warn_dangling(s.name, s.dangling)
    if as_json:
        _print_json([s.as_dict() for s in summaries])
        return
    rows = [(s.name, str(s.latest or "-"), str(s.versions), ", ".join(f"{k}→{v}" for k, v in sorted(s.labels.items())))
            for s in summaries]
    _Printer().table(("name", "latest", "versions", "labels"), rows)


def _warn_dangling(name: str, dangling: dict[str, int]) -> None:
    for label, number in sorted(dangling.items()):
        click.echo(f"mlenv: warning: {name}@{label} points at version {number}, which is not in the registry "
                   "(the registry is damaged)", err=True)


@main.command()
@click.argument("name")
@registry_option
@json_option
def history(name: str, registry_url: str | None, as_json: bool) -> None:
    """Versions of NAME with time, git commit, digest and labels."""
    from hatch_mlenv.reference import check_name

    check_name(name)  # malformed is a usage error (2), as for every other command, not "no such environment"
    registry = _registry(registry_url)
    versions = registry.history(name)
    _warn_dangling(name, registry.dangling_labels(name))
    if as_json:
        _print_json([v.summary() for v in versions])
        return
    rows = []
    for v in versions:
        commit = (v.provenance.get("git_commit") or "-")[:10] + ("+dirty" if v.provenance.get("git_dirty") else "")
        label = ", ".join(v.labels) + (" (archived)" if v.archived else "")
        rows.append((str(v.version), str(v.provenance.get("time") or "-"), commit, v.digest[:12], label))
    _Printer().table(("version", "created (UTC)", "commit", "digest", "labels"), rows)


@main.command()
@click.argument("reference")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), help="Directory to write conda-lock.yml and mlenv.json into (default ./NAME-vVERSION).")
@registry_option
@json_option
def get(reference: str, output: Path | None, registry_url: str | None, as_json: bool) -> None:
    """Write the lockfile and manifest of NAME[:VERSION|@LABEL]."""
    from hatch_mlenv.lockfile import atomic_write
    from hatch_mlenv.reference import parse_reference

    ref = parse_reference(reference)
    version = _registry(registry_url).get(ref)
    target = output or Path(f"{version.name}-v{version.version}")
    atomic_write(target / "conda-lock.yml", version.lockfile)
    atomic_write(target / "mlenv.json", json.dumps(version.manifest_with_version(), indent=2, sort_keys=True) + "\n")
    if as_json:
        _print_json(version.summary() | {"output": str(target)})
        return
    click.echo(f"{version.ref} sha256:{version.digest} -> {_display(target.resolve())}")


@main.command()
@click.argument("reference")
@click.argument("label")
@registry_option
@json_option
def label(reference: str, label: str, registry_url: str | None, as_json: bool) -> None:
    """Point LABEL at NAME:VERSION (labels move; versions never change; `latest` moves only by registering)."""
    from hatch_mlenv.reference import check_movable_label, parse_reference

    ref = parse_reference(reference, require_version=True)
    check_movable_label(label)  # for every backend, before any registry is opened
    version = _registry(registry_url).label(ref.name, ref.version, label)
    if as_json:
        _print_json(version.summary() | {"label": label})
        return
    click.echo(f"{ref.name}@{label} -> {version.ref}")


@main.command()
@click.argument("reference")
@registry_option
@json_option
def archive(reference: str, registry_url: str | None, as_json: bool) -> None:
    """Hide NAME:VERSION from `list` (still retrievable by number)."""
    _set_archived(reference, registry_url, True, as_json)


@main.command()
@click.argument("reference")
@registry_option
@json_option
def restore(reference: str, registry_url: str | None, as_json: bool) -> None:
    """Undo `archive` for NAME:VERSION."""
    _set_archived(reference, registry_url, False, as_json)


def _set_archived(reference: str, registry_url: str | None, archived: bool, as_json: bool) -> None:
    from hatch_mlenv.reference import parse_reference

    ref = parse_reference(reference, require_version=True)
    version = _registry(registry_url).set_archived(ref.name, ref.version, archived)
    if as_json:
        _print_json(version.summary())
        return
    click.echo(f"{version.ref} {'archived' if archived else 'restored'}")


@main.command()
@click.argument("old")
@click.argument("new")
@lock_options
@registry_option
@json_option
def diff(old: str, new: str, registry_url: str | None, as_json: bool) -> None:
    """Compare two environments, each a project directory, a lockfile, NAME:VERSION or NAME@LABEL:
    packages, variables, base image and the [tool.mlenv] definition."""
    from hatch_mlenv.diff import diff_environments

    result = diff_environments(_load(old, None, None, registry_url, default_policy="report"),
                               _load(new, None, None, registry_url, default_policy="report"))
    result = {"old": old, "new": new} | result
    if as_json:
        _print_json(result)
        return
    _print_diff(result)


def _print_diff(result: dict[str, Any]) -> None:
    out = _Printer()
    if result["identical"] and not any((result["definition"] or {}).values()):
        out.line(f"{result['old']} and {result['new']} are the same environment")
        return
    rows = []
    for platform, managers in result["packages"].items():
        for manager, section in managers.items():
            for p in section["added"]:
                rows.append((platform, manager, p["name"], f"+ {p['version']} {p['build'] or ''}".rstrip()))
            for p in section["removed"]:
                rows.append((platform, manager, p["name"], f"- {p['version']} {p['build'] or ''}".rstrip()))
            for p in section["changed"]:
                old = f"{p['old']['version']} {p['old']['build'] or ''}".rstrip()
                new = f"{p['new']['version']} {p['new']['build'] or ''}".rstrip()
                rows.append((platform, manager, p["name"], f"{old} → {new}"))
    if rows:
        out.table(("platform", "manager", "package", "change"), rows)
    for kind, items in result["variables"].items():
        for key, value in items.items():
            out.line(f"variable {kind}: {key} {value}")
    for kind in ("added", "removed"):
        for platform in result["platforms"][kind]:
            out.line(f"platform {kind}: {platform}")
    if result["base_image"]:
        out.line(f"base image: {result['base_image'][0]} → {result['base_image'][1]}")
    if result["base_dockerfile"]:
        out.line("base Dockerfile: sha256 {} → {}".format(*(d[:12] if d else "none" for d in result["base_dockerfile"])))
    for kind, items in (result["definition"] or {}).items():
        for key, value in items.items():
            shown = f"{json.dumps(value[0])} → {json.dumps(value[1])}" if kind == "changed" else json.dumps(value)
            out.line(f"definition {kind}: {key} {shown}")


@main.command()
@environment_arguments
@click.option("--prefix", type=click.Path(file_okay=False, path_type=Path), help="Install here instead of .mlenv/envs/NAME.")
@click.option("--force", is_flag=True, help="Reinstall every package, even into an intact prefix.")
@click.option("--verify", is_flag=True, help="Check every file's hash (not only sizes and times) before saying up to date.")
@ignore_system_option
@json_option
def install(reference: str | None, project: Path | None, env: str | None, prefix: Path | None, force: bool, verify: bool, ignore_system: bool, as_json: bool, registry_url: str | None) -> None:
    """Install the lock for this platform into a prefix (rattler + installer); never solves."""
    from hatch_mlenv.install import install_environment

    env = _load(reference, project, env, registry_url)
    _check_host(env, ignore_system)
    result = install_environment(env, prefix, show_progress=progress.interactive(), force=force, verify=verify)
    where = _display(result.prefix)
    if as_json:
        _print_json({"name": env.name, "digest": f"sha256:{env.digest}", "prefix": str(result.prefix),
                     "status": result.status, "changed": list(result.changed)})
    elif result.status == "user-managed":
        click.echo(f"{env.name} is user-managed (managed = false): nothing to install; it uses {env.spec.interpreter}")
    elif result.status == "unchanged":
        click.echo(f"{where} is up to date with sha256:{env.digest[:12]}; nothing to do")
    elif result.status == "repaired":
        shown = "; ".join(result.changed[:5]) + ("; ..." if len(result.changed) > 5 else "")
        click.echo(f"repaired {env.name} sha256:{env.digest[:12]} in {where}: it differed from the lock ({shown})")
    else:
        changed = f" ({len(result.changed)} packages changed)" if result.status == "updated" else ""
        click.echo(f"{result.status} {env.name} sha256:{env.digest[:12]} into {where}{changed}")


class _RunCommand(click.Command):
    """`mlenv run [REF] [OPTIONS] -- COMMAND...`: when at most one argument that is not an option
    comes before the first `--`, that is the REF and what follows `--` is the command, untouched;
    otherwise every argument is the command, as without `--` (`mlenv run pytest -x -- tests/`)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--" in args:
            index = args.index("--")
            before = args[:index]
            probe = self.make_parser(ctx)
            probe.allow_interspersed_args = True
            probe.ignore_unknown_options = False
            try:
                values, rest, _order = probe.parse_args(list(before))
                command = values.get("command")
                given = [values.get("reference"), *(command if isinstance(command, (tuple, list)) else ())]
                positionals = [*rest, *(v for v in given if isinstance(v, str))]
            except click.UsageError:
                positionals = None
            if positionals is not None and len(positionals) <= 1:
                ctx.meta["mlenv.command"] = tuple(args[index + 1:])
                ctx.allow_interspersed_args = True
                return super().parse_args(ctx, before)
        return super().parse_args(ctx, args)


@main.command(cls=_RunCommand, context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@environment_arguments
@click.option("--prefix", type=click.Path(file_okay=False, path_type=Path), help="Use this prefix instead of .mlenv/envs/NAME.")
@ignore_system_option
@click.argument("command", nargs=-1, required=False, type=click.UNPROCESSED)
def run(reference: str | None, project: Path | None, env: str | None, prefix: Path | None, ignore_system: bool, command: tuple[str, ...], registry_url: str | None) -> None:
    """Run COMMAND inside the installed environment (installing it first if needed): mlenv run [REF] -- CMD ARGS..."""
    from hatch_mlenv.install import activation, install_environment, resolve_command

    after = click.get_current_context().meta.get("mlenv.command")  # set when a REF came before `--`
    if after is None:  # everything is the command
        command, reference = ((reference, *command) if reference is not None else command), None
    else:
        command = after
    if not command:
        raise click.UsageError("missing the command to run: mlenv run [REF] -- COMMAND [ARGS]...")
    try:
        env = _load(reference, project, env, registry_url)
    except MlenvError as exc:
        if reference is None or ":" in reference or "@" in reference or os.path.exists(reference):
            raise
        raise type(exc)(f"{exc} (if {reference!r} is the command, write `mlenv run -- {reference} ...`)") from None
    _check_host(env, ignore_system)
    result = install_environment(env, prefix)
    variables, missing = activation(env, result.prefix, dict(os.environ))
    executable = resolve_command(env, result.prefix, command[0], variables["PATH"])
    for name in missing:
        click.echo(f"mlenv: warning: secret variable {name} is not set in the environment", err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(executable, list(command), variables)
    except OSError as exc:
        raise MlenvError(f"cannot run {command[0]!r}: {exc.strerror or exc}") from None


@main.command()
@environment_arguments
@json_option
def doctor(reference: str | None, project: Path | None, env: str | None, as_json: bool, registry_url: str | None) -> None:
    """Can this machine run the lock? Its CUDA driver, glibc, macOS and CPU level against the lock's needs."""
    from hatch_mlenv.system import doctor as examine

    report = examine(_load(reference, project, env, registry_url, default_policy="report"))
    if as_json:
        _print_json(report)
    else:
        out = _Printer()
        out.line((report["name"], "bold"), f"  {report['digest']}  on {report['platform']}")
        host = ", ".join(f"{p['name']} {p['build'] if p['name'] == '__archspec' else p['version']}"
                         for p in report["host"])
        out.line(f"this machine  {host}")
        for variable, value in report["overrides"].items():
            out.line(f"override      {variable}={value!r}")
        if not report["platform_locked"]:
            out.line((f"the lock has no packages for {report['platform']}", "red"))
        rows = []
        for need in report["needs"]:
            by = need["by"][0] + (f" (+{len(need['by']) - 1})" if len(need["by"]) > 1 else "")
            rows.append((f"{need['name']} {need['constraint']}", by, need["host"] or "none",
                         "yes" if need["met"] else ("no", "red")))
        if rows:
            out.table(("needs", "imposed by", "this machine", "met"), rows)
        else:
            out.line("the lock needs nothing of this machine beyond its platform")
        for line in report["unmet"]:
            click.echo(f"error: {line}", err=True)
    if not report["ok"]:
        sys.exit(EXIT_FAILURE)


@main.command(name="export")
@environment_arguments
@click.option("--format", "fmt", type=click.Choice(list(EXPORT_FORMATS)), required=True)
@click.option("--platform", help="Platform to export (default: this machine's).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write to FILE instead of stdout.")
def export_(reference: str | None, project: Path | None, env: str | None, fmt: str, platform: str | None, output: Path | None, registry_url: str | None) -> None:
    """Export the lock as a pinned environment.yml, a conda explicit spec, pip requirements with hashes, or pylock.toml."""
    from hatch_mlenv.export import export
    from hatch_mlenv.lockfile import atomic_write
    from hatch_mlenv.spec import current_platform

    env = _load(reference, project, env, registry_url)
    text = export(env, platform or current_platform(), fmt)
    if output is None:
        click.echo(text, nl=False)
    else:
        atomic_write(output, text)
        _info(f"wrote {_display(output.resolve())}")


@main.command(name="import")
@project_option
@env_option
@click.argument("source", required=False, metavar="[FILE|REF]")
@click.option("--from-prefix", type=click.Path(file_okay=False, path_type=Path), help="Import an existing conda prefix.")
@registry_option
def import_(project: Path, env: str | None, source: str | None, from_prefix: Path | None, registry_url: str | None) -> None:
    """Write or merge [tool.mlenv] from an environment.yml, a requirements.txt, a conda prefix, or the
    definition of a registered version (NAME:VERSION, NAME@LABEL)."""
    import sys as _sys

    from hatch_mlenv import importing
    from hatch_mlenv.reference import parse_target

    if (source is None) == (from_prefix is None):
        raise click.UsageError("give either FILE (environment.yml or requirements.txt), a registered version "
                               "(NAME:VERSION, NAME@LABEL) or --from-prefix PATH")
    file, registered = None, None
    if source is not None and (Path(source).exists() or Path(source).suffix in (".yml", ".yaml", ".txt")):
        file = Path(source)
    elif source is not None:
        target = parse_target(source)
        registered = _load(str(target.reference), None, None, registry_url)
    pyproject, imported = importing.import_into_project(project, file=file, prefix=from_prefix, env=env,
                                                        registered=registered)
    target = f"[tool.mlenv.envs.{env}]" if env else "[tool.mlenv]"
    click.echo(
        f"imported {len(imported.conda) + bool(imported.python)} conda, {len(imported.pip)} pip packages and "
        f"{len(imported.variables)} variables from {imported.source} into {_display(pyproject)} {target}"
    )
    for line in imported.unmapped:
        click.echo(f"not mapped: {line}", err=True)
    _sys.stdout.flush()


@main.command()
@environment_arguments
@click.option("--prefix", type=click.Path(file_okay=False, path_type=Path), help="The prefix to check (default .mlenv/envs/NAME).")
@click.option("--no-files", is_flag=True, help="Compare packages only, not file contents.")
@click.option("--pack", "pack_archive", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Check that this archive is the `mlenv pack` of the lock instead (packs it again and compares).")
@json_option
def verify(reference: str | None, project: Path | None, env: str | None, prefix: Path | None, no_files: bool, pack_archive: Path | None, as_json: bool, registry_url: str | None) -> None:
    """Compare an installed prefix with the lock; exit 1 on drift with a table of differences.
    With --pack FILE: whether FILE is the pack of the lock, byte for byte."""
    from hatch_mlenv.verify import verify_environment

    environment = _load(reference, project, env, registry_url, default_policy="report")
    if pack_archive is not None:
        _verify_pack(environment, pack_archive, prefix, as_json)
        return
    with progress.step(f"verifying {environment.name} against its lock"):
        drift = verify_environment(environment, prefix, check_files=not no_files)
    target = drift.prefix
    if as_json:
        _print_json(drift.as_dict() | {"digest": f"sha256:{environment.digest}"})
    elif drift.clean:
        click.echo(f"{_display(target)} matches {environment.spec.lockfile.name} (sha256:{environment.digest[:12]})")
        for what in drift.added:  # known, not drift: the hatch environment's project
            click.echo(f"  also {what}")
    else:
        out = _Printer(stderr=True)
        out.line(f"{_display(target)} differs from {environment.spec.lockfile.name}:")
        out.table(("difference", "what"), list(drift.rows()))
    if not drift.clean:
        sys.exit(EXIT_FAILURE)


@main.command()
@environment_arguments
@click.option("--format", "fmt", type=click.Choice(["cyclonedx"]), default="cyclonedx", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write to FILE instead of stdout.")
def sbom(reference: str | None, project: Path | None, env: str | None, fmt: str, output: Path | None, registry_url: str | None) -> None:
    """A CycloneDX JSON SBOM of the lock: purls, hashes and licenses where the channel gives them."""
    from hatch_mlenv.lockfile import atomic_write
    from hatch_mlenv.sbom import cyclonedx

    environment = _load(reference, project, env, registry_url)
    text = json.dumps(cyclonedx(environment), indent=2, sort_keys=True) + "\n"
    if output is None:
        click.echo(text, nl=False)
    else:
        atomic_write(output, text)
        _info(f"wrote {_display(output.resolve())}")


@main.command()
@environment_arguments
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Archive to write (default .mlenv/packs/NAME-DIGEST12.tar.gz).")
@click.option("--prefix", type=click.Path(file_okay=False, path_type=Path), help="Installed prefix to pack.")
@ignore_system_option
def pack(reference: str | None, project: Path | None, env: str | None, output: Path | None, prefix: Path | None, ignore_system: bool, registry_url: str | None) -> None:
    """Pack the installed linux-64 environment into a relocatable .tar.gz for Spark (conda-pack)."""
    from hatch_mlenv.spark import PLATFORM
    from hatch_mlenv.spark import pack as pack_environment

    environment = _load(reference, project, env, registry_url)
    _check_host(environment, ignore_system, PLATFORM)
    with progress.step(f"packing {environment.name} with conda-pack"):
        archive = pack_environment(environment, output, prefix)
    sha256 = Path(f"{archive}.sha256").read_text().split()[0]
    click.echo(f"packed {environment.name} sha256:{environment.digest[:12]} -> {_display(archive)} (archive sha256:{sha256})")


def _verify_pack(environment, archive: Path, prefix: Path | None, as_json: bool) -> None:  # noqa: ANN001
    from hatch_mlenv.spark import PLATFORM, verify_pack

    _check_host(environment, False, PLATFORM)
    with progress.step(f"packing {environment.name} again to compare"):
        check = verify_pack(environment, archive, prefix)
    if as_json:
        _print_json(check.as_dict() | {"digest": f"sha256:{environment.digest}"})
    elif check.ok:
        how = " (the same tar, compressed by another zlib)" if check.same_content else ""
        click.echo(f"{_display(archive)} is the pack of {environment.name} sha256:{environment.digest[:12]} "
                   f"(archive sha256:{check.sha256}){how}")
    else:
        click.echo(f"error: {_display(archive)} is not the pack of {environment.name} "
                   f"sha256:{environment.digest[:12]}: its sha256 is {check.sha256}, the lock packs to "
                   f"{check.expected}", err=True)
    if not check.ok:
        sys.exit(EXIT_FAILURE)


@main.command(name="spark-conf")
@environment_arguments
@click.option("--archive", help="Where executors get the packed environment (path or URL; default the `mlenv pack` output).")
@click.option("--format", "fmt", type=click.Choice(["properties", "json", "submit"]), default="properties", show_default=True)
def spark_conf(reference: str | None, project: Path | None, env: str | None, archive: str | None, fmt: str, registry_url: str | None) -> None:
    """Spark settings that run Python work in the packed environment (spark-defaults, JSON or spark-submit args)."""
    from hatch_mlenv.spark import default_archive, render, settings

    environment = _load(reference, project, env, registry_url)
    click.echo(render(settings(environment, archive or default_archive(environment)), fmt), nl=False)


@main.command()
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@click.option("--older-than", "older_than", type=click.FloatRange(min=0), metavar="DAYS", default=None,
              help="Only remove what has not changed for DAYS days.")
@registry_option
@json_option
def gc(dry_run: bool, older_than: float | None, registry_url: str | None, as_json: bool) -> None:
    """Remove prefixes, packs and cache entries that no registered, non-archived version and no
    project lock on this machine uses; print what was freed."""
    from hatch_mlenv.gc import collect

    result = collect(_registry(registry_url), dry_run=dry_run, older_than_days=older_than)
    if as_json:
        _print_json(result.as_dict())
        return
    verb = "would remove" if dry_run else "removed"
    for path, size in result.removed:
        click.echo(f"{verb} {_display(path)} ({_size(size)})")
    click.echo(f"{'would free' if dry_run else 'freed'} {_size(result.freed)} "
               f"({len(result.removed)} removed, {result.kept} in use or recent)")


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count} B"


@main.group()
def curated() -> None:
    """Curated environments shipped with hatch-mlenv (use with extends = "curated:NAME")."""


@curated.command(name="list")
@json_option
def curated_list(as_json: bool) -> None:
    """Names and descriptions of the curated environments."""
    from hatch_mlenv import curated as catalog

    entries = [{"name": n, "description": catalog.read(n).get("description", "")} for n in catalog.names()]
    if as_json:
        _print_json(entries)
        return
    width = max(len(e["name"]) for e in entries)
    for entry in entries:
        click.echo(f"{entry['name']:<{width}}  {entry['description']}")


@curated.command(name="show")
@click.argument("name")
def curated_show(name: str) -> None:
    """Print the definition of a curated environment."""
    from hatch_mlenv import curated as catalog

    if name not in catalog.names():
        from hatch_mlenv.errors import did_you_mean

        raise UsageError(f"unknown curated environment {name!r}{did_you_mean(name, catalog.names(), known=True)}")
    click.echo(f"# extends = \"curated:{name}\"")
    click.echo(catalog.path(name).read_text(), nl=False)


@main.group()
def image() -> None:
    """Docker images of the locked environment: tag, context, build, push."""


def _registered_version(env, registry_url: str | None) -> int | None:  # noqa: ANN001
    """The registered version of this lock (for the `v<N>` tag): known for a version loaded by
    reference, else looked up in the selected registry."""
    if env.version is not None:
        return env.version
    return _registry(registry_url, env.spec.registry).find_digest(env.name, env.digest)


@image.command(name="tag")
@environment_arguments
@json_option
def image_tag(reference: str | None, project: Path | None, env: str | None, as_json: bool, registry_url: str | None) -> None:
    """Print the image reference (and the v<N> tag of a registered version)."""
    from hatch_mlenv.image import plan_for

    env = _load(reference, project, env, registry_url)
    plan = plan_for(env, _registered_version(env, registry_url))
    if as_json:
        _print_json({"reference": plan.reference, "repository": plan.repository, "tags": plan.tags})
        return
    for tag in plan.tags:
        click.echo(f"{plan.repository}:{tag}")


@image.command(name="context")
@environment_arguments
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), default=Path("mlenv-image"),
              show_default=True, help="Directory for the build context (must not exist or be empty).")
@click.option("--strategy", type=click.Choice(["host", "dockerfile"]), default="host", show_default=True)
def image_context(reference: str | None, project: Path | None, env: str | None, output: Path, strategy: str, registry_url: str | None) -> None:
    """Write a Docker build context: `host` (installed prefix + Dockerfile) or `dockerfile` (micromamba)."""
    from hatch_mlenv.image import preflight, write_context

    env = _load(reference, project, env, registry_url)
    preflight(env, strategy=strategy)  # before the registry is asked for the version
    plan = write_context(env, output, strategy=strategy, version=_registered_version(env, registry_url))
    click.echo(f"{_display(output.resolve())}: {strategy} context for {plan.reference}")


@image.command(name="build")
@environment_arguments
@click.option("--push", "also_push", is_flag=True, help="Also push to [tool.mlenv.docker] registry.")
@click.option("--builder", type=click.Choice(["docker", "oci"]), default="docker", show_default=True,
              help="docker: the host strategy in a Docker engine; oci: assembled without a daemon, reproducible.")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="oci builder: write an OCI image layout directory (or a tar: PATH.tar).")
@click.option("--load", is_flag=True, help="oci builder: load the image into the Docker engine.")
@json_option
def image_build(reference: str | None, project: Path | None, env: str | None, also_push: bool, builder: str,
                output: Path | None, load: bool, as_json: bool, registry_url: str | None) -> None:
    """Build the image (host strategy), or reuse it when its tag exists; prints the reference and built/reused."""
    from hatch_mlenv import image as images

    env = _load(reference, project, env, registry_url)
    images.preflight(env, builder="oci" if builder == "oci" or output is not None or load else "docker")
    version = _registered_version(env, registry_url)  # after the checks: the registry is the first contact
    echo = _step_echo()
    if builder == "oci" or output is not None or load:
        from hatch_mlenv.oci_image import build_oci

        built = build_oci(env, builder=builder, output=output, push=also_push, load=load, version=version, echo=echo)
        if as_json:
            _print_json({"builder": "oci", "reference": built.reference, "status": built.status,
                         "digest": built.digest, "lines": built.lines})
            return
        click.echo("\n".join(built.lines))
        return
    if also_push:  # a missing registry setting is found before anything is built
        images.require_registry(images.plan_for(env, version).repository)
    result = images.build(env, version=version, echo=echo)
    if not as_json:
        click.echo(f"{result.reference} {result.status}")
    pushed = images.push(env, version=version, echo=echo)[1] if also_push else None
    if as_json:
        _print_json({"builder": "docker", "reference": result.reference, "status": result.status,
                     "image_id": result.image_id, "tags": list(result.tags), "push": pushed})
    elif pushed is not None:
        click.echo(f"{result.reference} {pushed}")


@image.command(name="push")
@environment_arguments
def image_push(reference: str | None, project: Path | None, env: str | None, registry_url: str | None) -> None:
    """Push the image to its registry (building it first if needed); reused when the registry has it."""
    from hatch_mlenv import image as images

    env = _load(reference, project, env, registry_url)
    images.preflight(env)
    reference, status = images.push(env, version=_registered_version(env, registry_url), echo=_step_echo())
    click.echo(f"{reference} {status}")


def _step_echo() -> Callable[[str], None]:
    """Build output, streamed to stderr (stdout keeps the one-line result) where progress is shown
    (a terminal, or -v); a failing build's error carries its step and output anyway."""
    if not progress.interactive():
        return progress.echo
    out = _Printer(stderr=True)

    def echo(line: str) -> None:
        out.line((line, "bold" if line.startswith("Step ") else "dim"))

    return echo


def _display(path: Path) -> str:
    """Relative to the working directory when inside it, else absolute."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


@main.command(name="ray-env")
@click.argument("reference", metavar="REF")
@registry_option
def ray_env(reference: str, registry_url: str | None) -> None:
    """Print the Ray runtime_env JSON that runs work in a registered version (NAME, NAME:VERSION, NAME@LABEL),
    pinned here to NAME:VERSION and its digest: ray job submit --runtime-env-json "$(mlenv ray-env REF)"."""
    from hatch_mlenv.ray import field_json

    click.echo(field_json(reference, registry_url))


def _lock_as_it_is(reference: str | None, project: Path | None, env: str | None, registry_url: str | None):  # noqa: ANN202
    """The environment with its lock as it is, for commands that only read it (tree, why): a
    project's stale lock is not relocked but named in a note (`--locked` refuses it)."""
    environment = _load(reference, project, env, registry_url, policy="frozen")
    if not environment.is_registered:
        from hatch_mlenv.lock import staleness

        reason = staleness(environment.spec, environment.lock)
        if reason is not None:
            progress.note(f"{environment.spec.lockfile.name} is stale ({reason}); showing it as it is")
    return environment


platform_option = click.option("--platform", metavar="PLATFORM", default=None,
                               help="The lock's platform to read (default: this machine's, else the only one).")


@main.command()
@environment_arguments
@platform_option
@click.option("--depth", type=click.IntRange(min=0), default=None, metavar="N", help="Show N levels below the roots.")
@click.option("--invert", metavar="PKG", default=None,
              help="Show what depends on PKG (NAME, conda:NAME or pip:NAME), up to what the definition asked for.")
@json_option
def tree(reference: str | None, project: Path | None, env: str | None, platform: str | None, depth: int | None,
         invert: str | None, as_json: bool, registry_url: str | None) -> None:
    """The lock's dependency tree, conda and pip packages alike, from what the definition asked for
    (without one: the packages nothing depends on) down to every package; `(*)`: expanded above.
    Read from the lock alone: no solve, no network."""
    from hatch_mlenv.graph import tree_lines, tree_report

    report = tree_report(_lock_as_it_is(reference, project, env, registry_url), platform, depth=depth, invert=invert)
    if as_json:
        _print_json(report)
        return
    for line in tree_lines(report["roots"], "dependents" if invert else "dependencies"):
        click.echo(line)
    if report["unmatched"]:
        progress.note(f"asked for but not locked for {report['platform']}: {', '.join(report['unmatched'])}")


@main.command()
@click.argument("package", metavar="PKG")
@environment_arguments
@platform_option
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True,
              help="List at most N paths, the shortest found.")
@json_option
def why(package: str, reference: str | None, project: Path | None, env: str | None, platform: str | None,
        limit: int, as_json: bool, registry_url: str | None) -> None:
    """Why PKG (NAME, conda:NAME or pip:NAME) is in the lock: every path from what the definition
    asked for down to it. Read from the lock alone: no solve, no network."""
    from hatch_mlenv.graph import why_lines, why_report

    report = why_report(_lock_as_it_is(reference, project, env, registry_url), package, platform, limit=limit)
    if as_json:
        _print_json(report)
        return
    for line in why_lines(report):
        click.echo(line)


@main.command()
@registry_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; one that is not loopback is reachable from other machines (a warning says so).")
@click.option("--port", type=click.IntRange(0, 65535), default=8077, show_default=True, help="Port; 0 picks a free one.")
def serve(registry_url: str | None, host: str, port: int) -> None:
    """A read-only web page over the registry: environments, versions, definitions, packages,
    dependency graphs, diffs and downloads, each with its JSON under /api/. Writes nothing."""
    from hatch_mlenv.registry import select_url
    from hatch_mlenv.web.app import serve as serve_registry

    serve_registry(select_url(registry_url), host, port, say=click.echo,
                   warn=lambda line: click.echo(f"mlenv: warning: {line}", err=True))


_with_output_options(main)


if __name__ == "__main__":  # pragma: no cover
    main(prog_name="mlenv")
