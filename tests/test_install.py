"""`mlenv install`, `mlenv run` and `mlenv export` against the fixture channel and pip index."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hatch_mlenv.lockfile import read_lock
from tests.conftest import assert_clean_error, mlenv, tree_hashes, write_project


@pytest.fixture
def project(tmp_path: Path, channel: Path, pip_index: str) -> Path:
    root = write_project(
        tmp_path / "proj",
        f"""
        channels = ["{channel}"]
        platforms = ["linux-64", "osx-arm64"]
        python = "3.11"
        conda = ["mlenv-hello ==1.0.0", "numpy"]
        pip = ["mlenv-tiny==0.1.0"]
        pip-index-url = "{pip_index}"
        variables = {{ OMP_NUM_THREADS = "2", API_TOKEN = {{ secret = true }} }}
        """,
    )
    mlenv("lock", "--project", str(root), check=True)
    return root


def site(prefix: Path) -> Path:
    return prefix / "lib" / "python3.11" / "site-packages"


def test_install_noop_and_incremental(project: Path) -> None:
    prefix = project / ".mlenv" / "envs" / "demo"
    first = mlenv("install", "--project", str(project), check=True)
    assert first.stdout.startswith("installed demo sha256:")
    assert (prefix / "bin" / "mlenv-hello").read_text().strip().endswith(f'"hello from {prefix}"')
    assert (site(prefix) / "mlenv_tiny-0.1.0.dist-info").is_dir()
    assert not (prefix / "CACHEDIR.TAG").exists()

    again = mlenv("install", "--project", str(project), check=True)
    assert "is up to date" in again.stdout and "nothing to do" in again.stdout

    numpy_file = site(prefix) / "numpy" / "__init__.py"
    inode = numpy_file.stat().st_ino
    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("==1.0.0", "==1.1.0").replace("==0.1.0", "==0.2.0"))
    mlenv("lock", "--project", str(project), check=True)
    updated = mlenv("install", "--project", str(project), check=True)
    assert updated.stdout.startswith("updated demo") and "(2 packages changed)" in updated.stdout
    assert numpy_file.stat().st_ino == inode  # an unchanged package is not touched
    assert (prefix / "bin" / "mlenv-hello").read_text().strip().endswith(f'"hello again from {prefix}"')
    assert (site(prefix) / "mlenv_tiny-0.2.0.dist-info").is_dir()
    assert not (site(prefix) / "mlenv_tiny-0.1.0.dist-info").exists()
    assert [p.name for p in prefix.parent.iterdir()] == ["demo"]  # no staging or retired copies left


def test_run_activates_and_returns_the_exit_code(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = project / ".mlenv" / "envs" / "demo"
    result = mlenv("run", "--project", str(project), "--", "mlenv-hello")
    assert result.returncode == 0 and result.stdout.strip() == f"hello from {prefix}"  # installed first
    assert "secret variable API_TOKEN is not set" in result.stderr
    monkeypatch.setenv("API_TOKEN", "from-the-caller")
    shell = mlenv("run", "--project", str(project), "--", "sh", "-c",
                  'echo "$OMP_NUM_THREADS $CONDA_PREFIX $API_TOKEN"; exit 7')
    assert shell.returncode == 7
    assert shell.stdout.split() == ["2", str(prefix), "from-the-caller"]
    assert "warning" not in shell.stderr
    missing = mlenv("run", "--project", str(project), "--", "no-such-command-xyz")
    assert_clean_error(missing, 1, "cannot run 'no-such-command-xyz'")


def test_run_never_falls_through_to_the_callers_python(project: Path) -> None:
    # The fixture channel's python is a demo: it installs bin/python3-fixture, no bin/python.
    prefix = project / ".mlenv" / "envs" / "demo"
    for name in ("python", "python3", "pip"):
        result = mlenv("run", "--project", str(project), "--", name, "-c", "import sys; print(sys.executable)")
        assert_clean_error(result, 1, "environment demo locks python but provides no", repr(name), str(prefix / "bin"))
        assert result.stdout == ""  # the caller's interpreter never ran
    assert mlenv("run", "--project", str(project), "--", "python3-fixture", check=True).stdout == "fixture python 3.11.7\n"


def test_install_into_a_chosen_prefix_and_bad_prefixes(project: Path, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "env"
    mlenv("install", "--project", str(project), "--prefix", str(target), check=True)
    assert (target / "bin" / "mlenv-hello").is_file()

    not_conda = tmp_path / "not-conda"
    not_conda.mkdir()
    (not_conda / "important.txt").write_text("keep me")
    assert_clean_error(mlenv("install", "--project", str(project), "--prefix", str(not_conda)), 1,
                       "not a conda prefix")
    assert [p.name for p in not_conda.iterdir()] == ["important.txt"]

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert_clean_error(mlenv("install", "--project", str(project), "--prefix", str(blocker / "env")), 1,
                       "cannot create the prefix")


def test_wheel_hash_mismatch_installs_nothing(project: Path, tmp_path: Path, isolated_registry: Path) -> None:
    mlenv("install", "--project", str(project), check=True)
    prefix = project / ".mlenv" / "envs" / "demo"
    before = tree_hashes(prefix)
    lockfile = project / "conda-lock.yml"
    document = yaml.safe_load(lockfile.read_text())
    for package in document["package"]:
        if package["manager"] == "conda" and package["name"] == "mlenv-hello":
            package["version"], package["url"] = "1.1.0", package["url"].replace("1.0.0", "1.1.0")
        if package["manager"] == "pip":
            package["version"] = "0.2.0"
            package["url"] = package["url"].replace("0.1.0", "0.2.0")
            package["hash"]["sha256"] = "0" * 64
    lockfile.write_text(yaml.safe_dump(document))
    result = mlenv("install", "--project", str(project))
    assert_clean_error(result, 1, "sha256 mismatch")
    assert tree_hashes(prefix) == before  # the old prefix is intact, nothing half-installed
    assert [p.name for p in prefix.parent.iterdir()] == ["demo"]


def test_lock_for_another_platform_only(tmp_path: Path, channel: Path) -> None:
    root = write_project(tmp_path, f'channels = ["{channel}"]\nplatforms = ["osx-arm64"]\nconda = ["mlenv-hello"]\n')
    mlenv("lock", "--project", str(root), check=True)
    result = mlenv("install", "--project", str(root))
    assert_clean_error(result, 1, "no packages locked for linux-64")
    assert not (root / ".mlenv").exists()


def test_export_formats(project: Path, tmp_path: Path) -> None:
    lock = read_lock(project / "conda-lock.yml")
    env_yml = mlenv("export", "--format", "environment-yml", "--project", str(project), check=True).stdout
    document = yaml.safe_load(env_yml)
    conda = {p.name: p for p in lock.for_platform("linux-64") if p.manager == "conda"}
    assert document["name"] == "demo"
    assert sorted(d for d in document["dependencies"] if isinstance(d, str)) == sorted(
        f"{p.name}={p.version}={p.build}" for p in conda.values())
    assert document["dependencies"][-1] == {"pip": ["mlenv-tiny==0.1.0"]}
    assert document["variables"] == {"OMP_NUM_THREADS": "2"}

    out = tmp_path / "explicit.txt"
    mlenv("export", "--format", "explicit", "--platform", "osx-arm64", "-o", str(out), "--project", str(project),
          check=True)
    lines = out.read_text().splitlines()
    assert "@EXPLICIT" in lines
    urls = [line for line in lines if "://" in line]
    osx = [p for p in lock.for_platform("osx-arm64") if p.manager == "conda"]
    assert sorted(urls) == sorted(f"{p.url}#{p.md5}" for p in osx)

    requirements = mlenv("export", "--format", "requirements", "--project", str(project), check=True).stdout
    pip = next(p for p in lock.for_platform("linux-64") if p.manager == "pip")
    assert f"mlenv-tiny==0.1.0 --hash=sha256:{pip.sha256}" in requirements.splitlines()
    # pip itself accepts it, offline, with hashes required
    wheels = tmp_path / "wheels"
    req = tmp_path / "req.txt"
    req.write_text(requirements)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")} | {"PIP_CONFIG_FILE": os.devnull}
    download = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes", "-r", str(req),
         "-d", str(wheels), "--index-url", pip.url.split("/files/")[0] + "/simple/"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, timeout=300,
    )
    assert download.returncode == 0, download.stderr
    bad = mlenv("export", "--format", "explicit", "--platform", "win-64", "--project", str(project))
    assert_clean_error(bad, 2, "no packages locked for win-64")
