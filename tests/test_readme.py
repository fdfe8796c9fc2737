"""Every command block of the README is run by something: a test, or CI reading it from the README.

- `try-it`: tests/test_quickstart.py runs it verbatim in a fresh virtualenv.
- `test-setup`, `test-run`: `.ci/run` pipes them to bash, read from README.md
  by `python3 -m fixtures.readme NAME` (so CI runs the text users read).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.readme import README, command_blocks

CHECKOUT = Path(__file__).resolve().parents[1]
CI = CHECKOUT / ".ci" / "run"
RUN_BY_CI = {"test-setup", "test-run"}
RUN_BY_TESTS = {"try-it": "tests/test_quickstart.py"}


def test_every_sh_block_is_named_and_run() -> None:
    blocks = command_blocks()  # raises on an sh block without a name
    assert set(blocks) == RUN_BY_CI | set(RUN_BY_TESTS)
    for name, test_file in RUN_BY_TESTS.items():
        assert f'command_blocks()["{name}"]' in (CHECKOUT / test_file).read_text()
    ci = CI.read_text()
    for name in RUN_BY_CI:
        assert f"run_block {name}\n" in ci


def test_an_unnamed_block_is_refused() -> None:
    with pytest.raises(ValueError, match="sh block without a `<!-- block: NAME -->` line"):
        command_blocks("text\n```sh\necho hi\n```\n")
    assert command_blocks("<!-- block: a -->\n```sh\necho hi\n```\n```toml\nx = 1\n```\n") == {"a": "echo hi\n"}


def test_fixtures_readme_prints_a_block_as_written() -> None:
    shown = subprocess.run([sys.executable, "-m", "fixtures.readme", "test-run"], cwd=CHECKOUT,
                           stdout=subprocess.PIPE, text=True, check=True)
    assert shown.stdout == command_blocks()["test-run"]
    assert "python -m pytest" in shown.stdout and "pip install -e" not in shown.stdout


def test_test_run_installs_from_the_built_wheel_not_editable() -> None:
    block = command_blocks()["test-run"]
    assert "python3 -m venv --clear .venv" in block and "python -m build" in block
    assert ".venv/" in (CHECKOUT / ".gitignore").read_text().splitlines()  # kept out of the sdist


def test_missing_shared_data_fails_naming_the_variable(tmp_path: Path) -> None:
    env = dict(os.environ, MLENV_SHARED_DATA=str(tmp_path / "nowhere"))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "--no-header", "-rfE",
         "tests/test_lockfile.py::test_sample_digest_ignores_order_and_layout"],
        cwd=CHECKOUT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
    )
    assert result.returncode == 1, result.stdout
    assert "shared test data not found" in result.stdout and "set MLENV_SHARED_DATA" in result.stdout
    assert "skipped" not in result.stdout
    assert "MLENV_SHARED_DATA" in README.read_text()
