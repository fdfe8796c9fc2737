"""Commands that use an environment on this machine: install, run, doctor, verify, pack, spark-conf.
The Spark stage is imported by the commands that use it: `mlenv install` and `run` must not pay for it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

import hatch_mlenv.progress as progress
from hatch_mlenv.cli._common import (
    Printer,
    check_host,
    display,
    environment_arguments,
    ignore_system_option,
    json_option,
    load_environment,
    print_json,
)
from hatch_mlenv.errors import EXIT_FAILURE, MlenvError
from hatch_mlenv.install import install_environment
from hatch_mlenv.install.activation import activation, resolve_command
from hatch_mlenv.system import doctor as examine
from hatch_mlenv.verify import verify_environment


@click.command()
@environment_arguments
@click.option("--prefix", type=click.Path(file_okay=False, path_type=Path), help="Install here instead of .mlenv/envs/NAME.")
@click.option("--force", is_flag=True, help="Reinstall every package, even into an intact prefix.")
@click.option("--verify", is_flag=True, help="Check every file's hash (not only sizes and times) before saying up to date.")
@ignore_system_option
@json_option
def install(reference: str | None, project: Path | None, env: str | None, prefix: Path | None, force: bool, verify: bool, ignore_system: bool, as_json: bool, registry_url: str | None) -> None:
    """Install the lock for this platform into a prefix (rattler + installer); never solves."""
    env = load_environment(reference, project, env, registry_url)
    check_host(env, ignore_system)
    result = install_environment(env, prefix, show_progress=progress.interactive(), force=force, verify=verify)
    where = display(result.prefix)
    if as_json:
        print_json({"name": env.name, "digest": f"sha256:{env.digest}", "prefix": str(result.prefix),
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


@click.command(cls=_RunCommand, context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@environment_arguments
@click.option("--prefix", type=click.Path(file_okay=False, path_type=Path), help="Use this prefix instead of .mlenv/envs/NAME.")
@ignore_system_option
@click.argument("command", nargs=-1, required=False, type=click.UNPROCESSED)
def run(reference: str | None, project: Path | None, env: str | None, prefix: Path | None, ignore_system: bool, command: tuple[str, ...], registry_url: str | None) -> None:
    """Run COMMAND inside the installed environment (installing it first if needed): mlenv run [REF] -- CMD ARGS..."""
    after = click.get_current_context().meta.get("mlenv.command")  # set when a REF came before `--`
    if after is None:  # everything is the command
        command, reference = ((reference, *command) if reference is not None else command), None
    else:
        command = after
    if not command:
        raise click.UsageError("missing the command to run: mlenv run [REF] -- COMMAND [ARGS]...")
    try:
        env = load_environment(reference, project, env, registry_url)
    except MlenvError as exc:
        if reference is None or ":" in reference or "@" in reference or os.path.exists(reference):
            raise
        raise type(exc)(f"{exc} (if {reference!r} is the command, write `mlenv run -- {reference} ...`)") from None
    check_host(env, ignore_system)
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


@click.command()
@environment_arguments
@json_option
def doctor(reference: str | None, project: Path | None, env: str | None, as_json: bool, registry_url: str | None) -> None:
    """Can this machine run the lock? Its CUDA driver, glibc, macOS and CPU level against the lock's needs."""
    report = examine(load_environment(reference, project, env, registry_url, default_policy="report"))
    if as_json:
        print_json(report)
    else:
        out = Printer()
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


@click.command()
@environment_arguments
@click.option("--prefix", type=click.Path(file_okay=False, path_type=Path), help="The prefix to check (default .mlenv/envs/NAME).")
@click.option("--no-files", is_flag=True, help="Compare packages only, not file contents.")
@click.option("--pack", "pack_archive", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Check that this archive is the `mlenv pack` of the lock instead (packs it again and compares).")
@json_option
def verify(reference: str | None, project: Path | None, env: str | None, prefix: Path | None, no_files: bool, pack_archive: Path | None, as_json: bool, registry_url: str | None) -> None:
    """Compare an installed prefix with the lock; exit 1 on drift with a table of differences.
    With --pack FILE: whether FILE is the pack of the lock, byte for byte."""
    environment = load_environment(reference, project, env, registry_url, default_policy="report")
    if pack_archive is not None:
        _verify_pack(environment, pack_archive, prefix, as_json)
        return
    with progress.step(f"verifying {environment.name} against its lock"):
        drift = verify_environment(environment, prefix, check_files=not no_files)
    target = drift.prefix
    if as_json:
        print_json(drift.as_dict() | {"digest": f"sha256:{environment.digest}"})
    elif drift.clean:
        click.echo(f"{display(target)} matches {environment.spec.lockfile.name} (sha256:{environment.digest[:12]})")
        for what in drift.added:  # known, not drift: the hatch environment's project
            click.echo(f"  also {what}")
    else:
        out = Printer(stderr=True)
        out.line(f"{display(target)} differs from {environment.spec.lockfile.name}:")
        out.table(("difference", "what"), list(drift.rows()))
    if not drift.clean:
        sys.exit(EXIT_FAILURE)


@click.command()
@environment_arguments
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Archive to write (default .mlenv/packs/NAME-DIGEST12.tar.gz).")
@click.option("--prefix", type=click.Path(file_okay=False, path_type=Path), help="Installed prefix to pack.")
@ignore_system_option
def pack(reference: str | None, project: Path | None, env: str | None, output: Path | None, prefix: Path | None, ignore_system: bool, registry_url: str | None) -> None:
    """Pack the installed linux-64 environment into a relocatable .tar.gz for Spark (conda-pack)."""
    from hatch_mlenv.spark import PLATFORM
    from hatch_mlenv.spark import pack as pack_environment

    environment = load_environment(reference, project, env, registry_url)
    check_host(environment, ignore_system, PLATFORM)
    with progress.step(f"packing {environment.name} with conda-pack"):
        archive = pack_environment(environment, output, prefix)
    sha256 = Path(f"{archive}.sha256").read_text().split()[0]
    click.echo(f"packed {environment.name} sha256:{environment.digest[:12]} -> {display(archive)} (archive sha256:{sha256})")


def _verify_pack(environment, archive: Path, prefix: Path | None, as_json: bool) -> None:  # noqa: ANN001
    from hatch_mlenv.spark import PLATFORM, verify_pack

    check_host(environment, False, PLATFORM)
    with progress.step(f"packing {environment.name} again to compare"):
        check = verify_pack(environment, archive, prefix)
    if as_json:
        print_json(check.as_dict() | {"digest": f"sha256:{environment.digest}"})
    elif check.ok:
        how = " (the same tar, compressed by another zlib)" if check.same_content else ""
        click.echo(f"{display(archive)} is the pack of {environment.name} sha256:{environment.digest[:12]} "
                   f"(archive sha256:{check.sha256}){how}")
    else:
        click.echo(f"error: {display(archive)} is not the pack of {environment.name} "
                   f"sha256:{environment.digest[:12]}: its sha256 is {check.sha256}, the lock packs to "
                   f"{check.expected}", err=True)
    if not check.ok:
        sys.exit(EXIT_FAILURE)


@click.command(name="spark-conf")
@environment_arguments
@click.option("--archive", help="Where executors get the packed environment (path or URL; default the `mlenv pack` output).")
@click.option("--format", "fmt", type=click.Choice(["properties", "json", "submit"]), default="properties", show_default=True)
def spark_conf(reference: str | None, project: Path | None, env: str | None, archive: str | None, fmt: str, registry_url: str | None) -> None:
    """Spark settings that run Python work in the packed environment (spark-defaults, JSON or spark-submit args)."""
    from hatch_mlenv.spark import default_archive, render, settings

    environment = load_environment(reference, project, env, registry_url)
    click.echo(render(settings(environment, archive or default_archive(environment)), fmt), nl=False)
