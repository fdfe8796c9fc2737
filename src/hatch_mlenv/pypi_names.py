"""Which Python distributions the locked conda packages already provide, under their PyPI names.

A conda package and the PyPI distribution it installs often have different
names (`pytorch` is `torch`, `msgpack-python` is `msgpack`, `matplotlib-base`
is `matplotlib`). Taking one for the other locks the same distribution twice,
and the pip copy overwrites the conda copy's files at install. The names come,
strongest first, from:

1. `[tool.mlenv] pypi-names = { conda-name = "pypi-name" }` (private packages);
2. the record's `purls` (`pkg:pypi/NAME@VERSION`) where the channel's repodata has them;
3. the community (regro/grayskull) table shipped in `data/pypi-conda-names.json`;
4. the conda name itself, for a package that depends on `python`.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping
from importlib import resources

from hatch_mlenv.lockfile import LockedPackage

_PURL_PYPI = re.compile(r"^pkg:pypi/([^@?#]+)")
_SEPARATORS = re.compile(r"[-_.]+")


def canonical(name: str) -> str:
    """The one normalisation of PyPI names (PEP 503, as packaging's `canonicalize_name`, whose
    module would import packaging.tags and logging on every start): `Msgpack_Python` -> `msgpack-python`."""
    return _SEPARATORS.sub("-", name).lower()


@functools.lru_cache(maxsize=None)
def community_table() -> Mapping[str, str]:
    """PyPI name -> conda-forge name, for the ~940 names that differ."""
    text = resources.files("hatch_mlenv").joinpath("data/pypi-conda-names.json").read_text(encoding="utf-8")
    return json.loads(text)["mapping"]


@functools.lru_cache(maxsize=None)
def _conda_to_pypi() -> Mapping[str, tuple[str, ...]]:
    inverse: dict[str, list[str]] = {}
    for pypi, conda in community_table().items():
        inverse.setdefault(conda, []).append(pypi)
    return {conda: tuple(sorted(names)) for conda, names in inverse.items()}


def pypi_names_of(package: LockedPackage, overrides: Mapping[str, str] = {}) -> tuple[str, ...]:
    """The canonical PyPI names a conda package provides; empty when it is not a Python distribution."""
    if package.manager != "conda" or package.name == "python":
        return ()
    if package.name in overrides:
        return (canonical(overrides[package.name]),)
    from_purls = tuple(sorted({canonical(m.group(1)) for p in package.purls if (m := _PURL_PYPI.match(p))}))
    if from_purls:
        return from_purls
    names = set(_conda_to_pypi().get(package.name, ()))
    if "python" in package.dependencies:
        names.add(canonical(package.name))
    return tuple(sorted(names))


def provided_distributions(
    conda: Iterable[LockedPackage], overrides: Mapping[str, str] = {}
) -> dict[str, LockedPackage]:
    """Canonical PyPI name -> the conda package that provides it."""
    provided: dict[str, LockedPackage] = {}
    for package in sorted(conda, key=lambda p: p.name):
        for name in pypi_names_of(package, overrides):
            provided.setdefault(name, package)
    return provided


def renamed(conda: Iterable[LockedPackage], overrides: Mapping[str, str] = {}) -> dict[str, list[str]]:
    """conda name -> PyPI names, for the packages whose PyPI names differ from their conda name.

    Written to the lock's metadata, so that a later staleness check (which has
    no repodata, hence no purls) knows that conda `msgpack-python` satisfies pip `msgpack`.
    """
    result: dict[str, list[str]] = {}
    for package in conda:
        names = [n for n in pypi_names_of(package, overrides) if n != canonical(package.name)]
        if names:
            result[package.name] = sorted(set(result.get(package.name, [])) | set(names))
    return dict(sorted(result.items()))
