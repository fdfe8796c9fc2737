"""The `mlenv` build hook under the real frontends: `hatch build`, `python -m build`, `pip wheel`.

Isolated build environments would have to download hatchling and hatch-mlenv;
these tests build offline with the interpreter that runs them (a test harness
choice, see conftest.py):
`[tool.hatch.envs.hatch-build] type = "system"` makes `hatch build` use the
`python` on PATH (conftest puts this interpreter first), and `build`/`pip`
run with isolation off. The quickstart's find-links route, which a fresh
virtualenv or a pipx-installed hatch needs, is tested in test_quickstart.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from hatch_mlenv.lockfile import read_lock
from tests.conftest import tree_hashes, write_project

HATCH_BITS = """
[build-system]
requires = ["hatchling", "hatch-mlenv"]
build-backend = "hatchling.build"

[tool.hatch.build.targets.wheel]
packages = ["src/demo"]

[tool.hatch.build.hooks.mlenv]
{hook}

[tool.hatch.envs.hatch-build]
type = "system"
"""


def make_project(root: Path, channel: Path, hook: str = "") -> Path:
    write_project(
        root,
        f"""
        channels = ["{channel}"]
        platforms = ["linux-64"]
        python = "3.6"
        conda = ["numpy"]
        variables = {{ OMP_NUM_THREADS = "2", TOKEN = {{ value = "hunter2-secret", secret = true }} }}
        [tool.mlenv.virtual-packages.linux-64]
        __glibc = "2.17"
        """,
        extra=HATCH_BITS.format(hook=hook),
    )
    (root / "src" / "demo").mkdir(parents=True)
    (root / "src" / "demo" / "__init__.py").write_text("VALUE = 1\n")
    return root


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=600
    )


def hatch(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run(sys.executable, "-m", "hatch", *args, cwd=cwd)


def wheel_members(wheel: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(wheel) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def sdist_members(sdist: Path) -> list[str]:
    with tarfile.open(sdist) as archive:
        return archive.getnames()


def test_hatch_build_locks_and_ships_lock_and_manifest(tmp_path: Path, defaults_2018: Path) -> None:
    project = make_project(tmp_path / "demo", defaults_2018)
    result = hatch("build", cwd=project)
    assert result.returncode == 0, result.stderr + result.stdout

    lock = read_lock(project / "conda-lock.yml")
    dist = project / "dist"
    wheel = next(dist.glob("*.whl"))
    members = wheel_members(wheel)
    assert members["demo-0.1.0.dist-info/extra_metadata/conda-lock.yml"] == (project / "conda-lock.yml").read_bytes()
    manifest = json.loads(members["demo-0.1.0.dist-info/extra_metadata/mlenv.json"])
    assert manifest["name"] == "demo"
    assert manifest["digest"] == f"sha256:{lock.digest()}"
    assert manifest["image"] == f"demo:{lock.digest()[:12]}"
    assert manifest["platforms"] == ["linux-64"]
    assert manifest["packages"]["linux-64"]["conda"] == len(lock.packages)
    assert manifest["variables"] == {"OMP_NUM_THREADS": "2"}
    assert manifest["hatch_mlenv"]
    # RECORD covers the extra metadata, so installers verify it
    record = members["demo-0.1.0.dist-info/RECORD"].decode()
    assert "demo-0.1.0.dist-info/extra_metadata/mlenv.json,sha256=" in record

    assert json.loads((dist / "demo-0.1.0.mlenv.json").read_text()) == manifest
    sdist = next(dist.glob("*.tar.gz"))
    assert "demo-0.1.0/conda-lock.yml" in sdist_members(sdist)
    for path in [wheel, sdist, dist / "demo-0.1.0.mlenv.json", project / "conda-lock.yml"]:
        assert b"hunter2-secret" not in path.read_bytes()

    # a second build ships no generated file of the first (dist/ manifest, scratch files)
    again = hatch("build", "-t", "sdist", cwd=project)
    assert again.returncode == 0, again.stderr
    names = sdist_members(next(p for p in dist.glob("*.tar.gz")))
    assert not [n for n in names if n.endswith("mlenv.json") or "/dist/" in n], names


def test_check_mode_fails_on_a_stale_lock_and_writes_nothing(tmp_path: Path, defaults_2018: Path) -> None:
    project = make_project(tmp_path / "demo", defaults_2018, hook='lock = "check"')
    before = tree_hashes(project)
    result = hatch("build", cwd=project)
    assert result.returncode != 0
    assert "mlenv: error: conda-lock.yml is stale: conda-lock.yml does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    assert tree_hashes(project) == before

    assert run(sys.executable, "-m", "hatch_mlenv", "lock", cwd=project).returncode == 0
    ok = hatch("build", "-t", "wheel", cwd=project)
    assert ok.returncode == 0, ok.stderr


def test_bad_hook_option(tmp_path: Path, defaults_2018: Path) -> None:
    project = make_project(tmp_path / "demo", defaults_2018, hook='lock = "sometimes"')
    result = hatch("build", cwd=project)
    assert result.returncode != 0
    assert "tool.hatch.build.hooks.mlenv.lock: must be one of 'auto', 'check'" in result.stderr


def test_broken_spec_fails_the_build_with_one_line(tmp_path: Path, defaults_2018: Path) -> None:
    project = make_project(tmp_path / "demo", defaults_2018)
    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('conda = ["numpy"]', 'conda = ["numpy"]\nchanels = []'))
    result = hatch("build", cwd=project)
    assert result.returncode != 0
    assert "tool.mlenv.chanels: unknown key; did you mean channels?" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (project / "dist").exists() or not list((project / "dist").iterdir())


def test_python_build_builds_the_wheel_from_the_sdist(tmp_path: Path, defaults_2018: Path) -> None:
    project = make_project(tmp_path / "demo", defaults_2018)
    result = run(sys.executable, "-m", "build", "--no-isolation", ".", cwd=project)
    assert result.returncode == 0, result.stderr + result.stdout
    dist = project / "dist"
    wheel = next(dist.glob("*.whl"))
    lock = (project / "conda-lock.yml").read_bytes()
    # the wheel was built from the unpacked sdist: its lock is the shipped one, not a re-solve
    assert wheel_members(wheel)["demo-0.1.0.dist-info/extra_metadata/conda-lock.yml"] == lock
    assert (dist / "demo-0.1.0.mlenv.json").is_file()


def test_pip_wheel_into_a_foreign_directory(tmp_path: Path, defaults_2018: Path) -> None:
    project = make_project(tmp_path / "demo", defaults_2018)
    out = tmp_path / "wheels"
    result = run(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(out), str(project),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    wheel = next(out.glob("demo-*.whl"))
    assert "demo-0.1.0.dist-info/extra_metadata/mlenv.json" in wheel_members(wheel)
    # pip builds in its own output directory: no dist/ manifest in the project
    assert not (project / "dist").exists()


@pytest.mark.parametrize("target", ["wheel", "sdist"])
def test_hook_free_build_is_unchanged(tmp_path: Path, defaults_2018: Path, target: str) -> None:
    project = make_project(tmp_path / "demo", defaults_2018)
    result = subprocess.run(
        [sys.executable, "-m", "hatch", "build", "-t", target],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HATCH_BUILD_NO_HOOKS": "true"},
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert not (project / "conda-lock.yml").exists()


def test_the_lock_policy_in_tool_mlenv_and_in_the_environment(tmp_path: Path, defaults_2018: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 23: the build hook follows the stale-lock policy of every command: `[tool.mlenv] lock`,
    its own `lock` option (more specific), and MLENV_LOCKED / MLENV_FROZEN over both."""
    project = make_project(tmp_path / "demo", defaults_2018)
    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('platforms = ["linux-64"]',
                                                       'platforms = ["linux-64"]\nlock = "locked"'))
    before = tree_hashes(project)
    refused = hatch("build", cwd=project)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert ('mlenv: error: conda-lock.yml is stale: conda-lock.yml does not exist (tool.mlenv.lock = "locked"); '
            "run `mlenv lock`") in refused.stderr
    assert tree_hashes(project) == before

    pyproject.write_text(pyproject.read_text().replace("[tool.hatch.build.hooks.mlenv]\n",
                                                       '[tool.hatch.build.hooks.mlenv]\nlock = "auto"\n'))
    monkeypatch.setenv("MLENV_LOCKED", "1")
    locked = hatch("build", "-t", "wheel", cwd=project)
    assert locked.returncode == 1 and "does not exist (MLENV_LOCKED=1)" in locked.stderr
    assert not (project / "conda-lock.yml").exists()
    monkeypatch.delenv("MLENV_LOCKED")
    built = hatch("build", "-t", "wheel", cwd=project)
    assert built.returncode == 0, built.stderr
    assert "mlenv: conda-lock.yml does not exist; locking demo" in built.stdout + built.stderr
    assert (project / "conda-lock.yml").is_file()
