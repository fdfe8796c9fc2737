"""The pip step of a lock: PEP 508 requirements resolved with uv after the conda solve.

For each target platform, `uv pip compile` (the `uv` PyPI package's binary)
resolves the pip requirements for that platform's *locked* python (full
version) and platform tag, and writes PEP 751 `pylock.toml`: wheel URL, size
and sha256, which become conda-lock pip entries.

The Python distributions that the conda packages already provide (under their
PyPI names, see `pypi_names`) are declared to uv as installed: a `==`
constraint at the locked version, `dependency-metadata` with no requirements
(so uv never reads their old, sometimes invalid, PyPI metadata), and an empty
stub wheel in a private find-links directory (so the version exists even when
no index has it). They are dropped from the output: pip never installs a
second copy over conda's files.

Wheels are preferred; a release that has no wheel for the target (termcolor
1.1.0, PyPI's pyspark) is locked as its source release, sdist URL and sha256,
with the `Requires-Dist` its archive declares, and built into a wheel for the
environment's own python at install time (`distributions.build_wheel`).
`pip-only-binary` forbids that for some or all names, as uv's `--only-binary`.

A requirement with extras on a conda-provided distribution (`dask[dataframe]`
over conda's `dask-core`) keeps its `==` pin to conda's version but is resolved
with the distribution's real metadata, so that what the extra asks for is locked.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from packaging.requirements import Requirement
from packaging.utils import InvalidWheelFilename, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from hatch_mlenv import credentials
from hatch_mlenv._compat import tomllib
from hatch_mlenv.distributions import uv_binary, uv_cache, uv_environment
from hatch_mlenv.errors import ConfigError, SolveError
from hatch_mlenv.lockfile import LockedPackage
from hatch_mlenv.pip._explain import explain
from hatch_mlenv.pip._indexes import index_urls
from hatch_mlenv.pip._metadata import _requirements
from hatch_mlenv.pip._pylock import render_pylock
from hatch_mlenv.pip._target import marker_environment, target_tags, uv_platform
from hatch_mlenv.progress import step
from hatch_mlenv.pypi_names import canonical, provided_distributions

if TYPE_CHECKING:
    from hatch_mlenv.spec import Spec


def resolve_pip(
    spec: Spec,
    platform: str,
    conda: list[LockedPackage],
    preferred: Iterable[LockedPackage] = (),
    update: Iterable[str] = (),
) -> list[LockedPackage]:
    """Pinned pip packages for `platform`, resolved by uv against its locked python."""
    python = next((p for p in conda if p.name == "python"), None)
    if python is None:
        raise ConfigError(
            spec.pyproject,
            "tool.mlenv.pip",
            f"pip requirements need a python in the conda packages for {platform}; set tool.mlenv.python",
        )
    environment = marker_environment(platform, python.version)
    provided = provided_distributions(conda, spec.pypi_names)
    wanted = []
    with_extras: set[str] = set()  # conda-provided names whose extras need their real metadata
    for text in spec.pip_for(platform):
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate(environment):
            continue
        package = provided.get(canonical(requirement.name))
        if package is None:
            wanted.append(text)
        elif not _satisfies(requirement, package.version):
            raise SolveError(
                f"pip requirement {text!r} conflicts with conda package {package.name} {package.version} "
                f"on {platform}: {package.name} provides the Python distribution {requirement.name} "
                f"at version {package.version}, which does not satisfy {requirement.specifier}"
            )
        elif requirement.extras:
            wanted.append(text)
            with_extras.add(canonical(requirement.name))
    if not wanted:
        return []
    indexes = index_urls(spec)
    for location in spec.pip_find_links:
        if "://" not in location and not Path(location).is_dir():
            raise ConfigError(spec.pyproject, "tool.mlenv.pip-find-links", f"{location} is not a directory")
    target, variables = uv_platform(spec, platform)
    previous = [p for p in preferred if p.platform == platform and p.manager == "pip"]
    what = f"{len(wanted)} pip requirement{'s' if len(wanted) != 1 else ''}"
    with step(f"resolving {what} for {platform} (python {python.version}) with uv"):
        entries = _compile(
            spec, wanted, provided, with_extras, python.version, target, variables, indexes,
            previous, [canonical(n) for n in update], platform, target_tags(spec, platform, python.version),
        )
    requires = _requirements(entries, environment, [*indexes, *spec.pip_find_links])
    return [
        LockedPackage(
            platform=platform,
            manager="pip",
            name=entry["name"],
            version=entry["version"],
            url=credentials.strip(entry["url"]),
            sha256=entry["sha256"],
            dependencies=requires[index],
        )
        for index, entry in enumerate(entries)
    ]


def _satisfies(requirement: Requirement, version: str) -> bool:
    try:
        return requirement.specifier.contains(version, prereleases=True)
    except InvalidVersion:  # not a PEP 440 version: a conda-only scheme we cannot compare
        return True


def _compile(
    spec: Spec,
    wanted: list[str],
    provided: Mapping[str, LockedPackage],
    with_extras: set[str],
    python_version: str,
    target: str,
    variables: dict[str, str],
    indexes: list[str],
    previous: list[LockedPackage],
    upgrade: list[str],
    platform: str,
    ranking: dict[str, int],
) -> list[dict[str, str]]:
    """Run `uv pip compile` once; the pylock.toml's packages as {name, version, url, sha256}."""
    installed = _installed_versions(provided)
    # A conda-provided name asked for with extras is pinned to conda's version but keeps
    # its real metadata (no stub, no empty dependency-metadata): its extras' requirements.
    declared = {name: version for name, version in installed.items() if name not in with_extras}
    with tempfile.TemporaryDirectory(prefix="mlenv-uv-") as scratch:
        root = Path(scratch)
        (root / "requirements.in").write_text("\n".join(wanted) + "\n", encoding="utf-8")
        (root / "constraints.txt").write_text(
            "".join(f"{name}=={version}\n" for name, version in installed.items()), encoding="utf-8"
        )
        (root / "uv.toml").write_text(
            "".join(
                f'[[dependency-metadata]]\nname = "{name}"\nversion = "{version}"\nrequires-dist = []\n\n'
                for name, version in declared.items()
            ),
            encoding="utf-8",
        )
        build_constraints = root / "build-constraints.txt"
        build_constraints.write_text("".join(f"{c}\n" for c in spec.pip_build_constraints), encoding="utf-8")
        stubs = root / "installed"
        stubs.mkdir()
        for name, version in declared.items():
            _stub_wheel(stubs, name, version)
        output = root / "pylock.toml"
        if previous:  # uv takes an existing output file's pins as preferences
            output.write_text(render_pylock(previous), encoding="utf-8")
        command = [
            uv_binary(), "pip", "compile", str(root / "requirements.in"),
            "--constraints", str(root / "constraints.txt"),
            "--config-file", str(root / "uv.toml"),
            "--build-constraints", str(build_constraints),
            # Any interpreter will do to resolve (and to read an sdist's metadata); without one uv
            # runs every python on PATH to find one, ~1 s per platform behind pyenv shims (bench/pip.py).
            "--python", sys.executable,
            "--python-version", python_version,
            "--python-platform", target,
            *[arg for name in spec.pip_only_binary for arg in ("--only-binary", name)],
            *[arg for location in spec.pip_find_links for arg in ("--find-links", location)],
            "--find-links", str(stubs),
            *[arg for name in upgrade for arg in ("--upgrade-package", name)],
            "--output-file", str(output),
            "--cache-dir", uv_cache(),
            "--no-header", "--quiet", "--color", "never", "--no-progress",
        ]
        result = subprocess.run(command, env={**uv_environment(indexes), **variables}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # not capture_output: see distributions.build_wheel
        if result.returncode != 0:
            raise SolveError(explain(result.stderr, spec, installed, with_extras, platform, python_version, indexes))
        document = tomllib.loads(output.read_text(encoding="utf-8"))
    entries = []
    for package in document.get("packages", []):
        name = canonical(package["name"])
        if name in installed or name in provided:
            continue
        chosen = _best_file(package, ranking, platform)
        url = chosen.get("url") or Path(chosen["path"]).resolve().as_uri()
        entries.append({"name": name, "version": package["version"], "url": url, "sha256": chosen["hashes"]["sha256"]})
    return entries


def _best_file(package: dict, ranking: dict[str, int], platform: str) -> dict:
    """The file an installer on the target would pick among those uv lists for a version: of the
    wheels (a release may have several that fit: an abi3 build and a pure one), the one whose best
    tag comes first in the target's tag order, as pip and uv order them; else its sdist, which uv
    only lists when building it is allowed."""

    def rank(wheel: dict) -> int:
        location = urlsplit(wheel["url"]).path if wheel.get("url") else wheel.get("path") or ""
        filename = wheel.get("name") or unquote(location.rsplit("/", 1)[-1])
        try:
            wheel_tags = parse_wheel_filename(filename)[3]
        except InvalidWheelFilename:
            return len(ranking)
        return min((ranking.get(str(tag), len(ranking)) for tag in wheel_tags), default=len(ranking))

    wheels = [w for w in package.get("wheels") or [] if "sha256" in w.get("hashes", {})]
    best = min(wheels, key=rank, default=None)
    if best is not None and rank(best) < len(ranking):
        return best
    sdist = package.get("sdist")
    if sdist and "sha256" in sdist.get("hashes", {}):
        return sdist
    raise SolveError(
        f"cannot lock {package['name']} {package.get('version')} for {platform}: uv returned no wheel "
        f"that fits the target and no source release with a sha256 ({len(package.get('wheels') or [])} wheels listed)"
    )


def _installed_versions(provided: Mapping[str, LockedPackage]) -> dict[str, str]:
    """PyPI name -> PEP 440 version of the conda-provided distributions we can declare to uv."""
    versions = {}
    for name, package in sorted(provided.items()):
        try:
            versions[name] = str(Version(package.version))
        except InvalidVersion:
            print(
                f"mlenv: warning: conda package {package.name} {package.version} has no PEP 440 version; "
                f"pip may lock its own {name}",
                file=sys.stderr,
            )
    return versions


def _stub_wheel(directory: Path, name: str, version: str) -> None:
    """An empty wheel that stands for a conda-installed distribution in uv's candidates."""
    stem = name.replace("-", "_")
    dist_info = f"{stem}-{version}.dist-info"
    with zipfile.ZipFile(directory / f"{stem}-{version}-py2.py3-none-any.whl", "w") as wheel:
        wheel.writestr(f"{dist_info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        wheel.writestr(f"{dist_info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py2-none-any\nTag: py3-none-any\n")
        wheel.writestr(f"{dist_info}/RECORD", "")
