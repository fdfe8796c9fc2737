"""The built-in `local` / `sqlite://` registry as a plugin (`mlenv_register_registries`).

Apart from `registry/local.py`: `open_registry` opens local and sqlite registries without the
plugin manager, so the backend itself does not import pluggy (~4 ms of every command that reads
the local registry)."""

from __future__ import annotations

from hatch_mlenv.hookspecs import hookimpl
from hatch_mlenv.registry.local import LocalBackend


@hookimpl
def mlenv_register_registries() -> list[LocalBackend]:
    return [LocalBackend()]
