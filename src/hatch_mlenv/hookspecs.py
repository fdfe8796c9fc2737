"""Extension points. Built-in behaviour is implemented through these very hooks.

Each hookspec's docstring says what an implementation returns; README.md's
"Plugins" section lists every hook (tests/test_misc.py checks both ways).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import pluggy

from hatch_mlenv.lockfile import LockedPackage

if TYPE_CHECKING:
    from hatch_mlenv.registry.base import Backend

hookspec = pluggy.HookspecMarker("mlenv")
hookimpl = pluggy.HookimplMarker("mlenv")


# The interface a solver plugin implements (registry backends: registry/base.py `Backend`).
@dataclass(frozen=True)
class SolveRequest:
    """Everything a conda solver needs; values only, no files."""

    channels: tuple[str, ...]
    specs: tuple[str, ...]
    platforms: tuple[str, ...]
    virtual_packages: dict[str, dict[str, tuple[str, str]]] = field(hash=False)
    # Packages to keep at their locked version where the specs allow (`lock --update`).
    preferred: tuple[LockedPackage, ...] = ()
    # The specs of a platform that has its own (`[tool.mlenv.target.PLATFORM]`); others take `specs`.
    platform_specs: dict[str, tuple[str, ...]] = field(default_factory=dict, hash=False)

    def specs_for(self, platform: str) -> tuple[str, ...]:
        """The specs to solve for `platform`. A solver must read these: `specs` alone misses what
        `[tool.mlenv.target.PLATFORM]` adds."""
        return self.platform_specs.get(platform, self.specs)


class Solver(Protocol):
    name: str

    def solve(self, request: SolveRequest) -> dict[str, list[LockedPackage]]:
        """Pinned conda packages for every platform of the request, or raise SolveError."""



@hookspec
def mlenv_register_solvers() -> list[Solver]:
    """Return conda solvers: objects with a `name` and `solve(request) -> {platform: [LockedPackage]}`.

    `[tool.mlenv] solver = NAME` picks one (default `rattler`, the built-in one);
    an installed plugin's solver of the same name replaces a built-in one.
    """


@hookspec
def mlenv_register_registries() -> list[Backend]:
    """Return registry backends: objects with `handles(url)` and `open(url) -> Registry`.

    The first backend, installed plugins before the built-in ones, whose
    `handles(url)` is true opens the registry. `local` and `sqlite://` URLs are
    always the built-in SQLite backend, opened without loading plugins, so that
    the common path (every `NAME:VERSION` resolved locally) stays fast.
    """
