"""hatch-mlenv: named, locked, versioned ML environments for Python projects."""

from __future__ import annotations

from hatch_mlenv._version import __version__

# The public API, imported on first use: `import hatch_mlenv` (which every
# command, the build hook and the pytest plugin do) must not load rattler,
# conda-lock or docker.
_PUBLIC = {
    "Spec": "hatch_mlenv.spec",
    "load_spec": "hatch_mlenv.spec",
    "LockOutcome": "hatch_mlenv.lock",
    "Lock": "hatch_mlenv.lockfile",
    "LockedPackage": "hatch_mlenv.lockfile",
    "read_lock": "hatch_mlenv.lockfile",
    "Environment": "hatch_mlenv.environment",
    "install_environment": "hatch_mlenv.install",
    "InstallResult": "hatch_mlenv.install",
    "open_registry": "hatch_mlenv.registry",
    "register_environment": "hatch_mlenv.registry",
    "Registry": "hatch_mlenv.registry",
    "Version": "hatch_mlenv.registry",
    "SolveRequest": "hatch_mlenv.hookspecs",
    "Solver": "hatch_mlenv.hookspecs",
    "hookimpl": "hatch_mlenv.hookspecs",
    "MlenvError": "hatch_mlenv.errors",
    "ConfigError": "hatch_mlenv.errors",
    "LockfileError": "hatch_mlenv.errors",
    "SolveError": "hatch_mlenv.errors",
    "StaleLockError": "hatch_mlenv.errors",
    "UsageError": "hatch_mlenv.errors",
    "RegistryError": "hatch_mlenv.errors",
    "NotFoundError": "hatch_mlenv.errors",
    "InstallError": "hatch_mlenv.errors",
    "ImageError": "hatch_mlenv.errors",
    "PackError": "hatch_mlenv.errors",
}
# Submodules that are API as a whole (README: `hatch_mlenv.spark.configure(builder)`).
# `lock` is one: its function `lock(spec)` cannot be re-exported here, since importing
# the submodule rebinds `hatch_mlenv.lock` to the module.
_PUBLIC_MODULES = ("lock", "spark")

__all__ = ["__version__", *_PUBLIC, *_PUBLIC_MODULES]

# Not `typing.TYPE_CHECKING`: importing typing costs more than the rest of this module.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from hatch_mlenv import lock, spark
    from hatch_mlenv.environment import Environment
    from hatch_mlenv.errors import (
        ConfigError,
        ImageError,
        InstallError,
        LockfileError,
        MlenvError,
        NotFoundError,
        PackError,
        RegistryError,
        SolveError,
        StaleLockError,
        UsageError,
    )
    from hatch_mlenv.hookspecs import Solver, SolveRequest, hookimpl
    from hatch_mlenv.install import InstallResult, install_environment
    from hatch_mlenv.lock import LockOutcome
    from hatch_mlenv.lockfile import Lock, LockedPackage, read_lock
    from hatch_mlenv.registry import Registry, Version, open_registry, register_environment
    from hatch_mlenv.spec import Spec, load_spec


def __getattr__(name: str) -> Any:
    import importlib

    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    if name in _PUBLIC_MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
