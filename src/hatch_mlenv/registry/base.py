"""What every registry backend stores and serves: versions, summaries, the backend
interfaces, and the integrity checks every read goes through."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Protocol

from hatch_mlenv.errors import MlenvError, RegistryError
from hatch_mlenv.lockfile import parse_lock
from hatch_mlenv.reference import Reference


@dataclass(frozen=True)
class Version:
    """One registered, immutable version of a named environment."""

    name: str
    version: int
    digest: str
    lockfile: str
    manifest: dict[str, Any] = field(hash=False)
    provenance: dict[str, Any] = field(hash=False)
    labels: tuple[str, ...] = ()
    archived: bool = False
    # sha256 over name, number, lock text, manifest and provenance, stored with the entry by
    # every backend; None only when the stored entry lacks it, which `check_entry` refuses.
    entry_hash: str | None = None

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    def manifest_with_version(self) -> dict[str, Any]:
        return {**self.manifest, "version": self.version, "registry_ref": self.ref}

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "digest": f"sha256:{self.digest}",
            "labels": list(self.labels),
            "archived": self.archived,
            "created": self.provenance.get("time"),
            "git_commit": self.provenance.get("git_commit"),
            "git_dirty": self.provenance.get("git_dirty"),
            "image": self.manifest.get("image"),
        }


@dataclass(frozen=True)
class EnvironmentSummary:
    name: str
    latest: int | None
    versions: int
    labels: dict[str, int]
    description: str | None = None
    # Labels whose version is not in the registry: a damaged registry, reported, never followed.
    dangling: dict[str, int] = field(default_factory=dict)
    archived: int = 0  # how many of its versions are archived (counted in `versions` only with --all)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "latest": self.latest,
            "versions": self.versions,
            "archived": self.archived,
            "labels": dict(sorted(self.labels.items())),
            "dangling_labels": dict(sorted(self.dangling.items())),
            "description": self.description,
        }


@dataclass(frozen=True)
class Registration:
    version: Version
    created: bool


class Registry(Protocol):
    """What every backend implements. Errors are `RegistryError` with a clear message."""

    url: str

    def register(
        self,
        name: str,
        lockfile: str,
        manifest: dict[str, Any],
        provenance: dict[str, Any],
        *,
        labels: tuple[str, ...] = (),
        description: str | None = None,
    ) -> Registration:
        """Store a version (its digest is computed from `lockfile`), or find the existing one."""

    def get(self, ref: Reference) -> Version: ...

    def find_digest(self, name: str, digest: str) -> int | None:
        """The version `name` registered for `digest`, if any."""

    def history(self, name: str) -> list[Version]: ...

    def list(self, *, include_archived: bool = False) -> list[EnvironmentSummary]: ...

    def label(self, name: str, version: int, label: str) -> Version: ...

    def unlabel(self, name: str, label: str) -> int:
        """Remove `label` (never `latest`); returns the version it pointed at."""

    def set_archived(self, name: str, version: int, archived: bool) -> Version: ...

    def dangling_labels(self, name: str) -> dict[str, int]:
        """Labels of `name` whose version is not in the registry (empty for a sound registry)."""

    # Optional (see `history_page`): `history_page(name, offset, limit) -> (versions newest
    # first, how many versions there are)`, reading only the versions of that page.


def history_page(registry: Registry, name: str, offset: int, limit: int) -> tuple[list[Version], int]:
    """`limit` versions of `name` from `offset`, newest first, and how many versions it has: for
    pages over thousands of versions. A backend that has its own `history_page` reads only that
    page; for any other, this is a slice of its `history`."""
    own = getattr(registry, "history_page", None)
    if own is not None:
        return own(name, offset, limit)
    versions = registry.history(name)
    return versions[::-1][offset:offset + limit], len(versions)


class Backend(Protocol):
    """A registry backend: which URLs it serves and how to open one."""

    name: str

    def handles(self, url: str) -> bool: ...

    def open(self, url: str) -> Registry: ...


def takes_latest(provenance: dict[str, Any], current: dict[str, Any] | None) -> bool:
    """Whether a new version moves `latest`: unless it was registered before the version `latest`
    names (a copy of an older version keeps its original time: `mlenv copy`). ISO times in UTC."""
    if current is None:
        return True
    new, old = provenance.get("time"), current.get("time")
    if not (isinstance(new, str) and isinstance(old, str)) or new != old:
        return not (isinstance(new, str) and isinstance(old, str) and new < old)
    # the same second: two copies from one registry keep that registry's order
    new_origin, old_origin = provenance.get("copied_from") or {}, current.get("copied_from") or {}
    if new_origin.get("registry") and new_origin.get("registry") == old_origin.get("registry"):
        return (new_origin.get("version") or 0) > (old_origin.get("version") or 0)
    return True


def entry_hash(name: str, number: int, lockfile: str, manifest: dict[str, Any], provenance: dict[str, Any]) -> str:
    """One hash over everything a stored version is: who, which number, and all its content."""
    payload = {"name": name, "version": number, "lockfile": lockfile, "manifest": manifest, "provenance": provenance}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def check_entry(version: Version, where: object = None) -> Version:
    """Refuse a stored version whose lock, manifest, provenance, name or number is not what was
    stored, or that carries no entry hash (every backend stores one: a missing one is damage,
    never a reason to skip the check). `where` (the registry's file) starts the message."""
    prefix = f"{where}: " if where is not None else ""
    if not version.entry_hash:
        raise RegistryError(f"{prefix}registry entry {version.ref} is corrupted: it has no entry hash, "
                            "so its content cannot be checked")
    if version.entry_hash != entry_hash(
        version.name, version.version, version.lockfile, version.manifest, version.provenance
    ):
        raise RegistryError(
            f"{prefix}registry entry {version.ref} is corrupted: its lock, manifest, provenance or number "
            f"changed after it was registered"
        )
    return version


def verify(version: Version, where: object = None) -> Version:
    """Refuse to serve a stored version whose content is not what was stored: the entry hash,
    then the lock's own digest."""
    check_entry(version, where)

    try:
        actual = parse_lock(version.lockfile, f"registry entry {version.ref}").digest()
    except MlenvError:
        actual = None
    if actual != version.digest:
        prefix = f"{where}: " if where is not None else ""
        raise RegistryError(f"{prefix}registry entry {version.ref} is corrupted: digest mismatch")
    return version
