"""The pip step of a lock: resolve PEP 508 requirements after the conda solve.

We use conda-lock's own pip resolver (`conda_lock.pypi_solver.solve_pypi`)
rather than uv: it is already a dependency, it resolves for any target
platform and python (not just this machine), it knows which pip names the
conda packages already provide (so they are not installed twice), and it
returns conda-lock's `LockedDependency` with the wheel URL and sha256 — exactly
what the lockfile stores. uv would add a binary dependency and a translation
layer for the same result.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from hatch_mlenv.errors import ConfigError, SolveError
from hatch_mlenv.lockfile import LockedPackage, to_conda_lock

if TYPE_CHECKING:
    from hatch_mlenv.spec import Spec

DEFAULT_INDEX = "https://pypi.org/simple"

_MARKER_PLATFORM = {
    "linux": ("linux", "Linux", "posix"),
    "osx": ("darwin", "Darwin", "posix"),
    "win": ("win32", "Windows", "nt"),
}
_MARKER_MACHINE = {"64": "x86_64", "aarch64": "aarch64", "arm64": "arm64", "ppc64le": "ppc64le", "s390x": "s390x"}


def marker_environment(platform: str, python_version: str) -> dict[str, str]:
    """The PEP 508 marker environment of a target platform and python, not of this machine."""
    system, _, arch = platform.partition("-")
    sys_platform, platform_system, os_name = _MARKER_PLATFORM.get(system, ("linux", "Linux", "posix"))
    machine = _MARKER_MACHINE.get(arch, arch)
    if system == "win" and arch == "64":
        machine = "AMD64"
    return {
        "python_version": ".".join(python_version.split(".")[:2]),
        "python_full_version": python_version,
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "sys_platform": sys_platform,
        "platform_system": platform_system,
        "os_name": os_name,
        "platform_machine": machine,
        "platform_release": "",
        "platform_version": "",
        "implementation_version": python_version,
        "extra": "",
    }


def resolve_pip(
    spec: Spec,
    platform: str,
    conda: list[LockedPackage],
    preferred: Iterable[LockedPackage] = (),
    update: Iterable[str] = (),
) -> list[LockedPackage]:
    """Pinned pip packages for `platform`, resolved against its locked python."""
    from packaging.requirements import Requirement

    python = next((p for p in conda if p.name == "python"), None)
    if python is None:
        raise ConfigError(
            spec.pyproject,
            "tool.mlenv.pip",
            f"pip requirements need a python in the conda packages for {platform}; set tool.mlenv.python",
        )
    environment = marker_environment(platform, python.version)
    requirements = [Requirement(text) for text in spec.pip]
    requirements = [r for r in requirements if r.marker is None or r.marker.evaluate(environment)]
    if not requirements:
        return []

    from conda_lock import lookup, pypi_solver
    from conda_lock.models.lock_spec import VersionedDependency
    from conda_lock.models.pip_repository import PipRepository
    from conda_lock.pypi_solver import solve_pypi

    pypi_solver._get_url = _url_without_credentials
    pip_specs = {
        r.name: VersionedDependency(
            name=r.name, manager="pip", version=str(r.specifier) or "*", extras=sorted(r.extras)
        )
        for r in requirements
    }
    indexes = [spec.pip_index_url or DEFAULT_INDEX, *spec.pip_extra_index_urls]
    with tempfile.TemporaryDirectory(prefix="mlenv-pip-") as scratch:
        # conda-lock downloads a PyPI<->conda name table from GitHub unless told
        # otherwise; names that are missing map to themselves, which is what a
        # channel's python packages use. The table must not be empty.
        mapping = Path(scratch) / "mapping.yaml"
        mapping.write_text(_identity_mapping(p.name for p in conda), encoding="utf-8")
        lookup.set_lookup_location(mapping.as_uri())
        try:
            solved = solve_pypi(
                pip_specs=pip_specs,
                use_latest=list(update),
                pip_locked={p.name: to_conda_lock(p) for p in preferred if p.platform == platform},
                conda_locked={p.name: to_conda_lock(p) for p in conda},
                python_version=python.version,
                platform=platform,
                pip_repositories=[PipRepository.from_string(url) for url in indexes],
                allow_pypi_requests=spec.pip_index_url is None,
            )
        except Exception as exc:  # poetry's SolverProblemError, connection errors, ...
            raise SolveError(f"cannot resolve the pip requirements for {platform}:\n{_explain(exc, indexes)}") from None
    return [
        LockedPackage(
            platform=platform,
            manager="pip",
            name=dep.name,
            version=dep.version,
            url=dep.url,
            md5=dep.hash.md5,
            sha256=dep.hash.sha256,
            dependencies=dict(dep.dependencies),
        )
        for dep in sorted(solved.values(), key=lambda d: d.name)
        if dep.manager == "pip"
    ]


def _url_without_credentials(link) -> str:  # noqa: ANN001 - poetry's Link
    """conda-lock 2.5's `_get_url` replaces `user:pass@host:port` by the bare host,
    dropping the port of every index that has one (conda/conda-lock#649). Strip
    only the credentials."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(link.url)
    if parts.username is not None or parts.password is not None:
        netloc = parts.hostname or ""
        if parts.port is not None:
            netloc = f"{netloc}:{parts.port}"
        link.url = urlunsplit(parts._replace(netloc=netloc))
    return link.url_without_fragment


def _identity_mapping(names: Iterable[str]) -> str:
    lines = []
    for name in sorted(set(names)) or ["pip"]:
        lines += [f"{name}:", f"  conda_name: {name}", f"  conda_forge: {name}", f"  pypi_name: {name}"]
    return "\n".join(lines) + "\n"


def _explain(exc: BaseException, indexes: list[str]) -> str:
    text = str(exc).strip() or type(exc).__name__
    lowered = text.lower()
    if "connection" in lowered or "max retries" in lowered or "name or service" in lowered:
        return f"cannot reach the package index ({', '.join(indexes)}): {text.splitlines()[0]}"
    return text
