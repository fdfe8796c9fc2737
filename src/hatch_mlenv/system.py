"""System requirements: what a lock needs from the machine that runs it, and whether this one can.

A lock needs from its host the declared `[tool.mlenv.system-requirements]`
and the strongest `__cuda`, `__glibc`, `__linux`, `__osx` and `__archspec`
constraint among its packages' dependencies (`host_needs`, recorded at lock
time). The host is what rattler detects (`VirtualPackage.detect()`, with the
`CONDA_OVERRIDE_*` variables honoured). `require_host` refuses a host that
cannot run the lock, before anything touches a prefix; `doctor` reports it all.
"""

from __future__ import annotations

import os
import platform as host_platform
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Collection, Iterable, Mapping

from hatch_mlenv.errors import HostError, UsageError
from hatch_mlenv.lockfile import META_NEEDS
from hatch_mlenv.platforms import REQUIREMENT_KEYS, current_platform, system_virtual_packages

if TYPE_CHECKING:
    from hatch_mlenv.lockfile import Lock, LockedPackage

# The virtual packages a lock can need from its host (`__unix`, `__win` name the platform itself).
NEEDED = ("__cuda", "__glibc", "__linux", "__osx", "__archspec")
# The variable rattler reads to override each detected virtual package (`__linux` has none).
OVERRIDE_VARIABLES = {
    "__cuda": "CONDA_OVERRIDE_CUDA",
    "__glibc": "CONDA_OVERRIDE_GLIBC",
    "__osx": "CONDA_OVERRIDE_OSX",
    "__archspec": "CONDA_OVERRIDE_ARCHSPEC",
}
BYPASS_FLAG = "--ignore-system-requirements"
# For the places without a command line of ours: the hatch environment and the pytest plugin.
BYPASS_VARIABLE = "MLENV_IGNORE_SYSTEM_REQUIREMENTS"
_LOWER_BOUND_RE = re.compile(r"^(>=|>|==|=|~=)?\s*(\d[0-9A-Za-z._]*?)(\.\*)?$")
_X86_LEVEL_RE = re.compile(r"^x86_64_v(\d+)$")


# --- what a lock needs ------------------------------------------------------------


def host_needs(
    packages: Iterable[LockedPackage], platforms: Iterable[str], declared: Mapping[str, str]
) -> dict[str, dict[str, dict[str, Any]]]:
    """platform -> virtual package -> {"constraint": ..., "by": [...]}: the strongest constraint on each
    virtual package among the declared requirements and the locked conda packages' dependencies, with
    what imposes it (`system-requirements.cuda`, or `NAME VERSION BUILD` of each package)."""
    by_platform: dict[str, list[LockedPackage]] = {}
    for package in packages:
        if package.manager == "conda":
            by_platform.setdefault(package.platform, []).append(package)
    result = {}
    for platform in sorted(platforms):
        candidates: dict[str, dict[str, list[str]]] = {}
        for name, (version, build) in system_virtual_packages(platform, declared).items():
            constraint = build if name == "__archspec" else f">={version}"
            declared_by = f"tool.mlenv.system-requirements.{REQUIREMENT_KEYS[name]}"
            candidates.setdefault(name, {}).setdefault(constraint, []).append(declared_by)
        for package in by_platform.get(platform, []):
            for name, constraint in package.dependencies.items():
                if name not in NEEDED:
                    continue
                if name == "__archspec":
                    constraint = _archspec_name(constraint)
                if not constraint or constraint == "*":
                    continue
                imposer = " ".join(x for x in (package.name, package.version, package.build) if x)
                candidates.setdefault(name, {}).setdefault(constraint, []).append(imposer)
        needs = {}
        for name, constraints in sorted(candidates.items()):
            strongest = max(constraints, key=lambda c: _strength(name, c))
            needs[name] = {"constraint": strongest, "by": sorted(set(constraints[strongest]))}
        if needs:
            result[platform] = needs
    return result


def lock_needs(lock: Lock) -> dict[str, dict[str, dict[str, Any]]]:
    """What each platform of `lock` needs: as recorded at lock time, or derived for locks older than that."""
    if META_NEEDS in lock.custom:
        return lock.recorded_needs
    return host_needs(lock.packages, lock.platforms, lock.system_requirements)


def _archspec_name(constraint: str) -> str:
    """`1 x86_64_v3`, `* *x86_64_v3*` or `x86_64_v3` -> `x86_64_v3`."""
    parts = constraint.split()
    return (parts[-1] if parts else "").strip("*=")


def _strength(name: str, constraint: str) -> tuple[Any, ...]:
    """Orders constraints on one virtual package: the highest lower bound is the strongest."""
    if name == "__archspec":
        level = _X86_LEVEL_RE.match(constraint)
        return (int(level.group(1)) if level else 0, constraint)
    from rattler import Version  # lazy: rattler takes ~0.12 s to import; only host checks need it

    bound = Version("0")
    for part in constraint.split("|")[0].split(","):
        found = _LOWER_BOUND_RE.match(part.strip())
        if found:
            try:
                bound = max(bound, Version(found.group(2)))
            except Exception:  # noqa: BLE001 - an odd version spec: weakest
                pass
    return (bound, constraint)


# --- this machine -----------------------------------------------------------------


@dataclass(frozen=True)
class HostPackage:
    name: str
    version: str
    build: str
    lineage: tuple[str, ...] = ()  # __archspec: the detected name and the levels it includes

    def shown(self) -> str:
        return f"{self.name} {self.build}" if self.name == "__archspec" else f"{self.name} {self.version}"


def detect_host(needed: Collection[str] | None = None) -> dict[str, HostPackage]:
    """This machine's virtual packages, as rattler detects them with the `CONDA_OVERRIDE_*` variables.

    With `needed` (the names a lock needs), the CUDA driver is asked only if `__cuda` is one of
    them: rattler loads the driver's library to read its version, which on a GPU host costs more
    than everything else a no-op `mlenv run` does (0.32 s seen on an H200 host)."""
    from rattler import VirtualPackage, VirtualPackageOverrides  # lazy: as above
    from rattler.virtual_package import Override

    from hatch_mlenv._compat import archspec_lineage

    overrides = VirtualPackageOverrides.from_env()
    if needed is not None and "__cuda" not in needed and OVERRIDE_VARIABLES["__cuda"] not in os.environ:
        overrides.cuda = Override.string("")  # as CONDA_OVERRIDE_CUDA="" does: no driver asked
    try:
        detected = VirtualPackage.detect(overrides)
    except Exception as exc:  # rattler's DetectVirtualPackageError: a malformed CONDA_OVERRIDE_* value
        overrides = ", ".join(f"{k}={os.environ[k]!r}" for k in OVERRIDE_VARIABLES.values() if k in os.environ)
        raise UsageError(f"cannot detect this machine's virtual packages ({overrides or 'no overrides set'}): "
                         f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from None
    host = {}
    for package in detected:
        generic = package.into_generic()
        name = generic.name.normalized
        lineage = archspec_lineage(package) if name == "__archspec" else ()
        host[name] = HostPackage(name, str(generic.version), str(generic.build_string), lineage)
    return host


# --- can this machine run the lock ------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One need of the lock and what this machine has for it."""

    name: str
    constraint: str
    by: tuple[str, ...]
    host: HostPackage | None
    met: bool

    def as_dict(self) -> dict[str, Any]:
        host = None if self.host is None else (self.host.build if self.name == "__archspec" else self.host.version)
        return {"name": self.name, "constraint": self.constraint, "by": list(self.by), "host": host, "met": self.met}

    def need(self, environment: str) -> str:
        """`fraud-train needs __cuda >=12.0 (pytorch 2.3.0 cuda120_0)`."""
        more = f" and {len(self.by) - 1} more" if len(self.by) > 1 else ""
        return f"{environment} needs {self.name} {self.constraint} ({self.by[0]}{more})"

    def message(self, environment: str, bypass: str = BYPASS_FLAG) -> str:
        """`fraud-train needs __cuda >=12.0 (pytorch 2.3.0 cuda120_0); this machine has no CUDA driver (...)`."""
        if self.host is None:
            has = "has no CUDA driver" if self.name == "__cuda" else f"has no {self.name}"
        else:
            has = f"has {self.host.shown()}"
        variable = OVERRIDE_VARIABLES.get(self.name)
        hint = f"set {variable} to override, or {bypass}" if variable else bypass
        return f"{self.need(environment)}; this machine {has} ({hint})"


def check(needs: Mapping[str, Mapping[str, Any]], host: Mapping[str, HostPackage]) -> list[Finding]:
    """Each need of one platform, met or not by `host`."""
    findings = []
    for name, need in sorted(needs.items()):
        constraint = str(need.get("constraint", ""))
        by = tuple(need.get("by") or ("?",))
        found = host.get(name)
        findings.append(Finding(name, constraint, by, found, found is not None and _meets(found, constraint)))
    return findings


def _meets(host: HostPackage, constraint: str) -> bool:
    if host.name == "__archspec":
        return constraint in (host.lineage or (host.build,))
    import rattler  # lazy: as above

    try:
        spec = rattler.MatchSpec(f"{host.name} {constraint}", strict=False)
    except Exception:  # noqa: BLE001 - a constraint rattler cannot read is not one we can check
        return True
    record = rattler.PackageRecord(
        name=host.name, version=host.version, build=rattler.BuildString(host.build), build_number=0, subdir="noarch"
    )
    return spec.matches(record)


_SIMPLE_FLOOR_RE = re.compile(r"^>=\s*(\d+(?:\.\d+)*)$")


def simple_needs_met(needs: Mapping[str, Mapping[str, Any]]) -> bool:
    """True when every need is a plain floor (`>=2.28`) on glibc, the kernel or macOS, no
    `CONDA_OVERRIDE_*` is set for it, and this machine, read with the standard library as rattler
    reads it (glibc's own version, the kernel release, the macOS product version), meets it. Anything
    else (CUDA, a CPU level, a bound rattler must read, an unmet floor) is left to rattler."""
    readers = {"__glibc": _glibc_version, "__linux": _linux_version, "__osx": _osx_version}
    for name, need in needs.items():
        floor = _SIMPLE_FLOOR_RE.match(str(need.get("constraint", "")).strip())
        if name not in readers or floor is None or OVERRIDE_VARIABLES.get(name, "") in os.environ:
            return False
        have = readers[name]()
        if have is None or _numbers(have) < _numbers(floor.group(1)):
            return False
    return True


def _numbers(version: str) -> tuple[int, ...]:
    parts = tuple(int(p) for p in re.findall(r"\d+", version)[:4])
    return parts + (0,) * (4 - len(parts))


def _glibc_version() -> str | None:
    try:
        text = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError, AttributeError):
        return None
    return text.split()[-1] if text.startswith("glibc ") else None


def _linux_version() -> str | None:
    found = re.match(r"\d+(?:\.\d+)*", host_platform.release()) if host_platform.system() == "Linux" else None
    return found.group(0) if found else None


def _osx_version() -> str | None:
    return host_platform.mac_ver()[0] or None


def require_host(
    env: Any, platform: str | None = None, *, ignore: bool = False, bypass: str = BYPASS_FLAG
) -> tuple[str, ...]:
    """Refuse (HostError) a machine that cannot run `env`'s lock for `platform` (default: this one's).

    `env` is an Environment (not imported here: environment.py takes `lock_needs` from this module).
    With `ignore`, nothing is detected: returns one line for each need the lock has (beyond the floors
    read without rattler), for the caller to warn with.
    Without needs (a lock of noarch packages, a user-managed environment) rattler is not even loaded.
    """
    needs = lock_needs(env.lock).get(platform or current_platform(), {})
    if not needs:
        return ()
    if simple_needs_met(needs):  # the common case, without loading rattler (a no-op install stays fast)
        return ()
    if ignore:  # asked not to check: nothing is detected (a driver's library is not even loaded)
        return tuple(f"{f.need(env.name)}; not checked" for f in check(needs, {}))
    unmet = [f.message(env.name, bypass) for f in check(needs, detect_host(needs)) if not f.met]
    if unmet:
        raise HostError("\n".join(unmet))
    return ()


def ignored_by_environment() -> bool:
    """`MLENV_IGNORE_SYSTEM_REQUIREMENTS=1` (the bypass where there is no command line of ours)."""
    return os.environ.get(BYPASS_VARIABLE, "").strip().lower() in ("1", "true", "yes", "on")


def doctor(env: Any, platform: str | None = None) -> dict[str, Any]:
    """What `mlenv doctor` says: this machine's virtual packages, the lock's needs for its platform, each
    met or not, and `ok` when every one is met (and the lock has this platform at all)."""
    platform = platform or current_platform()
    host = detect_host()
    findings = check(lock_needs(env.lock).get(platform, {}), host)
    locked = bool(env.lock.for_platform(platform))
    return {
        "name": env.name,
        "digest": f"sha256:{env.digest}",
        "platform": platform,
        "platform_locked": locked,
        "system_requirements": env.lock.system_requirements,
        "host": [
            {"name": p.name, "version": p.version, "build": p.build} for p in sorted(host.values(), key=lambda p: p.name)
        ],
        "overrides": {k: os.environ[k] for k in sorted(OVERRIDE_VARIABLES.values()) if k in os.environ},
        "needs": [f.as_dict() for f in findings],
        "unmet": [f.message(env.name) for f in findings if not f.met],
        "ok": locked and all(f.met for f in findings),
    }
