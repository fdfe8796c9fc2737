"""Sealed cache files: what a cache file says is only believed when this user's hatch-mlenv wrote it.

A cache (parsed lock documents, lock stamps, wheel metadata, archive hashes) saves work
by being believed without re-deriving it, so whoever can write the cache directory could
otherwise change what `show`, `lock --check`, `register`, a lock's dependencies or an
install's archive check conclude. A plain hash stored beside the content
does not help: anyone who edits the content recomputes it. So each cache file carries
an HMAC-SHA256, keyed by a random secret kept in the data directory (`cache-key`, mode
0600, created on first use), over its kind, its key and its body. The cache directory
is disposable and may be shared, restored from a CI cache or copied between machines;
the data directory is where the registry lives and is trusted as much as the registry
is. A file whose key, seal or shape is wrong is a cache miss, never data; without a
usable secret (an unwritable data directory, a key file others could read or write)
nothing is cached.

The file stays JSON: `{"key":KEY,"mac":HEX,"body":BODY}`, with BODY the cached JSON
text exactly as sealed, so checking a seal never re-serialises anything.
"""

from __future__ import annotations

import hmac
import json
import os
import stat
import threading
from pathlib import Path

from hatch_mlenv.paths import data_dir

SECRET_FILE = "cache-key"
# The kinds of sealed files: a seal made for one kind is never accepted as another.
LOCK_DOCUMENT = "lock-document"  # cache/lock-documents/<sha256 of a lock's text>.json (lockfile.py)
LOCK_STAMP = "lock-stamp"  # cache/lock-stamps/<key of the lockfile's path>.json (lock.py)
WHEEL_METADATA = "wheel-metadata"  # cache/wheel-metadata/<sha256 of a wheel or sdist>.METADATA (pip/_metadata.py)
ARCHIVE_HASHES = "archive-hashes"  # cache/archive-hashes/<sha256 of an archive's path>.json (install/conda.py)
_SECRET_BYTES = 32

# The secret of each data directory this process has used (tests change $MLENV_HOME).
_SECRETS: dict[Path, bytes | None] = {}
_SECRET_LOCK = threading.Lock()
_WRITES = True


def read_only() -> None:
    """From now on this process reads caches and never writes one, nor the secret: for a
    process that must write nothing (`mlenv serve`)."""
    global _WRITES
    _WRITES = False


def seal(kind: str, key: str, body: bytes) -> bytes | None:
    """The sealed file content for `body` (JSON text) cached as `kind` under `key`; None
    when there is no usable secret (then nothing is cached)."""
    secret = _secret(create=True)
    if secret is None:
        return None
    return b"".join((_head(key), _mac(secret, kind, key, body).encode(), b'","body":', body, b"}"))


def unseal(kind: str, key: str, data: bytes) -> bytes | None:
    """The body of a sealed file when it was sealed as `kind` under `key` with this user's
    secret; None otherwise (a miss: edited, truncated, another key's or another secret's)."""
    head = _head(key)
    start = len(head) + 64
    if not (data.startswith(head) and data[start:start + 9] == b'","body":' and data.endswith(b"}")):
        return None
    secret = _secret(create=False)
    if secret is None:
        return None
    body = data[start + 9:-1]
    if not hmac.compare_digest(data[len(head):start], _mac(secret, kind, key, body).encode()):
        return None
    return body


def read_sealed(path: Path, kind: str, key: str) -> bytes | None:
    """The body of the sealed cache file `path`, or None (missing, unreadable or not sealed for `key`)."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return unseal(kind, key, data)


def write_sealed(path: Path, kind: str, key: str, body: bytes) -> None:
    """Write a sealed cache file atomically; a cache, so any failure only means no entry."""
    if not _WRITES:
        return
    data = seal(kind, key, body)
    if data is None:
        return
    partial = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.part")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial.write_bytes(data)
        os.replace(partial, path)
    except OSError:
        try:
            partial.unlink()
        except OSError:
            pass


def _head(key: str) -> bytes:
    return b'{"key":' + json.dumps(key).encode() + b',"mac":"'


def _mac(secret: bytes, kind: str, key: str, body: bytes) -> str:
    return hmac.digest(secret, b"\0".join((kind.encode(), key.encode(), body)), "sha256").hex()


def _secret(*, create: bool) -> bytes | None:
    path = data_dir() / SECRET_FILE
    with _SECRET_LOCK:  # threads of one process share the partial file's name: one creates it
        if path in _SECRETS:
            return _SECRETS[path]
        secret = _read_secret(path)
        if secret is None and create and not os.path.lexists(path):
            _create_secret(path)
            secret = _read_secret(path)  # whichever process created it first: one secret for all
        if secret is not None or create:
            _SECRETS[path] = secret
        return secret


def _read_secret(path: Path) -> bytes | None:
    """The secret, if `path` is a regular file of ours that nobody else can read or write."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        if os.name == "posix" and (info.st_mode & 0o077 or info.st_uid != os.geteuid()):
            return None
        text = os.read(fd, 4 * _SECRET_BYTES).strip()
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        secret = bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    return secret if len(secret) == _SECRET_BYTES else None


def _create_secret(path: Path) -> None:
    """Create the secret whole (written to a private temporary file, then linked into place,
    which fails if another process got there first); a failure leaves the cache off."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(partial):  # left by a killed process that had our pid
            partial.unlink()
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, os.urandom(_SECRET_BYTES).hex().encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(partial, path)
        except FileExistsError:
            pass
        except OSError:  # no hard links here: a rename, which another creator may overwrite (only a miss)
            if not os.path.lexists(path):
                os.replace(partial, path)
    except OSError:
        pass
    finally:
        try:
            partial.unlink()
        except OSError:
            pass
