"""Commands that read a project's definition and its lock: show, diff, tree, why, export, sbom, import, outdated."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

import hatch_mlenv.diff as diffing
import hatch_mlenv.importing as importing
import hatch_mlenv.progress as progress
from hatch_mlenv.cli._common import (
    Printer,
    display,
    env_option,
    environment_arguments,
    info,
    json_option,
    load_environment,
    lock_as_it_is,
    lock_options,
    platform_option,
    print_json,
    project_option,
    registry_option,
)
from hatch_mlenv.errors import MissingLockError, MlenvError
from hatch_mlenv.export import FORMATS as EXPORT_FORMATS
from hatch_mlenv.export import export
from hatch_mlenv.graph import tree_lines, tree_report, why_lines, why_report
from hatch_mlenv.lockfile import atomic_write
from hatch_mlenv.platforms import current_platform
from hatch_mlenv.reference import parse_target
from hatch_mlenv.registry import describe


@click.command()
@environment_arguments
@click.option("--packages", is_flag=True, help="List every locked package: platform, manager, name, version, "
              "build, and its channel or index.")
@click.option("--platform", metavar="PLATFORM", default=None, help="With --packages: only this platform's.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show(reference: str | None, project: Path | None, env: str | None, packages: bool, platform: str | None,
         as_json: bool, registry_url: str | None) -> None:
    """Show the environment: name, digest, platforms, packages, image, lock status."""
    if platform is not None and not packages:
        raise click.UsageError("--platform lists one platform's packages: give it with --packages")
    try:  # show says whether the lock is stale rather than relocking (`--locked` refuses a stale one)
        environment = load_environment(reference, project, env, registry_url, policy="frozen")
    except MissingLockError as exc:  # nothing to show yet: a failure (1), not a broken file (2)
        raise MlenvError(f"{exc.path}: lockfile not found; run `mlenv lock` first") from None
    if packages:
        if platform is not None and platform not in environment.lock.platforms:
            raise MlenvError(f"{environment.name}: not locked for {platform} "
                             f"(locked for {', '.join(sorted(environment.lock.platforms))})")
        rows = environment.lock.listing(platform)
        if as_json:
            print_json(rows)
            return
        Printer().table(("platform", "manager", "name", "version", "build", "source"),
                        [(r["platform"], r["manager"], r["name"], r["version"], r["build"] or "", r["source"])
                         for r in rows])
        return
    data = describe(environment)
    reason = data["stale_reason"]
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    out = Printer()
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


@click.command()
@click.argument("old")
@click.argument("new")
@lock_options
@registry_option
@json_option
def diff(old: str, new: str, registry_url: str | None, as_json: bool) -> None:
    """Compare two environments, each a project directory, a lockfile, NAME:VERSION or NAME@LABEL:
    packages, variables, base image and the [tool.mlenv] definition."""
    result = diffing.diff_environments(load_environment(old, None, None, registry_url, default_policy="report"),
                               load_environment(new, None, None, registry_url, default_policy="report"))
    result = {"old": old, "new": new} | result
    if as_json:
        print_json(result)
        return
    _print_diff(result)


def _print_diff(result: dict[str, Any]) -> None:
    out = Printer()
    if diffing.same(result):
        out.line(f"{result['old']} and {result['new']} are the same environment")
        return
    rows = diffing.change_rows(result)
    if rows:
        out.table(("platform", "manager", "package", "change"), rows)
    for line in diffing.other_lines(result):
        out.line(line)


@click.command()
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
    report = tree_report(lock_as_it_is(reference, project, env, registry_url), platform, depth=depth, invert=invert)
    if as_json:
        print_json(report)
        return
    for line in tree_lines(report["roots"], "dependents" if invert else "dependencies"):
        click.echo(line)
    if report["unmatched"]:
        progress.note(f"asked for but not locked for {report['platform']}: {', '.join(report['unmatched'])}")


@click.command()
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
    report = why_report(lock_as_it_is(reference, project, env, registry_url), package, platform, limit=limit)
    if as_json:
        print_json(report)
        return
    for line in why_lines(report):
        click.echo(line)


@click.command(name="export")
@environment_arguments
@click.option("--format", "fmt", type=click.Choice(list(EXPORT_FORMATS)), required=True)
@click.option("--platform", help="Platform to export (default: this machine's).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write to FILE instead of stdout.")
def export_(reference: str | None, project: Path | None, env: str | None, fmt: str, platform: str | None, output: Path | None, registry_url: str | None) -> None:
    """Export the lock as a pinned environment.yml, a conda explicit spec, pip requirements with hashes, or pylock.toml."""
    env = load_environment(reference, project, env, registry_url)
    text = export(env, platform or current_platform(), fmt)
    if output is None:
        click.echo(text, nl=False)
    else:
        atomic_write(output, text)
        info(f"wrote {display(output.resolve())}")


@click.command()
@environment_arguments
@click.option("--format", "fmt", type=click.Choice(["cyclonedx"]), default="cyclonedx", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write to FILE instead of stdout.")
def sbom(reference: str | None, project: Path | None, env: str | None, fmt: str, output: Path | None, registry_url: str | None) -> None:
    """A CycloneDX JSON SBOM of the lock: purls, hashes and licenses where the channel gives them."""
    environment = load_environment(reference, project, env, registry_url)
    text = json.dumps(environment.sbom, indent=2, sort_keys=True) + "\n"
    if output is None:
        click.echo(text, nl=False)
    else:
        atomic_write(output, text)
        info(f"wrote {display(output.resolve())}")


@click.command(name="import")
@project_option
@env_option
@click.argument("source", required=False, metavar="[FILE|REF]")
@click.option("--from-prefix", type=click.Path(file_okay=False, path_type=Path), help="Import an existing conda prefix.")
@registry_option
def import_(project: Path, env: str | None, source: str | None, from_prefix: Path | None, registry_url: str | None) -> None:
    """Write or merge [tool.mlenv] from an environment.yml, a requirements.txt, a conda prefix, or the
    definition of a registered version (NAME:VERSION, NAME@LABEL)."""


    if (source is None) == (from_prefix is None):
        raise click.UsageError("give either FILE (environment.yml or requirements.txt), a registered version "
                               "(NAME:VERSION, NAME@LABEL) or --from-prefix PATH")
    file, registered = None, None
    if source is not None and (Path(source).exists() or Path(source).suffix in (".yml", ".yaml", ".txt")):
        file = Path(source)
    elif source is not None:
        target = parse_target(source)
        registered = load_environment(str(target.reference), None, None, registry_url)
    pyproject, imported = importing.import_into_project(project, file=file, prefix=from_prefix, env=env,
                                                        registered=registered)
    target = f"[tool.mlenv.envs.{env}]" if env else "[tool.mlenv]"
    click.echo(
        f"imported {len(imported.conda) + bool(imported.python)} conda, {len(imported.pip)} pip packages and "
        f"{len(imported.variables)} variables from {imported.source} into {display(pyproject)} {target}"
    )
    for line in imported.unmapped:
        click.echo(f"not mapped: {line}", err=True)
    sys.stdout.flush()


@click.command()
@environment_arguments
@json_option
def outdated(reference: str | None, project: Path | None, env: str | None, as_json: bool,
             registry_url: str | None) -> None:
    """Locked packages with newer releases in their channels or indexes: the newest the definition
    admits (`mlenv lock --update NAME` takes it) and the newest of all (a new bound in the
    definition takes it). Reads the channels and indexes; changes nothing."""
    import hatch_mlenv.outdated as newer  # lazy: rattler's gateway, for this command only

    rows = [n.row() for n in newer.outdated(load_environment(reference, project, env, registry_url,
                                                             default_policy="report"))]
    if as_json:
        print_json(rows)
        return
    if not rows:
        click.echo("every locked package is the newest release")
        return
    Printer().table(("platform", "manager", "name", "locked", "within spec", "latest"),
                    [(r["platform"], r["manager"], r["name"], r["locked"], r["within_spec"] or "-", r["latest"])
                     for r in rows])
