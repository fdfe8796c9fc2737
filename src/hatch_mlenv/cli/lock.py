"""`mlenv lock`: its own module, so that a lock with nothing to do imports the lock stage and the
spec only (it runs on every `hatch build` and in CI before anything else)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

import hatch_mlenv.lock as locking
from hatch_mlenv.cli._common import display, env_option, json_option, print_json, project_option
from hatch_mlenv.errors import EXIT_FAILURE, MlenvError
from hatch_mlenv.spec import load_spec


@click.command()
@project_option
@env_option
@click.option("--all", "every", is_flag=True, help="Every environment of the project: the default and each "
              "[tool.mlenv.envs.NAME], solved at the same time where their lockfiles differ.")
@click.option("--check", is_flag=True, help="Do not solve: exit 1 with the reason if the lock is stale or missing.")
@click.option("--update", "update", multiple=True, metavar="NAME[,NAME...]",
              help="Re-solve NAME, keeping other packages locked (repeatable: --update a --update b, or --update a,b).")
@click.option("--force", is_flag=True, help="Solve even when the lock is fresh.")
@json_option
def lock(project: Path, env: str | None, every: bool, check: bool, update: tuple[str, ...], force: bool,
         as_json: bool) -> None:
    """Lock the environment for every platform into conda-lock.yml."""
    update = tuple(n.strip() for item in update for n in item.split(",") if n.strip())
    if check and (update or force):
        raise click.UsageError("--check cannot be combined with --update or --force")
    if every and (env is not None or update):
        raise click.UsageError("--all locks every environment: it cannot be combined with --env or --update")
    specs = locking.all_specs(project) if every else [load_spec(project, env)]
    if check:
        reasons = [locking.staleness(spec) for spec in specs]
        if as_json:
            rows = [_lock_report(spec, "fresh" if r is None else "stale", None, r, every)
                    for spec, r in zip(specs, reasons)]
            print_json(rows if every else rows[0])
        else:
            for spec, reason in zip(specs, reasons):
                name = _env_label(spec, every)
                if reason is not None:
                    click.echo(f"{name} is stale: {reason}", err=True)
                else:
                    click.echo(f"{name} is fresh")
        if any(r is not None for r in reasons):
            sys.exit(EXIT_FAILURE)
        return
    if not every:
        outcome = locking.lock(specs[0], update=update, force=force)
        if as_json:
            print_json(_lock_report(specs[0], outcome.status, outcome.digest))
        else:
            print_outcome(specs[0], outcome)
        return
    results = locking.lock_each(specs, force=force)
    failures = [(spec, r) for spec, r in zip(specs, results) if isinstance(r, MlenvError)]
    if as_json:
        print_json([_lock_report(spec, "failed", None, str(r), True) if isinstance(r, MlenvError)
                    else _lock_report(spec, r.status, r.digest, None, True) for spec, r in zip(specs, results)])
    else:
        for spec, result in zip(specs, results):
            if not isinstance(result, MlenvError):
                print_outcome(spec, result)
    for spec, error in failures:  # each on its own line, after what did lock; the first one's exit code
        click.echo(f"error: {_env_label(spec, True)}: {error}", err=True)
    if failures:
        sys.exit(failures[0][1].exit_code)


def _env_label(spec: Any, every: bool) -> str:
    """How `lock` names an environment: its lockfile, and with --all also which environment."""
    name = display(spec.lockfile)
    return f"{name} ({spec.env or 'default'})" if every else name


def _lock_report(spec: Any, status: str, digest: str | None, reason: str | None = None,
                 every: bool = False) -> dict[str, Any]:
    report = {"name": spec.name, "lockfile": str(spec.lockfile), "status": status,
              "digest": f"sha256:{digest}" if digest else None, "platforms": sorted(spec.platforms), "reason": reason}
    return report | {"env": spec.env} if every else report


def print_outcome(spec: Any, outcome: locking.LockOutcome) -> None:
    """The lines of a lock's outcome, for `mlenv lock` and the commands that lock after an edit."""
    name, digest = display(spec.lockfile), outcome.digest
    if outcome.status == "fresh":
        click.echo(f"{name} is fresh (spec unchanged); not solving. digest sha256:{digest[:12]}")
        return
    written = outcome.load(spec)
    verb = "locked" if outcome.status == "locked" else "re-solved, unchanged:"
    click.echo(f"{verb} {spec.name} for {', '.join(sorted(written.platforms))}: {len(written.packages)} packages "
               f"-> {name}")
    click.echo(f"digest sha256:{digest}")
