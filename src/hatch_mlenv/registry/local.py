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
from hatch_mlenv.registry import (
    LATEST,
    EnvironmentSummary,
    Reference,
    Registration,
    Version,
    check_label,
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
SCHEMA_VERSION = 1


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
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            self._db.execute(statement)
                    self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            raise RegistryError(f"local registry {path}: cannot open: {exc}") from None
        except OSError as exc:
            raise RegistryError(f"local registry {path}: cannot create: {exc.strerror or exc}") from None

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
                    "INSERT INTO versions(name, version, digest, lockfile, manifest, provenance) VALUES (?,?,?,?,?,?)",
                    (name, number, digest, lockfile, json.dumps(manifest, sort_keys=True), json.dumps(provenance, sort_keys=True)),
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
        number = ref.version
        if number is None:
            label = ref.label or LATEST
            row = self._db.execute("SELECT version FROM labels WHERE name = ? AND label = ?", (ref.name, label)).fetchone()
            if row is None:
                self._require_name(ref.name)
                raise NotFoundError(f"{ref.name} has no label {label!r}")
            number = row[0]
        return self._version(ref.name, number)

    def _require_name(self, name: str) -> None:
        if self._db.execute("SELECT 1 FROM environments WHERE name = ?", (name,)).fetchone() is None:
            raise NotFoundError(f"no environment named {name!r} in {self.url}")

    def _stored(self, name: str, number: int) -> tuple[Any, ...] | None:
        return self._db.execute(
            "SELECT digest, lockfile, manifest, provenance, archived FROM versions WHERE name = ? AND version = ?",
            (name, number),
        ).fetchone()

    def _labels(self, name: str, number: int) -> list[str]:
        return [r[0] for r in self._db.execute(
            "SELECT label FROM labels WHERE name = ? AND version = ? ORDER BY label", (name, number)
        )]

    def _version(self, name: str, number: int) -> Version:
        row = self._stored(name, number)
        if row is None:
            self._require_name(name)
            raise NotFoundError(f"{name} has no version {number}")
        return verify(self._row(name, number, row, self._labels(name, number)))

    @staticmethod
    def _row(name: str, number: int, row: tuple[Any, ...], labels: list[str]) -> Version:
        digest, lockfile, manifest, provenance, archived = row
        try:
            manifest_data, provenance_data = json.loads(manifest), json.loads(provenance)
        except ValueError:
            raise RegistryError(f"registry entry {name}:{number} is corrupted: unreadable manifest") from None
        return Version(name, number, digest, lockfile, manifest_data, provenance_data, tuple(labels), bool(archived))

    def find_digest(self, name: str, digest: str) -> int | None:
        row = self._db.execute("SELECT version FROM versions WHERE name = ? AND digest = ?", (name, digest)).fetchone()
        return row[0] if row else None

    def history(self, name: str) -> list[Version]:
        self._require_name(name)
        labels: dict[int, list[str]] = {}
        for label, version in self._db.execute("SELECT label, version FROM labels WHERE name = ? ORDER BY label", (name,)):
            labels.setdefault(version, []).append(label)
        rows = self._db.execute(
            "SELECT version, digest, lockfile, manifest, provenance, archived FROM versions WHERE name = ? ORDER BY version",
            (name,),
        ).fetchall()
        # history lists without re-hashing every lock (that is what `get` is for)
        return [self._row(name, r[0], r[1:], labels.get(r[0], [])) for r in rows]

    def list(self, *, include_archived: bool = False) -> list[EnvironmentSummary]:
        archived = "" if include_archived else "AND archived = 0"
        counts = {
            name: (count, latest)
            for name, count, latest in self._db.execute(
                f"SELECT name, COUNT(*), MAX(version) FROM versions WHERE 1 {archived} GROUP BY name"
            )
        }
        labels: dict[str, dict[str, int]] = {}
        for name, label, version in self._db.execute("SELECT name, label, version FROM labels"):
            labels.setdefault(name, {})[label] = version
        result = []
        for name, description in self._db.execute("SELECT name, description FROM environments ORDER BY name"):
            count, _ = counts.get(name, (0, None))
            if count == 0 and not include_archived:
                continue
            env_labels = labels.get(name, {})
            result.append(EnvironmentSummary(name, env_labels.get(LATEST), count, env_labels, description))
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
        if url == "local":
            return LocalRegistry(default_path())
        return LocalRegistry(Path(url[len("sqlite://"):]).expanduser())


@hookimpl
def mlenv_register_registries() -> list[LocalBackend]:
    return [LocalBackend()]
