"""The locked pip packages of a platform into a prefix: wheels checked against their sha256 and
installed with PyPA's `installer`; a source release built into a wheel by the prefix's own python."""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path
from typing import Any, Sequence

from hatch_mlenv.errors import InstallError
from hatch_mlenv.errors import first_line as _first_line
from hatch_mlenv.lockfile import LockedPackage
from hatch_mlenv.platforms import current_platform
from hatch_mlenv.progress import step


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
    # lazy: installing wheels is rare; the no-op install path (`mlenv run`) imports this module
    from installer import install
    from installer.destinations import SchemeDictionaryDestination
    from installer.sources import WheelFile

    from hatch_mlenv.distributions import build_wheel, fetch, is_sdist  # lazy: as above

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
    from hatch_mlenv.pip import index_urls  # lazy: the pip stage (uv, packaging) only when wheels are fetched

    return index_urls(spec)


def sync_wheels(
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
        uninstall_dist(staging, python.version, name)
    new = [p for p in wheels if old.get(p.name) != p.sha256]
    if new:
        with step(f"installing {len(new)} pip package{'s' if len(new) != 1 else ''} into {prefix}"):
            install_wheels(new, staging, python.version, target_prefix=str(prefix), indexes=indexes,
                           find_links=find_links, build_constraints=build_constraints)
    return sorted(set(stale) | {p.name for p in new})


def uninstall_dist(prefix: Path, python_version: str, name: str) -> None:
    """Remove an installed wheel by its RECORD (the files hard-linked from the old prefix are unlinked, not edited)."""
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
