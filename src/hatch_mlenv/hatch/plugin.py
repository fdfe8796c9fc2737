"""Hatch plugin registrations. Imported in isolated build environments that have only
hatchling, so nothing here may import `hatch`."""

from __future__ import annotations

from hatchling.plugin import hookimpl


@hookimpl
def hatch_register_build_hook():  # noqa: ANN201 - hatchling's hook signature
    from hatch_mlenv.hatch.build_hook import MlenvBuildHook

    return MlenvBuildHook


@hookimpl
def hatch_register_environment():  # noqa: ANN201 - hatch's hook signature
    from hatch_mlenv.hatch.environment import MlenvEnvironment

    return MlenvEnvironment
