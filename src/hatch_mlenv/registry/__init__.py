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
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from hatch_mlenv.errors import MlenvError, RegistryError, UsageError

LATEST = "latest"
MAX_VERSION = 2**31 - 1  # version numbers are SQLite integers and OCI tags: keep them in range
ENV_REGISTRY = "MLENV_REGISTRY"

_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}"  # at most 100 characters, as in [tool.mlenv] name
_LABEL_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$")
_REF_RE = re.compile(rf"^(?P<name>{_NAME})(?::(?P<version>[^@:]+)|@(?P<label>[^@:]+))?$")


@dataclass(frozen=True)
class Reference:
    """`NAME`, `NAME:VERSION` or `NAME@LABEL`; a bare name means `@latest`."""

    name: str
    version: int | None = None
    label: str | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}:{self.version}"
        return f"{self.name}@{self.label or LATEST}"


def parse_reference(text: str, *, require_version: bool = False) -> Reference:
    match = _REF_RE.match(text.strip())
    if not match:
        shown = f"{text[:60]!r}..." if len(text) > 60 else repr(text)
        raise UsageError(f"malformed reference {shown}: use NAME, NAME:VERSION or NAME@LABEL "
                         "(a name has at most 100 characters)")
    version = match["version"]
    if version is not None:
        if not version.isdigit() or not 1 <= int(version) <= MAX_VERSION:
            raise UsageError(f"malformed reference {text[:120]!r}: the version must be an integer from 1 to {MAX_VERSION}")
        return Reference(match["name"], int(version))
    if require_version:
        raise UsageError(f"malformed reference {text!r}: use NAME:VERSION")
    label = match["label"]
    if label is not None:
        check_label(label)
    return Reference(match["name"], label=label)


def check_label(label: str) -> str:
    if not _LABEL_RE.match(label):
        raise UsageError(f"invalid label {label!r}: use letters, digits, '.', '_' and '-' (at most 64)")
    return label


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
    # sha256 over name, number, lock text, manifest and provenance, stored with the entry
    # (None where the backend stores content-addressed blobs, as OCI registries do).
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

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "latest": self.latest,
            "versions": self.versions,
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

    def set_archived(self, name: str, version: int, archived: bool) -> Version: ...

    def dangling_labels(self, name: str) -> dict[str, int]:
        """Labels of `name` whose version is not in the registry (empty for a sound registry)."""


class Backend(Protocol):
    """A registry backend: which URLs it serves and how to open one."""

    name: str

    def handles(self, url: str) -> bool: ...

    def open(self, url: str) -> Registry: ...


def select_url(option: str | None, configured: str | None = None) -> str:
    """`--registry URL`, then `MLENV_REGISTRY`, then `registry = ...` in [tool.mlenv], then `local`."""
    return option or os.environ.get(ENV_REGISTRY) or configured or "local"


def open_registry(url: str) -> Registry:
    from hatch_mlenv import plugins

    for backend in plugins.registries():
        if backend.handles(url):
            return backend.open(url)
    raise UsageError(f"unknown registry {url!r}: use `local`, `sqlite:///PATH` or `oci://HOST[:PORT]/NAMESPACE`")


def entry_hash(name: str, number: int, lockfile: str, manifest: dict[str, Any], provenance: dict[str, Any]) -> str:
    """One hash over everything a stored version is: who, which number, and all its content."""
    import hashlib
    import json

    payload = {"name": name, "version": number, "lockfile": lockfile, "manifest": manifest, "provenance": provenance}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def check_entry(version: Version) -> Version:
    """Refuse a stored version whose lock, manifest, provenance, name or number is not what was stored."""
    if version.entry_hash is not None and version.entry_hash != entry_hash(
        version.name, version.version, version.lockfile, version.manifest, version.provenance
    ):
        raise RegistryError(
            f"registry entry {version.ref} is corrupted: its lock, manifest, provenance or number "
            f"changed after it was registered"
        )
    return version


def verify(version: Version) -> Version:
    """Refuse to serve a stored version whose content is not what was stored: the entry hash,
    then the lock's own digest."""
    from hatch_mlenv.lockfile import parse_lock

    check_entry(version)

    try:
        actual = parse_lock(version.lockfile, f"registry entry {version.ref}").digest()
    except MlenvError:
        actual = None
    if actual != version.digest:
        raise RegistryError(f"registry entry {version.ref} is corrupted: digest mismatch")
    return version


def provenance(project_dir: Path | None, *, spec_hash: str | None, project: dict[str, Any] | None) -> dict[str, Any]:
    """Where a version came from: time, git state, project, tools, user."""
    import datetime
    import getpass
    from importlib import metadata

    from hatch_mlenv import __version__

    commit, dirty = git_state(project_dir) if project_dir else (None, None)
    try:
        rattler_version = metadata.version("py-rattler")
    except metadata.PackageNotFoundError:
        rattler_version = None
    try:
        user = getpass.getuser()
    except Exception:  # no login name in some containers
        user = None
    return {
        "time": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
        "git_commit": commit,
        "git_dirty": dirty,
        "project": project or {},
        "spec_hash": spec_hash,
        "hatch_mlenv": __version__,
        "py_rattler": rattler_version,
        "user": user,
    }


def git_state(directory: Path) -> tuple[str | None, bool | None]:
    import subprocess

    def git(*args: str) -> str | None:
        try:
            process = subprocess.run(
                ["git", *args], cwd=directory, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, timeout=30
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return process.stdout if process.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return None, None
    status = git("status", "--porcelain", "--untracked-files=no")
    return commit.strip(), bool(status.strip()) if status is not None else None


def register_environment(registry: Registry, env: Any, *, labels: tuple[str, ...] = ()) -> Registration:
    """Register a project's locked `Environment` with its provenance."""
    spec = env.spec
    text = spec.lockfile.read_text(encoding="utf-8")
    return registry.register(
        env.name,
        text,
        env.manifest(),
        provenance(
            spec.project_dir,
            spec_hash=env.lock.spec_hash,
            project={"name": spec.project_name, "version": spec.project_version},
        ),
        labels=labels,
        description=spec.description,
    )


def register_lockfile(registry: Registry, path: Path, name: str, *, labels: tuple[str, ...] = ()) -> Registration:
    """Register any conda-lock.yml (e.g. one conda-lock wrote) under `name`."""
    from hatch_mlenv.environment import image_reference_for, lock_manifest
    from hatch_mlenv.lockfile import read_lock

    if not _NAME_RE.match(name):
        raise UsageError(f"invalid environment name {name!r}: use letters, digits, '.', '_' and '-'")
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


_NAME_RE = re.compile(rf"^{_NAME}$")
