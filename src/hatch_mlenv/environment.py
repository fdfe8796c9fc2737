"""The `Environment` value that flows through every stage: spec + lock + identity."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from hatch_mlenv import __version__
from hatch_mlenv.lockfile import Lock
from hatch_mlenv.spec import Spec

MANIFEST_NAME = "mlenv.json"
TAG_LENGTH = 12


@dataclass(frozen=True)
class Environment:
    """The value every stage takes: the spec and its lock; the facts derived from them
    (digest, image reference, manifest with provenance) are computed once, on first use."""

    spec: Spec
    lock: Lock

    @classmethod
    def load(cls, project: Path | str = ".", env: str | None = None) -> Environment:
        """The environment of a project directory (`env`: a `[tool.mlenv.envs.NAME]`) and its lockfile."""
        from hatch_mlenv.lockfile import read_lock
        from hatch_mlenv.spec import load_spec

        spec = load_spec(project, env)
        return cls(spec, read_lock(spec.lockfile))

    @property
    def name(self) -> str:
        return self.spec.name

    @cached_property
    def digest(self) -> str:
        return self.lock.digest()

    @cached_property
    def image(self) -> str:
        return image_reference(self.digest, self.spec)

    def manifest(self) -> dict[str, Any]:
        """The manifest (`mlenv.json`) shipped in wheels and written next to dist files (a copy)."""
        import copy

        return copy.deepcopy(self._manifest)

    @cached_property
    def _manifest(self) -> dict[str, Any]:
        import hashlib

        from hatch_mlenv.provenance import git_state

        spec = self.spec
        commit, dirty = git_state(spec.project_dir)
        manifest = lock_manifest(
            self.name,
            self.lock,
            image=self.image,
            lockfile=spec.lockfile.name,
            project={"name": spec.project_name, "version": spec.project_version},
        )
        # Which lock, which commit: enough for a model artifact to name the environment it was made in.
        manifest["provenance"] = {
            "lockfile_sha256": hashlib.sha256(spec.lockfile.read_bytes()).hexdigest(),
            "git_commit": commit,
            "git_dirty": dirty,
        }
        return manifest


def lock_manifest(
    name: str, lock: Lock, *, image: str, lockfile: str = "conda-lock.yml", project: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The manifest of a lock: everything in it is derived from the lock, the name and the image."""
    from hatch_mlenv.system import lock_needs

    variables = lock.variables
    return {
        "name": name,
        "digest": f"sha256:{lock.digest()}",
        "image": image,
        "platforms": sorted(lock.platforms),
        "packages": lock.counts(),
        "variables": {k: v for k, v in variables.items() if v is not None},
        "secret_variables": sorted(k for k, v in variables.items() if v is None),
        "base_image": lock.base_image,
        "lockfile": lockfile,
        "spec_hash": lock.spec_hash,
        "system_requirements": lock.system_requirements,
        "needs": lock_needs(lock),
        "project": project or {},
        "hatch_mlenv": __version__,
    }


def repository_name(name: str, repository: str | None = None, registry: str | None = None) -> str:
    """The image repository: `[tool.mlenv.docker] repository`, else the environment name, lowercased."""
    repository = repository or re.sub(r"[^a-z0-9._/-]+", "-", name.lower())
    if registry:
        repository = f"{registry.rstrip('/')}/{repository}"
    return repository


def image_reference(digest: str, spec: Spec) -> str:
    """`[registry/]repository:<first 12 hex of the digest>`: known before any daemon is asked."""
    return f"{repository_name(spec.name, spec.docker.repository, spec.docker.registry)}:{digest[:TAG_LENGTH]}"


def image_reference_for(name: str, digest: str) -> str:
    """The image reference of a lock registered without a project: `name:<digest12>`."""
    return f"{repository_name(name)}:{digest[:TAG_LENGTH]}"
