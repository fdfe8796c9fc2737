"""Issue 22 (hardening), items 3, 4, 5 and 9: the state hatch-mlenv keeps is never believed
blindly. A cache entry is bound to what it caches (an edited one is a miss, not data), every
registry row carries its integrity hash (a NULL one is corruption), a damaged or empty registry
file is reported and never initialised over, and a reference has one ASCII spelling, with
`latest` moved by registration alone."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import sqlite3
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from hatch_mlenv.errors import UsageError
from hatch_mlenv.lockfile import lock_from_document, parse_lock
from tests.conftest import assert_clean_error, mlenv, write_project
from tests.registry_helpers import small_lock


@contextmanager
def connect(db: Path) -> Iterator[sqlite3.Connection]:
    """sqlite3 as a user would run it on the registry file: one transaction, then closed."""
    with closing(sqlite3.connect(db)) as connection, connection:
        yield connection


def home() -> Path:
    return Path(os.environ["MLENV_HOME"])


def registry_file() -> Path:
    return home() / "registry.sqlite3"


# -- 3. the parsed-lock cache ------------------------------------------------------------------

@pytest.fixture
def project(tmp_path: Path, channel: Path) -> Path:
    root = write_project(
        tmp_path / "proj",
        f'channels = ["{channel}"]\nplatforms = ["linux-64"]\npython = "3.11"\nconda = ["numpy ==1.25.2"]\n',
    )
    mlenv("lock", "--project", str(root), check=True)
    return root


def cached_document_file(text: str) -> Path:
    return home() / "cache" / "lock-documents" / f"{hashlib.sha256(text.encode()).hexdigest()}.json"


def body_of(entry: Path) -> dict:
    data = json.loads(entry.read_text())
    return data["body"] if set(data) == {"key", "mac", "body"} else data  # sealed, or as it was before


def forge(entry: Path, document: dict, style: str, *, sealed_elsewhere: Path | None = None) -> None:
    """Write `document` as the cache entry, the ways someone who can write the cache would."""
    if style == "bare":  # the cache's format before it was sealed: just the document
        entry.write_text(json.dumps(document))
    elif style == "edited body":  # the seal kept, the content beside it changed
        sealed = entry.read_text()
        head = sealed[:sealed.index('"body":') + len('"body":')]
        entry.write_text(head + json.dumps(document, separators=(",", ":")) + "}")
    elif style == "another text's entry":  # a whole, sealed entry, but for another lock text
        assert sealed_elsewhere is not None
        entry.write_bytes(sealed_elsewhere.read_bytes())
    else:
        raise AssertionError(style)


def latest_and_count() -> tuple[int, int]:
    listing = json.loads(mlenv("list", "--json", check=True).stdout)
    return listing[0]["latest"], listing[0]["versions"]


@pytest.mark.parametrize("style", ["bare", "edited body"])
def test_3_an_edited_parsed_lock_in_the_cache_changes_nothing(project: Path, style: str) -> None:
    """The issue's repro: edit an entry's url/hash in cache/lock-documents/<sha>.json and set its
    digest; `show` printed the fake digest, `lock --check` said fresh, `register` registered it
    as a new version and moved `latest`."""
    lockfile = project / "conda-lock.yml"
    text = lockfile.read_text()
    real = parse_lock(text, lockfile).digest()
    assert mlenv("register", "--project", str(project), check=True).stdout.startswith(f"demo:1 sha256:{real} ")
    entry = cached_document_file(text)
    document = body_of(entry)

    forged = copy.deepcopy(document)
    numpy = next(p for p in forged["package"] if p["name"] == "numpy")
    numpy["url"] = "https://evil.example/linux-64/numpy-1.25.2-0.tar.bz2"
    numpy["hash"] = {"md5": "0" * 32, "sha256": "f" * 64}
    fake = lock_from_document(forged, entry).digest()
    forged["metadata"]["custom_metadata"]["mlenv.digest"] = fake  # so that it does not look hand-edited
    assert fake != real
    forge(entry, forged, style)

    shown = mlenv("show", "--json", "--project", str(project), check=True)
    data = json.loads(shown.stdout)
    assert real in data["digest"] and fake not in shown.stdout and data["fresh"] is True
    check = mlenv("lock", "--check", "--project", str(project))
    assert check.returncode == 0 and "is fresh" in check.stdout
    registered = mlenv("register", "--project", str(project), check=True)
    assert registered.stdout.strip() == f"demo:1 sha256:{real} (existing, nothing created)"
    assert latest_and_count() == (1, 1)
    assert fake not in mlenv("history", "demo", check=True).stdout
    assert body_of(entry) == document  # the miss was parsed again and the entry resealed


@pytest.mark.parametrize("style", ["bare", "edited body", "another text's entry"])
def test_3_a_forged_cache_cannot_make_a_stale_lock_fresh(project: Path, style: str) -> None:
    """The fresh lock of the new spec put in place of the stale lock's entry: `lock --check`,
    `show` and `register` still see the stale file as it is."""
    lockfile = project / "conda-lock.yml"
    old_text = lockfile.read_text()
    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("numpy ==1.25.2", "numpy ==1.26.4"))
    mlenv("lock", "--project", str(project), check=True)
    new_text = lockfile.read_text()
    new_entry = cached_document_file(new_text)
    lockfile.write_text(old_text)  # the file is stale again: the spec asks for 1.26.4
    stale = mlenv("lock", "--check", "--project", str(project))
    assert stale.returncode == 1 and "changed since" in stale.stderr

    forge(cached_document_file(old_text), body_of(new_entry), style, sealed_elsewhere=new_entry)
    check = mlenv("lock", "--check", "--project", str(project))
    assert check.returncode == 1 and "is stale" in check.stderr
    data = json.loads(mlenv("show", "--json", "--project", str(project), check=True).stdout)
    assert data["fresh"] is False and parse_lock(old_text, lockfile).digest() in data["digest"]
    assert_clean_error(mlenv("register", "--locked", "--project", str(project)), 1, "is stale")
    assert not registry_file().exists()


@pytest.mark.parametrize("style", ["bare", "edited body"])
def test_3_a_forged_lock_stamp_cannot_make_a_stale_lock_fresh(project: Path, style: str) -> None:
    """The other cache `lock --check` believes: the stamp saying "this file is fresh for this
    spec hash". Rewritten for the edited spec, it is not believed."""
    lockfile = project / "conda-lock.yml"
    pyproject = project / "pyproject.toml"
    old_text = lockfile.read_text()
    pyproject.write_text(pyproject.read_text().replace("numpy ==1.25.2", "numpy ==1.26.4"))
    mlenv("lock", "--project", str(project), check=True)
    new_spec_hash = parse_lock(lockfile.read_text(), lockfile).spec_hash
    lockfile.write_text(old_text)
    (stamp_file,) = (home() / "cache" / "lock-stamps").iterdir()
    stat = lockfile.stat()
    stamp = body_of(stamp_file) | {
        "file": [stat.st_ino, stat.st_size, stat.st_mtime_ns],
        "spec_hash": new_spec_hash,
        "digest": parse_lock(old_text, lockfile).digest(),
    }
    forge(stamp_file, stamp, style)
    check = mlenv("lock", "--check", "--project", str(project))
    assert check.returncode == 1 and "is stale" in check.stderr
    assert_clean_error(mlenv("register", "--locked", "--project", str(project)), 1, "is stale")


def test_3_the_cache_secret_is_private_and_a_shared_one_is_not_used(project: Path) -> None:
    from hatch_mlenv import sealed

    key = home() / sealed.SECRET_FILE
    assert key.stat().st_mode & 0o777 == 0o600
    text = (project / "conda-lock.yml").read_text()
    entry = cached_document_file(text)
    assert sealed.read_sealed(entry, sealed.LOCK_DOCUMENT, hashlib.sha256(text.encode()).hexdigest()) is not None
    sealed._SECRETS.clear()
    key.chmod(0o644)  # others could read it: whatever it seals proves nothing
    try:
        assert sealed.read_sealed(entry, sealed.LOCK_DOCUMENT, hashlib.sha256(text.encode()).hexdigest()) is None
    finally:
        key.chmod(0o600)
        sealed._SECRETS.clear()


# -- 4. every registry row carries its entry hash ---------------------------------------------

@pytest.fixture
def clip(tmp_path: Path) -> Path:
    """clip:1 and clip:2 in the test's local registry (latest -> 2); returns clip:1's lockfile."""
    first, second = tmp_path / "a" / "conda-lock.yml", tmp_path / "b" / "conda-lock.yml"
    for path, tag in ((first, "a"), (second, "b")):
        path.parent.mkdir()
        path.write_text(small_lock(tag))
        mlenv("register", "--lockfile", str(path), "--name", "clip", check=True)
    return first


def rows(db: Path) -> list[tuple]:
    with connect(db) as connection:
        return connection.execute("SELECT * FROM versions ORDER BY version").fetchall() + \
            connection.execute("SELECT * FROM labels ORDER BY label").fetchall()


def tamper(db: Path, how: str) -> None:
    before = rows(db)
    with connect(db) as connection:
        if how == "lock edited, digest recomputed":
            (text,) = connection.execute("SELECT lockfile FROM versions WHERE version = 1").fetchone()
            edited = text.replace("file:///channel/linux-64/numpy", "https://evil.example/numpy")
            connection.execute("UPDATE versions SET lockfile = ?, digest = ? WHERE version = 1",
                               (edited, parse_lock(edited, "edited").digest()))
        elif how == "manifest edited":
            connection.execute("UPDATE versions SET manifest = replace(manifest, '\"name\": \"clip\"', "
                               "'\"name\": \"clip\", \"INJECTED\": 1') WHERE version = 1")
        connection.execute("UPDATE versions SET entry_hash = NULL WHERE version = 1")
    changed = [column for column, (old, new) in enumerate(zip(before[0], rows(db)[0])) if old != new]
    assert len(changed) == (1 if how == "nothing else" else 2 if how == "manifest edited" else 3)


@pytest.mark.parametrize("how", ["nothing else", "lock edited, digest recomputed", "manifest edited"])
def test_4_a_null_entry_hash_is_corruption_on_every_path(clip: Path, tmp_path: Path, how: str) -> None:
    """The issue's repro: with entry_hash NULL, an edited lock (digest recomputed) or manifest
    was served by `mlenv get` with exit 0."""
    db = registry_file()
    tamper(db, how)
    before = rows(db)
    needles = (f"{db}: registry entry clip:1 is corrupted", "no entry hash")
    assert_clean_error(mlenv("get", "clip:1", "-o", str(tmp_path / "out")), 1, *needles)
    assert not (tmp_path / "out").exists()
    assert_clean_error(mlenv("history", "clip"), 1, *needles)
    assert_clean_error(mlenv("diff", "clip:1", "clip:2"), 1, *needles)
    assert_clean_error(mlenv("install", "clip:1", cwd=tmp_path), 1, *needles)
    # writes that would touch the damaged version are refused and write nothing
    assert_clean_error(mlenv("label", "clip:1", "prod"), 1, *needles)
    assert_clean_error(mlenv("archive", "clip:1"), 1, *needles)
    if how != "lock edited, digest recomputed":  # registering the same lock again finds the damaged row
        assert_clean_error(mlenv("register", "--lockfile", str(clip), "--name", "clip"), 1, *needles)
    assert rows(db) == before
    assert mlenv("get", "clip:2", "-o", str(tmp_path / "two"), check=True).returncode == 0  # the sound one


def test_4_old_registries_are_migrated_so_no_row_is_left_without_a_hash(tmp_path: Path) -> None:
    """Schema 0 (before the schema was numbered) and 1 (before entry hashes) have no entry_hash
    column: their rows get one on first open, so a NULL one never has a legitimate cause."""
    from hatch_mlenv.registry import Reference
    from hatch_mlenv.registry.local import LocalRegistry

    for schema in (0, 1):
        db = tmp_path / f"schema{schema}.sqlite3"
        text = small_lock(f"old{schema}")
        with connect(db) as connection:
            connection.executescript(OLD_SCHEMA)
            connection.execute("INSERT INTO environments(name) VALUES ('old')")
            connection.execute("INSERT INTO versions VALUES ('old', 1, ?, ?, '{}', '{}', 0)",
                               (parse_lock(text, db).digest(), text))
            connection.execute("INSERT INTO labels VALUES ('old', 'latest', 1)")
            connection.execute(f"PRAGMA user_version = {schema}")
        assert LocalRegistry(db).get(Reference("old", 1)).entry_hash
        with connect(db) as connection:
            assert connection.execute("SELECT COUNT(*) FROM versions WHERE entry_hash IS NULL").fetchone() == (0,)
            assert connection.execute("PRAGMA user_version").fetchone() == (2,)


OLD_SCHEMA = """
CREATE TABLE environments (name TEXT PRIMARY KEY, description TEXT);
CREATE TABLE versions (
    name TEXT NOT NULL REFERENCES environments(name), version INTEGER NOT NULL, digest TEXT NOT NULL,
    lockfile TEXT NOT NULL, manifest TEXT NOT NULL, provenance TEXT NOT NULL,
    archived INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (name, version), UNIQUE (name, digest)
);
CREATE TABLE labels (
    name TEXT NOT NULL, label TEXT NOT NULL, version INTEGER NOT NULL, PRIMARY KEY (name, label),
    FOREIGN KEY (name, version) REFERENCES versions(name, version)
);
"""


# -- 5. an empty or damaged registry file is reported, never initialised over ---------------------

def commands(lockfile: Path) -> list[list[str]]:
    return [["list"], ["history", "clip"], ["get", "clip:1"], ["label", "clip:1", "prod"],
            ["register", "--lockfile", str(lockfile), "--name", "clip"]]


def test_5_a_zero_byte_registry_is_damaged_not_new(clip: Path) -> None:
    """The issue's repro: a 0-byte registry.sqlite3 was taken as a new empty registry: history
    said the environment did not exist and `register` restarted at version 1."""
    db = registry_file()
    db.write_bytes(b"")
    for leftover in (Path(f"{db}-wal"), Path(f"{db}-shm")):
        leftover.unlink(missing_ok=True)
    message = (f"{db}: the registry database is empty or damaged (the file is empty); "
               "restore it from a backup or move it away")
    for args in commands(clip):
        result = mlenv(*args)
        assert_clean_error(result, 1, message)
        assert "no environment named" not in result.stderr
    assert db.read_bytes() == b"" and not Path(f"{db}-wal").exists()


@pytest.mark.parametrize("damage", ["truncated header", "truncated to its first page", "not a database",
                                    "another program's database"])
def test_5_a_damaged_or_foreign_file_is_reported_and_left_as_it_is(clip: Path, damage: str) -> None:
    db = registry_file()
    for leftover in (Path(f"{db}-wal"), Path(f"{db}-shm")):
        leftover.unlink(missing_ok=True)
    if damage == "truncated header":
        db.write_bytes(db.read_bytes()[:40])
    elif damage == "truncated to its first page":
        db.write_bytes(db.read_bytes()[:4096])
    elif damage == "not a database":
        db.write_bytes(b"this is not a database" * 100)
    else:
        db.unlink()
        with connect(db) as connection:
            connection.execute("CREATE TABLE notes (text TEXT)")
    before = db.read_bytes()
    for args in commands(clip):
        assert_clean_error(mlenv(*args), 1, f"{db}: the registry database is empty or damaged")
    assert db.read_bytes() == before
    if damage == "another program's database":
        with connect(db) as connection:
            tables = [r[0] for r in connection.execute("SELECT name FROM sqlite_master")]
        assert tables == ["notes"]  # no registry schema written into it


def test_5_only_a_missing_registry_is_created_and_only_by_registering(tmp_path: Path) -> None:
    db = registry_file()
    lockfile = tmp_path / "conda-lock.yml"
    lockfile.write_text(small_lock("a"))
    assert json.loads(mlenv("list", "--json", check=True).stdout) == []
    assert_clean_error(mlenv("history", "clip"), 1, "no environment named 'clip'")
    assert_clean_error(mlenv("label", "clip:1", "prod"), 1, "no environment named 'clip'")
    assert not db.exists()
    assert mlenv("register", "--lockfile", str(lockfile), "--name", "clip", check=True).stdout.startswith("clip:1 ")
    assert db.is_file() and latest_and_count() == (1, 1)


# -- 9. references: one ASCII spelling; `latest` moves by registration alone -------------------

@pytest.mark.parametrize("reference", ["clip:١", "clip:１", "clip:1 ", " clip:1", "clip:1\n", "clip: 1",
                                       "clip@prod\n", "clip@ｐrod", "clip\n", "ｃlip:1"])
def test_9_a_reference_is_ascii_without_spaces(clip: Path, tmp_path: Path, reference: str) -> None:
    """The issue's repro: Unicode digits (`clip:١`, `clip:１`) resolved to version 1, and
    `"clip:1 "` was accepted."""
    out = tmp_path / "out"
    result = mlenv("get", reference, "-o", str(out))
    assert_clean_error(result, 2, "invalid label" if reference == "clip@ｐrod" else "malformed reference")
    assert not out.exists()
    assert_clean_error(mlenv("label", reference, "prod"), 2)


def test_9_the_parsers_take_ascii_only_and_the_whole_text() -> None:
    from hatch_mlenv.reference import Reference, check_label, check_name, parse_reference

    assert parse_reference("clip:1") == Reference("clip", 1)
    assert parse_reference("clip:0012") == Reference("clip", 12)
    assert parse_reference("clip@prod") == Reference("clip", label="prod")
    for text in ("clip:١", "clip:１", "clip:²", "clip:1 ", "clip:1\n", "\tclip", "clip@prod\n", "clip@prod "):
        with pytest.raises(UsageError):
            parse_reference(text)
    for label in ("prod\n", "prod ", "ｐrod", "é"):
        with pytest.raises(UsageError):
            check_label(label)
    for name in ("clip\n", "clip ", "clïp"):
        with pytest.raises(UsageError):
            check_name(name)


def test_9_latest_is_moved_by_registration_alone(clip: Path) -> None:
    """The issue's repro: `label clip:1 latest` moved the automatic `latest` label."""
    db = registry_file()
    before = rows(db)
    assert_clean_error(mlenv("label", "clip:1", "latest"), 2, "label 'latest' cannot be set by hand",
                       "only `mlenv register` moves it")
    # registering clip:1's lock again with --label latest would have moved it back too
    assert_clean_error(mlenv("register", "--lockfile", str(clip), "--name", "clip", "--label", "latest"), 2,
                       "label 'latest' cannot be set by hand")
    assert rows(db) == before and latest_and_count() == (2, 2)
    assert mlenv("label", "clip:1", "prod", check=True).stdout.strip() == "clip@prod -> clip:1"

    from hatch_mlenv.registry.local import LocalRegistry

    registry = LocalRegistry(db)
    with pytest.raises(UsageError):
        registry.label("clip", 1, "latest")
    with pytest.raises(UsageError):
        registry.register("clip", clip.read_text(), {}, {}, labels=("latest",))
    registry.close()
    assert latest_and_count() == (2, 2)


def test_registries_held_open_in_one_process_lose_no_registration(tmp_path: Path, isolated_registry: Path) -> None:
    """Two registries open in this process while `mlenv register` processes write: every version
    stays (opening a registry must never close a descriptor of the file: on Linux that drops the
    POSIX locks of this process's other SQLite connections, and another process then checkpoints
    and deletes the WAL under them)."""
    from hatch_mlenv.registry.local import LocalRegistry, default_path

    def register(name: str) -> None:
        path = tmp_path / name / "conda-lock.yml"
        path.parent.mkdir()
        path.write_text(small_lock(name))
        mlenv("register", "--lockfile", str(path), "--name", name, check=True)

    register("a")
    first, second = LocalRegistry(default_path()), LocalRegistry(default_path())
    try:
        register("b")
        first.register("c", small_lock("c"), {}, {})
        register("d")
        register("e")
        third = LocalRegistry(default_path())  # was: "empty or damaged (disk I/O error)"
        third.close()
    finally:
        first.close()
        second.close()
    listed = mlenv("list", "--json", check=True).stdout
    assert sorted(e["name"] for e in json.loads(listed)) == ["a", "b", "c", "d", "e"]


def test_a_locked_url_cannot_choose_where_its_download_is_written(tmp_path: Path) -> None:
    """A lock edited to name `..%2F..%2Fvictim` as its wheel's file: refused before anything is written."""
    from hatch_mlenv.distributions import fetch
    from hatch_mlenv.errors import InstallError

    victim = tmp_path / "victim"
    url = "http://127.0.0.1:9/simple/" + "..%2F" * 12 + str(victim).lstrip("/").replace("/", "%2F")
    with pytest.raises(InstallError, match="names no plain file"):
        fetch(url, "0" * 64, "evil 1.0")
    assert not victim.exists()


def test_writes_never_replace_a_device_nor_delete_a_users_dotfiles(tmp_path: Path, clip: Path) -> None:
    """`-o` at something that is not a regular file is refused; a user's `.out.txt.20240101/` beside
    the output is not a leftover of ours."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    result = mlenv("export", "clip:1", "--format", "explicit", "-o", str(fifo))
    assert_clean_error(result, 2, str(fifo), "not a regular file")
    assert fifo.is_fifo()
    keep = tmp_path / ".out.txt.20240101"
    keep.mkdir()
    (keep / "important").write_text("keep")
    mlenv("export", "clip:1", "--format", "explicit", "-o", str(tmp_path / "out.txt"), check=True)
    assert (keep / "important").read_text() == "keep"
