"""The plugin manager: built-in plugins first, then those installed under the `mlenv` entry point."""

from __future__ import annotations

import functools
import importlib

import pluggy

import hatch_mlenv.hookspecs as hookspecs

# the local registry's hook is apart from its backend (registry/local_plugin.py): opened without the
# plugin manager, the backend does not import pluggy
DEFAULT_PLUGINS = ("hatch_mlenv.solve", "hatch_mlenv.registry.local_plugin", "hatch_mlenv.registry.oci")


@functools.lru_cache(maxsize=None)
def plugin_manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager("mlenv")
    manager.add_hookspecs(hookspecs)
    for name in DEFAULT_PLUGINS:
        manager.register(importlib.import_module(name), name)
    manager.load_setuptools_entrypoints("mlenv")
    return manager


def solvers() -> dict:
    """All registered solvers by name; an installed plugin may replace a built-in one."""
    found: dict = {}
    # pluggy calls the most recently registered plugin first: entry points before built-ins.
    for batch in plugin_manager().hook.mlenv_register_solvers():
        for solver in batch or ():
            found.setdefault(solver.name, solver)
    return found


def registries() -> list:
    """Registry backends, installed plugins first so that they may claim a URL scheme."""
    return [backend for batch in plugin_manager().hook.mlenv_register_registries() for backend in batch or ()]
