"""The install stage: a locked platform into a prefix, without conda and without solving.

Conda packages go through rattler's installer (with `alternative_target_prefix`
when the prefix is built here for another path, e.g. `/opt/env` inside an
image); pip packages are the locked wheels, downloaded, checked against their
sha256 and installed with PyPA's `installer`. The host's package cache is
reused between installs.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hatch_mlenv.errors import InstallError
from hatch_mlenv.install.conda import check_lock_integrity, install_conda
from hatch_mlenv.install.wheels import sync_wheels, wheel_indexes
from hatch_mlenv.lockfile import exchange, remove_dead_leftovers
from hatch_mlenv.platforms import current_platform
from hatch_mlenv.progress import note, step
from hatch_mlenv.pypi_names import canonical
from hatch_mlenv.usage import record_use
from hatch_mlenv.verify import (
    STATE_FILE,  # the prefix's install record, which verify also reads
    distribution_intact,
    pip_distributions,
    recorded_additions,
    verify_prefix,
)


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
        changed += sync_wheels(lock, platform, staging, prefix, old_pip, wheel_indexes(env.spec, lock),
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
    state = _read_state(prefix / STATE_FILE)
    if not state:
        return
    additions = sorted({*state.get("additions", []), canonical(distribution)})
    (prefix / STATE_FILE).write_text(json_dumps({**state, "additions": additions, "fingerprint": _fingerprint(prefix)}))


def json_dumps(state: dict[str, Any]) -> str:
    return json.dumps(state, indent=2, sort_keys=True)


def _read_state(path: Path) -> dict[str, Any]:
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

def _swap(staging: Path, prefix: Path) -> None:
    """Put `staging` in place of `prefix`; the prefix path is never missing where the
    system can exchange two directories atomically (Linux)."""
    if prefix.exists() and exchange(staging, prefix):
        shutil.rmtree(staging, ignore_errors=True)  # it now holds the previous prefix
    elif prefix.exists():
        retired = prefix.parent / f".{prefix.name}.old-{os.getpid()}"
        os.rename(prefix, retired)
        os.rename(staging, prefix)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.rename(staging, prefix)
