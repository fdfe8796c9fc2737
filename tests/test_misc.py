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


# -- plugins: every hook documented, the solver chosen by name --------------------------
def _hookspecs() -> dict[str, object]:
    import inspect

    from hatch_mlenv import hookspecs

    return {name: f for name, f in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(f, "mlenv_spec")}


def _readme_hooks() -> list[str]:
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("\n## Plugins\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^- `(\w+)\(", section, flags=re.MULTILINE)


def test_every_hookspec_has_a_docstring() -> None:
    specs = _hookspecs()
    assert specs, "no hookspecs found in hatch_mlenv/hookspecs.py"
    undocumented = sorted(name for name, f in specs.items() if not (f.__doc__ or "").strip())
    assert not undocumented, f"hookspecs without a docstring: {undocumented}"


def test_readme_lists_exactly_the_hookspecs() -> None:
    documented = _readme_hooks()
    assert len(documented) == len(set(documented)), documented
    specs = set(_hookspecs())
    assert not specs - set(documented), f"hooks missing from README.md's Plugins section: {sorted(specs - set(documented))}"
    assert not set(documented) - specs, f"README.md's Plugins section lists hooks that do not exist: {sorted(set(documented) - specs)}"


def _install_solver_plugin(site: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A third-party package, installed the way pip would: a module and its dist-info with an `mlenv` entry point."""
    site.mkdir()
    (site / "mlenv_recorded_solver.py").write_text(
        "import json, os\n"
        "from hatch_mlenv.hookspecs import hookimpl\n"
        "from hatch_mlenv.solve import RattlerSolver\n\n\n"
        "class RecordedSolver(RattlerSolver):\n"
        "    name = 'recorded'\n\n"
        "    def solve(self, request):\n"
        "        with open(os.environ['MLENV_RECORDED_SOLVER_LOG'], 'a') as log:\n"
        "            log.write(json.dumps(list(request.specs)) + '\\n')\n"
        "        return super().solve(request)\n\n\n"
        "@hookimpl\n"
        "def mlenv_register_solvers():\n"
        "    return [RecordedSolver()]\n"
    )
    dist_info = site / "mlenv_recorded_solver-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: mlenv-recorded-solver\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text("[mlenv]\nrecorded = mlenv_recorded_solver\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    log = site / "solves.log"
    monkeypatch.setenv("MLENV_RECORDED_SOLVER_LOG", str(log))
    return log


def test_a_plugin_solver_is_chosen_by_name(tmp_path: Path, channel: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = _install_solver_plugin(tmp_path / "site", monkeypatch)
    body = f'channels = ["{channel}"]\nplatforms = ["linux-64"]\npython = "3.11"\nconda = ["numpy"]\n'
    builtin = write_project(tmp_path / "builtin", body)
    chosen = write_project(tmp_path / "chosen", body + 'solver = "recorded"\n')
    mlenv("lock", "--project", str(builtin), check=True)
    assert not log.exists()  # installed, but not asked: the default stays rattler
    mlenv("lock", "--project", str(chosen), check=True)
    assert log.read_text() == '["python 3.11.*", "numpy"]\n'
    assert read_lock(chosen / "conda-lock.yml").digest() == read_lock(builtin / "conda-lock.yml").digest()

    (chosen / "pyproject.toml").write_text((chosen / "pyproject.toml").read_text().replace('"recorded"', '"recordd"'))
    before = (chosen / "conda-lock.yml").read_bytes()
    result = mlenv("lock", "--project", str(chosen))
    assert_clean_error(result, 2, f"{chosen / 'pyproject.toml'}: tool.mlenv.solver: unknown solver 'recordd'",
                       "(registered: rattler, recorded)", "did you mean recorded?")
    assert (chosen / "conda-lock.yml").read_bytes() == before


def test_an_unknown_solver_is_a_config_error(tmp_path: Path, channel: Path) -> None:
    project = write_project(tmp_path, f'channels = ["{channel}"]\nplatforms = ["linux-64"]\nsolver = "ratler"\n')
    result = mlenv("lock", "--project", str(project))
    assert_clean_error(result, 2, "tool.mlenv.solver: unknown solver 'ratler' (registered: rattler)",
                       "did you mean rattler?")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (project / "conda-lock.yml").exists()


# -- the public API --------------------------------------------------------------------
def test_public_api_resolves_without_loading_the_heavy_parts() -> None:
    import subprocess
    import sys

    code = (
        "import sys, hatch_mlenv\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('rattler', 'conda_lock', 'docker', 'oras')))\n"
        "missing = [n for n in hatch_mlenv.__all__ if getattr(hatch_mlenv, n, None) is None]\n"
        "print(missing)\n"
    )
    shown = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, check=True).stdout
    assert shown.splitlines() == ["[]", "[]"], shown
    assert callable(hatch_mlenv.spark.configure) and callable(hatch_mlenv.lock.lock)


def test_the_wheel_ships_py_typed(tmp_path: Path) -> None:
    import subprocess
    import sys
    import zipfile

    checkout = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(tmp_path)],
                   cwd=checkout, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=True, timeout=300)
    (wheel,) = tmp_path.glob("hatch_mlenv-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "hatch_mlenv/py.typed" in names and "hatch_mlenv/_compat.py" in names
