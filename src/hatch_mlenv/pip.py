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

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from hatch_mlenv import credentials
from hatch_mlenv.errors import ConfigError, SolveError
from hatch_mlenv.lockfile import LockedPackage
from hatch_mlenv.pypi_names import canonical, provided_distributions
from hatch_mlenv.spec import ONLY_BINARY_ALL

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

if TYPE_CHECKING:
    from packaging.requirements import Requirement

    from hatch_mlenv.spec import Spec

DEFAULT_INDEX = "https://pypi.org/simple"

_MARKER_PLATFORM = {
    "linux": ("linux", "Linux", "posix"),
    "osx": ("darwin", "Darwin", "posix"),
    "win": ("win32", "Windows", "nt"),
}
_MARKER_MACHINE = {"64": "x86_64", "aarch64": "aarch64", "arm64": "arm64", "ppc64le": "ppc64le", "s390x": "s390x"}

# uv 0.13's --python-platform targets per conda platform. Linux targets carry the
# manylinux level, chosen from the platform's __glibc; uv knows these levels.
_UV_LINUX_CPU = {"linux-64": "x86_64", "linux-aarch64": "aarch64"}
_UV_MANYLINUX_MINORS = (17, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40)
_UV_OTHER = {
    "osx-64": "x86_64-apple-darwin",
    "osx-arm64": "aarch64-apple-darwin",
    "win-64": "x86_64-pc-windows-msvc",
    "win-arm64": "aarch64-pc-windows-msvc",
    "win-32": "i686-pc-windows-msvc",
}


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


def uv_platform(spec: Spec, platform: str) -> tuple[str, dict[str, str]]:
    """uv's `--python-platform` for a conda platform, and the variables it needs (macOS target)."""
    virtual = spec.virtual_packages.get(platform, {})
    if platform in _UV_LINUX_CPU:
        glibc = virtual.get("__glibc", ("2.17", "0"))[0]
        major, minor = _glibc(virtual)
        usable = [m for m in _UV_MANYLINUX_MINORS if major > 2 or m <= minor]
        if not usable:
            raise ConfigError(
                spec.pyproject, f"tool.mlenv.virtual-packages.{platform}.__glibc",
                f"glibc {glibc} is older than the oldest manylinux level uv resolves for (2.17)",
            )
        return f"{_UV_LINUX_CPU[platform]}-manylinux_2_{usable[-1]}", {}
    if platform in _UV_OTHER:
        variables = {}
        if platform.startswith("osx") and "__osx" in virtual:
            variables["MACOSX_DEPLOYMENT_TARGET"] = virtual["__osx"][0]
        return _UV_OTHER[platform], variables
    raise ConfigError(
        spec.pyproject, "tool.mlenv.pip",
        f"pip packages cannot be locked for {platform}: uv resolves for "
        f"{', '.join(sorted([*_UV_LINUX_CPU, *_UV_OTHER]))}",
    )


def _glibc(virtual: Mapping[str, tuple[str, str]]) -> tuple[int, int]:
    """(major, minor) of a platform's `__glibc` virtual package; 2.17 when absent or unreadable."""
    try:
        major, minor = (int(x) for x in virtual.get("__glibc", ("2.17", "0"))[0].split(".")[:2])
    except ValueError:
        return 2, 17
    return major, minor


def index_urls(spec: Spec) -> list[str]:
    """The spec's index URLs with `${VAR}` expanded: credentials included, for fetching only."""
    urls = [(spec.pip_index_url or DEFAULT_INDEX, "tool.mlenv.pip-index-url")]
    urls += [(u, f"tool.mlenv.pip-extra-index-urls[{i}]") for i, u in enumerate(spec.pip_extra_index_urls)]
    return [credentials.expand(url, spec.pyproject, key) for url, key in urls]


def resolve_pip(
    spec: Spec,
    platform: str,
    conda: list[LockedPackage],
    preferred: Iterable[LockedPackage] = (),
    update: Iterable[str] = (),
) -> list[LockedPackage]:
    """Pinned pip packages for `platform`, resolved by uv against its locked python."""
    from packaging.requirements import Requirement

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
    for text in spec.pip:
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
    from hatch_mlenv.progress import step

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
    from packaging.version import InvalidVersion

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
    from hatch_mlenv.distributions import uv_binary, uv_cache, uv_environment

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
            raise SolveError(_explain(result.stderr, spec, installed, with_extras, platform, python_version, indexes))
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
    from urllib.parse import unquote, urlsplit

    from packaging.utils import InvalidWheelFilename, parse_wheel_filename

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


# manylinux_2_X levels that also have a legacy name
_LEGACY_MANYLINUX = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
_WINDOWS = {"win-64": "win_amd64", "win-arm64": "win_arm64", "win-32": "win32"}


def target_tags(spec: Spec, platform: str, python_version: str) -> dict[str, int]:
    """The wheel tags an installer accepts on the target, best first, as {tag: rank}."""
    from packaging import tags

    version = tuple(int(x) for x in python_version.split(".")[:2])
    virtual = spec.virtual_packages.get(platform, {})
    system, _, arch = platform.partition("-")
    if system == "linux":
        cpu = _UV_LINUX_CPU.get(platform, arch)
        major, level = _glibc(virtual)
        platforms = []
        for minor in range(level if major == 2 else 40, 4, -1):
            platforms.append(f"manylinux_2_{minor}_{cpu}")
            if minor in _LEGACY_MANYLINUX:
                platforms.append(f"{_LEGACY_MANYLINUX[minor]}_{cpu}")
    elif system == "osx":
        macos = tuple(int(x) for x in virtual.get("__osx", ("11.0", "0"))[0].split(".")[:2])
        platforms = list(tags.mac_platforms(macos, "arm64" if arch == "arm64" else "x86_64"))
    else:
        platforms = [_WINDOWS.get(platform, platform)]
    ordered = [*tags.cpython_tags(version, platforms=platforms),
               *tags.compatible_tags(version, f"cp{version[0]}{version[1]}", platforms)]
    ranking: dict[str, int] = {}
    for tag in ordered:
        ranking.setdefault(str(tag), len(ranking))
    return ranking


def _installed_versions(provided: Mapping[str, LockedPackage]) -> dict[str, str]:
    """PyPI name -> PEP 440 version of the conda-provided distributions we can declare to uv."""
    from packaging.version import InvalidVersion, Version

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
    import zipfile

    stem = name.replace("-", "_")
    dist_info = f"{stem}-{version}.dist-info"
    with zipfile.ZipFile(directory / f"{stem}-{version}-py2.py3-none-any.whl", "w") as wheel:
        wheel.writestr(f"{dist_info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        wheel.writestr(f"{dist_info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py2-none-any\nTag: py3-none-any\n")
        wheel.writestr(f"{dist_info}/RECORD", "")


def _requirements(
    entries: list[dict[str, str]], environment: dict[str, str], known: list[str]
) -> list[dict[str, str]]:
    """Each wheel's `Requires-Dist` for the target, as conda-lock records dependencies: {name: specifier}.

    Read from the core metadata that indexes serve next to wheels (PEP 658), or
    from the wheel itself for a local file, or from a source release's archive
    (downloaded into the cache the install takes it from); fetched in parallel,
    and kept in the user cache by the file's sha256 (its metadata never changes),
    so a relock or another platform with the same files asks the index nothing.
    """
    if not entries:
        return []
    from hatch_mlenv.paths import cache_dir
    from hatch_mlenv.progress import step

    cache = cache_dir() / "wheel-metadata"

    def metadata(entry: dict[str, str]) -> str | None:
        cached = cache / f"{entry['sha256']}.METADATA"
        try:
            return cached.read_text(encoding="utf-8")
        except OSError:
            pass
        if is_sdist(entry["url"]):
            # "" when the archive declares nothing (termcolor 1.1.0): cached too, never read again
            text = sdist_metadata(fetch(entry["url"], entry["sha256"], f"{entry['name']} {entry['version']}",
                                        known)) or ""
        else:
            text = _core_metadata(entry["url"], known)
        if text is not None:
            try:
                cache.mkdir(parents=True, exist_ok=True)
                partial = cached.with_suffix(f".{os.getpid()}.part")
                partial.write_text(text, encoding="utf-8")
                os.replace(partial, cached)
            except OSError:  # a cache: never worth failing a lock for
                pass
        return text

    from hatch_mlenv.distributions import fetch, is_sdist, sdist_metadata

    sources = [e for e in entries if is_sdist(e["url"]) and not (cache / f"{e['sha256']}.METADATA").is_file()]
    with ThreadPoolExecutor(max_workers=8) as pool:
        if sources:  # a source release has no metadata beside it: the archive itself is read
            names = ", ".join(f"{e['name']} {e['version']}" for e in sources)
            with step(f"reading the metadata of {len(sources)} source release{'s' if len(sources) != 1 else ''} ({names})"):
                texts = list(pool.map(metadata, entries))
        else:
            texts = list(pool.map(metadata, entries))
    return [_dependencies(text, environment) for text in texts]


def _core_metadata(url: str, known: list[str]) -> str | None:
    """A wheel's METADATA: the PEP 658 file beside it, else (indexes serve none for many older
    wheels, as PyPI for aiohttp 3.8.6) read out of the remote wheel with HTTP range requests, as
    uv and pip do: the zip's end, its central directory, then only the METADATA member."""
    import urllib.error
    import urllib.request
    import zipfile
    from urllib.parse import unquote, urlsplit

    if url.startswith("file://"):
        with zipfile.ZipFile(unquote(urlsplit(url).path)) as wheel:
            return _metadata_member(wheel)
    public = credentials.strip(url)
    header = credentials.authorization(url, known)
    request = urllib.request.Request(public + ".metadata")
    if header:
        request.add_header("Authorization", header)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        if exc.code != 404:
            return None
    except (OSError, urllib.error.URLError):
        return None
    try:
        with zipfile.ZipFile(_RemoteFile(public, header)) as wheel:
            return _metadata_member(wheel)
    except (OSError, urllib.error.URLError, zipfile.BadZipFile, StopIteration, ValueError):
        return None  # no metadata to be had: the lock records no dependencies for it


def _metadata_member(wheel) -> str:  # noqa: ANN001 - a zipfile.ZipFile
    name = next(n for n in wheel.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
    return wheel.read(name).decode("utf-8", "replace")


class _RemoteFile:
    """A read-only, seekable view of a file on an HTTP server that honours `Range`, for zipfile:
    each read the cache cannot serve fetches at least 64 KiB from where it starts."""

    CHUNK = 64 * 1024

    def __init__(self, url: str, authorization: str | None) -> None:
        self.url, self.authorization = url, authorization
        self.position = 0
        self.chunks: dict[int, bytes] = {}  # start offset -> bytes
        tail = self._get(f"bytes=-{self.CHUNK}")
        self.size = self._total
        self.chunks[self.size - len(tail)] = tail

    def _get(self, byte_range: str) -> bytes:
        import urllib.request

        request = urllib.request.Request(self.url, headers={"Range": byte_range})
        if self.authorization:
            request.add_header("Authorization", self.authorization)
        with urllib.request.urlopen(request, timeout=60) as response:
            content_range = response.headers.get("Content-Range", "")
            if response.status != 206 or "/" not in content_range:
                raise OSError(f"{self.url}: the server does not serve byte ranges")
            self._total = int(content_range.rsplit("/", 1)[1])
            return response.read()

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.position, 2: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def read(self, count: int = -1) -> bytes:
        end = self.size if count is None or count < 0 else min(self.size, self.position + count)
        if end <= self.position:
            return b""
        for start, data in self.chunks.items():
            if start <= self.position and end <= start + len(data):
                found = data[self.position - start:end - start]
                self.position = end
                return found
        stop = max(end, min(self.size, self.position + self.CHUNK))
        data = self._get(f"bytes={self.position}-{stop - 1}")
        self.chunks[self.position] = data
        found = data[:end - self.position]
        self.position = end
        return found


def _dependencies(metadata: str | None, environment: dict[str, str]) -> dict[str, str]:
    import email.parser

    from packaging.requirements import InvalidRequirement, Requirement

    if metadata is None:
        return {}
    dependencies = {}
    for text in email.parser.HeaderParser().parsestr(metadata).get_all("Requires-Dist") or []:
        try:
            requirement = Requirement(text)
        except InvalidRequirement:
            continue
        if requirement.marker is not None and not requirement.marker.evaluate(environment):
            continue
        # No specifier is "", not conda's "*": rattler reads a pip entry's dependencies as PEP 508.
        dependencies[canonical(requirement.name)] = str(requirement.specifier)
    return dict(sorted(dependencies.items()))


def _explain(
    stderr: str, spec: Spec, installed: Mapping[str, str], with_extras: set[str], platform: str,
    python_version: str, indexes: list[str],
) -> str:
    """A failed pip resolution in hatch-mlenv's words: the first line is the deepest cause uv
    found (the first premise of its derivation, or the build that failed), with conda's versions
    labelled as conda's and the target python named; uv's derivation follows, without the hints
    that name uv's own command-line options."""
    import re

    text = credentials.redact(stderr, indexes).rstrip()
    for name, version in installed.items():  # what conda provides is not what the user asked for
        pattern = "[-_.]".join(re.escape(part) for part in re.split(r"[-_.]", name))
        text = re.sub(rf"you\s+require\s+({pattern})=={re.escape(version)}\b", rf"conda provides \1 {version}",
                      text, flags=re.IGNORECASE)
        text = re.sub(rf"\s+and\s+({pattern})=={re.escape(version)}\b", rf", but conda provides \1 {version}",
                      text, flags=re.IGNORECASE)
        text = re.sub(rf"\b({pattern})=={re.escape(version)}\b", rf"\1 {version} (from conda)", text,
                      flags=re.IGNORECASE)
    text = re.sub(r"the\s+(?:current|requested)\s+Python\s+version\s+\([^)]*\)", f"the environment's python {python_version}", text)
    # uv's hints that name its own options (`--python-version`, `--no-build`) are not for our users
    lines = [line for line in text.splitlines()
             if line.strip() and not line.startswith("warning: The requested Python version")
             and not (line.startswith("hint:") and "--" in line)]
    short = ".".join(python_version.split(".")[:2])
    only_binary = set(spec.pip_only_binary)
    cause, hint = _first_cause(lines), None
    built = re.search(r"Failed to (?:download and )?build `([^`]+)`", text)
    if built:
        failure = _build_error(lines) or (cause or "").replace("you require", "its build requires")
        cause = f"{built.group(1)} has no wheel for {platform} and its source release does not build here" + (
            f" ({failure})" if failure else "")
        hint = ("constrain what its build installs with tool.mlenv.pip-build-constraints (as uv's build "
                "constraints), or refuse source releases with tool.mlenv.pip-only-binary = true")
    elif cause is None:
        cause = lines[0].removeprefix("error: ") if lines else "uv gave no reason"
    for name in sorted(with_extras):  # extras need the distribution's metadata at conda's version
        if re.search(rf"no\s+versions?\s+of\s+{re.escape(name)}\b", text, flags=re.IGNORECASE):
            cause = (f"the extras asked of {name} need its metadata at conda's version {installed.get(name)}, "
                     f"which the index does not have; {cause}")
            hint = f"ask conda for what the extra needs instead, or drop the extras from {name}"
    refused = re.search(r"An index URL \((\S+)\) could not be queried due to a lack of valid authentication "
                        r"credentials \(([^)]*)\)", text)
    if refused:  # what looks like a missing package is a refused login
        cause = f"the index {refused.group(1)} refused the credentials ({refused.group(2)}); {cause}"
    # the word before each " has no usable wheels" (split, not a regex: a 70,000-character
    # requirement must not make this quadratic)
    for name in [(part.rsplit(None, 1) or [""])[-1].split("==")[0] for part in cause.split(" has no usable wheels")[:-1]]:
        if ONLY_BINARY_ALL in only_binary or canonical(name) in only_binary:
            cause = cause.replace("has no usable wheels", f"has no wheel for {platform} (python {short}) and "
                                  "tool.mlenv.pip-only-binary forbids building it from source", 1)
            hint = "allow its source release: remove it from tool.mlenv.pip-only-binary (or set it to false)"
        else:
            cause = cause.replace("has no usable wheels", f"has no wheel for {platform} (python {short}) "
                                  "and no source release", 1)
    asked = re.search(r",?\s+and you require ([^,]+?)$", cause)
    if asked and re.split(r"[=<>!~\[; ]", asked.group(1))[0] in cause[:asked.start()]:  # named already
        cause = cause[:asked.start()]
    # "python X does not satisfy Python>=V and P depends on Python>=V": the package first
    cause = re.sub(r"^(the environment's python \S+) does not satisfy (\S+) and (\S+) depends on \2$",
                   r"\3 depends on \2, which \1 does not satisfy", cause)
    cause = cause.replace("you require", "the spec asks for")
    cause = cause.replace("was not found in the package registry", f"is not on the index {credentials.strip(indexes[0])}"
                          if indexes else "is not on the index")
    if "the environment's python" in cause and "does not satisfy" in cause:
        hint = f"the python comes from the conda side: set tool.mlenv.python to a version the package supports"
    if len(cause) > 600:  # the first line stays a line; the whole derivation follows below
        cause = cause[:600] + " …"
    head = f"cannot resolve the pip requirements for {platform} (python {python_version}): {cause}"
    if built:  # a build's traceback is the package's, not ours: its last word is on the first line
        lines = _without_build_output(lines)
    below = ["  " + (f"uv: {line[7:]}" if line.startswith("error: ") else line) for line in lines]
    if hint:
        below.append(f"  hint: {hint}")
    return "\n".join([head, *below])


def _first_cause(lines: list[str]) -> str | None:
    """The first premise of uv's derivation: `Because A and B, we can conclude ...` gives `A and B`."""
    for index, line in enumerate(lines):
        body = line.strip().removeprefix("cause:").strip()
        if body.startswith("Because "):
            # uv wraps its sentences at the terminal's width: the rest of the paragraph follows
            text = " ".join([body, *(rest.strip() for rest in lines[index + 1:index + 8])])
            return " ".join(text[len("Because "):].split(", we can conclude")[0].split()).rstrip(".")
    return None


def _without_build_output(lines: list[str]) -> list[str]:
    kept, inside = [], False
    for line in lines:
        if line.strip() == "[stderr]" or line.strip() == "[stdout]":
            inside = True
            continue
        if inside and line.startswith((" ", "\t")) and not line.lstrip().startswith("cause:"):
            continue
        inside = False
        kept.append(line)
    return kept


def _build_error(lines: list[str]) -> str | None:
    """The build's own last word: the last line of its stderr (an exception, usually)."""
    inside = False
    last = None
    for line in lines:
        stripped = line.strip()
        if stripped == "[stderr]":
            inside = True
            continue
        if stripped.startswith("hint:"):
            inside = False
        if inside and stripped and not stripped.startswith(("^", "~")):
            last = stripped
    return last


def render_pylock(packages: Iterable[LockedPackage], python_version: str | None = None, platform: str | None = None) -> str:
    """PEP 751 `pylock.toml` text for locked pip packages: every entry with its wheel (or, for a
    source release, its sdist) URL and sha256."""
    from hatch_mlenv.distributions import is_sdist

    lines = ['lock-version = "1.0"', 'created-by = "hatch-mlenv"']
    if python_version is not None:
        lines.append(f'requires-python = "=={".".join(python_version.split(".")[:2])}.*"')
    if platform is not None and python_version is not None:
        marker = marker_environment(platform, python_version)
        environment = f"sys_platform == '{marker['sys_platform']}' and platform_machine == '{marker['platform_machine']}'"
        lines.append(f"environments = [{json.dumps(environment)}]")
    for package in sorted(packages, key=lambda p: p.name):
        # JSON strings are valid TOML basic strings.
        lines += [
            "",
            "[[packages]]",
            f"name = {json.dumps(package.name)}",
            f"version = {json.dumps(package.version)}",
            (f"sdist = {{ url = {json.dumps(package.url)}, hashes = {{ sha256 = {json.dumps(package.sha256)} }} }}"
             if is_sdist(package.url) else
             f"wheels = [{{ url = {json.dumps(package.url)}, hashes = {{ sha256 = {json.dumps(package.sha256)} }} }}]"),
        ]
    return "\n".join(lines) + "\n"
