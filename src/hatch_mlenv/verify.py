"""Verify an installed prefix against the lock: packages missing, extra or changed, conda-meta
records that no longer name the locked URL and hashes, files whose content (or type) no
longer matches what was installed, and files no package owns where they would run code
(`bin/`, `site-packages/`, above all `.pth`, and `etc/conda/activate.d/`)."""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hatch_mlenv.errors import NotInstalledError
from hatch_mlenv.hashes import file_sha256
from hatch_mlenv.platforms import current_platform
from hatch_mlenv.pypi_names import canonical

# A prefix's install record, written by `hatch_mlenv.install`; outside conda-meta/, where conda and
# rattler read every *.json as a package record. Verify reads what it says was added on purpose.
STATE_FILE = ".mlenv-state.json"
ADDED_BY = "added by the hatch environment"


@dataclass
class Drift:
    prefix: Path
    platform: str
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    modified_files: list[str] = field(default_factory=list)
    unowned_files: list[str] = field(default_factory=list)
    # Distributions installed after the lock on purpose (the hatch environment's project, recorded in
    # the install state): known, so not drift; their files are still checked.
    added: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.missing or self.extra or self.changed or self.modified_files or self.unowned_files)

    def rows(self) -> list[tuple[str, str]]:
        return (
            [("missing", x) for x in self.missing]
            + [("extra", x) for x in self.extra]
            + [("changed", x) for x in self.changed]
            + [("modified file", x) for x in self.modified_files]
            + [("unowned file", x) for x in self.unowned_files]
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "prefix": str(self.prefix),
            "platform": self.platform,
            "identical": self.clean,
            "missing": self.missing,
            "extra": self.extra,
            "changed": self.changed,
            "modified_files": self.modified_files,
            "unowned_files": self.unowned_files,
            "added": self.added,
        }


def verify_environment(env: Any, prefix: Path | None = None, *, check_files: bool = True) -> Drift:
    """The Environment's lock for this machine against `prefix` (default: where it installs)."""
    return verify_prefix(env.lock, (prefix or env.default_prefix).absolute(), current_platform(),
                         check_files=check_files)


def verify_prefix(lock: Any, prefix: Path, platform: str, *, check_files: bool = True) -> Drift:
    """Compare the conda-meta records and Python dist-info of `prefix` with the lock's `platform`."""
    meta = prefix / "conda-meta"
    if not meta.is_dir():
        raise NotInstalledError(f"{prefix}: not a conda prefix (no conda-meta directory): the environment is not "
                                "installed there; run `mlenv install`")
    drift = Drift(prefix, platform)
    locked = lock.for_platform(platform)
    if not locked:
        raise NotInstalledError(f"the lock has no packages for {platform}, so nothing is installed for it "
                                f"(locked: {', '.join(lock.platforms) or 'none'})")

    records = {}
    for path in sorted(meta.glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            records[record["name"]] = record
        except (OSError, ValueError, KeyError):
            drift.changed.append(f"conda-meta/{path.name}: unreadable record")
    conda = {p.name: p for p in locked if p.manager == "conda"}
    for name, package in sorted(conda.items()):
        record = records.get(name)
        if record is None:
            drift.missing.append(f"conda {name} {package.version} {package.build or ''}".rstrip())
        elif (str(record.get("version")), str(record.get("build"))) != (package.version, str(package.build)):
            drift.changed.append(
                f"conda {name}: locked {package.version} {package.build}, installed {record.get('version')} {record.get('build')}"
            )
        else:
            drift.changed += _record_differences(record, package)
            if check_files:
                drift.modified_files += _modified_conda_files(prefix, record)
    for name in sorted(records.keys() - conda.keys()):
        drift.extra.append(f"conda {name} {records[name].get('version')} {records[name].get('build')}")

    pip = {canonical(p.name): p for p in locked if p.manager == "pip"}
    installed = pip_distributions(prefix)
    for name, package in sorted(pip.items()):
        found = installed.get(name)
        if found is None:
            drift.missing.append(f"pip {package.name} {package.version}")
        elif found[0] != package.version:
            drift.changed.append(f"pip {package.name}: locked {package.version}, installed {found[0]}")
        elif check_files:
            drift.modified_files += _modified_wheel_files(found[1])
    conda_names = {canonical(n) for n in records}
    added = recorded_additions(prefix)
    for name in sorted(installed.keys() - pip.keys() - conda_names):
        version, dist_info = installed[name]
        if name in added and _installed_from_a_directory(dist_info):
            drift.added.append(f"pip {name} {version} ({ADDED_BY})")
            if check_files:
                drift.modified_files += _modified_wheel_files(dist_info)
        else:
            drift.extra.append(f"pip {name} {version}")
    drift.unowned_files = _unowned_files(prefix, records.values(), [d for _, d in installed.values()])
    return drift


def recorded_additions(prefix: Path) -> set[str]:
    """The distributions the prefix's install record says were added after the lock on purpose
    (`install.record_addition`: the hatch environment's project), by canonical name."""
    try:
        names = json.loads((prefix / STATE_FILE).read_text()).get("additions") or []
    except (OSError, ValueError, AttributeError):
        return set()
    return {canonical(name) for name in names if isinstance(name, str)} if isinstance(names, list) else set()


def distribution_intact(dist_info: Path) -> bool:
    """Every file an installed distribution's RECORD hashes is there and has that hash."""
    return not _modified_wheel_files(dist_info)


def _installed_from_a_directory(dist_info: Path) -> bool:
    """What the hatch environment installs: a project from its directory (PEP 610 `dir_info`), by
    hatch-mlenv. A recorded name alone does not make a package from an index known."""
    try:
        installer = (dist_info / "INSTALLER").read_text().strip()
        direct_url = json.loads((dist_info / "direct_url.json").read_text())
    except (OSError, ValueError):
        return False
    return installer == "hatch-mlenv" and isinstance(direct_url, dict) and "dir_info" in direct_url


def _record_differences(record: dict[str, Any], package: Any) -> list[str]:
    """A conda-meta record edited after install: its URL or hashes are no longer the lock's."""
    differences = []
    for key, locked in (("url", package.url), ("sha256", package.sha256), ("md5", package.md5)):
        if locked and record.get(key) and record.get(key) != locked:
            differences.append(f"conda {package.name}: conda-meta {key} {record.get(key)} is not the locked {locked}")
    return differences


# Where a file no package installed would run code: scripts on PATH, importable modules and
# .pth files (executed at interpreter start), and activation scripts.
_WATCHED = ("bin", "lib/python*/site-packages", "etc/conda/activate.d")


def _unowned_files(prefix: Path, records: Any, dist_infos: list[Path]) -> list[str]:
    owned: set[str] = set()
    for record in records:
        owned.update(record.get("files") or [])
    for dist_info in dist_infos:
        record_file = dist_info / "RECORD"
        if record_file.is_file():
            for row in csv.reader(record_file.read_text(errors="replace").splitlines()):
                if row:
                    owned.add(os.path.relpath(os.path.normpath(dist_info.parent / row[0]), prefix))
    unowned = []
    for pattern in _WATCHED:
        for top in sorted(prefix.glob(pattern)):
            for root, dirs, files in os.walk(top):
                dirs[:] = [d for d in dirs if d != "__pycache__"]
                for name in files:
                    relative = os.path.relpath(os.path.join(root, name), prefix)
                    if relative not in owned and not name.endswith((".pyc", ".pyo")):
                        kind = " (a .pth file runs code at every interpreter start)" if name.endswith(".pth") else ""
                        unowned.append(f"{relative}: no package installed it{kind}")
    return sorted(unowned)


def _modified_conda_files(prefix: Path, record: dict[str, Any]) -> list[str]:
    modified = []
    for entry in (record.get("paths_data") or {}).get("paths", []):
        expected = entry.get("sha256_in_prefix") or entry.get("sha256")
        relative = entry.get("_path") or entry.get("relative_path")
        if not expected or not relative or entry.get("path_type") == "directory":
            continue
        path = prefix / relative
        if path.is_symlink():
            if entry.get("path_type", "hardlink") != "softlink":
                modified.append(f"{relative} ({record['name']}): replaced by a symlink to {os.readlink(path)}")
            continue
        if not path.is_file():
            modified.append(f"{relative} ({record['name']}): deleted")
        elif file_sha256(path) != expected:
            modified.append(f"{relative} ({record['name']}): content differs from the package")
    return modified


def pip_distributions(prefix: Path) -> dict[str, tuple[str, Path]]:
    """Distributions not installed by conda: normalized name -> (version, dist-info directory)."""
    found = {}
    for dist_info in sorted(prefix.glob("lib/python*/site-packages/*.dist-info")):
        installer = dist_info / "INSTALLER"
        if installer.is_file() and installer.read_text().strip() == "conda":
            continue
        metadata = dist_info / "METADATA"
        if not metadata.is_file():
            continue
        fields = dict(line.split(": ", 1) for line in metadata.read_text(errors="replace").splitlines()[:30] if ": " in line)
        if fields.get("Name"):
            found[canonical(fields["Name"])] = (fields.get("Version", ""), dist_info)
    return found


def _modified_wheel_files(dist_info: Path) -> list[str]:
    record = dist_info / "RECORD"
    if not record.is_file():
        return [f"{dist_info.name}/RECORD: missing"]
    site = dist_info.parent
    modified = []
    for row in csv.reader(record.read_text().splitlines()):
        if len(row) < 2 or not row[1].startswith("sha256="):
            continue
        path = site / row[0]
        if path.is_symlink():
            modified.append(f"{row[0]}: replaced by a symlink to {os.readlink(path)}")
            continue
        if not path.is_file():
            modified.append(f"{row[0]}: deleted")
            continue
        actual = base64.urlsafe_b64encode(hashlib.sha256(path.read_bytes()).digest()).rstrip(b"=").decode()
        if actual != row[1][len("sha256="):]:
            modified.append(f"{row[0]}: content differs from the wheel")
    return modified
