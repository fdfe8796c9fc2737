"""Commands on the registry's versions: register, list, history, get, label, archive, restore, gc, curated."""

from __future__ import annotations

import json
from pathlib import Path

import click

import hatch_mlenv.curated as catalog
import hatch_mlenv.userconfig as userconfig
from hatch_mlenv.cli._common import (
    Printer,
    display,
    env_option,
    json_option,
    load_environment,
    lock_options,
    print_json,
    project_option,
    registry_option,
    selected_registry,
)
from hatch_mlenv.errors import UsageError, did_you_mean
from hatch_mlenv.gc import collect
from hatch_mlenv.lockfile import atomic_write
from hatch_mlenv.paths import config_file
from hatch_mlenv.reference import check_movable_label, check_name, parse_reference
from hatch_mlenv.registry import copy_version, register_environment, register_lockfile


@click.command()
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
    if lockfile is not None:
        if not name:
            raise click.UsageError("--lockfile needs --name")
        registration = register_lockfile(selected_registry(registry_url), lockfile, name, labels=labels)
    else:
        if name:
            raise click.UsageError("--name goes with --lockfile; the project's name is [tool.mlenv] name")
        environment = load_environment(None, project, env, None)
        registration = register_environment(selected_registry(registry_url, environment.spec.registry), environment,
                                            labels=labels)
    version = registration.version
    if as_json:
        print_json(version.summary() | {"created": registration.created})
        return
    state = "new" if registration.created else "existing, nothing created"
    click.echo(f"{version.ref} sha256:{version.digest} ({state})")


@click.command(name="list")
@click.option("--all", "include_archived", is_flag=True, help="Include environments whose versions are all archived.")
@registry_option
@json_option
def list_(include_archived: bool, registry_url: str | None, as_json: bool) -> None:
    """List environments: name, latest version, labels."""
    summaries = selected_registry(registry_url).list(include_archived=include_archived)
    for s in summaries:
        _warn_dangling(s.name, s.dangling)
    if as_json:
        print_json([s.as_dict() for s in summaries])
        return
    rows = [(s.name, str(s.latest or "-"), f"{s.versions} ({s.archived} archived)" if s.archived else str(s.versions),
             ", ".join(f"{k}→{v}" for k, v in sorted(s.labels.items()))) for s in summaries]
    Printer().table(("name", "latest", "versions", "labels"), rows)


def _warn_dangling(name: str, dangling: dict[str, int]) -> None:
    for label, number in sorted(dangling.items()):
        click.echo(f"mlenv: warning: {name}@{label} points at version {number}, which is not in the registry "
                   "(the registry is damaged)", err=True)


@click.command()
@click.argument("name")
@registry_option
@json_option
def history(name: str, registry_url: str | None, as_json: bool) -> None:
    """Versions of NAME with time, git commit, digest and labels."""
    check_name(name)  # malformed is a usage error (2), as for every other command, not "no such environment"
    registry = selected_registry(registry_url)
    versions = registry.history(name)
    _warn_dangling(name, registry.dangling_labels(name))
    if as_json:
        print_json([v.summary() for v in versions])
        return
    rows = []
    for v in versions:
        commit = (v.provenance.get("git_commit") or "-")[:10] + ("+dirty" if v.provenance.get("git_dirty") else "")
        label = ", ".join(v.labels) + (" (archived)" if v.archived else "")
        rows.append((str(v.version), str(v.provenance.get("time") or "-"), commit, v.digest[:12], label))
    Printer().table(("version", "created (UTC)", "commit", "digest", "labels"), rows)


@click.command()
@click.argument("reference")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), help="Directory to write conda-lock.yml and mlenv.json into (default ./NAME-vVERSION).")
@registry_option
@json_option
def get(reference: str, output: Path | None, registry_url: str | None, as_json: bool) -> None:
    """Write the lockfile and manifest of NAME[:VERSION|@LABEL]."""
    ref = parse_reference(reference)
    version = selected_registry(ref.registry or registry_url).get(ref)
    target = output or Path(f"{version.name}-v{version.version}")
    atomic_write(target / "conda-lock.yml", version.lockfile)
    atomic_write(target / "mlenv.json", json.dumps(version.manifest_with_version(), indent=2, sort_keys=True) + "\n")
    if as_json:
        print_json(version.summary() | {"output": str(target)})
        return
    click.echo(f"{version.ref} sha256:{version.digest} -> {display(target.resolve())}")


@click.command()
@click.argument("reference")
@click.argument("label", required=False)
@click.option("--delete", is_flag=True, help="Remove the label NAME@LABEL (never `latest`); its version stays.")
@registry_option
@json_option
def label(reference: str, label: str | None, delete: bool, registry_url: str | None, as_json: bool) -> None:
    """Point LABEL at NAME:VERSION (labels move; versions never change; `latest` moves only by registering);
    with --delete, remove NAME@LABEL."""
    if delete:
        if label is not None:
            raise click.UsageError("--delete takes one NAME@LABEL")
        ref = parse_reference(reference)
        if ref.label is None:
            raise click.UsageError(f"--delete takes NAME@LABEL, not {reference!r}")
        check_movable_label(ref.label)
        number = selected_registry(ref.registry or registry_url).unlabel(ref.name, ref.label)
        if as_json:
            print_json({"name": ref.name, "label": ref.label, "deleted": True, "version": number})
            return
        click.echo(f"{ref.name}@{ref.label} deleted (it pointed at {ref.name}:{number})")
        return
    if label is None:
        raise click.UsageError("give NAME:VERSION LABEL (or --delete NAME@LABEL)")
    ref = parse_reference(reference, require_version=True)
    check_movable_label(label)  # for every backend, before any registry is opened
    version = selected_registry(ref.registry or registry_url).label(ref.name, ref.version, label)
    if as_json:
        print_json(version.summary() | {"label": label})
        return
    click.echo(f"{ref.name}@{label} -> {version.ref}")


@click.command()
@click.argument("reference")
@click.argument("destination")
@click.option("--labels", "with_labels", is_flag=True, help="Also point the version's labels (but latest) at the copy.")
@registry_option
@json_option
def copy(reference: str, destination: str, with_labels: bool, registry_url: str | None, as_json: bool) -> None:
    """Copy a registered version (REF: NAME:VERSION, NAME@LABEL, with or without its registry) into
    the registry DESTINATION (a URL or a registry name), with its definition, provenance and digest."""
    ref = parse_reference(reference)
    registration = copy_version(selected_registry(ref.registry or registry_url), ref,
                                selected_registry(destination), labels=with_labels)
    version = registration.version
    if as_json:
        print_json(version.summary() | {"created": registration.created, "registry": destination})
        return
    said = "new" if registration.created else "existing, nothing created"
    click.echo(f"{version.ref} sha256:{version.digest} in {destination} ({said})")


@click.command()
@click.argument("reference")
@registry_option
@json_option
def archive(reference: str, registry_url: str | None, as_json: bool) -> None:
    """Hide NAME:VERSION from `list` (still retrievable by number)."""
    _set_archived(reference, registry_url, True, as_json)


@click.command()
@click.argument("reference")
@registry_option
@json_option
def restore(reference: str, registry_url: str | None, as_json: bool) -> None:
    """Undo `archive` for NAME:VERSION."""
    _set_archived(reference, registry_url, False, as_json)


def _set_archived(reference: str, registry_url: str | None, archived: bool, as_json: bool) -> None:

    ref = parse_reference(reference, require_version=True)
    version = selected_registry(ref.registry or registry_url).set_archived(ref.name, ref.version, archived)
    if as_json:
        print_json(version.summary())
        return
    click.echo(f"{version.ref} {'archived' if archived else 'restored'}")


@click.command()
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@click.option("--older-than", "older_than", type=click.FloatRange(min=0), metavar="DAYS", default=None,
              help="Only remove what has not changed for DAYS days.")
@registry_option
@json_option
def gc(dry_run: bool, older_than: float | None, registry_url: str | None, as_json: bool) -> None:
    """Remove prefixes, packs and cache entries that no registered, non-archived version and no
    project lock on this machine uses; print what was freed."""
    result = collect(selected_registry(registry_url), dry_run=dry_run, older_than_days=older_than)
    if as_json:
        print_json(result.as_dict())
        return
    verb = "would remove" if dry_run else "removed"
    for path, size in result.removed:
        click.echo(f"{verb} {display(path)} ({_size(size)})")
    click.echo(f"{'would free' if dry_run else 'freed'} {_size(result.freed)} "
               f"({len(result.removed)} removed, {result.kept} in use or recent)")


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count} B"


@click.group()
def curated() -> None:
    """Curated environments shipped with hatch-mlenv (use with extends = "curated:NAME")."""


@curated.command(name="list")
@json_option
def curated_list(as_json: bool) -> None:
    """Names and descriptions of the curated environments."""
    entries = [{"name": n, "description": catalog.read(n).get("description", "")} for n in catalog.names()]
    if as_json:
        print_json(entries)
        return
    width = max(len(e["name"]) for e in entries)
    for entry in entries:
        click.echo(f"{entry['name']:<{width}}  {entry['description']}")


@curated.command(name="show")
@click.argument("name")
def curated_show(name: str) -> None:
    """Print the definition of a curated environment."""
    if name not in catalog.names():

        raise UsageError(f"unknown curated environment {name!r}{did_you_mean(name, catalog.names(), known=True)}")
    click.echo(f"# extends = \"curated:{name}\"")
    click.echo(catalog.path(name).read_text(), nl=False)


@click.group(name="registry")
def registry_() -> None:
    """Registries by name, in the user config file: `team:train@prod` then names a version there."""


@registry_.command(name="add")
@click.argument("name")
@click.argument("url")
@click.option("--default", is_flag=True, help="Make it the registry every command uses when none is given.")
def registry_add(name: str, url: str, default: bool) -> None:
    """Name the registry at URL (oci://HOST[:PORT]/NAMESPACE, sqlite:///PATH or local)."""
    path = userconfig.add_registry(name, url, default=default)
    click.echo(f"{name} = {url}{' (the default)' if default else ''} in {display(path)}")


@registry_.command(name="remove")
@click.argument("name")
def registry_remove(name: str) -> None:
    """Forget the name (the registry itself is untouched)."""
    path = userconfig.remove_registry(name)
    click.echo(f"removed {name} from {display(path)}")


@registry_.command(name="list")
@json_option
def registry_list(as_json: bool) -> None:
    """The named registries and the default."""
    settings = userconfig.read()
    if as_json:
        print_json(settings | {"config": str(config_file())})
        return
    rows = [(name, url, "default" if settings["registry"] == name else "")
            for name, url in sorted(settings["registries"].items())]
    if settings["registry"] and settings["registry"] not in settings["registries"]:
        rows.append(("(default)", settings["registry"], "default"))
    Printer().table(("name", "url", ""), rows)
