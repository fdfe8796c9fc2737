"""The install stage: a locked platform into a prefix, without conda and without solving.

Conda packages go through rattler's installer (with `alternative_target_prefix`
when the prefix is built here for another path, e.g. `/opt/env` inside an
image); pip packages are the locked wheels, downloaded, checked against their
sha256 and installed with PyPA's `installer`. The host's package cache is
reused between installs.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.parse
import urllib.request
from pathlib import Path

from hatch_mlenv.errors import MlenvError
from hatch_mlenv.lockfile import LockedPackage


class InstallError(MlenvError):
    """A package could not be fetched, verified or linked."""


def cache_dir() -> Path:
    """The host's package cache: `$MLENV_HOME/cache`, else the user cache directory."""
    home = os.environ.get("MLENV_HOME")
    if home:
        return Path(home) / "cache"
    from platformdirs import user_cache_path

    return user_cache_path("hatch-mlenv", appauthor=False)


def conda_records(lockfile: Path, platform: str) -> list:  # -> list[rattler.RepoDataRecord]
    """The lock's conda records for `platform`, as rattler reads conda-lock files."""
    import rattler

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
    lockfile: Path, platform: str, prefix: Path, *, target_prefix: str | None = None
) -> int:
    """Link the locked conda packages of `platform` into `prefix`; returns how many.

    With `target_prefix`, files are written to `prefix` but prefix placeholders
    are rewritten for `target_prefix`, where the environment will live.
    """
    import asyncio

    import rattler

    from rattler.package_cache import PackageCacheLayer, ValidationMode

    records = conda_records(lockfile, platform)
    packages = cache_dir() / "pkgs"
    packages.mkdir(parents=True, exist_ok=True)
    # Full validation: every cached file is checked against the package's
    # paths.json before it is linked, so a damaged cache entry is re-extracted
    # from its (hash-checked) archive instead of being copied into a prefix.
    cache = rattler.PackageCache.from_layers([PackageCacheLayer(packages).with_validation_mode(ValidationMode.full())])
    _settle_rattler()
    try:
        asyncio.run(
            rattler.install(
                records,
                target_prefix=prefix,
                package_cache=cache,
                platform=rattler.Subdir(platform),
                alternative_target_prefix=target_prefix,
                show_progress=False,
                execute_link_scripts=False,
            )
        )
    except Exception as exc:  # rattler's InstallerError, LinkError, fetch errors
        raise InstallError(f"cannot install the conda packages for {platform}: {_first_line(exc)}") from None
    return len(records)


def fetch_wheel(package: LockedPackage) -> Path:
    """The locked wheel in the host cache, downloaded if needed and checked against its sha256."""
    if not package.sha256:
        raise InstallError(f"{package.name} {package.version}: the lock has no sha256 for {package.url}")
    name = Path(urllib.parse.urlparse(package.url).path).name
    target = cache_dir() / "wheels" / package.sha256 / name
    if target.is_file() and _sha256(target) == package.sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".part")
    try:
        with urllib.request.urlopen(package.url, timeout=60) as response, open(partial, "wb") as out:
            shutil.copyfileobj(response, out)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise InstallError(f"cannot download {package.url}: {exc}") from None
    actual = _sha256(partial)
    if actual != package.sha256:
        partial.unlink(missing_ok=True)
        raise InstallError(f"{name}: sha256 mismatch (lock says {package.sha256}, downloaded {actual})")
    os.replace(partial, target)
    return target


def install_wheels(
    packages: list[LockedPackage], prefix: Path, python_version: str, *, target_prefix: str | None = None
) -> int:
    """Install the locked wheels into `prefix` (scripts point at `target_prefix`'s python)."""
    from installer import install
    from installer.destinations import SchemeDictionaryDestination
    from installer.sources import WheelFile

    short = ".".join(python_version.split(".")[:2])
    site = prefix / "lib" / f"python{short}" / "site-packages"
    scheme = {
        "purelib": str(site),
        "platlib": str(site),
        "headers": str(prefix / "include" / f"python{short}"),
        "scripts": str(prefix / "bin"),
        "data": str(prefix),
    }
    interpreter = f"{target_prefix or prefix}/bin/python"
    destination = SchemeDictionaryDestination(scheme, interpreter=interpreter, script_kind="posix")
    for package in packages:
        wheel = fetch_wheel(package)
        try:
            with WheelFile.open(wheel) as source:
                install(source, destination, {"INSTALLER": b"hatch-mlenv\n"})
        except Exception as exc:  # installer raises several types for broken wheels
            raise InstallError(f"cannot install {wheel.name}: {_first_line(exc)}") from None
    return len(packages)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _settle_rattler() -> None:
    from hatch_mlenv.solve import settle_rattler_at_exit

    settle_rattler_at_exit()
