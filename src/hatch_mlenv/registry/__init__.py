"""The registry stage: named, versioned environments.

A version is immutable: the lockfile text, the manifest, the digest and the
provenance. Registering a digest a name already has returns that version;
a new digest gets the next integer. Labels (`latest`, `prod`, ...) point at
versions and move. Every read re-checks the stored lock against its digest.

Backends are found through the `mlenv_register_registries` hook; the
built-in `local` (SQLite) and `oci` ones are registered the same way.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import hatch_mlenv.userconfig as userconfig
from hatch_mlenv.credentials import public
from hatch_mlenv.errors import RegistryError, StaleLockError, UsageError
from hatch_mlenv.lock import staleness, stamped_digest
from hatch_mlenv.lockfile import read_lock
from hatch_mlenv.manifest import lock_manifest
from hatch_mlenv.provenance import git_state, provenance
from hatch_mlenv.reference import (
    LATEST,
    MAX_VERSION,
    Reference,
    check_label,
    check_movable_label,
    check_name,
    image_reference_for,
    parse_reference,
)
from hatch_mlenv.registry.base import (
    Backend,
    EnvironmentSummary,
    Registration,
    Registry,
    Version,
    check_entry,
    entry_hash,
    verify,
)

__all__ = [
    "LATEST", "MAX_VERSION", "ENV_REGISTRY", "Backend", "EnvironmentSummary", "Reference", "Registration", "Registry",
    "Version", "check_entry", "check_label", "copy_version", "entry_hash", "git_state", "open_registry",
    "parse_reference",
    "provenance", "register_environment", "register_lockfile", "registered_version", "select_url", "verify",
]

ENV_REGISTRY = "MLENV_REGISTRY"


def select_url(option: str | None, configured: str | None = None) -> str:
    """`--registry URL`, then `MLENV_REGISTRY`, then `registry = ...` in [tool.mlenv], then the
    user config file's default, then `local`; a name from the user config file as its URL."""
    return userconfig.resolve(option or os.environ.get(ENV_REGISTRY) or configured)


def open_registry(url: str) -> Registry:
    if url == "local" or url.startswith("sqlite://"):  # built-in, without loading plugins (see the hookspec)
        from hatch_mlenv.registry.local import LocalBackend

        return LocalBackend().open(url)
    import hatch_mlenv.plugins as plugins

    for backend in plugins.registries():
        if backend.handles(url):
            return backend.open(url)
    raise UsageError(f"unknown registry {url!r}: use `local`, `sqlite:///PATH` or `oci://HOST[:PORT]/NAMESPACE`")


def register_environment(registry: Registry, env: Any, *, labels: tuple[str, ...] = ()) -> Registration:
    """Register a project's locked `Environment` with its provenance; a stale lock is refused
    (a version must be what the spec asks for), for the CLI and the build hook alike."""
    for label in labels:  # before anything is checked or written, whatever the backend
        check_movable_label(label)
    spec = env.spec
    # A lock just written or checked (the build hook's, a fresh `mlenv lock`'s) has its stamp:
    # no second full check on the hot path.
    reason = None if stamped_digest(spec) == env.digest else staleness(spec, env.lock)
    if reason is not None:
        raise StaleLockError(f"{spec.lockfile} is stale: {reason}; run `mlenv lock` before registering")
    text = spec.lockfile.read_text(encoding="utf-8")
    manifest = env.manifest()
    built = manifest.get("provenance") or {}  # the git state the manifest just read: asked once
    return registry.register(
        env.name,
        text,
        manifest,
        provenance(
            spec.project_dir,
            spec_hash=env.lock.spec_hash,
            project={"name": spec.project_name, "version": spec.project_version},
            git=(built["git_commit"], built["git_dirty"]) if "git_commit" in built else None,
        ),
        labels=labels,
        description=spec.description,
    )


def describe(env: Any) -> dict[str, Any]:
    """What `mlenv show` says of an environment: its manifest, whether the lock is fresh,
    and its version in the project's registry (or why that is unknown). A version loaded by
    reference is what it is: no freshness, its number and registry as loaded."""
    # a lockfile loaded by reference is named as given: its copy under `versions/` is written only to install it
    lockfile = env.reference if env.is_registered and env.registry is None else str(env.spec.lockfile)
    data = env.manifest() | {"lockfile": lockfile, "reference": env.reference}
    if env.is_registered:
        return data | {"fresh": None, "stale_reason": None, "registry": env.registry, "version": env.version}
    reason = staleness(env.spec, env.lock)
    data |= {"fresh": reason is None, "stale_reason": reason}
    try:
        registry = open_registry(select_url(None, env.spec.registry))
        data |= {"registry": registry.url, "version": registry.find_digest(env.name, env.digest)}
    except RegistryError as exc:  # show what is known locally; say why the version is not
        data |= {"registry": None, "version": None, "registry_error": str(exc)}
    return data


def copy_version(source: Registry, ref: Reference, destination: Registry, *, labels: bool = False) -> Registration:
    """`ref` of `source` registered in `destination` (verified on the way: entry hash and digest)
    with its definition, its provenance and, under `copied_from`, where it was first registered
    (registry, version, time); a copy of a copy keeps the first origin. The same digest copied
    again creates nothing; `latest` moves only if the version is not older than the one it names;
    with `labels`, its labels but `latest` follow it."""
    if source.url == destination.url:
        raise UsageError(f"{ref} is already in {destination.url}: copy to another registry")
    version = source.get(ref)
    origin = version.provenance.get("copied_from") or {
        "registry": public(source.url), "version": version.version, "time": version.provenance.get("time")}
    moved = tuple(label for label in version.labels if label != LATEST) if labels else ()
    return destination.register(version.name, version.lockfile, version.manifest,
                                version.provenance | {"copied_from": origin}, labels=moved)


def registered_version(env: Any, registry_url: str | None = None) -> int | None:
    """The version number of `env`'s lock (an image's `v<N>` tag): known for a version loaded by
    reference, else looked up by digest in the selected registry (None when it is not there)."""
    if env.version is not None:
        return env.version
    return open_registry(select_url(registry_url, env.spec.registry)).find_digest(env.name, env.digest)


def register_lockfile(registry: Registry, path: Path, name: str, *, labels: tuple[str, ...] = ()) -> Registration:
    """Register any conda-lock.yml (e.g. one conda-lock wrote) under `name`."""
    check_name(name)
    for label in labels:
        check_movable_label(label)
    lock = read_lock(path)
    text = path.read_text(encoding="utf-8")
    manifest = lock_manifest(name, lock, image=image_reference_for(name, lock.digest()), lockfile=path.name)
    return registry.register(
        name,
        text,
        manifest,
        provenance(path.parent, spec_hash=lock.spec_hash, project=None),
        labels=labels,
    )
