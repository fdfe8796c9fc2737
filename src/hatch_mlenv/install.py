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
from typing import Any, Sequence

from hatch_mlenv._compat import settle_rattler_at_exit
from hatch_mlenv.errors import InstallError, MlenvError
from hatch_mlenv.hashes import file_hashes, file_sha256
from hatch_mlenv.errors import first_line as _first_line
from hatch_mlenv.lockfile import LockedPackage
from hatch_mlenv.paths import cache_dir
from hatch_mlenv.progress import step
from hatch_mlenv.verify import STATE_FILE  # the prefix's install record, which verify also reads


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
    import asyncio

    import rattler

    from rattler.package_cache import PackageCacheLayer, ValidationMode

    from hatch_mlenv.credentials import channel_client

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
        from hatch_mlenv.credentials import redact

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
    lock whose hashes were edited, would install other content."""
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
            found = file_hashes(path, [k for k, v in expected.items() if v])
        except OSError as exc:
            raise InstallError(f"{name}: cannot read {path}: {exc.strerror or exc}") from None
        for kind, value in found.items():
            if value != expected[kind]:
                raise InstallError(
                    f"{name}: {kind} mismatch for {path.name} (lock says {expected[kind]}, the archive has {value}); "
                    f"nothing was installed"
                )


def install_wheels(
    packages: list[LockedPackage],
    prefix: Path,
    python_version: str,
    *,
    target_prefix: str | None = None,
    indexes: Sequence[str] = (),
    find_links: Sequence[str] = (),
    build_constraints: Sequence[str] = (),
) -> int:
    """Install the locked pip packages into `prefix` (scripts point at `target_prefix`'s python).

    A wheel is installed as locked; a source release is built into a wheel by the
    prefix's own python first (`distributions.build_wheel`, cached by its sha256)."""
    from installer import install
    from installer.destinations import SchemeDictionaryDestination
    from installer.sources import WheelFile

    from hatch_mlenv.distributions import build_wheel, fetch, is_sdist

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
        wheel = fetch(package.url, package.sha256, f"{package.name} {package.version}", indexes)
        if is_sdist(package.url):
            from hatch_mlenv.platforms import current_platform

            if package.platform != current_platform():  # the prefix's python cannot run here
                raise InstallError(
                    f"cannot build {wheel.name} from source for {package.platform} on this {current_platform()} "
                    f"machine: install (or build the image) on {package.platform}, or forbid source releases "
                    "(tool.mlenv.pip-only-binary) and relock"
                )
            wheel = build_wheel(wheel, package.sha256 or "", prefix / "bin" / "python", python_version,
                                package.platform, indexes, find_links, build_constraints)
        try:
            with WheelFile.open(wheel) as source:
                install(source, destination, {"INSTALLER": b"hatch-mlenv\n"})
        except Exception as exc:  # installer raises several types for broken wheels
            raise InstallError(f"cannot install {wheel.name}: {_first_line(exc)}") from None
    return len(packages)


def wheel_indexes(spec: Any, lock: Any) -> list[str]:
    """The spec's pip index URLs, with their credentials, when the lock has wheels to fetch."""
    if not any(p.manager == "pip" for p in lock.packages):
        return []
    from hatch_mlenv.pip import index_urls

    return index_urls(spec)


@dataclass(frozen=True)
class InstallResult:
    prefix: Path
    status: str  # "installed", "updated" or "unchanged"
    changed: tuple[str, ...] = ()


def install_environment(
    env: Any, prefix: Path | None = None, *, show_progress: bool = False, force: bool = False, verify: bool = False
) -> InstallResult:
    """Install the lock for this machine's platform into `prefix`; never solves.

    Nothing is half-installed: the new state is built in a staging directory
    next to the prefix, which starts as a hard-linked copy of the current prefix
    (so unchanged packages are neither copied nor touched), and is swapped in by
    rename once complete. An unchanged lock (same digest) does nothing once the
    prefix is found as it was installed: every file's size and mtime (or, with
    `verify`, every file's hash) against what was installed; a prefix that
    differs is repaired (reinstalled from scratch), and so is every prefix with
    `force`.
    """

    from hatch_mlenv.platforms import current_platform

    if not env.spec.managed:
        # User-managed: nothing is installed; "the prefix" is the interpreter's own.
        interpreter = Path(env.spec.interpreter or "")
        return InstallResult(interpreter.parent.parent if interpreter.parent.name == "bin" else interpreter.parent,
                             "user-managed")
    platform = current_platform()
    lock = env.files().lock  # a version loaded by reference: its lockfile, written where the spec says
    check_lock_integrity(lock, env.spec.lockfile)
    packages = lock.for_platform(platform)
    if not packages:
        raise InstallError(
            f"{env.spec.lockfile}: no packages locked for {platform}, this machine's platform "
            f"(locked: {', '.join(lock.platforms) or 'none'}); add it to tool.mlenv.platforms and run `mlenv lock`"
        )
    prefix = (prefix or env.default_prefix).absolute()
    from hatch_mlenv.lockfile import remove_dead_leftovers

    for leftover in (f".{prefix.name}.staging-", f".{prefix.name}.old-"):
        remove_dead_leftovers(prefix.parent, leftover)  # of installs that were killed
    state_path = prefix / STATE_FILE
    old_state = _read_state(state_path)
    damage: tuple[str, ...] = ()
    if not force and old_state.get("digest") == env.digest and prefix.is_dir():
        damage = _damage(lock, prefix, platform, old_state, full=verify)
        if not damage:
            return InstallResult(prefix, "unchanged")
    fresh = force or bool(damage)
    from hatch_mlenv.usage import record_use

    record_use(env)  # before anything is written, so that a concurrent `mlenv gc` keeps what this needs
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
        if prefix.exists() and not fresh:
            shutil.copytree(prefix, staging, symlinks=True, copy_function=os.link)
        else:  # a damaged prefix is not copied: every package is linked anew
            staging.mkdir()
        installed = _prefix_records(staging)
        before = {r.name.normalized: (str(r.version), str(r.build)) for r in installed}
        with step(f"installing the conda packages of {env.name} for {platform} into {prefix}", live=not show_progress):
            install_conda(env.spec.lockfile, platform, staging, target_prefix=str(prefix), installed=installed,
                          show_progress=show_progress, channels=env.spec.channel_fetch_urls())
        after = {r.name.normalized: (str(r.version), str(r.build)) for r in _prefix_records(staging)}
        changed = sorted(n for n in after.keys() | before.keys() if after.get(n) != before.get(n))
        old_pip = {} if fresh else old_state.get("pip", {})
        changed += _sync_wheels(lock, platform, staging, prefix, old_pip, wheel_indexes(env.spec, lock),
                                env.spec.pip_find_links, env.spec.pip_build_constraints)
        additions = _keep_additions(prefix, staging, fresh)
        (staging / "CACHEDIR.TAG").unlink(missing_ok=True)
        new_state = {
            "digest": env.digest,
            "pip": {p.name: p.sha256 for p in packages if p.manager == "pip"},
            "fingerprint": _fingerprint(staging),
        }
        if additions:
            new_state["additions"] = additions
        (staging / STATE_FILE).write_text(json_dumps(new_state))
        _swap(staging, prefix)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if force:
        return InstallResult(prefix, "reinstalled", tuple(changed))
    if damage:
        return InstallResult(prefix, "repaired", damage)
    return InstallResult(prefix, "updated" if old_state else "installed", tuple(changed))


def _fingerprint(prefix: Path) -> str:
    """sha256 over every file's path, type, size and mtime: one walk tells whether anything
    was added, removed, replaced or rewritten since the install (bytecode caches excluded).
    It runs before every no-op install and `mlenv run`: scandir and string slicing, no relpath."""
    digest = hashlib.sha256()
    base = len(str(prefix)) + 1
    pending = [str(prefix)]
    while pending:
        directory = pending.pop()
        with os.scandir(directory) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if entry.is_dir(follow_symlinks=False):
                    if entry.name != "__pycache__":
                        pending.append(entry.path)
                    continue
                if entry.name.endswith((".pyc", ".pyo")) or (directory == str(prefix) and entry.name == STATE_FILE):
                    continue
                info = entry.stat(follow_symlinks=False)
                digest.update(f"{entry.path[base:]}\0{info.st_mode}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _damage(lock: Any, prefix: Path, platform: str, state: dict[str, Any], *, full: bool) -> tuple[str, ...]:
    """What differs between the prefix and what was installed; () when nothing does.

    The fingerprint decides cheaply; when it differs (or with `full`), the
    prefix is verified file by file, and a clean verification (a file touched,
    an unrelated file added) only refreshes the fingerprint."""
    if not full and state.get("fingerprint") == _fingerprint(prefix):
        return ()
    from hatch_mlenv.verify import verify_prefix

    drift = verify_prefix(lock, prefix, platform, check_files=True)  # recorded additions are not damage
    if drift.clean:
        try:
            (prefix / STATE_FILE).write_text(json_dumps({**state, "fingerprint": _fingerprint(prefix)}))
        except OSError:
            pass
        return ()
    return tuple(f"{kind}: {what}" for kind, what in drift.rows())


def _keep_additions(prefix: Path, staging: Path, fresh: bool) -> list[str]:
    """The recorded additions (`record_addition`) the new prefix keeps: in an update they are
    already in the staging copy; a prefix rebuilt from scratch (a repair, `--force`) gets each
    intact one copied over from the old prefix. One that was modified, or whose python is gone,
    is dropped with a note: the hatch environment installs it again on its next run."""
    from hatch_mlenv.progress import note
    from hatch_mlenv.verify import distribution_intact, pip_distributions, recorded_additions

    names = recorded_additions(prefix)
    if not names:
        return []
    old, new = pip_distributions(prefix), pip_distributions(staging)
    kept = []
    for name in sorted(names):
        if name in new:
            kept.append(name)
        elif fresh and name in old:
            dist_info = old[name][1]
            if distribution_intact(dist_info) and _copy_distribution(dist_info, prefix, staging):
                kept.append(name)
            else:
                note(f"{name} (installed by the hatch environment) was modified or no longer fits {prefix}; not "
                     "kept: the next `hatch run` installs it again")
    return kept


def _copy_distribution(dist_info: Path, prefix: Path, staging: Path) -> bool:
    """Copy an installed distribution's files (its RECORD) from `prefix` to the same places under
    `staging`; False when one lies outside the prefix or the staging has no such site-packages."""
    import csv

    site = dist_info.parent
    if not (staging / site.relative_to(prefix)).is_dir():  # another python: not this prefix's any more
        return False
    try:
        rows = [row for row in csv.reader((dist_info / "RECORD").read_text().splitlines()) if row]
        sources = [Path(os.path.normpath(site / row[0])) for row in rows]
        if not all(source.is_relative_to(prefix) for source in sources):
            return False
        for source in sources:
            target = staging / source.relative_to(prefix)
            if target.exists() or not source.exists():  # a file the lock installed wins; no-hash rows may be gone
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    except OSError:
        return False
    return True


def record_addition(prefix: Path, distribution: str) -> None:
    """Accept a distribution installed into the prefix after the lock (the hatch plugin's
    project in dev mode): it is not damage, and the fingerprint now includes it."""
    from hatch_mlenv.pypi_names import canonical

    state = _read_state(prefix / STATE_FILE)
    if not state:
        return
    additions = sorted({*state.get("additions", []), canonical(distribution)})
    (prefix / STATE_FILE).write_text(json_dumps({**state, "additions": additions, "fingerprint": _fingerprint(prefix)}))


def json_dumps(state: dict[str, Any]) -> str:
    import json

    return json.dumps(state, indent=2, sort_keys=True)


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


def _sync_wheels(
    lock: Any, platform: str, staging: Path, prefix: Path, old: dict[str, str], indexes: Sequence[str],
    find_links: Sequence[str] = (),
    build_constraints: Sequence[str] = (),
) -> list[str]:
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
        with step(f"installing {len(new)} pip package{'s' if len(new) != 1 else ''} into {prefix}"):
            install_wheels(new, staging, python.version, target_prefix=str(prefix), indexes=indexes,
                           find_links=find_links, build_constraints=build_constraints)
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
    """Put `staging` in place of `prefix`; the prefix path is never missing where the
    system can exchange two directories atomically (Linux)."""
    from hatch_mlenv.lockfile import exchange

    if prefix.exists() and exchange(staging, prefix):
        shutil.rmtree(staging, ignore_errors=True)  # it now holds the previous prefix
    elif prefix.exists():
        retired = prefix.parent / f".{prefix.name}.old-{os.getpid()}"
        os.rename(prefix, retired)
        os.rename(staging, prefix)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.rename(staging, prefix)


def activation(env: Any, prefix: Path, base: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """The environment of a command run inside `prefix`, and the secret variables it lacks.

    conda's activation, as rattler writes it (PATH, CONDA_PREFIX, CONDA_SHLVL, the
    prefix's `etc/conda/env_vars.d`, then every `etc/conda/activate.d/*.sh`), run by
    a POSIX shell whose resulting environment is taken, as pixi does: packages such
    as GDAL, Java or CUDA toolkits set their variables only in those scripts.
    The scripts see the lock's variables; the lock's values are applied again after
    them, since the spec is what the user asked for, and the prefix's `bin` is kept
    first so `resolve_command` finds the environment's own executables.
    """
    locked = {name: value for name, value in env.lock.variables.items() if value is not None}
    # a secret: only ever from the caller's environment
    missing = [name for name, value in env.lock.variables.items() if value is None and name not in base]
    start = {**base, **locked, "CONDA_DEFAULT_ENV": env.name}
    variables = run_activation(prefix, start)
    variables.update(locked)
    variables["CONDA_DEFAULT_ENV"] = env.name
    variables["PATH"] = _bin_first(prefix / "bin", variables.get("PATH", ""))
    return variables, missing


# Printed after the activation scripts: an environment entry always has a `=`, so
# this one cannot be mistaken for a variable; its absence means a script exited.
_ACTIVATED = b"mlenv:activated"


def run_activation(prefix: Path, base: dict[str, str]) -> dict[str, str]:
    """`base` as conda's activation of `prefix` leaves it (rattler's script, run by bash or sh)."""
    import shlex
    import subprocess  # here, not at the top: the no-op install path must not pay for it

    from rattler.shell import ActivationVariables, PathModificationBehavior, Shell, activate

    entries = [entry for entry in base.get("PATH", "").split(os.pathsep) if entry]
    # Replace, with the caller's PATH spelled out: Prepend would append "${PATH}" to
    # the same list and double every entry.
    script = activate(
        prefix,
        ActivationVariables(None, entries or [str(prefix / "bin")], PathModificationBehavior.Replace),
        Shell.bash,
    ).script
    # The environment is dumped before and after the scripts and only what they changed
    # is kept: the shell itself exports SHLVL, PWD and `_`. Scripts' own output goes to
    # stderr, where the user sees it, so it cannot corrupt the dump on stdout.
    search = base.get("PATH") or os.defpath
    env_command = shlex.quote(shutil.which("env", path=search) or "/usr/bin/env")
    program = f"{env_command} -0\n{{\n{script}\n}} >&2\nprintf '%s\\0' '{_ACTIVATED.decode()}'\n{env_command} -0\n"
    shell = shutil.which("bash", path=search) or "/bin/sh"
    environ = {name: value for name, value in base.items() if name not in ("BASH_ENV", "ENV")}
    try:
        process = subprocess.run([shell, "-c", program], env=environ, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, check=False)
    except OSError as exc:
        raise MlenvError(f"cannot activate {prefix}: cannot start {shell}: {exc.strerror or exc}") from None
    entries_out = process.stdout.split(b"\0")
    if _ACTIVATED not in entries_out:
        raise MlenvError(
            f"activating {prefix} failed: a script in etc/conda/activate.d exited with status {process.returncode}"
        )
    marker = entries_out.index(_ACTIVATED)
    before, after = _environ(entries_out[:marker]), _environ(entries_out[marker + 1:])
    variables = dict(base)
    for name in before.keys() - after.keys():
        variables.pop(name, None)
    variables.update({name: value for name, value in after.items() if before.get(name) != value})
    return variables


def _environ(entries: list[bytes]) -> dict[str, str]:
    pairs = (entry.partition(b"=") for entry in entries if b"=" in entry)
    return {os.fsdecode(name): os.fsdecode(value) for name, _, value in pairs}


def _bin_first(bin_dir: Path, path: str) -> str:
    """`path` with `bin_dir` first, once: a package's script may have prepended its own directory."""
    rest = [entry for entry in path.split(os.pathsep) if entry and entry != str(bin_dir)]
    return os.pathsep.join([str(bin_dir), *rest])


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
        from hatch_mlenv.platforms import current_platform

        locked = {p.name for p in env.lock.for_platform(current_platform()) if p.manager == "conda"}
        if "python" in locked:
            elsewhere = f"; not running {found}, which is outside the environment" if found else ""
            raise MlenvError(
                f"environment {env.name} locks python but provides no {command!r} in {bin_dir}{elsewhere}"
            )
    if found:
        return found
    raise MlenvError(f"cannot run {command!r}: not in environment {env.name} ({bin_dir}) nor on PATH")
