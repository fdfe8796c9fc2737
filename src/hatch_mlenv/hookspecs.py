"""Extension points. Built-in behaviour is implemented through these very hooks."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from hatch_mlenv.registry import Backend
    from hatch_mlenv.solve import Solver

hookspec = pluggy.HookspecMarker("mlenv")
hookimpl = pluggy.HookimplMarker("mlenv")


@hookspec
def mlenv_register_solvers() -> list[Solver]:
    """Return conda solvers: objects with a `name` and `solve(request) -> {platform: [LockedPackage]}`."""


@hookspec
def mlenv_register_registries() -> list[Backend]:
    """Return registry backends: objects with `handles(url)` and `open(url) -> Registry`."""
