"""`mlenv gc`: free what nothing uses any more.

What may go, all in hatch-mlenv's own directories: prefixes installed for registered
versions (`<data>/envs/NAME-DIGEST12`), their definitions (`<data>/versions/NAME-DIGEST12`),
packs (`<data>/packs/NAME-DIGEST12.tar.gz`), and cache entries (extracted conda packages
and their archives, downloaded wheels and sdists, wheels built from sdists, wheel metadata,
parsed locks, lock stamps). What stays:
everything a registered, non-archived version uses, in the selected registry and in
every registry an install on this machine came from, and everything the lock of a
project or a lockfile installed on this machine uses (`mlenv install` records both
before it writes anything; one whose lockfile is gone no longer counts). A registry
that cannot be read stops `gc` before anything is removed. A project's own `.mlenv/`
is never touched. uv's cache has its own collector (`uv cache prune`).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hatch_mlenv.errors import MlenvError, RegistryError
from hatch_mlenv.hashes import TAG_LENGTH
from hatch_mlenv.lockfile import atomic_write, lockfile_name, parse_lock, read_lock_text, text_key
from hatch_mlenv.paths import cache_dir, data_dir
from hatch_mlenv.registry import open_registry
from hatch_mlenv.sealed import ARCHIVE_HASHES, LOCK_STAMP, read_sealed
from hatch_mlenv.usage import PROJECTS_FILE, REGISTRIES_FILE
from hatch_mlenv.usage import lines as _lines


@dataclass
class Collection:
    """What `gc` found unused: (path, bytes) pairs, removed unless it was a dry run."""

    removed: list[tuple[Path, int]] = field(default_factory=list)
    kept: int = 0
    dry_run: bool = False

    @property
    def freed(self) -> int:
        return sum(size for _path, size in self.removed)

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "freed_bytes": self.freed,
            "kept": self.kept,
            "removed": [{"path": str(path), "bytes": size} for path, size in self.removed],
        }


def _live_locks(registry: Any) -> tuple[list[Any], list[str], set[str]]:
    """The locks still in use: every non-archived version of the selected registry and of every
    registry an install came from, every recorded lockfile that still exists. Returns them, the
    lockfiles still present, and the keys (`lockfile.text_key`) of their texts."""
    locks = []
    texts: set[str] = set()
    urls = [registry.url, *(url for url in _lines(REGISTRIES_FILE) if url != registry.url)]
    for url in urls:
        try:
            source = registry if url == registry.url else open_registry(url)
            for summary in source.list(include_archived=True):
                for version in source.history(summary.name):
                    if not version.archived:
                        locks.append((version.name, parse_lock(version.lockfile, version.ref)))
                        texts.add(text_key(version.lockfile))
        except MlenvError as exc:
            raise RegistryError(f"cannot tell what {url} still uses, so nothing was removed: {exc} (versions "
                                f"installed on this machine came from it; see {data_dir() / REGISTRIES_FILE})") from None
    projects = []
    for line in _lines(PROJECTS_FILE):
        path = Path(line)
        try:
            text = read_lock_text(path)
            lock = parse_lock(text, path)
        except MlenvError:
            continue  # gone or no longer readable: nothing of it is in use
        projects.append(line)
        locks.append((lockfile_name(lock, path), lock))
        texts.add(text_key(text))
    return locks, projects, texts


def collect(registry: Any, *, dry_run: bool = False, older_than_days: float | None = None) -> Collection:
    """Remove (or with `dry_run`, list) what no live lock uses, optionally only what is older
    than `older_than_days` (by modification time)."""
    locks, projects, texts = _live_locks(registry)
    keys = {f"{name}-{lock.digest()[:TAG_LENGTH]}" for name, lock in locks}
    packages: set[str] = set()
    wheels: set[str] = set()
    for _name, lock in locks:
        for package in lock.packages:
            if package.manager == "conda":
                packages.add(_archive_stem(package.url))
            elif package.sha256:
                wheels.add(package.sha256)
    cutoff = None if older_than_days is None else time.time() - older_than_days * 86400
    result = Collection(dry_run=dry_run)

    def consider(path: Path, in_use: bool) -> None:
        if in_use or (cutoff is not None and _mtime(path) > cutoff):
            result.kept += 1
            return
        result.removed.append((path, _size(path)))

    data, cache = data_dir(), cache_dir()
    for path in _entries(data / "envs"):
        consider(path, path.name in keys)
    for path in _entries(data / "versions"):
        consider(path, path.name in keys)
    for path in _entries(data / "packs"):
        consider(path, path.name.removesuffix(".sha256").removesuffix(".tar.gz") in keys)  # a pack, its sha256
    for path in _entries(cache / "pkgs"):
        if path.name == "cache.db" or path.name.endswith(".lock") and path.with_suffix("").exists():
            continue  # rattler's own bookkeeping; a package's lock file goes with the package
        consider(path, _archive_stem(path.name) in packages)
    for path in _entries(cache / "wheels"):
        consider(path, path.name in wheels)
    for path in _entries(cache / "built-wheels"):  # wheels built from locked sdists, by the sdist's sha256
        consider(path, path.name in wheels)
    for path in _entries(cache / "wheel-metadata"):
        consider(path, path.name.removesuffix(".METADATA") in wheels)
    for path in _entries(cache / "lock-documents"):  # parsed locks, by the sha256 of their text
        consider(path, path.name.removesuffix(".json") in texts)
    for path in _entries(cache / "lock-stamps"):
        consider(path, Path(_stamp_lockfile(path) or "").is_file())  # a stamp is worth keeping while its lock exists
    for path in _entries(cache / ARCHIVE_HASHES):
        consider(path, Path(_memo_archive(path) or "").is_file())  # an archive's hashes, while it is there
    if not dry_run:
        for path, _size_ in result.removed:
            _remove(path)
            if path.parent.name == "pkgs":
                Path(f"{path}.lock").unlink(missing_ok=True)
        _rewrite_projects(projects)
    return result


def _archive_stem(url_or_name: str) -> str:
    name = Path(urllib.parse.urlparse(url_or_name).path).name
    for suffix in (".conda", ".tar.bz2"):
        name = name.removesuffix(suffix)
    return name


def _stamp_lockfile(path: Path) -> str | None:

    body = read_sealed(path, LOCK_STAMP, path.stem)  # an unsealed stamp is never believed: not worth keeping
    try:
        return str(json.loads(body).get("lockfile")) if body is not None else None
    except (ValueError, AttributeError):
        return None


def _memo_archive(path: Path) -> str | None:
    """The archive whose hashes the sealed memo `path` keeps (install/conda.archive_hashes)."""
    try:
        key = json.loads(path.read_bytes())["key"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return key if isinstance(key, str) and read_sealed(path, ARCHIVE_HASHES, key) is not None else None


def _rewrite_projects(projects: list[str]) -> None:
    path = data_dir() / PROJECTS_FILE
    if path.exists():
        atomic_write(path, "".join(f"{line}\n" for line in projects))


def _entries(directory: Path) -> list[Path]:
    try:
        return sorted(p for p in directory.iterdir() if not p.name.startswith("."))
    except FileNotFoundError:
        return []


def _mtime(path: Path) -> float:
    try:
        return path.lstat().st_mtime
    except OSError:
        return 0.0


def _size(path: Path) -> int:
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
