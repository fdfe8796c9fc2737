"""Shared test helpers: real projects in temp dirs, the real `mlenv` command."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if not SHARED_DATA.is_dir():  # a checkout laid out as <work>/<repo> next to <work>/shared
    SHARED_DATA = Path(os.environ.get("MLENV_SHARED_DATA", "/work/shared/data"))
DEFAULTS_2018 = SHARED_DATA / "defaults-2018"
LOCK_SAMPLES = SHARED_DATA / "conda-lock-samples"


def write_project(root: Path, mlenv: str, *, name: str = "demo", version: str = "0.1.0", extra: str = "") -> Path:
    """A pyproject.toml with `[project]` and the given `[tool.mlenv]` body."""
    root.mkdir(parents=True, exist_ok=True)
    text = f'[project]\nname = "{name}"\nversion = "{version}"\n{textwrap.dedent(extra)}\n[tool.mlenv]\n'
    (root / "pyproject.toml").write_text(text + textwrap.dedent(mlenv).lstrip())
    return root


def mlenv(*args: str, cwd: Path | None = None, check: bool | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real `mlenv` console script."""
    result = subprocess.run(
        [sys.executable, "-m", "hatch_mlenv", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,  # not capture_output: conda-lock patches subprocess.run
        stderr=subprocess.PIPE,
        text=True,
        timeout=600,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"mlenv {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under root: proves a failed command changed nothing."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def assert_clean_error(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    """A clear first line naming file and key, the documented exit code, no traceback."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    first = result.stderr.strip().splitlines()[0]
    assert first.startswith("error: "), result.stderr
    for needle in needles:
        assert needle in first, (needle, first)
    assert "Traceback" not in result.stderr + result.stdout


@pytest.fixture(scope="session")
def defaults_2018() -> Path:
    assert (DEFAULTS_2018 / "linux-64" / "repodata.json").is_file(), f"missing {DEFAULTS_2018}"
    return DEFAULTS_2018
