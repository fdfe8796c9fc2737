"""Running inside an installed prefix: conda's activation (rattler's script, run by a shell) and
which executable `mlenv run` starts."""

from __future__ import annotations

import os
import re
import shlex
import shutil
from pathlib import Path
from typing import Any

from hatch_mlenv.errors import MlenvError
from hatch_mlenv.platforms import current_platform


def activation(env: Any, prefix: Path, base: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """The environment of a command run inside `prefix`, and the secret variables it lacks.

    conda's activation, as rattler writes it (PATH, CONDA_PREFIX, CONDA_SHLVL, the
    prefix's `etc/conda/env_vars.d`, then every `etc/conda/activate.d/*.sh`), run by
    a POSIX shell whose resulting environment is taken, as pixi does: packages such
    as GDAL, Java or CUDA toolkits set their variables only in those scripts.
    The scripts see the lock's variables; the lock's values are applied again after
    them, since the spec is what the user asked for, and the prefix's `bin` is kept
    first so `resolve_command` finds the environment's own executables.
    """
    locked = {name: value for name, value in env.lock.variables.items() if value is not None}
    # a secret: only ever from the caller's environment
    missing = [name for name, value in env.lock.variables.items() if value is None and name not in base]
    start = {**base, **locked, "CONDA_DEFAULT_ENV": env.name}
    variables = run_activation(prefix, start)
    variables.update(locked)
    variables["CONDA_DEFAULT_ENV"] = env.name
    variables["PATH"] = _bin_first(prefix / "bin", variables.get("PATH", ""))
    return variables, missing


# Printed after the activation scripts: an environment entry always has a `=`, so
# this one cannot be mistaken for a variable; its absence means a script exited.
_ACTIVATED = b"mlenv:activated"


def run_activation(prefix: Path, base: dict[str, str]) -> dict[str, str]:
    """`base` as conda's activation of `prefix` leaves it (rattler's script, run by bash or sh)."""
    import subprocess  # lazy: the no-op install path must not pay for it

    from rattler.shell import (  # lazy: rattler takes ~0.12 s to import
        ActivationVariables,
        PathModificationBehavior,
        Shell,
        activate,
    )

    entries = [entry for entry in base.get("PATH", "").split(os.pathsep) if entry]
    # Replace, with the caller's PATH spelled out: Prepend would append "${PATH}" to
    # the same list and double every entry.
    script = activate(
        prefix,
        ActivationVariables(None, entries or [str(prefix / "bin")], PathModificationBehavior.Replace),
        Shell.bash,
    ).script
    # The environment is dumped before and after the scripts and only what they changed
    # is kept: the shell itself exports SHLVL, PWD and `_`. Scripts' own output goes to
    # stderr, where the user sees it, so it cannot corrupt the dump on stdout.
    search = base.get("PATH") or os.defpath
    env_command = shlex.quote(shutil.which("env", path=search) or "/usr/bin/env")
    program = f"{env_command} -0\n{{\n{script}\n}} >&2\nprintf '%s\\0' '{_ACTIVATED.decode()}'\n{env_command} -0\n"
    shell = shutil.which("bash", path=search) or "/bin/sh"
    environ = {name: value for name, value in base.items() if name not in ("BASH_ENV", "ENV")}
    try:
        process = subprocess.run([shell, "-c", program], env=environ, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, check=False)
    except OSError as exc:
        raise MlenvError(f"cannot activate {prefix}: cannot start {shell}: {exc.strerror or exc}") from None
    entries_out = process.stdout.split(b"\0")
    if _ACTIVATED not in entries_out:
        raise MlenvError(
            f"activating {prefix} failed: a script in etc/conda/activate.d exited with status {process.returncode}"
        )
    marker = entries_out.index(_ACTIVATED)
    before, after = _environ(entries_out[:marker]), _environ(entries_out[marker + 1:])
    variables = dict(base)
    for name in before.keys() - after.keys():
        variables.pop(name, None)
    variables.update({name: value for name, value in after.items() if before.get(name) != value})
    return variables


def _environ(entries: list[bytes]) -> dict[str, str]:
    pairs = (entry.partition(b"=") for entry in entries if b"=" in entry)
    return {os.fsdecode(name): os.fsdecode(value) for name, _, value in pairs}


def _bin_first(bin_dir: Path, path: str) -> str:
    """`path` with `bin_dir` first, once: a package's script may have prepended its own directory."""
    rest = [entry for entry in path.split(os.pathsep) if entry and entry != str(bin_dir)]
    return os.pathsep.join([str(bin_dir), *rest])


# Names an environment that locks a conda `python` is meant to answer itself.
_INTERPRETER = re.compile(r"(python|pip)(\d+(\.\d+)?)?")


def resolve_command(env: Any, prefix: Path, command: str, path: str) -> str:
    """The executable `mlenv run` starts for `command`: the environment's `bin` first.

    A python (or pip) that the environment locks but whose prefix has no such
    executable is an error naming the environment: falling through to the
    caller's interpreter would run code outside the environment while
    everything looks fine. Other commands (`sh`, `ls`) may come from PATH.
    """
    if os.sep in command:
        return command
    bin_dir = prefix / "bin"
    found = shutil.which(command, path=path)
    if found and Path(found).parent.resolve() == bin_dir.resolve():
        return found
    if env.spec.managed and _INTERPRETER.fullmatch(command):
        locked = {p.name for p in env.lock.for_platform(current_platform()) if p.manager == "conda"}
        if "python" in locked:
            elsewhere = f"; not running {found}, which is outside the environment" if found else ""
            raise MlenvError(
                f"environment {env.name} locks python but provides no {command!r} in {bin_dir}{elsewhere}"
            )
    if found:
        return found
    raise MlenvError(f"cannot run {command!r}: not in environment {env.name} ({bin_dir}) nor on PATH")
