"""The version, the plugin hooks, atomic writes, and digest stability across spec reformatting."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import hatch_mlenv
from hatch_mlenv import plugins
from hatch_mlenv.hookspecs import hookimpl
from hatch_mlenv.lockfile import atomic_write, read_lock
from hatch_mlenv.solve import RattlerSolver
from tests.conftest import assert_clean_error, mlenv, write_project


def test_version() -> None:
    result = mlenv("--version", check=True)
    assert result.stdout.strip() == f"mlenv {hatch_mlenv.__version__}"


def test_unknown_command_is_a_usage_error() -> None:
    result = mlenv("lokc")
    assert result.returncode == 2 and "No such command 'lokc'" in result.stderr


def test_builtin_solver_comes_through_the_hook() -> None:
    assert isinstance(plugins.solvers()["rattler"], RattlerSolver)


def test_a_plugin_can_replace_a_solver() -> None:
    class Recording(RattlerSolver):
        pass

    class Plugin:
        @hookimpl
        def mlenv_register_solvers(self):  # noqa: ANN201
            return [Recording()]

    manager = plugins.plugin_manager()
    plugin = Plugin()
    manager.register(plugin, "test-plugin")
    try:
        assert isinstance(plugins.solvers()["rattler"], Recording)
    finally:
        manager.unregister(plugin)
    assert type(plugins.solvers()["rattler"]) is RattlerSolver


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "conda-lock.yml"
    target.write_text("old\n")

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, "new\n")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["conda-lock.yml"]  # no temp file left behind


def test_reordered_spec_gives_the_same_lock_and_digest(tmp_path: Path, channel: Path) -> None:
    a = write_project(tmp_path / "a", f'channels = ["{channel}"]\nplatforms = ["linux-64", "osx-arm64"]\n'
                      'python = "3.11"\nconda = ["numpy", "mlenv-hello"]\n')
    b = write_project(tmp_path / "b", f'conda = [ "mlenv-hello",\n  "numpy" ]  # reordered\npython = "3.11"\n'
                      f'platforms = ["osx-arm64", "linux-64"]\nchannels = ["{channel}"]\n')
    mlenv("lock", "--project", str(a), check=True)
    mlenv("lock", "--project", str(b), check=True)
    assert (a / "conda-lock.yml").read_bytes() == (b / "conda-lock.yml").read_bytes()
    assert read_lock(a / "conda-lock.yml").digest() == read_lock(b / "conda-lock.yml").digest()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["export", "--format", "explicit", "-o", "/proc/mlenv-nope.txt"], "/proc/mlenv-nope.txt: "),
        (["sbom", "-o", "/sys/mlenv-nope.json"], "/sys/mlenv-nope.json: permission denied"),
        (["install", "--prefix", "/proc/mlenv-env"], "/proc/"),
    ],
)
def test_os_errors_are_one_line_naming_the_path(tmp_path: Path, channel: Path, args: list[str], needle: str) -> None:
    project = write_project(tmp_path, f'channels = ["{channel}"]\nplatforms = ["linux-64"]\npython = "3.11"\n'
                                      'conda = ["six"]\n')
    mlenv("lock", "--project", str(project), check=True)
    result = mlenv(*args, "--project", str(project))
    assert_clean_error(result, 1, needle)
    assert "internal error" not in result.stderr
