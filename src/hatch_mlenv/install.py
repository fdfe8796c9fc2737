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
import re
import shutil
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hatch_mlenv.errors import MlenvError
from hatch_mlenv.lockfile import LockedPackage
from hatch_mlenv.paths import cache_dir


class InstallError(MlenvError):
    """A package could not be fetched, verified or linked."""


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
    lockfile: Path,
    platform: str,
    prefix: Path,
    *,
    target_prefix: str | None = None,
    installed: list | None = None,
    show_progress: bool = False,
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
                installed_packages=installed,
                show_progress=show_progress,
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
    if target.is_file() and file_sha256(target) == package.sha256:
        return target
    from urllib.request import urlopen

    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".part")
    try:
        with urlopen(package.url, timeout=60) as response, open(partial, "wb") as out:
            shutil.copyfileobj(response, out)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise InstallError(f"cannot download {package.url}: {exc}") from None
    actual = file_sha256(partial)
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


def file_sha256(path: Path) -> str:
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


# Outside conda-meta/: conda and rattler read every conda-meta/*.json as a package record.
STATE_FILE = ".mlenv-state.json"


@dataclass(frozen=True)
class InstallResult:
    prefix: Path
    status: str  # "installed", "updated" or "unchanged"
    changed: tuple[str, ...] = ()


def default_prefix(env: Any) -> Path:
    """`<project>/.mlenv/envs/<name>`."""
    return env.spec.project_dir / ".mlenv" / "envs" / env.name


def install_environment(env: Any, prefix: Path | None = None, *, show_progress: bool = False) -> InstallResult:
    """Install the lock for this machine's platform into `prefix`; never solves.

    Nothing is half-installed: the new state is built in a staging directory
    next to the prefix, which starts as a hard-linked copy of the current prefix
    (so unchanged packages are neither copied nor touched), and is swapped in by
    rename once complete. An unchanged lock (same digest) does nothing.
    """
    import json

    from hatch_mlenv.spec import current_platform

    if not env.spec.managed:
        # User-managed: nothing is installed; "the prefix" is the interpreter's own.
        interpreter = Path(env.spec.interpreter or "")
        return InstallResult(interpreter.parent.parent if interpreter.parent.name == "bin" else interpreter.parent,
                             "user-managed")
    platform = current_platform()
    lock = env.lock
    packages = lock.for_platform(platform)
    if not packages:
        raise InstallError(
            f"{env.spec.lockfile}: no packages locked for {platform}, this machine's platform "
            f"(locked: {', '.join(lock.platforms) or 'none'}); add it to tool.mlenv.platforms and run `mlenv lock`"
        )
    prefix = (prefix or default_prefix(env)).absolute()
    state_path = prefix / STATE_FILE
    old_state = _read_state(state_path)
    if old_state.get("digest") == env.digest and prefix.is_dir():
        return InstallResult(prefix, "unchanged")
    try:
        prefix.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InstallError(f"{prefix}: cannot create the prefix: {exc.strerror or exc}") from None
    if not os.access(prefix.parent, os.W_OK) or (prefix.exists() and not os.access(prefix, os.W_OK)):
        raise InstallError(f"{prefix}: the prefix is not writable")
    if prefix.exists() and not (prefix / "conda-meta").is_dir() and any(prefix.iterdir()):
        raise InstallError(f"{prefix}: exists and is not a conda prefix (no conda-meta); choose another --prefix")

    staging = prefix.parent / f".{prefix.name}.staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        if prefix.exists():
            shutil.copytree(prefix, staging, symlinks=True, copy_function=os.link)
        else:
            staging.mkdir()
        installed = _prefix_records(staging)
        before = {r.name.normalized: (str(r.version), str(r.build)) for r in installed}
        install_conda(env.spec.lockfile, platform, staging, target_prefix=str(prefix), installed=installed,
                      show_progress=show_progress)
        after = {r.name.normalized: (str(r.version), str(r.build)) for r in _prefix_records(staging)}
        changed = sorted(n for n in after.keys() | before.keys() if after.get(n) != before.get(n))
        changed += _sync_wheels(lock, platform, staging, prefix, old_state.get("pip", {}))
        (staging / "CACHEDIR.TAG").unlink(missing_ok=True)
        new_state = {
            "digest": env.digest,
            "pip": {p.name: p.sha256 for p in packages if p.manager == "pip"},
        }
        (staging / STATE_FILE).write_text(json.dumps(new_state, indent=2, sort_keys=True))
        _swap(staging, prefix)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return InstallResult(prefix, "updated" if old_state else "installed", tuple(changed))


def _read_state(path: Path) -> dict[str, Any]:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _prefix_records(prefix: Path) -> list:  # -> list[rattler.PrefixRecord]
    import rattler

    meta = prefix / "conda-meta"
    if not meta.is_dir():
        return []
    return [rattler.PrefixRecord.from_path(p) for p in sorted(meta.glob("*.json"))]


def _sync_wheels(lock: Any, platform: str, staging: Path, prefix: Path, old: dict[str, str]) -> list[str]:
    """Remove pip packages that changed or went away, install the new ones; returns their names."""
    wheels = [p for p in lock.for_platform(platform) if p.manager == "pip"]
    wanted = {p.name: p.sha256 for p in wheels}
    python = next((p for p in lock.for_platform(platform) if p.manager == "conda" and p.name == "python"), None)
    stale = [name for name, sha in old.items() if wanted.get(name) != sha]
    if (stale or wheels) and python is None:
        raise InstallError(f"pip packages are locked for {platform} but python is not")
    for name in stale:
        _uninstall_dist(staging, python.version, name)
    new = [p for p in wheels if old.get(p.name) != p.sha256]
    if new:
        install_wheels(new, staging, python.version, target_prefix=str(prefix))
    return sorted(set(stale) | {p.name for p in new})


def _uninstall_dist(prefix: Path, python_version: str, name: str) -> None:
    """Remove an installed wheel by its RECORD (the files hard-linked from the old prefix are unlinked, not edited)."""
    import csv
    import re

    short = ".".join(python_version.split(".")[:2])
    site = prefix / "lib" / f"python{short}" / "site-packages"
    normalized = re.sub(r"[-_.]+", "_", name).lower()
    for dist_info in site.glob("*.dist-info"):
        if dist_info.name.split("-")[0].lower().replace(".", "_") != normalized:
            continue
        record = dist_info / "RECORD"
        if record.is_file():
            for row in csv.reader(record.read_text().splitlines()):
                if row:
                    (site / row[0]).unlink(missing_ok=True)
        shutil.rmtree(dist_info, ignore_errors=True)


def _swap(staging: Path, prefix: Path) -> None:
    if prefix.exists():
        retired = prefix.parent / f".{prefix.name}.old-{os.getpid()}"
        os.rename(prefix, retired)
        os.rename(staging, prefix)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.rename(staging, prefix)


def activation(env: Any, prefix: Path, base: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """The environment of a command run inside `prefix`, and the secret variables it lacks."""
    variables = dict(base)
    variables["PATH"] = os.pathsep.join([str(prefix / "bin"), base.get("PATH", "")]).rstrip(os.pathsep)
    variables["CONDA_PREFIX"] = str(prefix)
    variables["CONDA_DEFAULT_ENV"] = env.name
    missing = []
    for name, value in env.lock.variables.items():
        if value is not None:
            variables[name] = value
        elif name not in base:  # a secret: only ever from the caller's environment
            missing.append(name)
    return variables, missing


# Names an environment that locks a conda `python` is meant to answer itself.
_INTERPRETER = re.compile(r"(python|pip)(\d+(\.\d+)?)?")


def resolve_command(env: Any, prefix: Path, command: str, path: str) -> str:
    """The executable `mlenv run` starts for `command`: the environment's `bin` first.

    A python (or pip) that the environment locks but whose prefix has no such
    executable is an error naming the environment: falling through to the
    caller's interpreter would run code outside the environment while
    everything looks fine. Other commands (`sh`, `ls`) may come from PATH.
    """
    if os.sep in command:
        return command
    bin_dir = prefix / "bin"
    found = shutil.which(command, path=path)
    if found and Path(found).parent.resolve() == bin_dir.resolve():
        return found
    if env.spec.managed and _INTERPRETER.fullmatch(command):
        from hatch_mlenv.spec import current_platform

        locked = {p.name for p in env.lock.for_platform(current_platform()) if p.manager == "conda"}
        if "python" in locked:
            elsewhere = f"; not running {found}, which is outside the environment" if found else ""
            raise MlenvError(
                f"environment {env.name} locks python but provides no {command!r} in {bin_dir}{elsewhere}"
            )
    if found:
        return found
    raise MlenvError(f"cannot run {command!r}: not in environment {env.name} ({bin_dir}) nor on PATH")
