"""The `mlenv` command line: parse arguments, call the library, print. Nothing else."""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, TypeVar

import click

from hatch_mlenv import __version__
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


class _Group(click.Group):
    """Turn every MlenvError into one clear line on stderr and its exit code."""

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


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="mlenv", message="%(prog)s %(version)s")
def main() -> None:
    """Locked, versioned ML environments from [tool.mlenv] in pyproject.toml."""


@main.command()
@project_option
@env_option
@click.option("--check", is_flag=True, help="Do not solve: exit 1 with the reason if the lock is stale or missing.")
@click.option("--update", "update", multiple=True, metavar="NAME", help="Re-solve NAME, keeping other packages locked.")
@click.option("--force", is_flag=True, help="Solve even when the lock is fresh.")
def lock(project: Path, env: str | None, check: bool, update: tuple[str, ...], force: bool) -> None:
    """Lock the environment for every platform into conda-lock.yml."""
    from hatch_mlenv import lock as locking
    from hatch_mlenv.spec import load_spec

    spec = load_spec(project, env)
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
    digest = outcome.digest
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
@project_option
@env_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show(project: Path, env: str | None, as_json: bool) -> None:
    """Show the environment: name, digest, platforms, packages, image, lock status."""
    from hatch_mlenv.environment import Environment
    from hatch_mlenv.lockfile import read_lock
    from hatch_mlenv.registry import describe
    from hatch_mlenv.spec import load_spec

    spec = load_spec(project, env)
    if not spec.lockfile.exists():  # nothing to show yet: a failure (1), not a broken file (2)
        raise MlenvError(f"{spec.lockfile}: lockfile not found; run `mlenv lock` first")
    data = describe(Environment(spec, read_lock(spec.lockfile)))
    reason = data["stale_reason"]
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    console.print(f"[bold]{data['name']}[/bold]  {data['digest']}")
    console.print(f"image     {data['image']}")
    console.print(f"lockfile  {data['lockfile']} ({'fresh' if reason is None else 'stale: ' + reason})")
    if data.get("version"):
        console.print(f"version   {data['name']}:{data['version']} in {data['registry']}")
    commit = data["provenance"]["git_commit"]
    if commit:
        console.print(f"commit    {commit[:12]}{' (dirty)' if data['provenance']['git_dirty'] else ''}")
    table = Table("platform", "conda", "pip")
    for platform, counts in data["packages"].items():
        table.add_row(platform, str(counts["conda"]), str(counts["pip"]))
    console.print(table)
    if data["variables"] or data["secret_variables"]:
        names = sorted(data["variables"]) + [f"{n} (secret)" for n in data["secret_variables"]]
        console.print("variables " + ", ".join(names))


registry_option = click.option(
    "--registry",
    "registry_url",
    metavar="URL",
    default=None,
    help="local (default), sqlite:///PATH or oci://HOST[:PORT]/NAMESPACE; else $MLENV_REGISTRY, else [tool.mlenv] registry.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def _registry(url: str | None, configured: str | None = None):  # -> Registry
    """`--registry`, then $MLENV_REGISTRY, then the spec's `registry`, then `local`."""
    from hatch_mlenv.registry import open_registry, select_url

    return open_registry(select_url(url, configured))


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


@main.command()
@project_option
@env_option
@click.option("--lockfile", type=click.Path(dir_okay=False, path_type=Path), help="Register this conda-lock.yml instead of the project's.")
@click.option("--name", help="Environment name (required with --lockfile).")
@click.option("--label", "labels", multiple=True, metavar="LABEL", help="Also point LABEL at the version (repeatable).")
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
        environment = _environment(project, env)
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
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "latest", "versions", "labels")
    for s in summaries:
        labels = ", ".join(f"{k}→{v}" for k, v in sorted(s.labels.items()))
        table.add_row(s.name, str(s.latest or "-"), str(s.versions), labels)
    Console(highlight=False).print(table)


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
    registry = _registry(registry_url)
    versions = registry.history(name)
    _warn_dangling(name, registry.dangling_labels(name))
    if as_json:
        _print_json([v.summary() for v in versions])
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("version", "created (UTC)", "commit", "digest", "labels")
    for v in versions:
        commit = (v.provenance.get("git_commit") or "-")[:10] + ("+dirty" if v.provenance.get("git_dirty") else "")
        label = ", ".join(v.labels) + (" (archived)" if v.archived else "")
        table.add_row(str(v.version), str(v.provenance.get("time") or "-"), commit, v.digest[:12], label)
    Console(highlight=False).print(table)


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
def label(reference: str, label: str, registry_url: str | None) -> None:
    """Point LABEL at NAME:VERSION (labels move; versions never change)."""
    from hatch_mlenv.reference import parse_reference

    ref = parse_reference(reference, require_version=True)
    version = _registry(registry_url).label(ref.name, ref.version, label)
    click.echo(f"{ref.name}@{label} -> {version.ref}")


@main.command()
@click.argument("reference")
@registry_option
def archive(reference: str, registry_url: str | None) -> None:
    """Hide NAME:VERSION from `list` (still retrievable by number)."""
    _set_archived(reference, registry_url, True)


@main.command()
@click.argument("reference")
@registry_option
def restore(reference: str, registry_url: str | None) -> None:
    """Undo `archive` for NAME:VERSION."""
    _set_archived(reference, registry_url, False)


def _set_archived(reference: str, registry_url: str | None, archived: bool) -> None:
    from hatch_mlenv.reference import parse_reference

    ref = parse_reference(reference, require_version=True)
    version = _registry(registry_url).set_archived(ref.name, ref.version, archived)
    click.echo(f"{version.ref} {'archived' if archived else 'restored'}")


@main.command()
@click.argument("old")
@click.argument("new")
@registry_option
@json_option
def diff(old: str, new: str, registry_url: str | None, as_json: bool) -> None:
    """Compare two environments: NAME:VERSION, NAME@LABEL or a lockfile path on each side."""
    from hatch_mlenv.diff import diff_locks

    lazy: list[Any] = []

    def registry():  # opened only when a side is a registry reference
        if not lazy:
            lazy.append(_registry(registry_url))
        return lazy[0]

    result = diff_locks(_side(old, registry), _side(new, registry))
    result = {"old": old, "new": new} | result
    if as_json:
        _print_json(result)
        return
    _print_diff(result)


def _side(text: str, registry: Callable[[], Any]):  # -> Lock
    from hatch_mlenv.lockfile import parse_lock, read_lock
    from hatch_mlenv.reference import parse_reference

    path = Path(text)
    if path.suffix in (".yml", ".yaml") or path.is_file() or "/" in text:
        return read_lock(path)
    version = registry().get(parse_reference(text))
    return parse_lock(version.lockfile, version.ref)


def _print_diff(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    if result["identical"]:
        console.print(f"{result['old']} and {result['new']} are the same environment")
        return
    table = Table("platform", "manager", "package", "change")
    for platform, managers in result["packages"].items():
        for manager, section in managers.items():
            for p in section["added"]:
                table.add_row(platform, manager, p["name"], f"+ {p['version']} {p['build'] or ''}".rstrip())
            for p in section["removed"]:
                table.add_row(platform, manager, p["name"], f"- {p['version']} {p['build'] or ''}".rstrip())
            for p in section["changed"]:
                old = f"{p['old']['version']} {p['old']['build'] or ''}".rstrip()
                new = f"{p['new']['version']} {p['new']['build'] or ''}".rstrip()
                table.add_row(platform, manager, p["name"], f"{old} → {new}")
    if table.row_count:
        console.print(table)
    for kind, items in result["variables"].items():
        for key, value in items.items():
            console.print(f"variable {kind}: {key} {value}")
    for kind in ("added", "removed"):
        for platform in result["platforms"][kind]:
            console.print(f"platform {kind}: {platform}")
    if result["base_image"]:
        console.print(f"base image: {result['base_image'][0]} → {result['base_image'][1]}")


@main.command()
@project_option
@env_option
@click.option("--prefix", type=click.Path(file_okay=False, path_type=Path), help="Install here instead of .mlenv/envs/NAME.")
@click.option("--force", is_flag=True, help="Reinstall every package, even into an intact prefix.")
@click.option("--verify", is_flag=True, help="Check every file's hash (not only sizes and times) before saying up to date.")
def install(project: Path, env: str | None, prefix: Path | None, force: bool, verify: bool) -> None:
    """Install the lock for this platform into a prefix (rattler + installer); never solves."""
    from hatch_mlenv.install import install_environment

    env = _environment(project, env)
    result = install_environment(env, prefix, show_progress=sys.stderr.isatty(), force=force, verify=verify)
    where = _display(result.prefix)
    if result.status == "user-managed":
        click.echo(f"{env.name} is user-managed (managed = false): nothing to install; it uses {env.spec.interpreter}")
    elif result.status == "unchanged":
        click.echo(f"{where} is up to date with sha256:{env.digest[:12]}; nothing to do")
    elif result.status == "repaired":
        shown = "; ".join(result.changed[:5]) + ("; ..." if len(result.changed) > 5 else "")
        click.echo(f"repaired {env.name} sha256:{env.digest[:12]} in {where}: it differed from the lock ({shown})")
    else:
        changed = f" ({len(result.changed)} packages changed)" if result.status == "updated" else ""
        click.echo(f"{result.status} {env.name} sha256:{env.digest[:12]} into {where}{changed}")


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@project_option
@env_option
@click.option("--prefix", type=click.Path(file_okay=False, path_type=Path), help="Use this prefix instead of .mlenv/envs/NAME.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(project: Path, env: str | None, prefix: Path | None, command: tuple[str, ...]) -> None:
    """Run COMMAND inside the installed environment (installing it first if needed): mlenv run -- CMD ARGS..."""
    from hatch_mlenv.install import activation, install_environment, resolve_command

    env = _environment(project, env)
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


@main.command(name="export")
@project_option
@env_option
@click.option("--format", "fmt", type=click.Choice(list(EXPORT_FORMATS)), required=True)
@click.option("--platform", help="Platform to export (default: this machine's).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write to FILE instead of stdout.")
def export_(project: Path, env: str | None, fmt: str, platform: str | None, output: Path | None) -> None:
    """Export the lock as a pinned environment.yml, a conda explicit spec, pip requirements with hashes, or pylock.toml."""
    from hatch_mlenv.export import export
    from hatch_mlenv.lockfile import atomic_write
    from hatch_mlenv.spec import current_platform

    env = _environment(project, env)
    text = export(env.lock, env.name, platform or current_platform(), fmt)
    if output is None:
        click.echo(text, nl=False)
    else:
        atomic_write(output, text)
        click.echo(f"wrote {_display(output.resolve())}", err=True)


@main.command(name="import")
@project_option
@env_option
@click.argument("file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--from-prefix", type=click.Path(file_okay=False, path_type=Path), help="Import an existing conda prefix.")
def import_(project: Path, env: str | None, file: Path | None, from_prefix: Path | None) -> None:
    """Write or merge [tool.mlenv] from an environment.yml, a requirements.txt or a conda prefix."""
    import sys as _sys

    from hatch_mlenv import importing

    if (file is None) == (from_prefix is None):
        raise click.UsageError("give either FILE (environment.yml or requirements.txt) or --from-prefix PATH")
    pyproject, imported = importing.import_into_project(project, file=file, prefix=from_prefix, env=env)
    target = f"[tool.mlenv.envs.{env}]" if env else "[tool.mlenv]"
    click.echo(
        f"imported {len(imported.conda) + bool(imported.python)} conda, {len(imported.pip)} pip packages and "
        f"{len(imported.variables)} variables from {imported.source} into {_display(pyproject)} {target}"
    )
    for line in imported.unmapped:
        click.echo(f"not mapped: {line}", err=True)
    _sys.stdout.flush()


@main.command()
@project_option
@env_option
@click.option("--prefix", type=click.Path(file_okay=False, path_type=Path), help="The prefix to check (default .mlenv/envs/NAME).")
@click.option("--no-files", is_flag=True, help="Compare packages only, not file contents.")
@json_option
def verify(project: Path, env: str | None, prefix: Path | None, no_files: bool, as_json: bool) -> None:
    """Compare an installed prefix with the lock; exit 1 on drift with a table of differences."""
    from hatch_mlenv.install import default_prefix
    from hatch_mlenv.spec import current_platform
    from hatch_mlenv.verify import verify_prefix

    environment = _environment(project, env)
    target = (prefix or default_prefix(environment)).absolute()
    drift = verify_prefix(environment.lock, target, current_platform(), check_files=not no_files)
    if as_json:
        _print_json(drift.as_dict() | {"digest": f"sha256:{environment.digest}"})
    elif drift.clean:
        click.echo(f"{_display(target)} matches {environment.spec.lockfile.name} (sha256:{environment.digest[:12]})")
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table("difference", "what")
        for kind, what in drift.rows():
            table.add_row(kind, what)
        console = Console(highlight=False, stderr=True)
        console.print(f"{_display(target)} differs from {environment.spec.lockfile.name}:")
        console.print(table)
    if not drift.clean:
        sys.exit(EXIT_FAILURE)


@main.command()
@project_option
@env_option
@click.option("--format", "fmt", type=click.Choice(["cyclonedx"]), default="cyclonedx", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write to FILE instead of stdout.")
def sbom(project: Path, env: str | None, fmt: str, output: Path | None) -> None:
    """A CycloneDX JSON SBOM of the lock: purls, hashes and licenses where the channel gives them."""
    from hatch_mlenv.lockfile import atomic_write
    from hatch_mlenv.sbom import cyclonedx

    environment = _environment(project, env)
    text = json.dumps(cyclonedx(environment), indent=2, sort_keys=True) + "\n"
    if output is None:
        click.echo(text, nl=False)
    else:
        atomic_write(output, text)
        click.echo(f"wrote {_display(output.resolve())}", err=True)


@main.command()
@project_option
@env_option
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Archive to write (default .mlenv/packs/NAME-DIGEST12.tar.gz).")
@click.option("--prefix", type=click.Path(file_okay=False, path_type=Path), help="Installed prefix to pack.")
def pack(project: Path, env: str | None, output: Path | None, prefix: Path | None) -> None:
    """Pack the installed linux-64 environment into a relocatable .tar.gz for Spark (conda-pack)."""
    from hatch_mlenv.spark import pack as pack_environment

    environment = _environment(project, env)
    archive = pack_environment(environment, output, prefix)
    click.echo(f"packed {environment.name} sha256:{environment.digest[:12]} -> {_display(archive)}")


@main.command(name="spark-conf")
@project_option
@env_option
@click.option("--archive", help="Where executors get the packed environment (path or URL; default the `mlenv pack` output).")
@click.option("--format", "fmt", type=click.Choice(["properties", "json", "submit"]), default="properties", show_default=True)
def spark_conf(project: Path, env: str | None, archive: str | None, fmt: str) -> None:
    """Spark settings that run Python work in the packed environment (spark-defaults, JSON or spark-submit args)."""
    from hatch_mlenv.spark import default_archive, render, settings

    environment = _environment(project, env)
    click.echo(render(settings(environment, archive or default_archive(environment)), fmt), nl=False)


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


def _environment(project: Path, env: str | None):  # -> Environment
    from hatch_mlenv.environment import Environment

    return Environment.load(project, env)


def _registered_version(env, registry_url: str | None) -> int | None:  # noqa: ANN001
    """The registered version of this lock in the selected registry, if any (for the `v<N>` tag)."""
    return _registry(registry_url, env.spec.registry).find_digest(env.name, env.digest)


@image.command(name="tag")
@project_option
@env_option
@registry_option
@json_option
def image_tag(project: Path, env: str | None, registry_url: str | None, as_json: bool) -> None:
    """Print the image reference (and the v<N> tag of a registered version)."""
    from hatch_mlenv.image import plan_for

    env = _environment(project, env)
    plan = plan_for(env, _registered_version(env, registry_url))
    if as_json:
        _print_json({"reference": plan.reference, "repository": plan.repository, "tags": plan.tags})
        return
    for tag in plan.tags:
        click.echo(f"{plan.repository}:{tag}")


@image.command(name="context")
@project_option
@env_option
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), default=Path("mlenv-image"),
              show_default=True, help="Directory for the build context (must not exist or be empty).")
@click.option("--strategy", type=click.Choice(["host", "dockerfile"]), default="host", show_default=True)
@registry_option
def image_context(project: Path, env: str | None, output: Path, strategy: str, registry_url: str | None) -> None:
    """Write a Docker build context: `host` (installed prefix + Dockerfile) or `dockerfile` (micromamba)."""
    from hatch_mlenv.image import write_context

    env = _environment(project, env)
    plan = write_context(env, output, strategy=strategy, version=_registered_version(env, registry_url))
    click.echo(f"{_display(output.resolve())}: {strategy} context for {plan.reference}")


@image.command(name="build")
@project_option
@env_option
@click.option("--push", "also_push", is_flag=True, help="Also push to [tool.mlenv.docker] registry.")
@click.option("--builder", type=click.Choice(["docker", "oci"]), default="docker", show_default=True,
              help="docker: the host strategy in a Docker engine; oci: assembled without a daemon, reproducible.")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="oci builder: write an OCI image layout directory (or a tar: PATH.tar).")
@click.option("--load", is_flag=True, help="oci builder: load the image into the Docker engine.")
@registry_option
def image_build(project: Path, env: str | None, also_push: bool, builder: str, output: Path | None, load: bool,
                registry_url: str | None) -> None:
    """Build the image (host strategy), or reuse it when its tag exists; prints the reference and built/reused."""
    from hatch_mlenv import image as images

    env = _environment(project, env)
    version = _registered_version(env, registry_url)
    echo = _step_echo()
    if builder == "oci" or output is not None or load:
        from hatch_mlenv.oci_image import build_oci

        click.echo("\n".join(build_oci(env, builder=builder, output=output, push=also_push, load=load,
                                        version=version, echo=echo).lines))
        return
    result = images.build(env, version=version, echo=echo)
    click.echo(f"{result.reference} {result.status}")
    if also_push:
        reference, status = images.push(env, version=version, echo=echo)
        click.echo(f"{reference} {status}")


@image.command(name="push")
@project_option
@env_option
@registry_option
def image_push(project: Path, env: str | None, registry_url: str | None) -> None:
    """Push the image to its registry (building it first if needed); reused when the registry has it."""
    from hatch_mlenv import image as images

    env = _environment(project, env)
    reference, status = images.push(env, version=_registered_version(env, registry_url), echo=_step_echo())
    click.echo(f"{reference} {status}")


def _step_echo() -> Callable[[str], None]:
    """Build output, streamed to stderr (stdout keeps the one-line result)."""
    from rich.console import Console

    console = Console(stderr=True, highlight=False, soft_wrap=True)

    def echo(line: str) -> None:
        console.print(line, style="bold" if line.startswith("Step ") else "dim", markup=False)

    return echo


def _display(path: Path) -> str:
    """Relative to the working directory when inside it, else absolute."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


if __name__ == "__main__":  # pragma: no cover
    main(prog_name="mlenv")
