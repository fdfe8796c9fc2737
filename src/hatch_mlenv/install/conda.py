"""Conda packages of a locked platform into a prefix, with rattler's installer: no conda, no solve.

With `target_prefix`, files are written where the prefix is built (an image's staging
directory) and prefix placeholders are rewritten for where it will live.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.parse
from pathlib import Path
from typing import Any, Sequence

from hatch_mlenv._compat import settle_rattler_at_exit
from hatch_mlenv.credentials import channel_client, redact
from hatch_mlenv.errors import InstallError
from hatch_mlenv.errors import first_line as _first_line
from hatch_mlenv.hashes import file_hashes
from hatch_mlenv.paths import cache_dir
from hatch_mlenv.sealed import ARCHIVE_HASHES, read_sealed, write_sealed


def conda_records(lockfile: Path, platform: str) -> list:  # -> list[rattler.RepoDataRecord]
    """The lock's conda records for `platform`, as rattler reads conda-lock files."""
    import rattler  # lazy: rattler takes ~0.12 s to import; a no-op install never reads the records

    try:
        lock = rattler.LockFile.from_path(lockfile)
    except Exception as exc:
        raise InstallError(f"{lockfile}: rattler cannot read the lockfile: {exc}") from None
    environment = lock.default_environment()
    if environment is None:
        raise InstallError(f"{lockfile}: the lockfile has no environment")
    for candidate in environment.platforms():
        if candidate.name == platform:
            return list(environment.conda_repodata_records_for_platform(candidate) or [])
    raise InstallError(f"{lockfile}: no packages locked for {platform}")


def install_conda(
    lockfile: Path,
    platform: str,
    prefix: Path,
    *,
    target_prefix: str | None = None,
    installed: list | None = None,
    show_progress: bool = False,
    channels: Sequence[str] = (),
) -> int:
    """Link the locked conda packages of `platform` into `prefix`; returns how many.

    With `target_prefix`, files are written to `prefix` but prefix placeholders
    are rewritten for `target_prefix`, where the environment will live.
    `channels` are the spec's channel URLs with their credentials: the lock's
    URLs have none, so a package under a channel is fetched with that channel's,
    which rattler's client carries in memory: the package cache and conda-meta
    record the lock's public URL.
    """
    import asyncio  # lazy: the no-op install path (`mlenv run`) must not pay for it

    import rattler  # lazy: as in conda_records
    from rattler.package_cache import PackageCacheLayer, ValidationMode  # lazy: as above

    records = conda_records(lockfile, platform)
    verify_local_archives(records)
    packages = cache_dir() / "pkgs"
    packages.mkdir(parents=True, exist_ok=True)
    # Full validation: every cached file is checked against the package's
    # paths.json before it is linked, so a damaged cache entry is re-extracted
    # from its (hash-checked) archive instead of being copied into a prefix.
    cache = rattler.PackageCache.from_layers([PackageCacheLayer(packages).with_validation_mode(ValidationMode.full())])
    settle_rattler_at_exit()
    try:
        asyncio.run(
            rattler.install(
                records,
                target_prefix=prefix,
                package_cache=cache,
                platform=rattler.Subdir(platform),
                alternative_target_prefix=target_prefix,
                installed_packages=installed,
                show_progress=show_progress,
                execute_link_scripts=False,
                # rattler's standard stack (its authentication storage: RATTLER_AUTH_FILE, keyring,
                # netrc) and the channels' own credentials, in memory
                client=channel_client(channels).client,
            )
        )
    except Exception as exc:  # rattler's InstallerError, LinkError, fetch errors
        message = f"cannot install the conda packages for {platform}: {_first_line(exc)}"
        raise InstallError(redact(message, channels)) from None
    return len(records)


def check_lock_integrity(lock: Any, lockfile: Path) -> None:
    """Refuse a lock whose packages were edited after it was written (a URL, an md5, a
    sha256): the download checks would otherwise trust the edited values."""
    if lock.recorded_digest is not None and lock.recorded_digest != lock.digest():
        raise InstallError(
            f"{lockfile}: the lock was edited by hand: its packages no longer match the digest recorded "
            f"when it was locked; restore it or run `mlenv lock --force`"
        )


def verify_local_archives(records: list) -> None:
    """Check every `file://` archive against the lock's sha256 and md5 before anything is linked.

    rattler checks what it downloads over http(s) against the record's sha256,
    but links a local channel's archive as it finds it: a replaced archive, or a
    lock whose hashes were edited, would install other content. An archive is read
    once: its hashes are kept (sealed, in the cache) with the file's identity (device,
    inode, size, mtime and ctime), and read again whenever any of those changed."""
    for record in records:
        url = str(record.url)
        if not url.startswith("file://"):
            continue
        path = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path))
        name = f"{record.name.normalized} {record.version} {record.build}"
        expected = {"sha256": record.sha256.hex() if record.sha256 else None,
                    "md5": record.md5.hex() if record.md5 else None}
        if not any(expected.values()):
            raise InstallError(f"{name}: the lock has no sha256 or md5 for {url}; refusing to install it unchecked")
        try:
            found = archive_hashes(path)
        except OSError as exc:
            raise InstallError(f"{name}: cannot read {path}: {exc.strerror or exc}") from None
        for kind, value in found.items():
            if expected[kind] and value != expected[kind]:
                raise InstallError(
                    f"{name}: {kind} mismatch for {path.name} (lock says {expected[kind]}, the archive has {value}); "
                    f"nothing was installed"
                )


def archive_hashes(path: Path) -> dict[str, str]:
    """The sha256 and md5 of a local archive, from the sealed memo while the file is the one
    that was hashed (any write changes its ctime, which no user can set back)."""
    info = os.stat(path)
    identity = [info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns]
    key = str(path)
    memo = cache_dir() / ARCHIVE_HASHES / f"{hashlib.sha256(key.encode()).hexdigest()}.json"
    body = read_sealed(memo, ARCHIVE_HASHES, key)
    if body is not None:
        try:
            known = json.loads(body)
            if known["identity"] == identity:
                return {"sha256": known["sha256"], "md5": known["md5"]}
        except (ValueError, KeyError, TypeError):
            pass
    found = file_hashes(path, ["sha256", "md5"])
    write_sealed(memo, ARCHIVE_HASHES, key, json.dumps({"identity": identity, **found}, sort_keys=True).encode())
    return found
