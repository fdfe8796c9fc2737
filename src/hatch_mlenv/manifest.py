"""The manifest (`mlenv.json`): what a lock is, in one small JSON document shipped in wheels,
written next to dist files and stored with every registered version."""

from __future__ import annotations

from typing import Any

from hatch_mlenv._version import __version__
from hatch_mlenv.lockfile import Lock
from hatch_mlenv.system import lock_needs

MANIFEST_NAME = "mlenv.json"
__all__ = ["MANIFEST_NAME", "lock_manifest"]


def lock_manifest(
    name: str, lock: Lock, *, image: str, lockfile: str = "conda-lock.yml", project: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The manifest of a lock: everything in it is derived from the lock, the name and the image."""
    variables = lock.variables
    manifest = {
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
    if lock.base_dockerfile:  # only then, so that other manifests keep their shape
        manifest["base_dockerfile_sha256"] = lock.base_dockerfile
    return manifest
