"""The typed definition: `Spec` and its parts, as `parse_spec` builds them from `[tool.mlenv]`,
with what is computed from them (the spec hash, the self-contained definition)."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from hatch_mlenv.credentials import expand, references_only
from hatch_mlenv.definition._channels import Channel
from hatch_mlenv.definition._extends import merge_specs
from hatch_mlenv.errors import ConfigError, did_you_mean, first_line
from hatch_mlenv.platforms import default_virtual_packages, system_virtual_packages

PYPROJECT = "pyproject.toml"
DEFAULT_LOCKFILE = "conda-lock.yml"
DEFAULT_PREFIX = "/opt/env"
# The built-in solver (hatch_mlenv.solve), registered through the same hook as any other.
DEFAULT_SOLVER = "rattler"
BASE_DOCKERFILE_KEY = "tool.mlenv.docker.base-dockerfile"
ONLY_BINARY_ALL = ":all:"
_PYTHON_RE = re.compile(r"^[0-9]+(\.[0-9]+){0,2}\Z")

TOP_KEYS = (
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
    "target",
)
# `[tool.mlenv.target.PLATFORM]`: what one platform adds to (or pins differently in) the lists.
TARGET_KEYS = ("conda", "pip")
# `lock`: what commands do with a stale lock (see `hatch_mlenv.lock.POLICIES`).
LOCK_POLICIES = ("relock", "locked", "frozen")


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
    # `[tool.mlenv.target.PLATFORM]`: platform -> {"conda": specs, "pip": requirements} it adds.
    targets: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict, hash=False)

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

    def conda_specs_for(self, platform: str) -> list[str]:
        """The match specs of one platform: `conda_specs` with its target's (a package named in
        both takes the target's spec, in place)."""
        extra = self.targets.get(platform, {}).get("conda", ())
        return merge_specs(self.conda_specs, list(extra)) if extra else self.conda_specs

    def pip_for(self, platform: str) -> tuple[str, ...]:
        """The pip requirements of one platform: `pip` with its target's."""
        extra = self.targets.get(platform, {}).get("pip", ())
        return tuple(merge_specs(list(self.pip), list(extra))) if extra else self.pip

    @property
    def any_pip(self) -> bool:
        """Whether some platform has pip requirements."""
        return bool(self.pip) or any(t.get("pip") for t in self.targets.values())

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
                f"unknown solver {self.solver!r} (registered: {registered}){did_you_mean(self.solver, sorted(available))}",
            )

    def check_match_specs(self) -> None:
        """Parse every conda spec with rattler; raise ConfigError naming the first bad one."""
        from rattler import MatchSpec  # lazy: loading a spec (every command, a no-op lock) must not load rattler

        keyed = [(self.key_for_conda_spec(index), text) for index, text in enumerate(self.conda_specs)]
        keyed += [(f"tool.mlenv.target.{platform}.conda[{index}]", text)
                  for platform, lists in self.targets.items() for index, text in enumerate(lists.get("conda", ()))]
        for key, text in keyed:
            try:
                MatchSpec(text)
            except Exception as exc:  # rattler raises its own InvalidMatchSpecError
                raise ConfigError(self.pyproject, key, f"invalid match spec {text!r}: {first_line(exc)}") from None

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
        if self.targets:
            payload["target"] = {
                platform: {key: sorted(_normalize_spec(s) for s in values) for key, values in sorted(lists.items())}
                for platform, lists in sorted(self.targets.items())
            }
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
        url = references_only
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
            "target": {platform: {key: list(values) for key, values in lists.items()}
                       for platform, lists in self.targets.items()},
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
        rank = {key: index for index, key in enumerate(TOP_KEYS)}
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
