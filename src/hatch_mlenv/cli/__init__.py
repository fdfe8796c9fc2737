"""The `mlenv` command line: parse arguments, call the library, print. Nothing else.

Commands live in modules by what they act on (project.py: a definition and its lock;
versions.py: the registry; use.py: this machine; images.py; serving.py); `_common.py` holds
what they share. A command's module is imported only when that command runs, so that
`mlenv --version` and a no-op `mlenv lock` do not pay for the others.
"""

from __future__ import annotations

import errno
import importlib
import os
import sys
from typing import Any

import click

import hatch_mlenv.progress as progress
from hatch_mlenv._version import __version__
from hatch_mlenv.errors import EXIT_FAILURE, EXIT_USAGE, MlenvError

# name -> "module:function", every command of `mlenv`
COMMANDS = {
    "add": "edit:add",
    "archive": "versions:archive",
    "copy": "versions:copy",
    "curated": "versions:curated",
    "diff": "project:diff",
    "doctor": "use:doctor",
    "export": "project:export_",
    "gc": "versions:gc",
    "get": "versions:get",
    "history": "versions:history",
    "image": "images:image",
    "import": "project:import_",
    "init": "edit:init",
    "install": "use:install",
    "label": "versions:label",
    "list": "versions:list_",
    "lock": "lock:lock",
    "outdated": "project:outdated",
    "pack": "use:pack",
    "ray-env": "serving:ray_env",
    "register": "versions:register",
    "registry": "versions:registry_",
    "remove": "edit:remove",
    "restore": "versions:restore",
    "run": "use:run",
    "sbom": "project:sbom",
    "serve": "serving:serve",
    "show": "project:show",
    "spark-conf": "use:spark_conf",
    "tree": "project:tree",
    "verify": "use:verify",
    "why": "project:why",
}


class Group(click.Group):
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
        except BrokenPipeError:  # `mlenv show --packages | head`: the reader has all it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
            sys.exit(141)  # 128 + SIGPIPE, as a shell tool that the pipe closed on
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


def _output_level(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if not value:
        return
    asked = ctx.meta.get("mlenv.output")
    if asked is not None and asked != param.name:
        raise click.UsageError("-q/--quiet and -v/--verbose exclude each other; give one")
    ctx.meta["mlenv.output"] = param.name
    progress.configure(progress.QUIET if param.name == "quiet" else progress.VERBOSE)


def with_output_options(command: click.Command) -> None:
    """`-q/--quiet` and `-v/--verbose` on every command and group, before or after its name."""
    command.params.append(click.Option(
        ["-q", "--quiet"], is_flag=True, expose_value=False, is_eager=True, callback=_output_level,
        help="No progress and no notes on stderr (also MLENV_QUIET=1); results, warnings and errors stay."))
    command.params.append(click.Option(
        ["-v", "--verbose"], is_flag=True, expose_value=False, is_eager=True, callback=_output_level,
        help="Progress on stderr even when it is not a terminal (also MLENV_PROGRESS=1)."))
    for sub in getattr(command, "commands", {}).values():
        with_output_options(sub)


class _Commands(Group):
    """`mlenv`'s group: each command imported from its module when it is first asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, function = COMMANDS[name].split(":")
        command = getattr(importlib.import_module(f"hatch_mlenv.cli.{module}"), function)
        if not getattr(command, "mlenv_output_options", False):
            with_output_options(command)
            command.mlenv_output_options = True
        return command


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="mlenv", message="%(prog)s %(version)s")
def main() -> None:
    """Locked, versioned ML environments from [tool.mlenv] in pyproject.toml."""


with_output_options(main)
