"""Extension points. Built-in behaviour is implemented through these very hooks.

Each hookspec's docstring says what an implementation returns; README.md's
"Plugins" section lists every hook (tests/test_misc.py checks both ways).
"""

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
    """Return conda solvers: objects with a `name` and `solve(request) -> {platform: [LockedPackage]}`.

    `[tool.mlenv] solver = NAME` picks one (default `rattler`, the built-in one);
    an installed plugin's solver of the same name replaces a built-in one.
    """


@hookspec
def mlenv_register_registries() -> list[Backend]:
    """Return registry backends: objects with `handles(url)` and `open(url) -> Registry`.

    The first backend, installed plugins before the built-in ones, whose
    `handles(url)` is true opens the registry.
    """
