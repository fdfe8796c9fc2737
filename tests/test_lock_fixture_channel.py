"""Locking against the fixture channel and pip index: virtual packages, conflicts, platforms, pip."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from hatch_mlenv.lockfile import read_lock
from tests.conftest import assert_clean_error, mlenv, tree_hashes, write_project


def project(root: Path, channel: Path, body: str, **kwargs: str) -> Path:
    return write_project(root, f'channels = ["{channel}"]\n' + body, **kwargs)


def names(lockfile: Path, platform: str = "linux-64", manager: str | None = None) -> dict[str, str]:
    return {
        p.name: p.version
        for p in read_lock(lockfile).packages
        if p.platform == platform and (manager is None or p.manager == manager)
    }


def test_virtual_glibc_is_honoured(tmp_path: Path, channel: Path) -> None:
    old = project(tmp_path / "old", channel, 'platforms = ["linux-64"]\nconda = ["libfoo"]\n'
                  '[tool.mlenv.virtual-packages.linux-64]\n__glibc = "2.12"\n')
    result = mlenv("lock", "--project", str(old))
    assert_clean_error(result, 1, "cannot solve the environment for linux-64")
    assert "__glibc" in result.stderr
    new = project(tmp_path / "new", channel, 'platforms = ["linux-64"]\nconda = ["libfoo"]\n')
    mlenv("lock", "--project", str(new), check=True)  # the default glibc 2.28
    assert "libfoo" in names(new / "conda-lock.yml")


def test_virtual_cuda_default_and_override(tmp_path: Path, channel: Path) -> None:
    default = project(tmp_path / "d", channel, 'platforms = ["linux-64"]\nconda = ["cuda-thing"]\n')
    result = mlenv("lock", "--project", str(default))
    assert_clean_error(result, 1, "cannot solve")  # no __cuda unless declared; cuda-thing needs >=12
    assert "__cuda" in result.stderr
    gpu = project(tmp_path / "g", channel, 'platforms = ["linux-64"]\nconda = ["cuda-thing"]\n'
                  '[tool.mlenv.virtual-packages.linux-64]\n__cuda = "12.2"\n')
    mlenv("lock", "--project", str(gpu), check=True)
    assert "cuda-thing" in names(gpu / "conda-lock.yml")
    assert not any(n.startswith("__") for n in names(gpu / "conda-lock.yml"))  # virtual ones are not locked


def test_conflict_is_explained_and_nothing_written(tmp_path: Path, channel: Path) -> None:
    proj = project(tmp_path, channel, 'platforms = ["linux-64"]\nconda = ["conflict-a", "conflict-b"]\n')
    before = tree_hashes(tmp_path)
    result = mlenv("lock", "--project", str(proj))
    assert_clean_error(result, 1, "cannot solve the environment for linux-64")
    assert "libbar" in result.stderr and "conflict-a" in result.stderr
    assert tree_hashes(tmp_path) == before


def test_two_platforms_with_pip(tmp_path: Path, channel: Path, pip_index: str) -> None:
    proj = project(
        tmp_path,
        channel,
        f"""
        platforms = ["linux-64", "osx-arm64"]
        python = "3.11"
        conda = ["numpy", "mlenv-hello", "requests"]
        pip = ["mlenv-util", "requests", "mlenv-tiny; sys_platform == 'darwin'"]
        pip-index-url = "{pip_index}"
        """,
    )
    result = mlenv("lock", "--project", str(proj), check=True)
    assert "for linux-64, osx-arm64" in result.stdout
    lockfile = proj / "conda-lock.yml"
    for platform in ("linux-64", "osx-arm64"):
        conda = names(lockfile, platform, "conda")
        pip = names(lockfile, platform, "pip")
        assert conda["python"].startswith("3.11") and "numpy" in conda and "requests" in conda
        assert pip == {"mlenv-util": "1.0.0", "mlenv-tiny": "0.2.0"}  # requests comes from conda only
    port = pip_index.split(":")[2].split("/")[0]
    for package in read_lock(lockfile).packages:
        if package.manager == "pip":
            assert package.url.startswith(f"http://127.0.0.1:{port}/"), package.url  # the port is kept
            assert package.url.endswith(".whl") and len(package.sha256 or "") == 64
    assert mlenv("lock", "--check", "--project", str(proj)).returncode == 0

    from conda_lock.lockfile import parse_conda_lock_file

    parsed = parse_conda_lock_file(lockfile)
    assert {p.name for p in parsed.package if p.manager == "pip"} == {"mlenv-util", "mlenv-tiny"}
    render = subprocess.run(
        [sys.executable, "-m", "conda_lock", "render", "--kind", "explicit", "-p", "osx-arm64", str(lockfile)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300,
    )
    assert render.returncode == 0, render.stderr
    explicit = (tmp_path / "conda-osx-arm64.lock").read_text()
    assert "mlenv_util-1.0.0-py3-none-any.whl" in explicit and "mlenv-hello" in explicit


def test_pip_marker_only_where_it_applies(tmp_path: Path, channel: Path, pip_index: str) -> None:
    proj = project(
        tmp_path,
        channel,
        f'platforms = ["linux-64", "osx-arm64"]\npython = "3.11"\n'
        f'pip = ["mlenv-tiny==0.1.0; sys_platform == \'darwin\'"]\npip-index-url = "{pip_index}"\n',
    )
    mlenv("lock", "--project", str(proj), check=True)
    assert names(proj / "conda-lock.yml", "osx-arm64", "pip") == {"mlenv-tiny": "0.1.0"}
    assert names(proj / "conda-lock.yml", "linux-64", "pip") == {}


def test_include_project_dependencies(tmp_path: Path, channel: Path, pip_index: str) -> None:
    proj = project(
        tmp_path,
        channel,
        f'platforms = ["linux-64"]\npython = "3.11"\ninclude-project-dependencies = true\npip-index-url = "{pip_index}"\n',
        extra='dependencies = ["mlenv-tiny<0.2"]',
    )
    mlenv("lock", "--project", str(proj), check=True)
    assert names(proj / "conda-lock.yml", manager="pip") == {"mlenv-tiny": "0.1.0"}


def test_pip_unsolvable_and_unreachable(tmp_path: Path, channel: Path, pip_index: str) -> None:
    proj = project(
        tmp_path / "a", channel,
        f'platforms = ["linux-64"]\npython = "3.11"\npip = ["mlenv-tiny>=5"]\npip-index-url = "{pip_index}"\n',
    )
    result = mlenv("lock", "--project", str(proj))
    assert_clean_error(result, 1, "cannot resolve the pip requirements for linux-64")
    assert "mlenv-tiny" in result.stderr
    assert not (proj / "conda-lock.yml").exists()

    down = project(
        tmp_path / "b", channel,
        'platforms = ["linux-64"]\npython = "3.11"\npip = ["mlenv-tiny"]\npip-index-url = "http://127.0.0.1:9/simple/"\n',
    )
    result = mlenv("lock", "--project", str(down))
    assert_clean_error(result, 1, "cannot resolve the pip requirements for linux-64")
    assert "127.0.0.1:9" in result.stderr
    assert not (down / "conda-lock.yml").exists()


def test_pip_without_python(tmp_path: Path, channel: Path, pip_index: str) -> None:
    proj = project(tmp_path, channel, f'platforms = ["linux-64"]\nconda = ["libbar"]\npip = ["mlenv-tiny"]\n'
                   f'pip-index-url = "{pip_index}"\n')
    assert_clean_error(mlenv("lock", "--project", str(proj)), 2, "tool.mlenv.pip", "python")


def test_update_pip_and_conda(tmp_path: Path, channel: Path, pip_index: str) -> None:
    proj = project(
        tmp_path, channel,
        f'platforms = ["linux-64"]\npython = "3.11"\nconda = ["mlenv-hello ==1.0.0", "numpy ==1.25.2"]\n'
        f'pip = ["mlenv-tiny==0.1.0"]\npip-index-url = "{pip_index}"\n',
    )
    mlenv("lock", "--project", str(proj), check=True)
    pyproject = proj / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace(" ==1.0.0", "").replace(" ==1.25.2", "").replace("==0.1.0", ""))
    mlenv("lock", "--update", "mlenv-hello", "--update", "mlenv-tiny", "--project", str(proj), check=True)
    locked = names(proj / "conda-lock.yml")
    assert locked["mlenv-hello"] == "1.1.0"  # updated
    assert locked["numpy"] == "1.25.2"  # kept, although 1.26.4 is now allowed
    assert locked["mlenv-tiny"] == "0.2.0"
    mlenv("lock", "--force", "--project", str(proj), check=True)
    assert names(proj / "conda-lock.yml")["numpy"] == "1.26.4"


def test_fixture_channel_is_deterministic(tmp_path: Path) -> None:
    from fixtures.conda_channel import make_default_channel

    one = tree_hashes(make_default_channel(tmp_path / "one"))
    two = tree_hashes(make_default_channel(tmp_path / "two"))
    assert one == two and any(k.endswith(".tar.bz2") for k in one)
