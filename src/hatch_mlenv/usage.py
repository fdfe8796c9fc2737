"""What this machine uses, as `mlenv install` records it for `mlenv gc`: the registries versions
were installed from, and the lockfiles (of projects, or given as REF) that were installed.
Low in the package: install records, gc reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hatch_mlenv.paths import data_dir

PROJECTS_FILE = "projects.txt"  # in the data directory: one installed lockfile's path a line
REGISTRIES_FILE = "registries.txt"  # in the data directory: one registry URL an install came from, a line


def record_use(env: Any) -> None:
    """Remember what an install uses: the registry of a registered version, else the lockfile of a
    project or the lockfile given as REF (its packages stay in the cache while it exists)."""
    if env.version is not None:
        remember(REGISTRIES_FILE, env.registry)
    else:
        remember(PROJECTS_FILE, str(Path(env.reference if env.is_registered else env.spec.lockfile).resolve()))


def remember(file: str, line: str) -> None:
    path = data_dir() / file
    try:
        if line in path.read_text(encoding="utf-8").splitlines():
            return
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:  # one short line: an append is atomic enough
        handle.write(line + "\n")


def lines(file: str) -> list[str]:
    try:
        return list(dict.fromkeys((data_dir() / file).read_text(encoding="utf-8").splitlines()))
    except OSError:
        return []
