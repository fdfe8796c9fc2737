"""The `local` registry: one SQLite database in WAL mode.

Registration runs in one `BEGIN IMMEDIATE` transaction: the writer lock is
taken before the next version number is read, so concurrent processes queue
instead of racing, and a process killed mid-way leaves either the whole
version (row, `latest` label, environment row) or none of it.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from hatch_mlenv.errors import NotFoundError, RegistryError
from hatch_mlenv.hookspecs import hookimpl
from hatch_mlenv.reference import LATEST, Reference, check_label
from hatch_mlenv.registry.base import (
    EnvironmentSummary,
    Registration,
    Version,
    check_entry,
    entry_hash,
    verify,
)

BUSY_TIMEOUT_MS = 120_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS environments (
    name TEXT PRIMARY KEY,
    description TEXT
);
CREATE TABLE IF NOT EXISTS versions (
    name TEXT NOT NULL REFERENCES environments(name),
    version INTEGER NOT NULL,
    digest TEXT NOT NULL,
    lockfile TEXT NOT NULL,
    manifest TEXT NOT NULL,
    provenance TEXT NOT NULL,
    archived INTEGER NOT NULL DEFAULT 0,
    entry_hash TEXT,
    PRIMARY KEY (name, version),
    UNIQUE (name, digest)
);
CREATE TABLE IF NOT EXISTS labels (
    name TEXT NOT NULL,
    label TEXT NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (name, label),
    FOREIGN KEY (name, version) REFERENCES versions(name, version)
);
CREATE INDEX IF NOT EXISTS labels_by_version ON labels(name, version);
CREATE INDEX IF NOT EXISTS versions_listing ON versions(name, archived, version);
"""
# 2: versions.entry_hash (see registry.entry_hash); version-1 rows get theirs when first opened.
SCHEMA_VERSION = 2


def default_path() -> Path:
    """`$MLENV_HOME/registry.sqlite3`, else the user data directory (platformdirs)."""
    from hatch_mlenv.paths import data_dir

    return data_dir() / "registry.sqlite3"


class LocalRegistry:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.url = f"sqlite://{path}"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.execute("PRAGMA foreign_keys = ON")
            # Only a new database takes the write lock to create the tables:
            # readers of an existing one never wait behind a writer here.
            if self._db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                with self._transaction():
                    schema = self._db.execute("PRAGMA user_version").fetchone()[0]
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            self._db.execute(statement)
                    if schema == 1:
                        self._db.execute("ALTER TABLE versions ADD COLUMN entry_hash TEXT")
                        self._hash_existing_rows()
                    self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            raise RegistryError(f"local registry {path} is damaged or not a registry: {exc}; "
                                f"move it away to start a new one") from None
        except OSError as exc:
            raise RegistryError(f"local registry {path}: cannot create: {exc.strerror or exc}") from None

    def _hash_existing_rows(self) -> None:
        rows = self._db.execute("SELECT name, version, lockfile, manifest, provenance FROM versions").fetchall()
        for name, number, lockfile, manifest, provenance in rows:
            digest = entry_hash(name, number, lockfile, json.loads(manifest), json.loads(provenance))
            self._db.execute("UPDATE versions SET entry_hash = ? WHERE name = ? AND version = ?", (digest, name, number))

    @contextmanager
    def _damage_reported(self) -> Iterator[None]:
        """A query that fails on the database itself says so, with the file, not 'not found'."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            raise RegistryError(f"local registry {self.path} is damaged: {exc}; move it away to start a new one") from None

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        else:
            self._db.execute("COMMIT")

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
        from hatch_mlenv.lockfile import parse_lock

        # Parsed once, before the transaction: the stored digest is always the lock's own.
        digest = parse_lock(lockfile, f"lockfile for {name}").digest()
        for label in labels:
            check_label(label)
        with self._transaction() as db:
            db.execute("INSERT OR IGNORE INTO environments(name) VALUES (?)", (name,))
            if description is not None:
                db.execute("UPDATE environments SET description = ? WHERE name = ?", (description, name))
            row = db.execute("SELECT version FROM versions WHERE name = ? AND digest = ?", (name, digest)).fetchone()
            created = row is None
            if created:
                number = db.execute(
                    "SELECT COALESCE(MAX(version), 0) + 1 FROM versions WHERE name = ?", (name,)
                ).fetchone()[0]
                db.execute(
                    "INSERT INTO versions(name, version, digest, lockfile, manifest, provenance, entry_hash) "
                    "VALUES (?,?,?,?,?,?,?)",
                    (name, number, digest, lockfile, json.dumps(manifest, sort_keys=True),
                     json.dumps(provenance, sort_keys=True), entry_hash(name, number, lockfile, manifest, provenance)),
                )
                self._set_label(db, name, LATEST, number)
            else:
                number = row[0]
            for label in labels:
                self._set_label(db, name, label, number)
            # What is stored (for an existing digest, the first registration's text), read in the
            # transaction; the digest was computed just above, so it is not re-checked here.
            version = self._row(name, number, self._stored(name, number), self._labels(name, number))
        return Registration(version, created)

    @staticmethod
    def _set_label(db: sqlite3.Connection, name: str, label: str, version: int) -> None:
        db.execute(
            "INSERT INTO labels(name, label, version) VALUES (?,?,?) "
            "ON CONFLICT(name, label) DO UPDATE SET version = excluded.version",
            (name, label, version),
        )

    def get(self, ref: Reference) -> Version:
        with self._damage_reported():
            number = ref.version
            if number is None:
                label = ref.label or LATEST
                row = self._db.execute(
                    "SELECT version FROM labels WHERE name = ? AND label = ?", (ref.name, label)
                ).fetchone()
                if row is None:
                    self._require_name(ref.name)
                    raise NotFoundError(f"{ref.name} has no label {label!r}")
                number = row[0]
                if self._stored(ref.name, number) is None:
                    raise RegistryError(
                        f"registry entry {ref.name}@{label} is damaged: the label points at version {number}, "
                        f"which is not in {self.url}"
                    )
            return self._version(ref.name, number)

    def dangling_labels(self, name: str) -> dict[str, int]:
        with self._damage_reported():
            return dict(self._db.execute(
                "SELECT label, version FROM labels WHERE name = ? AND NOT EXISTS "
                "(SELECT 1 FROM versions v WHERE v.name = labels.name AND v.version = labels.version) ORDER BY label",
                (name,),
            ).fetchall())

    def _require_name(self, name: str) -> None:
        if self._db.execute("SELECT 1 FROM environments WHERE name = ?", (name,)).fetchone() is None:
            if self._db.execute("SELECT 1 FROM versions WHERE name = ? LIMIT 1", (name,)).fetchone() is not None:
                raise RegistryError(f"local registry {self.path} is damaged: {name!r} has versions but no environment row")
            raise NotFoundError(f"no environment named {name!r} in {self.url}")

    def _stored(self, name: str, number: int) -> tuple[Any, ...] | None:
        return self._db.execute(
            "SELECT digest, lockfile, manifest, provenance, archived, entry_hash FROM versions "
            "WHERE name = ? AND version = ?",
            (name, number),
        ).fetchone()

    def _labels(self, name: str, number: int) -> list[str]:
        return [r[0] for r in self._db.execute(
            "SELECT label FROM labels WHERE name = ? AND version = ? ORDER BY label", (name, number)
        )]

    def _version(self, name: str, number: int) -> Version:
        with self._damage_reported():
            row = self._stored(name, number)
            if row is None:
                self._require_name(name)
                raise NotFoundError(f"{name} has no version {number}")
            return verify(self._row(name, number, row, self._labels(name, number)))

    @staticmethod
    def _row(name: str, number: int, row: tuple[Any, ...], labels: list[str]) -> Version:
        digest, lockfile, manifest, provenance, archived, stored_hash = row
        try:
            manifest_data, provenance_data = json.loads(manifest), json.loads(provenance)
        except (ValueError, TypeError):
            raise RegistryError(f"registry entry {name}:{number} is corrupted: unreadable manifest") from None
        return Version(name, number, digest, lockfile, manifest_data, provenance_data, tuple(labels), bool(archived),
                       stored_hash)

    def find_digest(self, name: str, digest: str) -> int | None:
        row = self._db.execute("SELECT version FROM versions WHERE name = ? AND digest = ?", (name, digest)).fetchone()
        return row[0] if row else None

    def history(self, name: str) -> list[Version]:
        with self._damage_reported():
            return self._history(name)

    def _history(self, name: str) -> list[Version]:
        self._require_name(name)
        labels: dict[int, list[str]] = {}
        for label, version in self._db.execute("SELECT label, version FROM labels WHERE name = ? ORDER BY label", (name,)):
            labels.setdefault(version, []).append(label)
        rows = self._db.execute(
            "SELECT version, digest, lockfile, manifest, provenance, archived, entry_hash FROM versions "
            "WHERE name = ? ORDER BY version",
            (name,),
        ).fetchall()
        # history checks each entry's hash, without parsing every lock (that is what `get` does too)
        return [check_entry(self._row(name, r[0], r[1:], labels.get(r[0], []))) for r in rows]

    def list(self, *, include_archived: bool = False) -> list[EnvironmentSummary]:
        with self._damage_reported():
            return self._list(include_archived)

    def _list(self, include_archived: bool) -> list[EnvironmentSummary]:
        archived = "" if include_archived else "AND archived = 0"
        counts = {
            name: (count, latest)
            for name, count, latest in self._db.execute(
                f"SELECT name, COUNT(*), MAX(version) FROM versions WHERE 1 {archived} GROUP BY name"
            )
        }
        existing = set(self._db.execute("SELECT name, version FROM versions").fetchall())
        labels: dict[str, dict[str, int]] = {}
        dangling: dict[str, dict[str, int]] = {}
        for name, label, version in self._db.execute("SELECT name, label, version FROM labels"):
            (labels if (name, version) in existing else dangling).setdefault(name, {})[label] = version
        result = []
        for name, description in self._db.execute("SELECT name, description FROM environments ORDER BY name"):
            count, _ = counts.get(name, (0, None))
            if count == 0 and not include_archived and name not in dangling:
                continue
            env_labels = labels.get(name, {})
            result.append(EnvironmentSummary(name, env_labels.get(LATEST), count, env_labels, description,
                                             dangling.get(name, {})))
        return result

    def label(self, name: str, version: int, label: str) -> Version:
        check_label(label)
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM versions WHERE name = ? AND version = ?", (name, version)).fetchone() is None:
                self._require_name(name)
                raise NotFoundError(f"{name} has no version {version}")
            self._set_label(db, name, label, version)
        return self._version(name, version)

    def set_archived(self, name: str, version: int, archived: bool) -> Version:
        with self._transaction() as db:
            changed = db.execute(
                "UPDATE versions SET archived = ? WHERE name = ? AND version = ?", (int(archived), name, version)
            ).rowcount
            if not changed:
                self._require_name(name)
                raise NotFoundError(f"{name} has no version {version}")
        return self._version(name, version)

    def close(self) -> None:
        self._db.close()


class LocalBackend:
    name = "local"

    def handles(self, url: str) -> bool:
        return url == "local" or url.startswith("sqlite://")

    def open(self, url: str) -> LocalRegistry:
        return LocalRegistry(database_path(url))


def database_path(url: str) -> Path:
    """The SQLite file of `local` or `sqlite:///PATH`."""
    return default_path() if url == "local" else Path(url[len("sqlite://"):]).expanduser()


@hookimpl
def mlenv_register_registries() -> list[LocalBackend]:
    return [LocalBackend()]
