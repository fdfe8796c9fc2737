"""The `local` registry: one SQLite database in WAL mode.

Registration runs in one `BEGIN IMMEDIATE` transaction: the writer lock is
taken before the next version number is read, so concurrent processes queue
instead of racing, and a process killed mid-way leaves either the whole
version (row, `latest` label, environment row) or none of it.
"""

from __future__ import annotations

import json
import os
import sqlite3
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

from hatch_mlenv.errors import NotFoundError, RegistryError
from hatch_mlenv.lockfile import parse_lock, remove_dead_leftovers
from hatch_mlenv.paths import data_dir
from hatch_mlenv.reference import LATEST, Reference, check_movable_label
from hatch_mlenv.registry.base import (
    EnvironmentSummary,
    Registration,
    Version,
    check_entry,
    entry_hash,
    takes_latest,
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
# 2: versions.entry_hash (see registry.entry_hash); older rows get theirs when first opened,
# so a NULL one is corruption. (0: databases written before the schema was numbered.)
SCHEMA_VERSION = 2


def _empty_registry() -> sqlite3.Connection:
    """What a registry file that does not exist reads as: no environments (nothing is created)."""
    db = sqlite3.connect(":memory:", isolation_level=None)
    db.executescript(_SCHEMA)
    return db


def _has_registry_tables(db: sqlite3.Connection) -> bool:
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    return {"environments", "versions", "labels"} <= tables


def _remove_database(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        try:
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        except OSError:
            pass


def default_path() -> Path:
    """`$MLENV_HOME/registry.sqlite3`, else the user data directory (platformdirs)."""
    return data_dir() / "registry.sqlite3"


class LocalRegistry:
    """A registry file that exists is opened and checked, never initialised over: an empty,
    truncated or foreign file is reported as damaged. A missing one reads as an empty
    registry, and the first write creates it whole.

    `read_only` (`mlenv serve`): nothing is ever written, not even the journal mode or a
    migration (a registry of an older schema is refused); the connection may be closed from
    another thread than the one that used it."""

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = path
        self.url = f"sqlite://{path}"
        self.read_only = read_only
        self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        path = self.path
        self._missing = False
        # stat, never open(): closing any descriptor of the file drops every POSIX lock this
        # process holds on it, its other SQLite connections' included, and another process then
        # checkpoints and deletes the WAL under them (registrations lost). SQLite itself reports
        # a file that is not a database, below.
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            self._missing = True
            return _empty_registry()
        except OSError as exc:
            raise RegistryError(f"{path}: cannot read the registry database: {exc.strerror or exc}") from None
        if size == 0:
            raise self._damaged("the file is empty")
        if not path.is_file():
            raise self._damaged("not a regular file")
        try:
            # mode=rw: a file moved away meanwhile is an error, not a new empty database
            db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True,
                                 timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                 check_same_thread=not self.read_only)
        except sqlite3.DatabaseError as exc:
            raise self._damaged(str(exc)) from None
        try:
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            # before anything writes (even the journal mode): another program's database stays as it is
            if db.execute("PRAGMA user_version").fetchone()[0] < 1 and not _has_registry_tables(db):
                raise self._damaged("it holds no registry tables")
            if self.read_only:
                # mode=ro would leave -wal and -shm files behind (a reader cannot remove them);
                # query_only refuses every change, and the last connection to close removes them.
                db.execute("PRAGMA query_only = 1")
                if db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                    raise RegistryError(f"{path}: the registry has an older schema; run any mlenv command "
                                        "that reads it (`mlenv list`) once to upgrade it, then serve it")
                return db
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            db.execute("PRAGMA foreign_keys = ON")
            # Only an old registry takes the write lock, to migrate: readers of a current
            # one never wait behind a writer here.
            if db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                db.execute("BEGIN IMMEDIATE")
                try:
                    self._migrate(db)
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            db.close()
            raise self._damaged(str(exc)) from None
        except BaseException:
            db.close()
            raise
        return db

    def _migrate(self, db: sqlite3.Connection) -> None:
        """Bring a registry of an older schema to this one (0: before the schema was numbered;
        1: before entry hashes). Every row gets its entry hash here, so none is ever NULL."""
        schema = db.execute("PRAGMA user_version").fetchone()[0]
        if schema >= SCHEMA_VERSION:
            return  # another process migrated it while we waited for the lock
        if not _has_registry_tables(db):
            raise self._damaged("it holds no registry tables")
        for statement in _SCHEMA.split(";"):  # not executescript: it would commit the transaction
            if statement.strip():
                db.execute(statement)
        if "entry_hash" not in {row[1] for row in db.execute("PRAGMA table_info(versions)")}:
            db.execute("ALTER TABLE versions ADD COLUMN entry_hash TEXT")
        rows = db.execute("SELECT name, version, lockfile, manifest, provenance FROM versions "
                          "WHERE entry_hash IS NULL").fetchall()
        for name, number, lockfile, manifest, provenance in rows:
            try:
                digest = entry_hash(name, number, lockfile, json.loads(manifest), json.loads(provenance))
            except (ValueError, TypeError):
                continue  # left without a hash: reported as corrupted when read, never served
            db.execute("UPDATE versions SET entry_hash = ? WHERE name = ? AND version = ?", (digest, name, number))
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _damaged(self, detail: str) -> RegistryError:
        return RegistryError(f"{self.path}: the registry database is empty or damaged ({detail}); "
                             "restore it from a backup or move it away")

    def _create(self) -> None:
        """Create the database file whole: built under a temporary name, then linked into place
        (which fails harmlessly when another process created it first), so that nobody ever
        sees a registry file without its schema."""
        path = self.path
        partial = path.with_name(f".{path.name}.{os.getpid()}.new")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            remove_dead_leftovers(path.parent, f".{path.name}.")
            _remove_database(partial)
            db = sqlite3.connect(partial, isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode = WAL")
                db.executescript(_SCHEMA)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            finally:
                db.close()  # the last connection: the WAL is checkpointed into the file
            try:
                os.link(partial, path)
            except FileExistsError:
                pass
            except OSError:  # no hard links on this file system
                if not os.path.lexists(path):
                    os.replace(partial, path)
        except sqlite3.DatabaseError as exc:
            raise RegistryError(f"{path}: cannot create the registry database: {exc}") from None
        except OSError as exc:
            raise RegistryError(f"{path}: cannot create the registry database: {exc.strerror or exc}") from None
        finally:
            _remove_database(partial)

    @contextmanager
    def _damage_reported(self) -> Iterator[None]:
        """A query that fails on the database itself says so, with the file, not 'not found'."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            raise self._damaged(str(exc)) from None

    @contextmanager
    def _transaction(self, *, create: bool = False) -> Iterator[sqlite3.Connection]:
        """One write transaction; only `create` makes a missing registry's file (registration:
        labelling or archiving in a registry that does not exist writes nothing)."""
        if self.read_only:
            raise RegistryError(f"{self.path}: opened read-only; nothing can be written")
        if self._missing and create:  # the first registration in a registry that did not exist
            self._create()
            empty, self._db = self._db, self._open()
            empty.close()
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
        # Parsed once, before the transaction: the stored digest is always the lock's own.
        digest = parse_lock(lockfile, f"lockfile for {name}").digest()
        for label in labels:
            check_movable_label(label)
        with self._damage_reported(), self._transaction(create=True) as db:
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
                current = db.execute(
                    "SELECT v.provenance FROM labels l JOIN versions v ON v.name = l.name AND v.version = l.version "
                    "WHERE l.name = ? AND l.label = ?", (name, LATEST)).fetchone()
                if takes_latest(provenance, json.loads(current[0]) if current else None):
                    self._set_label(db, name, LATEST, number)
            else:
                number = row[0]
                # an existing entry is only answered (and labelled) when it is whole: a damaged
                # one, or a digest column edited to claim this lock, refuses the registration
                self._row(name, number, self._stored(name, number), [], verified=True)
            for label in labels:
                self._set_label(db, name, label, number)
            # What is stored (for an existing digest, the first registration's text), read in the
            # transaction: a new entry is what was just written, an existing one was verified above.
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
                        f"{self.path}: registry entry {ref.name}@{label} is damaged: the label points at version "
                        f"{number}, which is not in the registry"
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
                raise RegistryError(f"{self.path}: the registry is damaged: {name!r} has versions "
                                    "but no environment row")
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
            return self._row(name, number, row, self._labels(name, number), verified=True)

    def _row(self, name: str, number: int, row: tuple[Any, ...], labels: list[str], *,
             checked: bool = False, verified: bool = False) -> Version:
        """A stored row as a Version; `checked`: its entry hash is checked (a NULL one is
        corruption); `verified`: its lock's digest as well."""
        digest, lockfile, manifest, provenance, archived, stored_hash = row
        try:
            manifest_data, provenance_data = json.loads(manifest), json.loads(provenance)
        except (ValueError, TypeError):
            raise RegistryError(f"{self.path}: registry entry {name}:{number} is corrupted: "
                                "unreadable manifest") from None
        version = Version(name, number, digest, lockfile, manifest_data, provenance_data, tuple(labels),
                          bool(archived), stored_hash)
        if verified:
            return verify(version, self.path)
        return check_entry(version, self.path) if checked else version

    def find_digest(self, name: str, digest: str) -> int | None:
        """The version registered for `digest`; only a sound entry answers (a damaged one is an error)."""
        with self._damage_reported():
            row = self._db.execute("SELECT version FROM versions WHERE name = ? AND digest = ?",
                                   (name, digest)).fetchone()
            if row is None:
                return None
            return self._row(name, row[0], self._stored(name, row[0]), [], verified=True).version

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
        return [self._row(name, r[0], r[1:], labels.get(r[0], []), checked=True) for r in rows]

    def history_page(self, name: str, offset: int, limit: int) -> tuple[list[Version], int]:
        """`limit` versions from `offset`, newest first, and how many there are (see
        `registry.base.history_page`): only that page's rows are read and checked."""
        with self._damage_reported():
            self._require_name(name)
            total = self._db.execute("SELECT COUNT(*) FROM versions WHERE name = ?", (name,)).fetchone()[0]
            rows = self._db.execute(
                "SELECT version, digest, lockfile, manifest, provenance, archived, entry_hash FROM versions "
                "WHERE name = ? ORDER BY version DESC LIMIT ? OFFSET ?",
                (name, limit, offset),
            ).fetchall()
            return [self._row(name, r[0], r[1:], self._labels(name, r[0]), checked=True) for r in rows], total

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
        archived_counts = dict(self._db.execute(
            "SELECT name, COUNT(*) FROM versions WHERE archived = 1 GROUP BY name").fetchall())
        labels: dict[str, dict[str, int]] = {}
        dangling: dict[str, dict[str, int]] = {}
        # each label's version looked up by primary key: no pass over every version's row
        for name, label, version, exists in self._db.execute(
            "SELECT name, label, version, EXISTS (SELECT 1 FROM versions v WHERE v.name = labels.name "
            "AND v.version = labels.version) FROM labels"
        ):
            (labels if exists else dangling).setdefault(name, {})[label] = version
        result = []
        for name, description in self._db.execute("SELECT name, description FROM environments ORDER BY name"):
            count, _ = counts.get(name, (0, None))
            if count == 0 and not include_archived and name not in dangling:
                continue
            env_labels = labels.get(name, {})
            result.append(EnvironmentSummary(name, env_labels.get(LATEST), count, env_labels, description,
                                             dangling.get(name, {}), archived_counts.get(name, 0)))
        return result

    def unlabel(self, name: str, label: str) -> int:
        check_movable_label(label)
        with self._damage_reported(), self._transaction() as db:
            row = db.execute("SELECT version FROM labels WHERE name = ? AND label = ?", (name, label)).fetchone()
            if row is None:
                self._require_name(name)
                raise NotFoundError(f"{name} has no label {label!r}")
            db.execute("DELETE FROM labels WHERE name = ? AND label = ?", (name, label))
        return row[0]

    def label(self, name: str, version: int, label: str) -> Version:
        """Point `label` at a sound version; `latest` is refused (registration alone moves it)."""
        check_movable_label(label)
        with self._damage_reported(), self._transaction() as db:
            found = self._version(name, version)  # missing or damaged: refused before anything is written
            self._set_label(db, name, label, version)
            return replace(found, labels=tuple(self._labels(name, version)))

    def set_archived(self, name: str, version: int, archived: bool) -> Version:
        with self._damage_reported(), self._transaction() as db:
            found = self._version(name, version)  # missing or damaged: refused before anything is written
            db.execute("UPDATE versions SET archived = ? WHERE name = ? AND version = ?",
                       (int(archived), name, version))
            return replace(found, archived=archived)

    def close(self) -> None:
        self._db.close()


class LocalBackend:
    name = "local"

    def handles(self, url: str) -> bool:
        return url == "local" or url.startswith("sqlite://")

    def open(self, url: str, *, read_only: bool = False) -> LocalRegistry:
        return LocalRegistry(database_path(url), read_only=read_only)


def database_path(url: str) -> Path:
    """The SQLite file of `local` or `sqlite:///PATH`."""
    return default_path() if url == "local" else Path(url[len("sqlite://"):]).expanduser()
