"""The plan of an image: everything that decides it, computed once from the `Environment` and
handed to a builder as values.

- The tag is `[registry/]repository:<first 12 hex of the digest>`, computable from the lock
  alone; a registered version also gets `v<N>`. An oci build with zstd layers is other bytes
  for the same environment: its tags end in `-zstd`, so that a tag names one image.
- What the lock needs from the host (`hatch_mlenv.system`) becomes labels,
  `io.mlenv.requires.cuda=">=12.0"` etc.; an image that needs `__cuda` also gets the NVIDIA
  container runtime's variables (`NVIDIA_VISIBLE_DEVICES`, `NVIDIA_DRIVER_CAPABILITIES`, and
  `NVIDIA_REQUIRE_CUDA` for a plain floor, so that the runtime refuses a host whose driver is
  too old). Secret variables never reach the plan.
- `staging_for` gives what installing the linux-64 lock for the image's prefix takes (the
  lockfile, the channels' and indexes' URLs with their credentials, the locked wheels and
  python), worked out once, only by a build that stages a prefix.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hatch_mlenv._version import __version__
from hatch_mlenv.errors import ConfigError, ImageError, UsageError
from hatch_mlenv.hashes import TAG_LENGTH
from hatch_mlenv.image.layers import COMPRESSIONS as LAYER_COMPRESSIONS
from hatch_mlenv.install.conda import check_lock_integrity
from hatch_mlenv.install.wheels import wheel_indexes
from hatch_mlenv.lockfile import Lock, LockedPackage
from hatch_mlenv.platforms import REQUIREMENT_KEYS
from hatch_mlenv.reference import base_dockerfile_reference, repository_name, split_image_reference
from hatch_mlenv.spec import (
    BASE_DOCKERFILE_KEY,
    check_locked_values,
    prefix_problem,
    registry_problem,
    repository_problem,
    split_oci_layout,
)
from hatch_mlenv.system import lock_needs

PLATFORM = "linux-64"
DEFAULT_BASE_IMAGE = "debian:12-slim"
STRATEGIES = ("host", "dockerfile")
BASE_IMAGE_KEY = "tool.mlenv.docker.base-image"
ENTRYPOINT = "etc/hatch-mlenv/entrypoint.sh"  # inside the prefix
SBOM_TYPE = "application/vnd.cyclonedx+json"
LOCK_TYPE = "application/vnd.mlenv.lockfile.v1+yaml"
UNWRITABLE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


@dataclass(frozen=True)
class ImagePlan:
    """Everything that decides the image, as values."""

    name: str
    digest: str
    repository: str  # [registry/]repository
    base_image: str
    prefix: str
    variables: dict[str, str]  # non-secret only
    version: int | None = None
    project_version: str | None = None
    managed: bool = True  # False: a user-managed environment, the base image is used as it is
    base_digest: str | None = None  # the base image by digest, when the engine knows it
    # What the linux-64 lock needs from the host: virtual package -> constraint (`__cuda` -> `>=12.0`).
    needs: dict[str, str] = field(default_factory=dict, hash=False)
    base_dockerfile: str | None = None  # sha256 of the base Dockerfile that base_image is built from
    # Where it came from, for the builders' checks and messages: what an error names, the project's
    # pyproject.toml and directory (an `oci:` base is relative to it), the lockfile, the base
    # Dockerfile the spec declares, and what a missing base Dockerfile's message names.
    source: str = ""
    pyproject: Path | None = None
    project_dir: Path | None = None
    lockfile: Path | None = None
    base_dockerfile_path: Path | None = None
    origin: str = ""
    # An `oci:PATH[:TAG|@DIGEST]` base: its layout directory (PATH relative to the project) and tag or digest.
    base_layout: Path | None = None
    # Any other base: the registry (host, repository) it is pulled from.
    base_registry: tuple[str, str] | None = None
    base_reference: str | None = None  # the base's tag or digest (in its layout or registry)
    # Where the image is pushed: the registry host and the repository's path there.
    registry_host: str = ""
    registry_path: str = ""
    compression: str = "gzip"  # the oci builder's layers: "gzip" or "zstd"

    def runtime_variables(self) -> dict[str, str]:
        """The NVIDIA container runtime's variables for an environment that needs CUDA (the lock's own win)."""
        cuda = self.needs.get("__cuda")
        if cuda is None:
            return {}
        found = re.fullmatch(r">=\s*(\d+(?:\.\d+)*)", cuda)
        runtime = {"NVIDIA_VISIBLE_DEVICES": "all", "NVIDIA_DRIVER_CAPABILITIES": "compute,utility"}
        if found:
            runtime["NVIDIA_REQUIRE_CUDA"] = f"cuda>={found.group(1)}"
        return {k: v for k, v in runtime.items() if k not in self.variables}

    @property
    def reference(self) -> str:
        return f"{self.repository}:{self.tags[0]}"

    @property
    def tags(self) -> list[str]:
        suffix = "" if self.compression == "gzip" else f"-{self.compression}"
        tags = [self.digest[:TAG_LENGTH] + suffix]
        if self.version is not None:
            tags.append(f"v{self.version}{suffix}")
        return tags

    def labels(self) -> dict[str, str]:
        labels = {
            "org.opencontainers.image.title": self.name,
            "org.opencontainers.image.base.name": self.base_image,
            "org.opencontainers.image.description": f"hatch-mlenv environment {self.name}",
            "io.mlenv.name": self.name,
            "io.mlenv.digest": f"sha256:{self.digest}",
            "io.mlenv.prefix": self.prefix,
            "io.mlenv.tool": f"hatch-mlenv {__version__}",
        }
        if self.base_digest is not None:
            labels["io.mlenv.base-image-digest"] = self.base_digest
        if self.base_dockerfile is not None:
            labels["io.mlenv.base-dockerfile"] = f"sha256:{self.base_dockerfile}"
        if self.version is not None:
            labels["io.mlenv.version"] = str(self.version)
            labels["org.opencontainers.image.version"] = f"v{self.version}"
        for name, constraint in self.needs.items():
            labels[f"io.mlenv.requires.{REQUIREMENT_KEYS.get(name, name.lstrip('_'))}"] = constraint
        return labels


@dataclass(frozen=True)
class Staging:
    """What installing the linux-64 lock for the image's prefix takes, as values."""

    lockfile: Path  # on disk: rattler reads the conda records from it
    channels: tuple[str, ...]  # the channels' fetch URLs, credentials included
    wheels: tuple[LockedPackage, ...]  # the locked pip packages
    python: str | None  # the locked python's version, which the wheels install for
    indexes: tuple[str, ...]  # the package indexes' URLs, credentials included
    find_links: tuple[str, ...] = ()
    build_constraints: tuple[str, ...] = ()


def plan_for(env: Any, version: int | None = None, compression: str = "gzip") -> ImagePlan:
    """The plan of an `Environment`: base image and variables come from the lock (the digest covers them).

    What the plan takes from the spec and the lock is checked again here, against the grammar of
    the Dockerfile words, paths and environment entries it becomes (as `parse_spec` checked the
    spec): a lockfile edited by hand or a version registered elsewhere is written into no image
    unchecked. A ConfigError names the key and where the environment came from."""
    if compression not in LAYER_COMPRESSIONS:
        raise UsageError(f"unknown layer compression {compression!r}: use {' or '.join(LAYER_COMPRESSIONS)}")
    spec, lock = env.spec, env.lock
    source = getattr(env, "source", spec.pyproject)
    docker = spec.docker
    for key, value, problem in (("prefix", docker.prefix, prefix_problem),
                                ("registry", docker.registry, registry_problem),
                                ("repository", docker.repository, repository_problem)):
        wrong = problem(value.rstrip("/") if key == "registry" else value) if value is not None else None
        if wrong is not None:
            raise ConfigError(source, f"tool.mlenv.docker.{key}", f"{value!r} {wrong}")
    check_locked_values(source, spec.project_dir, lock.base_image or spec.docker.base_image, lock.variables)
    base_image = lock.base_image or spec.docker.base_image or DEFAULT_BASE_IMAGE
    # The spec's reading (`spec.image_reference_problem`) keeps a relative PATH inside the project.
    layout, base_reference = split_oci_layout(base_image) if base_image.startswith("oci:") else (None, None)
    repository = repository_name(spec.name, spec.docker.repository, spec.docker.registry)
    registry_host, registry_path, _ = split_image_reference(repository)
    if layout is None:
        base_host, base_path, base_reference = split_image_reference(base_image)
    if lock.base_dockerfile:
        if not re.fullmatch(r"[0-9a-f]{64}", lock.base_dockerfile):
            raise ConfigError(source, BASE_DOCKERFILE_KEY,
                              "the lock's sha256 of the base Dockerfile is not 64 hex digits")
        base_image = base_dockerfile_reference(repository, lock.base_dockerfile)
    return ImagePlan(
        name=spec.name,
        digest=lock.digest(),
        repository=repository,
        base_image=base_image,
        prefix=spec.docker.prefix,
        variables={k: v for k, v in lock.variables.items() if v is not None},
        version=version,
        project_version=spec.project_version,
        managed=spec.managed,
        needs={name: need["constraint"] for name, need in lock_needs(lock).get(PLATFORM, {}).items()},
        base_dockerfile=lock.base_dockerfile,
        source=source,
        pyproject=spec.pyproject,
        project_dir=spec.project_dir,
        lockfile=spec.lockfile,
        base_dockerfile_path=docker.base_dockerfile,
        origin=str(env.reference) if getattr(env, "is_registered", False) else str(spec.lockfile),
        base_layout=None if layout is None or lock.base_dockerfile else Path(layout) if Path(layout).is_absolute()
        else (spec.project_dir / layout).resolve(),
        base_registry=(base_host, base_path) if layout is None else None,
        base_reference=base_reference,
        registry_host=registry_host,
        registry_path=registry_path,
        compression=compression,
    )


def require_linux(lock: Lock, lockfile: Path | str) -> None:
    if PLATFORM not in lock.platforms or not any(p.platform == PLATFORM for p in lock.packages):
        raise ImageError(
            f"{lockfile}: the lock has no {PLATFORM} packages (platforms: {', '.join(lock.platforms) or 'none'}); "
            f"add \"{PLATFORM}\" to tool.mlenv.platforms and run `mlenv lock`"
        )


def preflight(env: Any, *, builder: str = "docker", strategy: str = "host", version: int | None = None,
              compression: str = "gzip") -> ImagePlan:
    """What an image context or build can know is wrong before it contacts anything (a Docker
    engine, a registry): a lock without linux-64 packages, values a Dockerfile cannot take, and a
    base the builder cannot start from. `build` and `context` call it first, and the CLI before it
    asks a registry for the version; returns the plan. `compression`: the oci builder's layers."""
    if strategy not in STRATEGIES:
        raise ImageError(f"unknown strategy {strategy!r}: use {' or '.join(STRATEGIES)}")
    if compression != "gzip" and builder != "oci":
        raise UsageError(f"{compression} layers are written by the oci builder (--builder oci); the docker builder's "
                         "layers are the engine's")
    require_linux(env.lock, env.reference if getattr(env, "is_registered", False) else env.spec.lockfile)
    plan = plan_for(env, version, compression)
    if builder == "oci" and (plan.base_dockerfile or env.spec.docker.base_dockerfile is not None):
        raise ConfigError(env.spec.pyproject, BASE_DOCKERFILE_KEY, "the oci builder builds no Dockerfile; it takes "
                          "a base already in a registry or an OCI layout: build the base with `mlenv image build` "
                          "(the docker builder) or `docker build`, push it, and set base-image in place of "
                          "base-dockerfile")
    if builder == "oci":
        return plan  # any base: a registry's or an OCI layout's
    if plan.base_image.startswith("oci:"):
        raise ConfigError(getattr(env, "source", env.spec.pyproject), BASE_IMAGE_KEY,
                          f"{plan.base_image!r} is an OCI image layout on this machine, which only the oci builder "
                          "reads (`mlenv image build --builder oci`); a Dockerfile cannot start FROM it: name an "
                          "image in a registry or in the Docker engine")
    if strategy == "dockerfile" and not plan.managed:
        raise ImageError("a user-managed environment (managed = false) uses its base image as it is: "
                         "there is nothing for micromamba to install; use --strategy host")
    if strategy == "dockerfile" and plan.base_dockerfile:
        raise ConfigError(env.spec.pyproject, BASE_DOCKERFILE_KEY, "the dockerfile strategy is for remote "
                          f"builders, which cannot see the base image built here ({plan.base_image}); push the "
                          "base to a registry and set base-image in place of base-dockerfile, or use --strategy host")
    if strategy == "host" and env.spec.docker.base_dockerfile is not None and not plan.base_dockerfile:
        raise ImageError(f"{env.spec.lockfile}: written before {BASE_DOCKERFILE_KEY} was set, so it is not "
                         "in the image's tag; run `mlenv lock`")
    return plan


def staging_for(env: Any) -> Staging:
    """What the prefix of the image is installed from, as values: a version loaded by reference
    gets its lockfile on disk, a lock edited by hand is refused, and the URLs' `${VAR}`s are
    expanded here, once."""
    lock, spec = env.files().lock, env.spec
    check_lock_integrity(lock, spec.lockfile)
    packages = lock.for_platform(PLATFORM)
    wheels = tuple(p for p in packages if p.manager == "pip")
    python = next((p.version for p in packages if p.manager == "conda" and p.name == "python"), None)
    return Staging(
        lockfile=spec.lockfile,
        channels=tuple(spec.channel_fetch_urls()),
        wheels=wheels,
        python=python,
        indexes=tuple(wheel_indexes(spec, lock)) if wheels else (),
        find_links=tuple(spec.pip_find_links),
        build_constraints=tuple(spec.pip_build_constraints),
    )


def base_dockerfile_content(env: Any, plan: ImagePlan) -> bytes:
    """The base Dockerfile the plan's base image is built from, as locked: its sha256 is in the lock
    (and so in the tag); one that is missing or changed since is refused."""
    path, wanted = plan.base_dockerfile_path, plan.base_dockerfile
    if path is None or (env.is_registered and not path.is_file()):
        raise ImageError(f"{plan.origin}: the image is built on a base Dockerfile (sha256:{wanted}) that is not on "
                         f"this machine{f' ({path} does not exist)' if path else ''}; build the image from the project "
                         f"that declares {BASE_DOCKERFILE_KEY}, or load its base image {plan.base_image}")
    content = env.spec.read_base_dockerfile()
    if hashlib.sha256(content).hexdigest() != wanted:
        raise ImageError(f"{path}: changed since {plan.lockfile.name} was written ({BASE_DOCKERFILE_KEY}); "
                         "run `mlenv lock`, which records its new content")
    return content


def artifacts(env: Any) -> tuple[tuple[str, str, bytes], ...]:
    """What a pushed image carries as referrers: its CycloneDX SBOM and its lock, as
    (artifact type, title, content)."""
    return ((SBOM_TYPE, "sbom.cdx.json", json.dumps(env.sbom, indent=2, sort_keys=True).encode()),
            (LOCK_TYPE, env.spec.lockfile.name, env.spec.lockfile.read_bytes()))


def one_word(value: str, what: str) -> str:
    """A value written bare (FROM's image, a comment's name): one word, nothing a parser splits on."""
    if not value or any(c.isspace() for c in value) or UNWRITABLE.search(value):
        raise ImageError(f"{what} {value!r} is not one word: it cannot be written into a Dockerfile")
    return value
