"""Verify an installed prefix against the lock: packages missing, extra or changed, and files
whose content no longer matches what was installed."""

from __future__ import annotations

import csv
import hashlib
import json
import base64
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hatch_mlenv.errors import UsageError
from hatch_mlenv.install import file_sha256


@dataclass
class Drift:
    prefix: Path
    platform: str
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    modified_files: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.missing or self.extra or self.changed or self.modified_files)

    def rows(self) -> list[tuple[str, str]]:
        return (
            [("missing", x) for x in self.missing]
            + [("extra", x) for x in self.extra]
            + [("changed", x) for x in self.changed]
            + [("modified file", x) for x in self.modified_files]
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
        }


def verify_prefix(lock: Any, prefix: Path, platform: str, *, check_files: bool = True) -> Drift:
    """Compare the conda-meta records and Python dist-info of `prefix` with the lock's `platform`."""
    meta = prefix / "conda-meta"
    if not meta.is_dir():
        raise UsageError(f"{prefix}: not a conda prefix (no conda-meta directory)")
    drift = Drift(prefix, platform)
    locked = lock.for_platform(platform)
    if not locked:
        raise UsageError(f"the lock has no packages for {platform} (locked: {', '.join(lock.platforms) or 'none'})")

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
        elif check_files:
            drift.modified_files += _modified_conda_files(prefix, record)
    for name in sorted(records.keys() - conda.keys()):
        drift.extra.append(f"conda {name} {records[name].get('version')} {records[name].get('build')}")

    pip = {normalize_name(p.name): p for p in locked if p.manager == "pip"}
    installed = pip_distributions(prefix)
    for name, package in sorted(pip.items()):
        found = installed.get(name)
        if found is None:
            drift.missing.append(f"pip {package.name} {package.version}")
        elif found[0] != package.version:
            drift.changed.append(f"pip {package.name}: locked {package.version}, installed {found[0]}")
        elif check_files:
            drift.modified_files += _modified_wheel_files(found[1])
    conda_names = {normalize_name(n) for n in records}
    for name in sorted(installed.keys() - pip.keys() - conda_names):
        drift.extra.append(f"pip {name} {installed[name][0]}")
    return drift


def normalize_name(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _modified_conda_files(prefix: Path, record: dict[str, Any]) -> list[str]:
    modified = []
    for entry in (record.get("paths_data") or {}).get("paths", []):
        expected = entry.get("sha256_in_prefix") or entry.get("sha256")
        relative = entry.get("_path") or entry.get("relative_path")
        if not expected or not relative or entry.get("path_type") == "directory":
            continue
        path = prefix / relative
        if path.is_symlink():
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
            found[normalize_name(fields["Name"])] = (fields.get("Version", ""), dist_info)
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
        if not path.is_file():
            modified.append(f"{row[0]}: deleted")
            continue
        actual = base64.urlsafe_b64encode(hashlib.sha256(path.read_bytes()).digest()).rstrip(b"=").decode()
        if actual != row[1][len("sha256="):]:
            modified.append(f"{row[0]}: content differs from the wheel")
    return modified
