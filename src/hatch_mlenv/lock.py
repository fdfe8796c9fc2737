"""The lock stage: spec in, conda-lock.yml out, and the checks that decide whether to solve.

`lock()` solves only when the lock is missing, stale (the spec hash changed) or
unsatisfiable (someone edited it by hand); otherwise it reports `fresh` and
touches nothing. A failed lock leaves the previous file byte-identical: the
new file is rendered in memory and renamed into place only when complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from hatch_mlenv._compat import preload_conda_lock_models
from hatch_mlenv._version import __version__
from hatch_mlenv.errors import ConfigError, LockfileError, MlenvError, StaleLockError, UsageError
from hatch_mlenv.lockfile import (
    META_BASE_DOCKERFILE,
    META_BASE_IMAGE,
    META_DIGEST,
    META_NAME,
    META_NEEDS,
    META_PYPI_NAMES,
    META_SDISTS,
    META_SPEC_HASH,
    META_SYSTEM_REQUIREMENTS,
    META_TOOL,
    META_VARIABLES,
    Lock,
    LockedPackage,
    atomic_write,
    lock_digest,
    parse_lock,
    read_lock,
    remove_dead_leftovers,
    render_lockfile,
)
from hatch_mlenv.paths import cache_dir
from hatch_mlenv.platforms import current_platform
from hatch_mlenv.pypi_names import canonical
from hatch_mlenv.spec import LOCK_POLICIES, PYPROJECT, Spec, environment_names, load_spec, public_variables


@dataclass(frozen=True)
class LockOutcome:
    """What `lock()` did: `fresh` (nothing to do), `locked` (new or changed file) or `unchanged`."""

    status: str
    digest: str
    lock: Lock | None = None  # None when a fresh lock was confirmed by its stamp, unread
    reason: str | None = None

    def load(self, spec: Spec) -> Lock:
        return self.lock if self.lock is not None else read_lock(spec.lockfile)


def staleness(spec: Spec, lock: Lock | None = None) -> str | None:
    """Why the lock no longer represents the spec, in one line; None when it does.

    Decided without solving: the spec hash recorded at lock time, then whether
    every requested spec is still matched by a locked package on every platform.
    """
    if lock is None:
        if not spec.lockfile.exists():
            return f"{_rel(spec, spec.lockfile)} does not exist"
        if stamped_digest(spec) is not None:
            return None
        lock = read_lock(spec.lockfile)
    if lock.spec_hash is None:
        return f"{_rel(spec, spec.lockfile)} was not written by hatch-mlenv (no spec hash); run `mlenv lock`"
    if lock.spec_hash != spec.hash():
        return f"[tool.mlenv] in {_rel(spec, spec.pyproject)} changed since {_rel(spec, spec.lockfile)} was written"
    reason = unsatisfied(spec, lock) if spec.managed else _snapshot_drift(spec, lock)
    if reason is None and lock.recorded_digest is not None and lock.recorded_digest != lock.digest():
        reason = (f"{_rel(spec, spec.lockfile)} was edited by hand: its packages no longer match the digest "
                  f"recorded when it was locked; run `mlenv lock --force`")
    if reason is None and spec.managed:
        _write_stamp(spec, lock)
    return reason


_SNAPSHOT = (
    "import json, importlib.metadata as m; "
    "print(json.dumps(sorted({(d.metadata['Name'] or '').lower(): d.version for d in m.distributions()}.items())))"
)


def snapshot(spec: Spec) -> list[LockedPackage]:
    """A user-managed environment's lock: the distributions installed in its interpreter."""

    interpreter = spec.interpreter or ""
    try:
        process = subprocess.run([interpreter, "-c", _SNAPSHOT], capture_output=True, text=True, timeout=120)
        out, err = process.stdout, process.stderr
    except OSError as exc:
        raise ConfigError(spec.pyproject, "tool.mlenv.interpreter", f"cannot run {interpreter!r}: {exc.strerror or exc}") from None
    if process.returncode != 0:
        raise ConfigError(spec.pyproject, "tool.mlenv.interpreter",
                          f"{interpreter!r} failed to list its packages: {err.strip().splitlines()[-1:]}")
    platform = current_platform()
    return [
        LockedPackage(platform=platform, manager="pip", name=name, version=version,
                      url=f"file://{interpreter}#{name}=={version}")
        for name, version in json.loads(out) if name
    ]


def _snapshot_drift(spec: Spec, lock: Lock) -> str | None:
    recorded = {(p.name, p.version) for p in lock.packages}
    current = {(p.name, p.version) for p in snapshot(spec)}
    if recorded != current:
        changed = sorted({n for n, _ in recorded ^ current})
        return f"the packages of {spec.interpreter} changed since the snapshot ({', '.join(changed[:5])}...)"
    return None


def unsatisfied(spec: Spec, lock: Lock) -> str | None:
    """The first requested spec not matched by the lock (a hand-edited lock), or None."""
    import rattler  # lazy: only a solve needs rattler (~0.12 s), not a no-op `mlenv lock`
    from packaging.requirements import Requirement

    from hatch_mlenv.pip import marker_environment  # lazy: only a solve needs the pip step (uv)

    for platform in spec.platforms:
        packages = lock.for_platform(platform)
        if not packages:
            return f"{_rel(spec, spec.lockfile)} has no packages for {platform}"
        conda = {p.name: p for p in packages if p.manager == "conda"}
        for text in spec.conda_specs_for(platform):
            match_spec = rattler.MatchSpec(text, strict=False)
            name = match_spec.name.normalized if hasattr(match_spec.name, "normalized") else str(match_spec.name)
            locked = conda.get(name)
            if locked is None or not match_spec.matches(_record(locked)):
                found = f"{locked.version} {locked.build}" if locked else "nothing"
                return f"{_rel(spec, spec.lockfile)}: {text!r} is not satisfied on {platform} (locked: {found})"
        for package in conda.values():
            for dep in package.dependencies:
                if not dep.startswith("__") and dep not in conda:
                    return (
                        f"{_rel(spec, spec.lockfile)}: {package.name} needs {dep}, "
                        f"which is not locked for {platform}"
                    )
        provided = {canonical(p.name): p.version for p in packages}
        for conda_name, pypi_names in lock.pypi_names.items():
            if conda_name in conda:
                provided.update((canonical(n), conda[conda_name].version) for n in pypi_names)
        python = conda.get("python")
        environment = marker_environment(platform, python.version) if python else None
        for text in spec.pip_for(platform):
            requirement = Requirement(text)
            if requirement.marker is not None and environment and not requirement.marker.evaluate(environment):
                continue
            version = provided.get(canonical(requirement.name))
            if version is None or (requirement.specifier and not requirement.specifier.contains(version, prereleases=True)):
                return f"{_rel(spec, spec.lockfile)}: pip requirement {text!r} is not satisfied on {platform}"
    return None


def lock(spec: Spec, *, update: Sequence[str] = (), force: bool = False) -> LockOutcome:
    """Bring `spec.lockfile` up to date with `spec`; see the module docstring."""
    remove_dead_leftovers(spec.lockfile.parent, f".{spec.lockfile.name}.")  # of a lock that was killed
    if not update and not force:
        digest = stamped_digest(spec)
        if digest is not None:
            return LockOutcome("fresh", digest)
    previous = _existing(spec)
    if not update and not force and previous is not None:
        reason = staleness(spec, previous)
        if reason is None:
            return LockOutcome("fresh", previous.digest(), previous)
    else:
        reason = None
    if update:
        if previous is None:
            raise LockfileError(spec.lockfile, "cannot --update: there is no lockfile yet; run `mlenv lock` first")
        _check_update_names(spec, previous, update)

    if spec.managed:
        spec.check_channels()
        spec.check_url_variables()
        spec.check_match_specs()
        packages = solve_spec(spec, previous, update)
    else:
        packages = snapshot(spec)
    text = render(spec, packages)
    status = "unchanged"
    if not spec.lockfile.exists() or spec.lockfile.read_text(encoding="utf-8") != text:
        atomic_write(spec.lockfile, text)
        status = "locked"
    written = parse_lock(text, spec.lockfile)
    _write_stamp(spec, written)
    return LockOutcome(status, written.digest(), written, reason)


def all_specs(project: Path) -> list[Spec]:
    """The default environment and every named one of `project` (`lock --all`)."""
    pyproject = project.resolve() / PYPROJECT
    specs = [load_spec(project)] + [load_spec(project, name) for name in environment_names(pyproject)]
    seen: dict[Path, Spec] = {}
    for spec in specs:
        other = seen.setdefault(spec.lockfile, spec)
        if other is not spec:  # the second lock would overwrite the first, and one would always be stale
            raise ConfigError(pyproject, f"tool.mlenv.envs.{spec.env}.lockfile",
                              f"{_rel(spec, spec.lockfile)} is also the lockfile of the "
                              f"{other.env or 'default'} environment; give each environment its own")
    return specs


def lock_each(specs: Sequence[Spec], *, force: bool = False) -> list[LockOutcome | MlenvError]:
    """`lock()` of each spec (each with its own lockfile, as `all_specs` makes sure), at the same
    time: the solves wait on rattler, uv and the network. A spec that fails gives its error in its
    place; the others still lock."""
    from concurrent.futures import ThreadPoolExecutor  # lazy: the no-op lock has no threads to start

    def attempt(spec: Spec) -> LockOutcome | MlenvError:
        try:
            return lock(spec, force=force)
        except MlenvError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=max(1, min(len(specs), os.cpu_count() or 1, 4))) as pool:
        return list(pool.map(attempt, specs))


# -- the stale-lock policy of every command that uses a project's lock ------------------------
# `relock` (default): a stale or missing lock is locked again, said in one stderr line, then used;
# `locked`: a stale or missing lock is an error (CI); `frozen`: the lock is used as it is, unchecked.
# `report`, the default of the commands that only describe a lock (doctor, verify, diff): a stale
# lock is said in one line and used as it is; nothing is written.
POLICIES = LOCK_POLICIES
REPORT = "report"
POLICY_KEY = "tool.mlenv.lock"
ENV_LOCKED, ENV_FROZEN = "MLENV_LOCKED", "MLENV_FROZEN"


@dataclass(frozen=True)
class LockPolicy:
    """What to do with a stale lock, and the setting that chose it (named in a refusal)."""

    mode: str = "relock"
    origin: str = "the default"


def lock_policy(asked: str | None = None, spec: Spec | None = None, *,
                configured: LockPolicy | None = None, default: str = "relock") -> LockPolicy:
    """The policy in force: `asked` (a command's `--locked`/`--frozen`), then `$MLENV_LOCKED=1` /
    `$MLENV_FROZEN=1`, then `configured` (the build hook's own `lock` option), then
    `[tool.mlenv] lock`, then the command's `default` (`relock`, or `report`)."""
    if asked is not None:
        return LockPolicy(asked, f"--{asked}")
    flags = [name for name in (ENV_LOCKED, ENV_FROZEN) if os.environ.get(name, "") not in ("", "0")]
    if len(flags) == 2:
        raise UsageError(f"{ENV_LOCKED} and {ENV_FROZEN} are both set; set at most one")
    if flags:
        return LockPolicy("locked" if flags[0] == ENV_LOCKED else "frozen", f"{flags[0]}={os.environ[flags[0]]}")
    if configured is not None:
        return configured
    if spec is not None and spec.lock_policy is not None:
        return LockPolicy(spec.lock_policy, f"{POLICY_KEY} = \"{spec.lock_policy}\"")
    return LockPolicy(default)


def current_lock(spec: Spec, policy: LockPolicy, announce: Callable[[str], None] | None = None) -> Lock:
    """The lock of `spec` under `policy` (see POLICIES). A relock that fails raises the lock's own
    error and leaves the previous file as it was; `announce` gets the one line saying it relocks
    (default: a note on stderr)."""
    if policy.mode == "frozen" or (policy.mode == REPORT and not spec.lockfile.exists()):
        return read_lock(spec.lockfile)  # MissingLockError when there is none
    current = _existing(spec)
    if current is None:
        reason = f"{_rel(spec, spec.lockfile)} does not exist"
    else:  # a lock just written or checked has its stamp: no second full check on the hot path
        reason = None if stamped_digest(spec) == current.digest() else staleness(spec, current)
    if reason is None:
        return current
    if policy.mode == "locked":
        raise StaleLockError(f"{_rel(spec, spec.lockfile)} is stale: {reason} ({policy.origin}); run "
                             f"`mlenv lock{f' --env {spec.env}' if spec.env else ''}`")
    if announce is None:
        from hatch_mlenv.progress import note as announce
    name = _rel(spec, spec.lockfile)
    if policy.mode == REPORT:
        announce(f"{name} is stale ({what_changed(spec, current) or reason}); using it as it is "
                 "(`mlenv lock` locks it again)")
        return current
    if current is None:
        announce(f"{reason}; locking {spec.name}")
    elif current.spec_hash is None or (current.spec_hash == spec.hash() and spec.managed):
        # The spec did not change: the lock was edited by hand, or another tool wrote it. Solving
        # again would paper over that; the integrity checks of the stages that use it decide.
        announce(f"{name} is stale ({reason}); not relocking a lock the spec did not change: using it as it is")
        return current
    else:
        announce(f"{name} is stale ({what_changed(spec, current) or reason}); relocking")
    return lock(spec).load(spec)


def what_changed(spec: Spec, lock: Lock) -> str | None:
    """The keys of `[tool.mlenv]` that a stale lock shows changed, from what the lock records
    (`tool.mlenv.variables changed`); None when it cannot tell (conda and pip specs are not
    recorded, only whether the lock satisfies them)."""
    if lock.spec_hash is None or lock.spec_hash == spec.hash():
        return None
    try:
        recorded = {
            "name": (lock.name, spec.name),
            "platforms": (sorted(lock.platforms), sorted(spec.platforms)),
            "channels": (list(lock.channels), [c.public_url for c in spec.channels]),
            "variables": (lock.variables, public_variables(spec.variables)),
            "system-requirements": (lock.system_requirements, dict(spec.system_requirements)),
            "docker.base-image": (lock.base_image, spec.docker.base_image or None),
            "docker.base-dockerfile": (lock.base_dockerfile, spec.base_dockerfile_sha256()),
        }
    except ValueError:  # unreadable recorded values: the lock is stale anyway
        return None
    keys = [key for key, (old, new) in recorded.items() if old != new]
    if not keys:
        return None
    return ", ".join(f"tool.mlenv.{key}" for key in keys) + " changed"


# A stamp records, outside the project (in the user cache), that this exact
# lockfile (same inode, size and mtime) was found fresh for this spec hash, and
# its digest: the next no-op `mlenv lock` answers without parsing YAML or
# loading rattler. Any edit, checkout or rewrite of the file changes its stat
# and brings back the full check.
def _stamp_path(spec: Spec) -> Path:
    key = hashlib.sha256(str(spec.lockfile).encode()).hexdigest()[:32]
    return cache_dir() / "lock-stamps" / f"{key}.json"


def _file_identity(path: Path) -> list[int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return [stat.st_ino, stat.st_size, stat.st_mtime_ns]


def stamped_digest(spec: Spec) -> str | None:
    """The digest of a lock known fresh for this spec, or None when that is not known."""
    identity = _file_identity(spec.lockfile)
    if identity is None:
        return None
    from hatch_mlenv.sealed import LOCK_STAMP, read_sealed

    path = _stamp_path(spec)
    body = read_sealed(path, LOCK_STAMP, path.stem)  # a stamp is believed only under our seal
    try:
        stamp = json.loads(body) if body is not None else None
    except ValueError:
        return None
    if not isinstance(stamp, dict):
        return None
    if stamp.get("file") == identity and stamp.get("spec_hash") == spec.hash() and stamp.get("lockfile") == str(spec.lockfile):
        return stamp.get("digest")
    return None


def _write_stamp(spec: Spec, lock: Lock) -> None:
    identity = _file_identity(spec.lockfile)
    if identity is None or lock.spec_hash != spec.hash() or not spec.managed:
        return  # a user-managed environment's freshness is its interpreter's, never cached
    from hatch_mlenv.sealed import LOCK_STAMP, write_sealed

    stamp = {"lockfile": str(spec.lockfile), "file": identity, "spec_hash": lock.spec_hash, "digest": lock.digest()}
    path = _stamp_path(spec)
    write_sealed(path, LOCK_STAMP, path.stem, json.dumps(stamp).encode())  # a cache: never fails a command


def solve_spec(spec: Spec, previous: Lock | None, update: Sequence[str]) -> list[LockedPackage]:
    """Solve conda for every platform, then pip against each platform's python."""
    import hatch_mlenv.plugins as plugins  # lazy: only a solve loads the plugins
    from hatch_mlenv.hookspecs import SolveRequest

    preferred: tuple[LockedPackage, ...] = ()
    if update and previous is not None:
        from hatch_mlenv.pypi_names import canonical

        names = {canonical(n) for n in update}
        preferred = tuple(p for p in previous.packages if canonical(p.name) not in names)
    available = plugins.solvers()
    spec.check_solver(available)
    solver = available[spec.solver]
    request = SolveRequest(
        channels=tuple(spec.channel_fetch_urls()),
        specs=tuple(spec.conda_specs),
        platform_specs={p: tuple(spec.conda_specs_for(p)) for p in spec.platforms if p in spec.targets},
        platforms=spec.platforms,
        virtual_packages=spec.virtual_packages,
        preferred=preferred,
    )
    preload = preload_conda_lock_models()
    try:
        conda = solver.solve(request)
    finally:
        preload.join()
    packages: list[LockedPackage] = []
    for platform in spec.platforms:
        packages.extend(conda[platform])
    if spec.any_pip:
        from concurrent.futures import ThreadPoolExecutor  # lazy: as in lock_each

        from hatch_mlenv.pip import resolve_pip  # lazy: only a solve needs the pip step (uv)

        pip_preferred = [p for p in preferred if p.manager == "pip"]

        def resolve(platform: str) -> list[LockedPackage]:
            return resolve_pip(spec, platform, conda[platform], pip_preferred, update)

        # one uv process per platform, at the same time: each waits on the index and its own uv
        with ThreadPoolExecutor(max_workers=max(1, min(len(spec.platforms), 4))) as pool:
            for resolved in pool.map(resolve, spec.platforms):  # in the spec's order, whatever finishes first
                packages.extend(resolved)
    return packages


def render(spec: Spec, packages: Iterable[LockedPackage]) -> str:
    """The lockfile text for `packages`: deterministic, no timestamps."""
    spec_hash = spec.hash()
    packages = list(packages)
    variables = public_variables(spec.variables)
    base_dockerfile = spec.base_dockerfile_sha256()
    custom = {
        META_DIGEST: lock_digest(packages, variables, spec.docker.base_image or None, spec.system_requirements,
                                 base_dockerfile),
        META_NAME: spec.name,
        META_SPEC_HASH: spec_hash,
        META_VARIABLES: json.dumps(variables, sort_keys=True),
        META_TOOL: f"hatch-mlenv {__version__}",
    }
    if spec.docker.base_image:
        custom[META_BASE_IMAGE] = spec.docker.base_image
    if base_dockerfile:
        custom[META_BASE_DOCKERFILE] = base_dockerfile
    if spec.system_requirements:
        custom[META_SYSTEM_REQUIREMENTS] = json.dumps(spec.system_requirements, sort_keys=True)
    if spec.managed:  # what each platform needs from the host; see hatch_mlenv.system
        from hatch_mlenv.system import host_needs

        needs = host_needs(packages, spec.platforms, spec.system_requirements)
        custom[META_NEEDS] = json.dumps(needs, sort_keys=True, separators=(",", ":"))
    if spec.any_pip:  # only a lock with pip packages needs to know which names conda provides
        from hatch_mlenv.pypi_names import renamed

        names = renamed((p for p in packages if p.manager == "conda"), spec.pypi_names)
        if names:
            custom[META_PYPI_NAMES] = json.dumps(names, sort_keys=True, separators=(",", ":"))
    from hatch_mlenv.distributions import is_sdist

    sdists = sorted({p.name for p in packages if p.manager == "pip" and is_sdist(p.url)})
    if sdists:  # built from source at install time, for whoever reads the lock before installing it
        custom[META_SDISTS] = json.dumps(sdists, separators=(",", ":"))
    return render_lockfile(
        packages,
        platforms=spec.platforms if spec.managed else (current_platform(),),
        channels=[c.public_url for c in spec.channels],
        content_hash={
            p: hashlib.sha256(f"{spec_hash}:{p}".encode()).hexdigest()
            for p in (spec.platforms if spec.managed else (current_platform(),))
        },
        custom=custom,
        sources=[os.path.relpath(spec.pyproject, spec.lockfile.parent)],
        file_name=spec.lockfile.name,
    )


def _existing(spec: Spec) -> Lock | None:
    if not spec.lockfile.exists():
        return None
    return read_lock(spec.lockfile)


def _check_update_names(spec: Spec, previous: Lock, update: Sequence[str]) -> None:
    locked = {canonical(p.name) for p in previous.packages}
    for name in update:
        if canonical(name) not in locked:
            raise ConfigError(
                spec.lockfile, None, f"cannot --update {name!r}: it is not in the lock"
            )


def _record(package: LockedPackage):  # -> rattler.PackageRecord
    import rattler  # lazy: only a solve needs rattler (~0.12 s)

    return rattler.PackageRecord(
        name=package.name,
        version=package.version,
        build=rattler.BuildString(package.build or ""),
        build_number=0,
        subdir=package.platform,
    )


def _rel(spec: Spec, path: os.PathLike[str] | str) -> str:
    try:
        return os.path.relpath(path, spec.project_dir) if str(path).startswith(str(spec.project_dir)) else str(path)
    except ValueError:
        return str(path)
