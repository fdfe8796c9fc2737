"""Where a version came from: time, git commit and dirty state, project, tools, user.

Low in the package: the environment's manifest and the registries both use it.
"""

from __future__ import annotations

import datetime
import functools
import getpass
import subprocess
from pathlib import Path
from typing import Any

from hatch_mlenv._version import __version__
from hatch_mlenv.progress import note


def provenance(
    project_dir: Path | None,
    *,
    spec_hash: str | None,
    project: dict[str, Any] | None,
    git: tuple[str | None, bool | None] | None = None,
) -> dict[str, Any]:
    """Where a version came from: time, git state (`git`, when the caller has just read it), project,
    tools, user."""

    if git is not None:
        commit, dirty = git
    else:
        commit, dirty = git_state(project_dir) if project_dir else (None, None)
    from importlib import metadata  # lazy: ~3 ms (email's parser); only a new version records it

    try:
        rattler_version = metadata.version("py-rattler")
    except metadata.PackageNotFoundError:
        rattler_version = None
    try:
        user = getpass.getuser()
    except Exception:  # no login name in some containers
        user = None
    return {
        "time": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
        "git_commit": commit,
        "git_dirty": dirty,
        "project": project or {},
        "spec_hash": spec_hash,
        "hatch_mlenv": __version__,
        "py_rattler": rattler_version,
        "user": user,
    }


def git_state(directory: Path) -> tuple[str | None, bool | None]:
    """The commit checked out in `directory` and whether tracked files differ from it;
    (None, None) outside a repository or before its first commit. One `git` process."""
    try:
        process = subprocess.run(
            ["git", "status", "--porcelain=v2", "--branch", "--untracked-files=no"],
            cwd=directory, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, timeout=30,
        )
    except FileNotFoundError as exc:  # no git, or no such directory (exc.filename says which)
        here = Path(directory).absolute()
        if exc.filename == "git" and any((parent / ".git").exists() for parent in (here, *here.parents)):
            _note_git_missing()  # a checkout whose commit goes unrecorded: say so, and what would record it
        return None, None
    except (OSError, subprocess.SubprocessError):
        return None, None
    if process.returncode != 0:
        return None, None
    commit, dirty = None, False
    for line in process.stdout.splitlines():
        if line.startswith("# branch.oid "):
            commit = line.split()[2]
        elif not line.startswith("#"):
            dirty = True
    if commit is None or commit == "(initial)":
        return None, None
    return commit, dirty


@functools.lru_cache(maxsize=None)
def _note_git_missing() -> None:
    """Once per process, however many times the state is read."""
    note("git is not installed, so the git commit is not recorded; install git to record it")
