"""The spec stage: read and validate `[tool.mlenv]` from pyproject.toml into a typed `Spec`.

Loading a spec must stay cheap (it runs on every command, including the no-op
`mlenv lock`), so this module imports only the standard library and
`packaging`; match specs are checked with rattler by `Spec.check_match_specs`
just before a solve.
"""

from __future__ import annotations

import hashlib
import json
import platform as _platform
import posixpath
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlparse

from hatch_mlenv.errors import ConfigError, did_you_mean
from hatch_mlenv.errors import first_line as _first_line

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

PYPROJECT = "pyproject.toml"
DEFAULT_CHANNELS = ("conda-forge",)
DEFAULT_LOCKFILE = "conda-lock.yml"
DEFAULT_PREFIX = "/opt/env"
# The built-in solver (hatch_mlenv.solve), registered through the same hook as any other.
DEFAULT_SOLVER = "rattler"
CONDA_CHANNEL_ALIAS = "https://conda.anaconda.org"

KNOWN_PLATFORMS = (
    "linux-32",
    "linux-64",
    "linux-aarch64",
    "linux-armv6l",
    "linux-armv7l",
    "linux-ppc64le",
    "linux-s390x",
    "linux-riscv64",
    "osx-64",
    "osx-arm64",
    "win-32",
    "win-64",
    "win-arm64",
    "emscripten-wasm32",
    "wasi-wasm32",
    "zos-z",
)

# The virtual packages a solve assumes when the spec declares nothing: the
# lowest host that current channels' packages need (anaconda main and
# conda-forge build Linux packages against glibc 2.28, as pixi assumes; pixi's
# kernel 4.18 and macOS 13.0), and no CUDA at all: a CPU environment must not
# lock a CUDA build by accident (conda-lock assumes a CUDA 11.4 driver).
# `[tool.mlenv.system-requirements]` raises them; `virtual-packages` overrides any.
_DEFAULT_VIRTUAL_PACKAGES: dict[str, dict[str, tuple[str, str]]] = {
    "linux": {
        "__unix": ("0", "0"),
        "__linux": ("4.18", "0"),
        "__glibc": ("2.28", "0"),
    },
    "osx": {"__unix": ("0", "0"), "__osx": ("13.0", "0")},
    "win": {"__win": ("0", "0")},
}
_ARCHSPEC = {
    "64": "x86_64",
    "aarch64": "aarch64",
    "arm64": "arm64",
    "ppc64le": "ppc64le",
}
# `[tool.mlenv.system-requirements]` key -> the virtual package it sets, on the systems it applies to
# (`archspec` applies to the platforms whose architecture family starts the value: x86_64_v3 -> x86_64).
SYSTEM_REQUIREMENTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "cuda": ("__cuda", ("linux", "win")),
    "glibc": ("__glibc", ("linux",)),
    "linux": ("__linux", ("linux",)),
    "macos": ("__osx", ("osx",)),
    "archspec": ("__archspec", ("linux", "osx", "win")),
}
# The way back: `__cuda` -> `cuda` (the word of image labels and of the needs' `by`).
REQUIREMENT_KEYS = {name: key for key, (name, _) in SYSTEM_REQUIREMENTS.items()}
# Every pattern ends in \Z, not $: `$` also matches before a final newline ("demo\n").
_REQUIREMENT_VERSION_RE = re.compile(r"^[0-9]+(\.[0-9]+){0,3}\Z")  # ASCII: \d takes any script's digits
_ARCHSPEC_RE = re.compile(r"^[A-Za-z0-9_]+\Z")

# Names (environments, channels, conda packages) and variable values have bounds, documented in the README.
MAX_NAME_LENGTH = 100
MAX_VARIABLE_BYTES = 32 * 1024
_NAME_RE = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_NAME_LENGTH - 1}}}\Z")
_VARIABLE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
# PEP 508 distribution names.
_PYPI_NAME_RE = re.compile(r"^([A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9._-]*[A-Za-z0-9])\Z")
_PYTHON_RE = re.compile(r"^[0-9]+(\.[0-9]+){0,2}\Z")
# One term of a `python` constraint (`>=3.10`, `3.11.*`, `=3.11`, `3.13.0rc1`); terms are joined by `,` and `|`.
_PYTHON_TERM_RE = re.compile(r"^(?:==|!=|>=|<=|~=|>|<|=)?[ ]*[0-9]+(?:\.[0-9]+)*(?:(?:a|b|rc|dev|post)[0-9]*)?(?:\.\*)?\Z")
# A virtual package's "VERSION" or "VERSION=BUILD".
_VIRTUAL_VERSION_RE = re.compile(r"^[0-9]{1,9}(?:\.[0-9]{1,9})*\Z")
_VIRTUAL_BUILD_RE = re.compile(r"^[A-Za-z0-9_.]+\Z")

_TOP_KEYS = (
    "name",
    "channels",
    "platforms",
    "python",
    "conda",
    "pip",
    "include-project-dependencies",
    "pip-index-url",
    "pip-extra-index-urls",
    "pip-find-links",
    "pip-only-binary",
    "pip-build-constraints",
    "pypi-names",
    "lockfile",
    "lock",
    "variables",
    "virtual-packages",
    "docker",
    "registry",
    "description",
    "extends",
    "envs",
    "managed",
    "interpreter",
    "spark",
    "solver",
    "system-requirements",
)
# Keys whose values extend the inherited ones (by package name) instead of replacing them.
_LIST_MERGE_KEYS = ("conda", "pip")
# Tables merged key by key.
_TABLE_MERGE_KEYS = ("variables", "virtual-packages", "system-requirements", "docker", "spark", "pypi-names")
_DOCKER_KEYS = ("base-image", "base-dockerfile", "registry", "repository", "prefix")
BASE_DOCKERFILE_KEY = "tool.mlenv.docker.base-dockerfile"
_SPARK_KEYS = ("packages", "repositories", "conf")
# groupId:artifactId:version, the form spark.jars.packages takes.
_MAVEN_RE = re.compile(r"^[A-Za-z0-9_.\-]+:[A-Za-z0-9_.\-]+:[A-Za-z0-9_.\-+]+\Z")
_VARIABLE_KEYS = ("value", "secret")
# `lock`: what commands do with a stale lock (see `hatch_mlenv.lock.POLICIES`).
LOCK_POLICIES = ("relock", "locked", "frozen")

# -- values that become Dockerfile words, shell words, paths and URLs --------------------------
# Each check takes a value as the spec (or a registered lock) gives it and returns what is wrong
# with it against the grammar of what it becomes, or None. `parse_spec` runs them on every spec,
# a registered version's definition included; `check_locked_values` on what a lock carries;
# the image stage again on what it writes.

# Docker's distribution reference grammar (github.com/distribution/reference, regexp.go).
_ALNUM = r"[a-z0-9]+"
_PATH_COMPONENT = rf"{_ALNUM}(?:(?:[._]|__|-+){_ALNUM})*"
_REMOTE_NAME = rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_IMAGE_RE = re.compile(rf"(?P<name>(?:{_DOMAIN}/)?{_REMOTE_NAME})(?::{_TAG})?(?:@(?P<digest>{_DIGEST}))?")
_REPOSITORY_RE = re.compile(_REMOTE_NAME)
_REGISTRY_RE = re.compile(rf"{_DOMAIN}(?:/{_REMOTE_NAME})?")
_TAG_RE = re.compile(_TAG)
_DIGEST_RE = re.compile(_DIGEST)
_MAX_IMAGE_NAME = 255  # docker's NameTotalLengthMax
# An image prefix: POSIX portable file name characters (and '+'), so that it is one word in a
# Dockerfile, a shell script and conda's prefix replacement.
_PREFIX_RE = re.compile(r"(?:/[A-Za-z0-9._+-]+)+")
# C0 controls but tab, and DEL: no environment variable, Dockerfile line or properties line holds them.
_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_URL_REFERENCE_RE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")
OCI_LAYOUT_SCHEME = "oci:"
_VCS_DIRECTORIES = (".git", ".hg", ".svn")
LOCKFILE_SUFFIXES = (".yml", ".yaml")


def _control(text: str) -> str | None:
    """What is wrong with a control character in `text`, or None when it has none."""
    found = _CONTROL_RE.search(text)
    if found is None:
        return None
    char = found.group()
    what = {"\0": "a NUL byte", "\n": "a line break", "\r": "a carriage return"}.get(char, "a control character")
    return f"contains {what} (U+{ord(char):04X})"


def split_oci_layout(base_image: str) -> tuple[str, str | None]:
    """`oci:PATH[:TAG|@DIGEST]` -> (PATH as written, TAG or DIGEST or None)."""
    spec = base_image[len(OCI_LAYOUT_SCHEME):]
    if "@" in spec:
        path, reference = spec.rsplit("@", 1)
        return path, reference
    if ":" in spec and "/" not in spec.rsplit(":", 1)[1]:
        path, reference = spec.rsplit(":", 1)
        return path, reference
    return spec, None


def image_reference_problem(text: str) -> str | None:
    """A base image: docker's reference grammar (`[host[:port]/]path[:tag][@digest]`), or an OCI
    layout `oci:PATH[:TAG|@DIGEST]` whose PATH is absolute or stays inside the project."""
    problem = _control(text)
    if problem is not None:
        return problem
    if text.startswith(OCI_LAYOUT_SCHEME):
        path, reference = split_oci_layout(text)
        if not path or any(c.isspace() for c in path):
            return "is not oci:PATH[:TAG|@DIGEST] (PATH empty or with spaces)"
        if reference is not None and not (
            (_DIGEST_RE.fullmatch(reference) if "@" in text else _TAG_RE.fullmatch(reference))
        ):
            return f"is not oci:PATH[:TAG|@DIGEST]: {reference!r} is not a tag or digest"
        if not path.startswith("/") and _escapes(path):
            return "names an OCI layout outside the project (oci:PATH is absolute or inside the project)"
        return None
    found = _IMAGE_RE.fullmatch(text)
    if found is None:
        return ("is not an image reference ([host[:port]/]name[:tag][@digest], name in lowercase "
                "letters, digits and . _ -), nor oci:PATH[:TAG]")
    if len(found.group("name")) > _MAX_IMAGE_NAME:
        return f"has a name longer than {_MAX_IMAGE_NAME} characters"
    digest = found.group("digest")
    if digest is not None and digest.startswith("sha256:") and not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        return "has a sha256 digest that is not 64 lowercase hex digits"
    return None


def repository_problem(text: str) -> str | None:
    """An image repository: OCI distribution's rules (lowercase path components joined by '/')."""
    if _REPOSITORY_RE.fullmatch(text) is None or len(text) > _MAX_IMAGE_NAME:
        return ("is not an image repository: lowercase letters and digits, separated by '.', '_', '__' or "
                "'-' within a component and '/' between components")
    return None


def registry_problem(text: str) -> str | None:
    """An image registry: `host[:port][/namespace]`, no scheme."""
    if _REGISTRY_RE.fullmatch(text) is None:
        return "is not an image registry: host[:port][/namespace], e.g. \"registry.example.com\" or \"127.0.0.1:5000\""
    return None


def prefix_problem(text: str) -> str | None:
    """The image's prefix: absolute, normalised, not `/`, portable file name characters only."""
    problem = _control(text)
    if problem is not None:
        return problem
    if not text.startswith("/"):
        return "must be an absolute path"
    if text == "/" or not text.strip("/"):
        return "must not be / (the environment is copied onto the base image at this path)"
    path = text.rstrip("/")
    if path.startswith("//") or posixpath.normpath(path) != path:
        return f"must be a normalised path, without '.', '..' or '//' (did you mean {posixpath.normpath(path)!r}?)"
    if _PREFIX_RE.fullmatch(path) is None:
        return "may hold only letters, digits, '.', '_', '+', '-' and '/'"
    return None


def variable_value_problem(value: str) -> str | None:
    """A variable's value becomes an environment entry, a Dockerfile ENV, a shell word and a Spark property."""
    problem = _control(value)
    if problem is None:
        return None
    if "\0" in value:
        return f"the value {problem}, which no environment variable can hold"
    return f"the value {problem}: a value is one line (a Dockerfile ENV and a Spark property cannot hold more)"


def url_reference_problem(url: str) -> str | None:
    """Every `${` of a URL starts a `${NAME}` reference (expanded from the environment when used)."""
    start = url.find("${")
    while start != -1:
        if _URL_REFERENCE_RE.match(url, start) is None:
            end = url.find("}", start)
            shown = url[start:end + 1] if end != -1 else url[start:]
            return f"malformed reference {shown!r}: write ${{NAME}}, NAME an environment variable name"
        start = url.find("${", start + 2)
    return None


def _escapes(relative: str) -> bool:
    """A relative path that leaves its directory once normalised."""
    normal = posixpath.normpath(relative.replace("\\", "/"))
    return normal == ".." or normal.startswith("../")


def check_locked_values(source: object, project_dir: Path, base_image: str | None,
                        variables: Mapping[str, Any]) -> None:
    """What a lock carries that reaches a Dockerfile or a process environment (its base image and
    variables, covered by its digest): the checks of the spec keys they came from, for a lock that
    was not written from this machine's spec (a registered version, a lockfile given by path)."""
    if base_image is not None:
        if not isinstance(base_image, str):
            raise ConfigError(source, "tool.mlenv.docker.base-image", f"must be a string, not {_type_name(base_image)}")
        problem = image_reference_problem(base_image)
        if problem is not None:
            raise ConfigError(source, "tool.mlenv.docker.base-image", f"{base_image!r} {problem}")
    if not isinstance(variables, Mapping):
        raise ConfigError(source, "tool.mlenv.variables", f"must be a table, not {_type_name(variables)}")
    for name, value in variables.items():
        if not isinstance(name, str) or not _VARIABLE_RE.match(name) or len(name) > MAX_NAME_LENGTH:
            raise ConfigError(source, "tool.mlenv.variables", f"invalid environment variable name {name!r}")
        key = f"tool.mlenv.variables.{name}"
        if value is None:  # a secret: its value comes from the caller
            continue
        if not isinstance(value, str):
            raise ConfigError(source, key, f"must be a string, not {_type_name(value)}")
        problem = variable_value_problem(value)
        if problem is not None:
            raise ConfigError(source, key, problem)


def current_platform() -> str:
    """The conda platform of this machine, without importing rattler."""
    system = {"Linux": "linux", "Darwin": "osx", "Windows": "win"}.get(_platform.system(), "linux")
    machine = _platform.machine().lower()
    arch = {
        "x86_64": "64",
        "amd64": "64",
        "aarch64": "aarch64",
        "arm64": "arm64" if system == "osx" else "aarch64",
        "ppc64le": "ppc64le",
        "s390x": "s390x",
    }.get(machine, "64")
    return f"{system}-{arch}"


def default_virtual_packages(platform: str) -> dict[str, tuple[str, str]]:
    """The virtual packages a solve assumes for `platform` when nothing is declared: name -> (version, build)."""
    system, _, arch = platform.partition("-")
    packages = dict(_DEFAULT_VIRTUAL_PACKAGES.get(system, {}))
    if arch in _ARCHSPEC:
        packages["__archspec"] = ("1", _ARCHSPEC[arch])
    return packages


def system_virtual_packages(platform: str, requirements: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """The virtual packages that `[tool.mlenv.system-requirements]` sets for `platform`."""
    system, _, arch = platform.partition("-")
    packages = {}
    for key, value in requirements.items():
        name, systems = SYSTEM_REQUIREMENTS[key]
        if system not in systems:
            continue
        if key == "archspec":
            family = _ARCHSPEC.get(arch)
            if family is None or not value.startswith(family):
                continue
            packages[name] = ("1", value)
        elif key == "cuda" and platform == "win-32":
            continue
        else:
            packages[name] = (value, "0")
    return packages


@dataclass(frozen=True)
class Channel:
    """A conda channel as written in the spec and as the URL the solver reads."""

    raw: str
    url: str
    key: str = "tool.mlenv.channels"

    @property
    def local_path(self) -> Path | None:
        if self.url.startswith("file://"):
            return Path(urlparse(self.url).path)
        return None

    @property
    def public_url(self) -> str:
        """The URL as written to the lock: no credentials, no token path."""
        from hatch_mlenv.credentials import public

        return public(self.url)

    def fetch_url(self, pyproject: Path) -> str:
        """The URL to fetch from: `${VAR}` expanded, credentials included."""
        from hatch_mlenv.credentials import expand

        return expand(self.url, pyproject, self.key)

    @property
    def identity(self) -> str:
        """What the spec hash sees: a project-relative path as written, so that the
        unpacked sdist (or a moved checkout) still matches its lock; URLs as written
        to the lock, so that rotating a token does not make the lock stale."""
        if self.local_path is not None and not self.raw.startswith(("/", "file:", "~")):
            return Path(self.raw).as_posix().rstrip("/")
        return self.public_url


@dataclass(frozen=True)
class Variable:
    name: str
    value: str | None
    secret: bool = False


@dataclass(frozen=True)
class DockerSpec:
    base_image: str | None = None
    registry: str | None = None
    repository: str | None = None
    prefix: str = DEFAULT_PREFIX
    # `base-dockerfile`, absolute: the Dockerfile of the base image, built first by the docker builder.
    base_dockerfile: Path | None = None


@dataclass(frozen=True)
class SparkSpec:
    packages: tuple[str, ...] = ()
    repositories: tuple[str, ...] = ()
    conf: dict[str, str] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class Spec:
    """What the user asked for: one validated `[tool.mlenv]` table."""

    pyproject: Path
    project_name: str
    project_version: str | None
    name: str
    channels: tuple[Channel, ...]
    platforms: tuple[str, ...]
    python: str | None
    conda: tuple[str, ...]
    pip: tuple[str, ...]
    pip_index_url: str | None
    pip_extra_index_urls: tuple[str, ...]
    lockfile: Path
    variables: tuple[Variable, ...]
    virtual_packages: dict[str, dict[str, tuple[str, str]]] = field(hash=False)
    docker: DockerSpec = DockerSpec()
    registry: str | None = None
    description: str | None = None
    env: str | None = None  # the [tool.mlenv.envs.NAME] this spec is, None for the default
    managed: bool = True
    interpreter: str | None = None
    spark: SparkSpec = SparkSpec()
    # Local directories (absolute) or URLs of flat wheel listings, as `pip --find-links`.
    pip_find_links: tuple[str, ...] = ()
    # conda package name -> the PyPI distribution it provides (user overrides).
    pypi_names: dict[str, str] = field(default_factory=dict, hash=False)
    solver: str = DEFAULT_SOLVER
    # `[tool.mlenv.system-requirements]` as declared: key (cuda, glibc, ...) -> version.
    system_requirements: dict[str, str] = field(default_factory=dict, hash=False)
    # PyPI names that must come as wheels, never built from a source release; (":all:",) for every one.
    pip_only_binary: tuple[str, ...] = ()
    # PEP 508 constraints on what isolated builds of source releases install (pyspark 2.x's
    # setup.py needs `pypandoc<1.8`), at lock time (metadata) and at install time (the wheel).
    pip_build_constraints: tuple[str, ...] = ()
    # `lock = "relock" | "locked" | "frozen"`: what commands do with a stale lock (`lock.lock_policy`);
    # None when not set. Not part of the environment: neither in the spec hash nor in the definition.
    lock_policy: str | None = None

    @property
    def project_dir(self) -> Path:
        return self.pyproject.parent

    @property
    def conda_specs(self) -> list[str]:
        """The match specs handed to the solver: the `python` shorthand first."""
        specs = list(self.conda)
        if self.python is not None:
            specs.insert(0, python_match_spec(self.python))
        return specs

    def key_for_conda_spec(self, index: int) -> str:
        """The spec key that produced `conda_specs[index]`, for error messages."""
        if self.python is not None:
            if index == 0:
                return "tool.mlenv.python"
            index -= 1
        return f"tool.mlenv.conda[{index}]"

    def channel_fetch_urls(self) -> list[str]:
        """The channels' URLs with their credentials, in priority order: for fetching only."""
        return [channel.fetch_url(self.pyproject) for channel in self.channels]

    def check_channels(self) -> None:
        """Local channel directories must exist before a solve (not before a fresh no-op)."""
        for channel in self.channels:
            path = channel.local_path
            if path is not None and not path.is_dir():
                raise ConfigError(self.pyproject, channel.key, f"channel directory {str(path)!r} does not exist")

    def check_url_variables(self) -> None:
        """Every `${VAR}` of a channel or package index URL is set: checked before a solve, whether
        or not this solve fetches that URL (an index is only read when there are pip packages)."""
        from hatch_mlenv.credentials import expand

        urls = [(channel.url, channel.key) for channel in self.channels]
        if self.pip_index_url is not None:
            urls.append((self.pip_index_url, "tool.mlenv.pip-index-url"))
        urls += [(url, f"tool.mlenv.pip-extra-index-urls[{i}]") for i, url in enumerate(self.pip_extra_index_urls)]
        for url, key in urls:
            expand(url, self.pyproject, key)

    def check_solver(self, available: Mapping[str, object]) -> None:
        """The solver named must be registered (checked before a solve, so that
        installing from a fresh lock does not need the solver's plugin)."""
        if self.solver not in available:
            registered = ", ".join(sorted(available)) or "none"
            raise ConfigError(
                self.pyproject,
                "tool.mlenv.solver",
                f"unknown solver {self.solver!r} (registered: {registered}){_suggest(self.solver, sorted(available))}",
            )

    def check_match_specs(self) -> None:
        """Parse every conda spec with rattler; raise ConfigError naming the first bad one."""
        from rattler import MatchSpec

        for index, text in enumerate(self.conda_specs):
            try:
                MatchSpec(text)
            except Exception as exc:  # rattler raises its own InvalidMatchSpecError
                raise ConfigError(
                    self.pyproject,
                    self.key_for_conda_spec(index),
                    f"invalid match spec {text!r}: {_first_line(exc)}",
                ) from None

    def read_base_dockerfile(self) -> bytes | None:
        """The content of `[tool.mlenv.docker] base-dockerfile` (None when not set); ConfigError
        naming the key when the file cannot be read."""
        path = self.docker.base_dockerfile
        if path is None:
            return None
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise ConfigError(self.pyproject, BASE_DOCKERFILE_KEY, f"{str(path)!r} does not exist") from None
        except IsADirectoryError:
            raise ConfigError(self.pyproject, BASE_DOCKERFILE_KEY, f"{str(path)!r} is a directory, not a Dockerfile") from None
        except OSError as exc:
            raise ConfigError(self.pyproject, BASE_DOCKERFILE_KEY, f"cannot read {str(path)!r}: {exc.strerror or exc}") from None

    def base_dockerfile_sha256(self) -> str | None:
        """sha256 (hex) of the base Dockerfile's content, read once; None when there is none."""
        if "_base_dockerfile_sha256" not in self.__dict__:
            content = self.read_base_dockerfile()
            digest = hashlib.sha256(content).hexdigest() if content is not None else None
            object.__setattr__(self, "_base_dockerfile_sha256", digest)  # a frozen value's cache
        return self.__dict__["_base_dockerfile_sha256"]

    def hash(self) -> str:
        """sha256 of everything that decides the lock's content, order-insensitive.

        Reordering or reformatting the spec keeps the hash; changing a package,
        channel (as resolved), platform, index, variable or base image changes it.
        Computed once per Spec.
        """
        cached = self.__dict__.get("_hash")
        if cached is not None:
            return cached
        payload = {
            "format": 1,
            "name": self.name,
            "channels": [c.identity for c in self.channels],  # order is priority: keep it
            "platforms": sorted(self.platforms),
            "conda": sorted(_normalize_spec(s) for s in self.conda_specs),
            "pip": sorted(_normalize_spec(s) for s in self.pip),
            "pip-index-url": self.pip_index_url,
            "pip-extra-index-urls": list(self.pip_extra_index_urls),
            "virtual-packages": {
                p: sorted(self.virtual_packages[p].items()) for p in sorted(self.platforms)
            },
            "variables": public_variables(self.variables),
            "base-image": self.docker.base_image,
            "managed": self.managed,
            "interpreter": self.interpreter,
        }
        # Only when set, so that the locks of specs without them stay fresh.
        if self.pip_find_links:
            payload["pip-find-links"] = [self._find_links_identity(f) for f in self.pip_find_links]
        if self.pip_only_binary:
            payload["pip-only-binary"] = sorted(self.pip_only_binary)
        if self.pip_build_constraints:
            payload["pip-build-constraints"] = sorted(_normalize_spec(s) for s in self.pip_build_constraints)
        if self.pypi_names:
            payload["pypi-names"] = sorted(self.pypi_names.items())
        if self.solver != DEFAULT_SOLVER:
            payload["solver"] = self.solver
        if self.system_requirements:
            payload["system-requirements"] = sorted(self.system_requirements.items())
        if self.docker.base_dockerfile is not None:  # its content, not its path: an edit makes the lock stale
            payload["base-dockerfile"] = self.base_dockerfile_sha256()
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        cached = hashlib.sha256(text.encode()).hexdigest()
        object.__setattr__(self, "_hash", cached)  # a frozen value's cache, not a change
        return cached

    def definition(self) -> dict[str, Any]:
        """The `[tool.mlenv]` table this spec is, self-contained: `extends` and the named
        environment applied, paths absolute, credentials only as `${VAR}` references and
        secret variables without their values. A registered version stores it, and
        `mlenv import NAME:VERSION` writes it back into a project."""
        from hatch_mlenv.credentials import references_only as url

        table: dict[str, Any] = {
            "name": self.name,
            "channels": [url(channel.raw) if "${" in channel.raw else channel.public_url for channel in self.channels],
            "platforms": list(self.platforms),
        }
        optional: dict[str, Any] = {
            "description": self.description,
            "python": self.python,
            "conda": list(self.conda),
            "pip": list(self.pip),
            "pip-index-url": url(self.pip_index_url) if self.pip_index_url else None,
            "pip-extra-index-urls": [url(u) for u in self.pip_extra_index_urls],
            "pip-find-links": [url(location) for location in self.pip_find_links],
            "pip-only-binary": (True if self.pip_only_binary == (ONLY_BINARY_ALL,) else list(self.pip_only_binary)),
            "pip-build-constraints": list(self.pip_build_constraints),
            "pypi-names": dict(self.pypi_names),
            "registry": self.registry,
            "solver": self.solver if self.solver != DEFAULT_SOLVER else None,
            "managed": False if not self.managed else None,
            "interpreter": self.interpreter,
            "variables": {v.name: {"secret": True} if v.secret else v.value for v in self.variables},
            "system-requirements": dict(self.system_requirements),
        }
        table |= {key: value for key, value in optional.items() if value not in (None, [], {})}
        overrides: dict[str, dict[str, Any]] = {}
        for plat, packages in self.virtual_packages.items():
            default = default_virtual_packages(plat) | system_virtual_packages(plat, self.system_requirements)
            changed: dict[str, Any] = {n: f"{v}={b}" for n, (v, b) in packages.items() if default.get(n) != (v, b)}
            changed |= {n: False for n in default if n not in packages}
            if changed:
                overrides[plat] = changed
        if overrides:
            table["virtual-packages"] = overrides
        base_dockerfile = self.docker.base_dockerfile
        docker = {"base-image": self.docker.base_image,
                  "base-dockerfile": str(base_dockerfile) if base_dockerfile is not None else None,
                  "registry": self.docker.registry,
                  "repository": self.docker.repository,
                  "prefix": self.docker.prefix if self.docker.prefix != DEFAULT_PREFIX else None}
        docker = {k: v for k, v in docker.items() if v is not None}
        if docker:
            table["docker"] = docker
        spark = {"packages": list(self.spark.packages), "repositories": [url(r) for r in self.spark.repositories],
                 "conf": dict(self.spark.conf)}
        spark = {k: v for k, v in spark.items() if v}
        if spark:
            table["spark"] = spark
        return table

    @staticmethod
    def ordered(definition: dict[str, Any]) -> dict[str, Any]:
        """A definition's keys in the order the README documents them (stored JSON sorts them)."""
        rank = {key: index for index, key in enumerate(_TOP_KEYS)}
        return {key: definition[key] for key in sorted(definition, key=lambda k: (rank.get(k, len(rank)), k))}

    def _find_links_identity(self, location: str) -> str:
        """A project-relative directory as written, so a moved checkout keeps its lock."""
        try:
            return Path(location).relative_to(self.project_dir).as_posix()
        except ValueError:
            return location


def public_variables(variables: tuple[Variable, ...]) -> dict[str, str | None]:
    """Variables as they may be written to files: a secret keeps its name, never its value."""
    return {v.name: (None if v.secret else v.value) for v in sorted(variables, key=lambda v: v.name)}


def python_match_spec(python: str) -> str:
    """`"3.11"` -> `"python 3.11.*"`; a constraint such as `">=3.10,<3.12"` is kept."""
    if _PYTHON_RE.match(python):
        return f"python {python}.*" if python.count(".") < 2 else f"python =={python}"
    return f"python {python}"


def _normalize_spec(text: str) -> str:
    return " ".join(text.split())


def load_spec(project_dir: Path | str, env: str | None = None) -> Spec:
    """Read `<project_dir>/pyproject.toml` and return the validated spec of `env`
    (a `[tool.mlenv.envs.NAME]` table), or of the default environment."""
    pyproject = Path(project_dir).resolve() / PYPROJECT
    if not pyproject.is_file():
        raise ConfigError(pyproject, None, "file not found (is this a Python project directory?)")
    try:
        document = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(pyproject, None, f"invalid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(pyproject, None, f"cannot read: {exc}") from None
    return parse_spec(document, pyproject, env)


def merge_tables(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """The merge rule of `extends` and named environments.

    A key of `override` replaces the inherited one, except: `conda` and `pip`
    extend the inherited lists (a spec for a package already there replaces
    it, in place), and `variables`, `system-requirements`, `virtual-packages` and `docker` merge key
    by key (per platform for `virtual-packages`).
    """
    merged = dict(base)
    for key, value in override.items():
        if key in _LIST_MERGE_KEYS and isinstance(value, list) and isinstance(base.get(key), list):
            merged[key] = merge_specs(base[key], value)
        elif key in _TABLE_MERGE_KEYS and isinstance(value, dict) and isinstance(base.get(key), dict):
            inner = dict(base[key])
            for k, v in value.items():
                inner[k] = {**inner[k], **v} if isinstance(v, dict) and isinstance(inner.get(k), dict) else v
            merged[key] = inner
        else:
            merged[key] = value
    return merged


def _spec_name(text: Any) -> str:
    if not isinstance(text, str):
        return repr(text)
    return re.split(r"[\s<>=!~\[;@(]", text.strip(), maxsplit=1)[0].lower().replace("_", "-")


def merge_specs(base: list[Any], extra: list[Any]) -> list[Any]:
    result = list(base)
    for item in extra:
        names = [_spec_name(x) for x in result]
        if _spec_name(item) in names:
            result[names.index(_spec_name(item))] = item
        else:
            result.append(item)
    return result


def _resolve_extends(table: dict[str, Any], source: Path, key: str, chain: tuple[str, ...]) -> dict[str, Any]:
    """Apply `extends` (a curated environment or another TOML file), recursively, refusing cycles."""
    parent_ref = table.get("extends")
    if parent_ref is None:
        return table
    if not isinstance(parent_ref, str) or not parent_ref.strip():
        raise ConfigError(source, key, "must be \"curated:NAME\" or a path to a TOML file with [tool.mlenv]")
    if parent_ref.startswith("curated:"):
        from hatch_mlenv import curated

        identity = parent_ref
        parent_source, parent_table = curated.load(parent_ref[len("curated:"):], source, key)
    else:
        parent_path = (source.parent / parent_ref).resolve()
        identity = str(parent_path)
        parent_source, parent_table = parent_path, _read_mlenv_table(parent_path, source, key)
    if identity in chain:
        cycle = " -> ".join([*chain, identity])
        raise ConfigError(source, key, f"extends cycle: {cycle}")
    parent = _resolve_extends(parent_table, parent_source, "tool.mlenv.extends", (*chain, identity))
    own = {k: v for k, v in table.items() if k != "extends"}
    parent = {k: v for k, v in parent.items() if k not in ("extends", "envs", "name")}
    return merge_tables(parent, own)


def _read_mlenv_table(path: Path, source: Path, key: str) -> dict[str, Any]:
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(source, key, f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(source, key, f"cannot read {path}: {exc}") from None
    table = document.get("tool", {}).get("mlenv")
    if not isinstance(table, dict):
        raise ConfigError(source, key, f"{path} has no [tool.mlenv] table")
    return table


def environment_names(pyproject: Path) -> list[str]:
    """The named environments of a project, for listings and error messages."""
    try:
        document = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return []
    envs = document.get("tool", {}).get("mlenv", {}).get("envs", {})
    return sorted(envs) if isinstance(envs, dict) else []


def parse_spec(document: dict[str, Any], pyproject: Path, env: str | None = None) -> Spec:
    """Validate a parsed pyproject document; every error names `pyproject` and a key path."""
    reader = _Reader(pyproject)
    project = document.get("project", {})
    if not isinstance(project, dict):
        raise ConfigError(pyproject, "project", "must be a table")
    table = document.get("tool", {}).get("mlenv")
    if table is None:
        raise ConfigError(pyproject, "tool.mlenv", "missing table (add a [tool.mlenv] section)")
    if not isinstance(table, dict):
        raise ConfigError(pyproject, "tool.mlenv", f"must be a table, not {_type_name(table)}")
    reader.check_keys(table, "tool.mlenv", _TOP_KEYS)
    envs = reader.table(table, "envs")
    for env_name, env_table in envs.items():
        env_key = f"tool.mlenv.envs.{_printable(env_name)}"
        if not _NAME_RE.match(env_name):
            raise ConfigError(pyproject, env_key, "invalid environment name: use letters, digits, '.', '_' and '-'")
        if not isinstance(env_table, dict):
            raise ConfigError(pyproject, env_key, f"must be a table, not {_type_name(env_table)}")
        reader.check_keys(env_table, env_key, tuple(k for k in _TOP_KEYS if k != "envs"))
    base = _resolve_extends({k: v for k, v in table.items() if k != "envs"}, pyproject, "tool.mlenv.extends", ())
    if env is not None:
        if env not in envs:
            known = ", ".join(sorted(envs)) or "none defined"
            raise ConfigError(pyproject, f"tool.mlenv.envs.{env}", f"unknown environment (known: {known})"
                              + _suggest(env, sorted(envs)).replace("; did", ". Did"))
        own = _resolve_extends(envs[env], pyproject, f"tool.mlenv.envs.{env}.extends", ())
        if "name" not in own:
            own = {**own, "name": f"{base.get('name') or project.get('name')}-{env}"}
        if "lockfile" not in own:
            own = {**own, "lockfile": f"conda-lock.{env}.yml"}
        table = merge_tables(base, own)
    else:
        table = base

    project_name = project.get("name")
    if project_name is not None and not isinstance(project_name, str):
        raise ConfigError(pyproject, "project.name", "must be a string")
    project_version = project.get("version")
    if project_version is not None and not isinstance(project_version, str):
        raise ConfigError(pyproject, "project.version", "must be a string")

    name = reader.string(table, "name", project_name)
    if name is None:
        raise ConfigError(pyproject, "tool.mlenv.name", "missing (and there is no project.name to default to)")
    if not _NAME_RE.match(name):
        raise ConfigError(
            pyproject, "tool.mlenv.name",
            f"invalid name {name[:40]!r}{'...' if len(name) > 40 else ''}: use letters, digits, '.', '_' and '-', "
            f"at most {MAX_NAME_LENGTH} characters",
        )

    channels = tuple(
        _parse_channel(pyproject, f"tool.mlenv.channels[{i}]", raw)
        for i, raw in enumerate(reader.string_list(table, "channels", list(DEFAULT_CHANNELS)))
    )
    if not channels:
        raise ConfigError(pyproject, "tool.mlenv.channels", "must name at least one channel")

    platforms = reader.string_list(table, "platforms", [current_platform()])
    if not platforms:
        raise ConfigError(pyproject, "tool.mlenv.platforms", "must name at least one platform")
    for i, plat in enumerate(platforms):
        if plat not in KNOWN_PLATFORMS:
            raise ConfigError(
                pyproject,
                f"tool.mlenv.platforms[{i}]",
                f"unknown platform {plat!r}{_suggest(plat, KNOWN_PLATFORMS)}",
            )
    platforms = list(dict.fromkeys(platforms))

    python = reader.string(table, "python", None)
    if python is not None and not python.strip():
        raise ConfigError(pyproject, "tool.mlenv.python", "must not be empty")
    if python is not None and not all(_PYTHON_TERM_RE.match(term.strip())
                                      for term in re.split(r"[,|]", python.strip())):
        raise ConfigError(pyproject, "tool.mlenv.python", f"invalid match spec {python!r}: python takes a version or "
                          "prefix such as \"3.11\" or \"3.11.7\", or a constraint such as \">=3.10,<3.12\"")

    conda = reader.string_list(table, "conda", [])
    for i, text in enumerate(conda):
        problem = _match_spec_problem(text)
        if problem is not None:
            raise ConfigError(pyproject, f"tool.mlenv.conda[{i}]", f"invalid match spec {text!r}: {problem}")

    pip = reader.string_list(table, "pip", [])
    for i, text in enumerate(pip):
        _check_requirement(pyproject, f"tool.mlenv.pip[{i}]", text)
    build_constraints = reader.string_list(table, "pip-build-constraints", [])
    for i, text in enumerate(build_constraints):
        _check_requirement(pyproject, f"tool.mlenv.pip-build-constraints[{i}]", text)
    if reader.boolean(table, "include-project-dependencies", False):
        deps = project.get("dependencies", [])
        if "dependencies" in project.get("dynamic", []):
            raise ConfigError(
                pyproject,
                "tool.mlenv.include-project-dependencies",
                "project.dependencies is dynamic; list the pip requirements in tool.mlenv.pip instead",
            )
        if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
            raise ConfigError(pyproject, "project.dependencies", "must be an array of strings")
        for i, text in enumerate(deps):
            _check_requirement(pyproject, f"project.dependencies[{i}]", text)
        pip = pip + [d for d in deps if d not in pip]

    pip_index_url = reader.string(table, "pip-index-url", None)
    extra_urls = reader.string_list(table, "pip-extra-index-urls", [])
    for key, url in [("pip-index-url", pip_index_url)] + [
        (f"pip-extra-index-urls[{i}]", u) for i, u in enumerate(extra_urls)
    ]:
        if url is not None and urlparse(url).scheme not in ("http", "https", "file"):
            raise ConfigError(pyproject, f"tool.mlenv.{key}", f"not an http(s) or file URL: {url!r}")
        problem = url is not None and (_control(url) or url_reference_problem(url))
        if problem:
            raise ConfigError(pyproject, f"tool.mlenv.{key}", problem)

    find_links = []
    for i, location in enumerate(reader.string_list(table, "pip-find-links", [])):
        key = f"tool.mlenv.pip-find-links[{i}]"
        problem = _control(location) or url_reference_problem(location)
        if problem:
            raise ConfigError(pyproject, key, problem)
        scheme = urlparse(location).scheme
        if scheme in ("http", "https"):
            find_links.append(location)
            continue
        path = Path(urlparse(location).path) if scheme == "file" else (pyproject.parent / Path(location).expanduser())
        if not location.strip() or scheme not in ("", "file"):
            raise ConfigError(pyproject, key, f"not a directory or an http(s) URL: {location!r}")
        find_links.append(str(path.resolve()))
    pypi_names = reader.table(table, "pypi-names")
    for conda_name, pypi_name in pypi_names.items():
        key = f"tool.mlenv.pypi-names.{_printable(conda_name)}"
        if not _NAME_RE.match(conda_name):
            raise ConfigError(pyproject, key, f"invalid conda package name {conda_name!r}")
        if not isinstance(pypi_name, str):
            raise ConfigError(pyproject, key, f"must be a PyPI distribution name (a string), not {_type_name(pypi_name)}")
        if not _PYPI_NAME_RE.match(pypi_name):
            raise ConfigError(pyproject, key, f"invalid PyPI distribution name {pypi_name!r}")

    lockfile = _parse_lockfile(pyproject, reader.string(table, "lockfile", DEFAULT_LOCKFILE))
    lock_policy = reader.string(table, "lock", None)
    if lock_policy is not None and lock_policy not in LOCK_POLICIES:
        raise ConfigError(pyproject, "tool.mlenv.lock", f"must be one of {', '.join(map(repr, LOCK_POLICIES))}, "
                          f"not {lock_policy[:40]!r}")

    managed = reader.boolean(table, "managed", True)
    interpreter = reader.string(table, "interpreter", None)
    if not managed and interpreter is None:
        raise ConfigError(pyproject, "tool.mlenv.interpreter", "missing: a user-managed environment (managed = false) "
                          "names the python it records, e.g. interpreter = \"/usr/bin/python3\"")
    if managed and interpreter is not None:
        raise ConfigError(pyproject, "tool.mlenv.interpreter", "only for user-managed environments (managed = false)")

    solver = reader.string(table, "solver", DEFAULT_SOLVER)
    if not solver.strip():
        raise ConfigError(pyproject, "tool.mlenv.solver", f"must name a solver, such as {DEFAULT_SOLVER!r}")

    variables = _parse_variables(reader, table)
    system_requirements = _parse_system_requirements(reader, table, platforms)
    virtual_packages = _parse_virtual_packages(reader, table, platforms, system_requirements)
    docker = _parse_docker(reader, table)

    return Spec(
        pyproject=pyproject,
        project_name=project_name or name,
        project_version=project_version,
        name=name,
        channels=channels,
        platforms=tuple(platforms),
        python=python,
        conda=tuple(conda),
        pip=tuple(pip),
        pip_index_url=pip_index_url,
        pip_extra_index_urls=tuple(extra_urls),
        lockfile=lockfile,
        variables=variables,
        virtual_packages=virtual_packages,
        docker=docker,
        registry=reader.string(table, "registry", None),
        description=reader.string(table, "description", None),
        env=env,
        managed=managed,
        interpreter=interpreter,
        spark=_parse_spark(reader, table),
        pip_find_links=tuple(find_links),
        pypi_names=dict(sorted(pypi_names.items())),
        solver=solver,
        system_requirements=system_requirements,
        pip_only_binary=_parse_only_binary(pyproject, table.get("pip-only-binary")),
        pip_build_constraints=tuple(build_constraints),
        lock_policy=lock_policy,
    )


ONLY_BINARY_ALL = ":all:"


def _parse_only_binary(pyproject: Path, value: Any) -> tuple[str, ...]:
    """`pip-only-binary`: true (no source release at all), false, or the PyPI names that must be wheels."""
    key = "tool.mlenv.pip-only-binary"
    if value is None or value is False:
        return ()
    if value is True:
        return (ONLY_BINARY_ALL,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(pyproject, key, f"must be true, false or an array of PyPI names, not {_type_name(value)}")
    for i, name in enumerate(value):
        if not _PYPI_NAME_RE.match(name):
            raise ConfigError(pyproject, f"{key}[{i}]", f"not a PyPI project name: {name!r}")
    return tuple(sorted({re.sub(r"[-_.]+", "-", v).lower() for v in value}))


def _parse_channel(pyproject: Path, key: str, raw: str) -> Channel:
    text = raw.strip()
    if not text:
        raise ConfigError(pyproject, key, "channel must not be empty")
    problem = _control(text) or url_reference_problem(text)
    if problem:
        raise ConfigError(pyproject, key, problem)
    parsed = urlparse(text)
    if parsed.scheme == "file":
        path = Path(parsed.path)
    elif parsed.scheme in ("http", "https", "s3", "gcs", "oci"):
        return Channel(raw, text.rstrip("/"), key)
    elif text.startswith((".", "/", "~")) or "/" in text or "\\" in text:
        path = (pyproject.parent / Path(text).expanduser()).resolve()
    else:
        if not _NAME_RE.match(text):
            raise ConfigError(pyproject, key, f"invalid channel name {text!r}")
        return Channel(raw, f"{CONDA_CHANNEL_ALIAS}/{text}", key)
    return Channel(raw, path.resolve().as_uri(), key)


def _parse_lockfile(pyproject: Path, name: str) -> Path:
    """`lockfile`: a YAML file inside the project directory, outside any version control directory."""
    key = "tool.mlenv.lockfile"
    problem = _control(name)
    if problem is not None:
        raise ConfigError(pyproject, key, f"{name!r} {problem}")
    if not name.strip():
        raise ConfigError(pyproject, key, "must not be empty")
    if name.endswith(("/", "\\")):
        raise ConfigError(pyproject, key, f"{name!r} names a directory; name the file, "
                          f"e.g. \"{name}{DEFAULT_LOCKFILE}\"")
    project = pyproject.parent.resolve()
    lockfile = (project / name).resolve()  # through symbolic links too
    if not lockfile.is_relative_to(project):
        raise ConfigError(pyproject, key, f"{name!r} is outside the project directory; a lockfile lives in the project")
    if lockfile == project:
        raise ConfigError(pyproject, key, f"{name!r} is the project directory; name the file, "
                          f"e.g. {DEFAULT_LOCKFILE!r}")
    if any(part in _VCS_DIRECTORIES for part in lockfile.relative_to(project).parts):
        raise ConfigError(pyproject, key, f"{name!r} is inside a version control directory")
    if not lockfile.name.endswith(LOCKFILE_SUFFIXES) or lockfile.name in LOCKFILE_SUFFIXES:
        raise ConfigError(pyproject, key, f"{name!r}: a lockfile is YAML, named *.yml or *.yaml "
                          f"(default {DEFAULT_LOCKFILE!r})")
    if lockfile.is_dir():
        raise ConfigError(pyproject, key, f"{name!r} is a directory; name the file, e.g. \"{name}/{DEFAULT_LOCKFILE}\"")
    return lockfile


def _match_spec_problem(text: str) -> str | None:
    """What a cheap look finds wrong in a conda match spec (rattler parses it before a solve)."""
    if not text.strip():
        return "empty"
    problem = _control(text)
    if problem is not None:
        return problem
    if "::" in text:
        channel, _, rest = text.strip().partition("::")
        if not channel.strip():
            return f"the channel before '::' is empty (write {rest.strip()!r} or CHANNEL::{rest.strip()})"
        if not rest.strip():
            return "no package name after '::'"
    return None


# Marker variables whose values are versions: compared with a version operator, the other side must be
# a version, or packaging compares them as text (`python_version > "3.x"` is False everywhere).
_VERSION_MARKERS = ("python_version", "python_full_version", "implementation_version")
_MARKER_COMPARISON_RE = re.compile(
    r"(?P<variable>\w+)\s*(?P<op>===|==|!=|<=|>=|~=|<|>)\s*(?P<quote>[\"'])(?P<value>[^\"']*)(?P=quote)"
    r"|(?P<quote2>[\"'])(?P<value2>[^\"']*)(?P=quote2)\s*(?P<op2>===|==|!=|<=|>=|~=|<|>)\s*(?P<variable2>\w+)"
)


def _marker_problem(marker: str) -> str | None:
    """A comparison that packaging would not evaluate as written: a version marker against a non-version
    (evaluated as text, so silently false), or `~=` against something that is no version (an error later)."""
    from packaging.specifiers import InvalidSpecifier, Specifier

    for found in _MARKER_COMPARISON_RE.finditer(marker):
        variable = found.group("variable") or found.group("variable2")
        op = found.group("op") or found.group("op2")
        value = found.group("value") if found.group("variable") else found.group("value2")
        if op == "===" or (variable not in _VERSION_MARKERS and op != "~="):
            continue
        try:
            Specifier(f"{op}{value}")
        except InvalidSpecifier:
            return f"{variable} {op} {value!r}: {value!r} is not a version this comparison takes"
    return None


def _check_requirement(pyproject: Path, key: str, text: str) -> None:
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        requirement = Requirement(text)
    except InvalidRequirement as exc:
        raise ConfigError(pyproject, key, f"invalid PEP 508 requirement {text!r}: {_first_line(exc)}") from None
    problem = _marker_problem(str(requirement.marker)) if requirement.marker is not None else None
    if problem is not None:
        raise ConfigError(pyproject, key, f"invalid marker in {text!r}: {problem}")


def _parse_variables(reader: _Reader, table: dict[str, Any]) -> tuple[Variable, ...]:
    raw = reader.table(table, "variables")
    variables = []
    for name, value in raw.items():
        key = f"tool.mlenv.variables.{name}"
        if not _VARIABLE_RE.match(name) or len(name) > MAX_NAME_LENGTH:
            raise ConfigError(reader.path, _printable(key[:80]), f"invalid environment variable name (at most "
                              f"{MAX_NAME_LENGTH} letters, digits and '_', not starting with a digit)")
        if isinstance(value, dict):
            text_value = value.get("value")
        else:
            text_value = value
        if isinstance(text_value, str) and len(text_value.encode()) > MAX_VARIABLE_BYTES:
            raise ConfigError(reader.path, key, f"the value is longer than {MAX_VARIABLE_BYTES // 1024} KiB")
        problem = variable_value_problem(text_value) if isinstance(text_value, str) else None
        if problem is not None:
            raise ConfigError(reader.path, key if isinstance(value, str) else f"{key}.value", problem)
        if isinstance(value, str):
            variables.append(Variable(name, value))
        elif isinstance(value, dict):
            reader.check_keys(value, key, _VARIABLE_KEYS)
            secret = reader.boolean(value, "secret", False, key)
            text = reader.string(value, "value", None, key)
            if text is None and not secret:
                raise ConfigError(reader.path, f"{key}.value", "missing (only a secret may omit its value)")
            variables.append(Variable(name, text, secret))
        else:
            raise ConfigError(
                reader.path, key, f"must be a string or a table {{ value = ..., secret = true }}, not {_type_name(value)}"
            )
    return tuple(variables)


def _parse_system_requirements(reader: _Reader, table: dict[str, Any], platforms: list[str]) -> dict[str, str]:
    base = "tool.mlenv.system-requirements"
    declared = reader.table(table, "system-requirements")
    reader.check_keys(declared, base, tuple(SYSTEM_REQUIREMENTS))
    result = {}
    for key, value in declared.items():
        where = f"{base}.{key}"
        example = "\"x86_64_v3\"" if key == "archspec" else "\"12.2\"" if key == "cuda" else "\"2.28\""
        if value is False:  # a named environment drops an inherited requirement (a CPU env of a GPU project)
            continue
        if not isinstance(value, str):
            raise ConfigError(reader.path, where, f"must be a quoted string such as {key} = {example} "
                              f"(or false to drop an inherited one), not {_type_name(value)}")
        text = value.strip()
        pattern = _ARCHSPEC_RE if key == "archspec" else _REQUIREMENT_VERSION_RE
        if not pattern.match(text):
            what = "a microarchitecture name" if key == "archspec" else "a version (digits and dots)"
            raise ConfigError(reader.path, where, f"invalid value {value!r}: must be {what} such as {example}")
        result[key] = text
    result = dict(sorted(result.items()))
    for key in result:
        if not any(system_virtual_packages(p, {key: result[key]}) for p in platforms):
            applies = (
                "to the platforms of its architecture family (x86_64_v3 to linux-64, osx-64, win-64; "
                "aarch64 to linux-aarch64)"
                if key == "archspec"
                else f"to {' and '.join(SYSTEM_REQUIREMENTS[key][1])} platforms"
            )
            raise ConfigError(reader.path, f"{base}.{key}",
                              f"applies to none of the platforms ({', '.join(platforms)}): it applies only {applies}")
    return result


def _parse_virtual_packages(
    reader: _Reader, table: dict[str, Any], platforms: list[str], system_requirements: Mapping[str, str]
) -> dict[str, dict[str, tuple[str, str]]]:
    overrides = reader.table(table, "virtual-packages")
    for plat in overrides:
        if plat not in KNOWN_PLATFORMS:
            raise ConfigError(
                reader.path,
                f"tool.mlenv.virtual-packages.{plat}",
                f"unknown platform {plat!r}{_suggest(plat, KNOWN_PLATFORMS)}",
            )
    result = {}
    for plat in platforms:
        packages = default_virtual_packages(plat) | system_virtual_packages(plat, system_requirements)
        base = f"tool.mlenv.virtual-packages.{plat}"
        for name, value in reader.table(overrides, plat, "tool.mlenv.virtual-packages").items():
            key = f"{base}.{name}"
            if not name.startswith("__") or not _NAME_RE.match(name[2:]):
                raise ConfigError(reader.path, _printable(key),
                                  "virtual package names start with '__' (e.g. __cuda), then letters, digits, "
                                  "'.', '_', '-'")
            if value is False:  # `__cuda = false`: this platform has no such thing
                packages.pop(name, None)
            elif isinstance(value, str) and value.strip():
                version, _, build = value.strip().partition("=")
                if not _VIRTUAL_VERSION_RE.match(version) or not _VIRTUAL_BUILD_RE.match(build or "0"):
                    raise ConfigError(reader.path, key, f"invalid value {value!r}: must be \"VERSION\" or "
                                      "\"VERSION=BUILD\", the version digits and dots, such as \"12.2\" or "
                                      "\"1=x86_64_v3\"")
                packages[name] = (version, build or "0")
            else:
                raise ConfigError(reader.path, key, "must be a version string such as \"12.2\" (or false to remove it)")
        result[plat] = dict(sorted(packages.items()))
    return result


def _parse_spark(reader: _Reader, table: dict[str, Any]) -> SparkSpec:
    spark = reader.table(table, "spark")
    key = "tool.mlenv.spark"
    reader.check_keys(spark, key, _SPARK_KEYS)
    packages = reader.string_list(spark, "packages", [], key)
    for index, coordinate in enumerate(packages):
        if not _MAVEN_RE.match(coordinate.strip()):
            raise ConfigError(reader.path, f"{key}.packages[{index}]",
                              f"malformed Maven coordinate {coordinate!r}: use groupId:artifactId:version")
    repositories = reader.string_list(spark, "repositories", [], key)
    for index, url in enumerate(repositories):
        # one line of spark-defaults each: no whitespace or control character may start another
        if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
            raise ConfigError(reader.path, f"{key}.repositories[{index}]",
                              f"a repository URL has no whitespace or control characters: {url!r}")
        if urlparse(url).scheme not in ("http", "https", "file"):
            raise ConfigError(reader.path, f"{key}.repositories[{index}]", f"not an http(s) or file URL: {url!r}")
    conf = reader.table(spark, "conf", key)
    for name, value in conf.items():
        if not name or any(c.isspace() for c in name) or _control(name):
            raise ConfigError(reader.path, f"{key}.conf", f"invalid Spark property name {name!r}")
        if not isinstance(value, (str, int, float, bool)):
            raise ConfigError(reader.path, f"{key}.conf.{name}", f"must be a string, number or boolean, not {_type_name(value)}")
        problem = _control(str(value))
        if problem is not None:
            raise ConfigError(reader.path, f"{key}.conf.{name}", f"the value {problem}: a Spark property is one line")
    return SparkSpec(
        packages=tuple(p.strip() for p in packages),
        repositories=tuple(repositories),
        conf={k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in conf.items()},
    )


def _parse_docker(reader: _Reader, table: dict[str, Any]) -> DockerSpec:
    docker = reader.table(table, "docker")
    key = "tool.mlenv.docker"
    reader.check_keys(docker, key, _DOCKER_KEYS)
    prefix = reader.string(docker, "prefix", DEFAULT_PREFIX, key)
    problem = prefix_problem(prefix)
    if problem is not None:
        raise ConfigError(reader.path, f"{key}.prefix", f"{prefix!r} {problem}")
    base_image = reader.string(docker, "base-image", None, key)
    problem = image_reference_problem(base_image) if base_image is not None else None
    if problem is not None:
        raise ConfigError(reader.path, f"{key}.base-image", f"{base_image!r} {problem}")
    registry, repository = reader.string(docker, "registry", None, key), reader.string(docker, "repository", None, key)
    problem = registry_problem(registry.rstrip("/")) if registry is not None else None
    if problem is not None:
        raise ConfigError(reader.path, f"{key}.registry", f"{registry!r} {problem}")
    problem = repository_problem(repository) if repository is not None else None
    if problem is not None:
        raise ConfigError(reader.path, f"{key}.repository", f"{repository!r} {problem}")
    dockerfile = reader.string(docker, "base-dockerfile", None, key)
    if dockerfile is not None:
        if not dockerfile.strip():
            raise ConfigError(reader.path, BASE_DOCKERFILE_KEY, "must name a Dockerfile, e.g. \"docker/base.Dockerfile\"")
        if base_image is not None:
            raise ConfigError(reader.path, BASE_DOCKERFILE_KEY, f"and base-image ({base_image!r}) are both set: the "
                              "Dockerfile's FROM names what the base is built on; keep one of the two")
    return DockerSpec(
        base_image=base_image,
        # Relative to the project; it must exist only when its content is needed (lock, build).
        base_dockerfile=(reader.path.parent / Path(dockerfile).expanduser()).resolve() if dockerfile else None,
        registry=registry,
        repository=repository,
        prefix=prefix.rstrip("/"),
    )


def _printable(text: str) -> str:
    """A key as an error message shows it: on one line, whatever it holds."""
    return text if text.isprintable() else repr(text)[1:-1]


def _type_name(value: object) -> str:
    return {
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a float",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def _suggest(word: str, choices: tuple[str, ...] | list[str]) -> str:
    return did_you_mean(word, choices)


class _Reader:
    """Typed getters that name the file and the key path in every error."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def check_keys(self, table: dict[str, Any], base: str, allowed: tuple[str, ...]) -> None:
        for key in table:
            if key not in allowed:
                raise ConfigError(self.path, f"{base}.{_printable(key)}", f"unknown key{_suggest(key, allowed)}")

    def _get(self, table: dict[str, Any], key: str, base: str) -> tuple[str, Any]:
        return f"{base}.{key}", table.get(key)

    def string(self, table: dict[str, Any], key: str, default: Any, base: str = "tool.mlenv") -> Any:
        path, value = self._get(table, key, base)
        if value is None:
            return default
        if not isinstance(value, str):
            raise ConfigError(self.path, path, f"must be a string, not {_type_name(value)}")
        return value

    def boolean(self, table: dict[str, Any], key: str, default: bool, base: str = "tool.mlenv") -> bool:
        path, value = self._get(table, key, base)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ConfigError(self.path, path, f"must be true or false, not {_type_name(value)}")
        return value

    def string_list(self, table: dict[str, Any], key: str, default: list[str], base: str = "tool.mlenv") -> list[str]:
        path, value = self._get(table, key, base)
        if value is None:
            return list(default)
        if not isinstance(value, list):
            raise ConfigError(self.path, path, f"must be an array of strings, not {_type_name(value)}")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise ConfigError(self.path, f"{path}[{i}]", f"must be a string, not {_type_name(item)}")
        return list(value)

    def table(self, table: dict[str, Any], key: str, base: str = "tool.mlenv") -> dict[str, Any]:
        path, value = self._get(table, key, base)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(self.path, path, f"must be a table, not {_type_name(value)}")
        return value
