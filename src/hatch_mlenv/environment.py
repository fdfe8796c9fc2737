"""The `Environment` value that flows through every stage: spec + lock + identity."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from hatch_mlenv import __version__
from hatch_mlenv.lockfile import Lock
from hatch_mlenv.spec import Spec, public_variables

MANIFEST_NAME = "mlenv.json"
TAG_LENGTH = 12


@dataclass(frozen=True)
class Environment:
    spec: Spec
    lock: Lock

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def digest(self) -> str:
        return self.lock.digest()

    @property
    def image(self) -> str:
        return image_reference(self.lock.digest(), self.spec)

    def manifest(self) -> dict[str, Any]:
        """The manifest (`mlenv.json`) shipped in wheels and written next to dist files."""
        spec = self.spec
        return {
            "name": self.name,
            "digest": f"sha256:{self.digest}",
            "image": self.image,
            "platforms": sorted(self.lock.platforms),
            "packages": self.lock.counts(),
            "variables": {k: v for k, v in public_variables(spec.variables).items() if v is not None},
            "secret_variables": sorted(v.name for v in spec.variables if v.secret),
            "base_image": spec.docker.base_image,
            "lockfile": spec.lockfile.name,
            "spec_hash": self.lock.spec_hash,
            "project": {"name": spec.project_name, "version": spec.project_version},
            "hatch_mlenv": __version__,
        }


def repository_name(spec: Spec) -> str:
    """The image repository: `[tool.mlenv.docker] repository`, else the environment name, lowercased."""
    repository = spec.docker.repository or re.sub(r"[^a-z0-9._/-]+", "-", spec.name.lower())
    if spec.docker.registry:
        repository = f"{spec.docker.registry.rstrip('/')}/{repository}"
    return repository


def image_reference(digest: str, spec: Spec) -> str:
    """`[registry/]repository:<first 12 hex of the digest>`: known before any daemon is asked."""
    return f"{repository_name(spec)}:{digest[:TAG_LENGTH]}"
