"""A program hatch-mlenv runs that is not there: one line naming what to install, never
"internal error". (A Docker engine that cannot be reached: tests/test_image.py.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import assert_clean_error, mlenv, tree_hashes, write_project

# What a user's machine looks like without the uv wheel, or with the package but not its
# binary (what `uv.find_uv_bin` raises then); set up before the real CLI starts.
WITHOUT_UV = {
    "package": "import sys; sys.modules['uv'] = None",
    "binary": (
        "import uv, uv._find_uv\n"
        "def find_uv_bin():\n"
        "    raise uv._find_uv.UvNotFound('Could not find the uv binary in any of the following locations:\\n - /x\\n')\n"
        "uv.find_uv_bin = find_uv_bin"
    ),
}


@pytest.mark.parametrize("missing", sorted(WITHOUT_UV))
def test_lock_without_uv_names_what_to_install(tmp_path: Path, channel: Path, missing: str) -> None:
    project = write_project(tmp_path / "project", f"""
        channels = ["{channel}"]
        platforms = ["linux-64"]
        python = "3.11"
        pip = ["mlenv-util"]
        pip-index-url = "http://127.0.0.1:1/simple/"
    """)
    before = tree_hashes(project)
    program = f"{WITHOUT_UV[missing]}\nfrom hatch_mlenv.cli import main\nmain()\n"
    result = subprocess.run([sys.executable, "-c", program, "lock", "--project", str(project)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=600)
    assert_clean_error(result, 1, "uv", "pip install")
    assert "internal error" not in result.stderr
    assert tree_hashes(project) == before


def _git_project(root: Path) -> Path:
    """A user-managed environment (locks without a solve) in a git checkout with one commit."""
    project = write_project(root, f'managed = false\ninterpreter = "{sys.executable}"\n')
    git = shutil.which("git")
    assert git, "the test needs git to make the checkout"
    identity = ["-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    for command in (["init", "-q"], ["add", "pyproject.toml"], [*identity, "commit", "-qm", "init"]):
        subprocess.run([git, *command], cwd=root, check=True, timeout=60)
    mlenv("lock", "--project", str(project), check=True)
    return project


def test_register_without_git_says_the_commit_is_not_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = _git_project(tmp_path / "project")
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # no git (mlenv itself runs as `python -m`)
    result = mlenv("register", "--project", str(project), check=True)
    assert result.stderr.splitlines() == [
        "mlenv: note: git is not installed, so the git commit is not recorded; install git to record it"
    ]
    shown = mlenv("history", "demo", "--json", check=True)
    assert '"git_commit": null' in shown.stdout


def test_register_records_the_commit_with_git(tmp_path: Path) -> None:
    project = _git_project(tmp_path / "project")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, stdout=subprocess.PIPE, text=True,
                            check=True).stdout.strip()
    result = mlenv("register", "--project", str(project), check=True)
    assert "git" not in result.stderr
    assert f'"git_commit": "{commit}"' in mlenv("history", "demo", "--json", check=True).stdout


def test_no_note_outside_a_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = write_project(tmp_path / "project", f'managed = false\ninterpreter = "{sys.executable}"\n')
    mlenv("lock", "--project", str(project), check=True)
    monkeypatch.setenv("PATH", os.pathsep.join([str(tmp_path / "nothing")]))
    result = mlenv("register", "--project", str(project), check=True)
    assert result.stderr == ""
