"""Locking realistic environments against the real 2018 defaults snapshot, and what conda-lock makes of it."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hatch_mlenv.lockfile import read_lock
from tests.conftest import assert_clean_error, mlenv, tree_hashes, write_project

SCIPY_STACK = """
channels = ["{channel}"]
platforms = ["linux-64"]
python = "3.6"
conda = ["numpy", "pandas", "scipy", "matplotlib"]
variables = {{ OMP_NUM_THREADS = "4", API_TOKEN = {{ value = "s3cr3t-value", secret = true }} }}
[tool.mlenv.virtual-packages.linux-64]
__glibc = "2.17"
"""


@pytest.fixture
def scipy_project(tmp_path: Path, defaults_2018: Path) -> Path:
    return write_project(tmp_path / "proj", SCIPY_STACK.format(channel=defaults_2018))


def test_lock_scipy_stack(scipy_project: Path) -> None:
    result = mlenv("lock", "--project", str(scipy_project), check=True)
    assert "locked demo for linux-64" in result.stdout
    lock = read_lock(scipy_project / "conda-lock.yml")
    by_name = {p.name: p for p in lock.packages}
    assert by_name["python"].version.startswith("3.6.")
    for name in ("numpy", "pandas", "scipy", "matplotlib", "mkl"):
        assert name in by_name, name
    for package in lock.packages:
        assert package.url.startswith("file://") and package.md5 and package.sha256, package
    # the digest the CLI printed is the digest of the file
    assert f"digest sha256:{lock.digest()}" in result.stdout
    text = (scipy_project / "conda-lock.yml").read_text()
    assert "s3cr3t-value" not in text
    assert json.loads(lock.custom["mlenv.variables"]) == {"API_TOKEN": None, "OMP_NUM_THREADS": "4"}


def test_lock_is_byte_identical_when_solved_again(scipy_project: Path) -> None:
    mlenv("lock", "--project", str(scipy_project), check=True)
    first = (scipy_project / "conda-lock.yml").read_bytes()
    (scipy_project / "conda-lock.yml").unlink()
    mlenv("lock", "--project", str(scipy_project), check=True)
    assert (scipy_project / "conda-lock.yml").read_bytes() == first
    forced = mlenv("lock", "--force", "--project", str(scipy_project), check=True)
    assert "unchanged" in forced.stdout
    assert (scipy_project / "conda-lock.yml").read_bytes() == first


def test_conda_lock_accepts_our_lockfile(scipy_project: Path, tmp_path: Path) -> None:
    from conda_lock.lockfile import parse_conda_lock_file

    mlenv("lock", "--project", str(scipy_project), check=True)
    lockfile = scipy_project / "conda-lock.yml"
    parsed = parse_conda_lock_file(lockfile)
    assert {p.name for p in parsed.package} == {p.name for p in read_lock(lockfile).packages}
    assert parsed.metadata.custom_metadata["mlenv.name"] == "demo"

    out = tmp_path / "render"
    out.mkdir()
    rendered = subprocess.run(
        [sys.executable, "-m", "conda_lock", "render", "--kind", "explicit", "-p", "linux-64", str(lockfile)],
        cwd=out,
        # conda-lock's CLI module (imported above for its parser) brings its vendored
        # poetry, which replaces subprocess.run in this process; it does not know capture_output.
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        timeout=300,
    )
    assert rendered.returncode == 0, rendered.stderr
    explicit = (out / "conda-linux-64.lock").read_text()
    assert "@EXPLICIT" in explicit
    urls = [line for line in explicit.splitlines() if line.startswith("file://")]
    assert len(urls) == len(read_lock(lockfile).packages)
    assert all("#" in u for u in urls)  # each url carries its md5


def test_fresh_lock_is_not_solved_again(scipy_project: Path) -> None:
    mlenv("lock", "--project", str(scipy_project), check=True)
    lockfile = scipy_project / "conda-lock.yml"
    stat = lockfile.stat()
    result = mlenv("lock", "--project", str(scipy_project), check=True)
    assert "is fresh (spec unchanged); not solving" in result.stdout
    assert lockfile.stat().st_mtime_ns == stat.st_mtime_ns and lockfile.stat().st_ino == stat.st_ino


def test_check_exit_codes(scipy_project: Path) -> None:
    missing = mlenv("lock", "--check", "--project", str(scipy_project))
    assert missing.returncode == 1
    lockfile = scipy_project / "conda-lock.yml"
    assert missing.stderr.strip().splitlines() == [f"{lockfile} is stale: conda-lock.yml does not exist"]
    assert not (scipy_project / "conda-lock.yml").exists()

    mlenv("lock", "--project", str(scipy_project), check=True)
    fresh = mlenv("lock", "--check", "--project", str(scipy_project))
    assert fresh.returncode == 0 and "fresh" in fresh.stdout

    # reordering the spec keeps it fresh
    pyproject = scipy_project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"numpy", "pandas"', '"pandas",   "numpy"'))
    assert mlenv("lock", "--check", "--project", str(scipy_project)).returncode == 0

    pyproject.write_text(pyproject.read_text().replace('"scipy"', '"scipy", "requests"'))
    stale = mlenv("lock", "--check", "--project", str(scipy_project))
    assert stale.returncode == 1
    assert len(stale.stderr.strip().splitlines()) == 1
    assert "changed since conda-lock.yml was written" in stale.stderr


def test_check_catches_a_hand_edited_lock(scipy_project: Path) -> None:
    mlenv("lock", "--project", str(scipy_project), check=True)
    lockfile = scipy_project / "conda-lock.yml"
    document = yaml.safe_load(lockfile.read_text())
    python = next(p for p in document["package"] if p["name"] == "python")
    python["version"], real_version = "2.7.15", python["version"]
    lockfile.write_text(yaml.safe_dump(document))
    result = mlenv("lock", "--check", "--project", str(scipy_project))
    assert result.returncode == 1
    assert "'python 3.6.*' is not satisfied on linux-64 (locked: 2.7.15" in result.stderr

    python["version"] = real_version
    document["package"] = [p for p in document["package"] if p["name"] != "mkl"]
    lockfile.write_text(yaml.safe_dump(document))
    result = mlenv("lock", "--check", "--project", str(scipy_project))
    assert result.returncode == 1 and "needs mkl, which is not locked for linux-64" in result.stderr
    # a plain `mlenv lock` repairs it
    mlenv("lock", "--project", str(scipy_project), check=True)
    assert mlenv("lock", "--check", "--project", str(scipy_project)).returncode == 0


def test_update_keeps_other_packages(tmp_path: Path, defaults_2018: Path) -> None:
    project = write_project(
        tmp_path,
        f'channels = ["{defaults_2018}"]\nplatforms = ["linux-64"]\npython = "3.6"\n'
        'conda = ["numpy 1.14.*", "pandas 0.22.*"]\n[tool.mlenv.virtual-packages.linux-64]\n__glibc = "2.17"\n',
    )
    mlenv("lock", "--project", str(project), check=True)
    before = {p.name: p for p in read_lock(project / "conda-lock.yml").packages}
    assert before["pandas"].version.startswith("0.22")
    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"numpy 1.14.*", "pandas 0.22.*"', '"numpy", "pandas"'))

    result = mlenv("lock", "--update", "pandas", "--project", str(project), check=True)
    after = {p.name: p for p in read_lock(project / "conda-lock.yml").packages}
    assert after["pandas"].version != before["pandas"].version
    assert after["numpy"].version == before["numpy"].version  # kept although numpy is now unpinned
    assert after["python"].version == before["python"].version
    assert "locked demo" in result.stdout

    unknown = mlenv("lock", "--update", "no-such-package", "--project", str(project))
    assert_clean_error(unknown, 2, "conda-lock.yml", "no-such-package")


def test_unsolvable_spec_explains_and_keeps_previous_lock(scipy_project: Path) -> None:
    mlenv("lock", "--project", str(scipy_project), check=True)
    before = tree_hashes(scipy_project.parent)
    pyproject = scipy_project / "pyproject.toml"
    original = pyproject.read_text()
    pyproject.write_text(original.replace('"scipy"', '"scipy", "numpy >=99"'))
    before = tree_hashes(scipy_project.parent)
    result = mlenv("lock", "--project", str(scipy_project))
    assert_clean_error(result, 1, "cannot solve the environment for linux-64")
    assert "numpy >=99" in result.stderr  # rattler's explanation follows the first line
    assert tree_hashes(scipy_project.parent) == before

    pyproject.write_text(original.replace('python = "3.6"', 'python = "3.6"\n# py3.6 cannot have python 2 libs').replace(
        '"scipy"', '"scipy", "python 2.7.*"'))
    conflict = mlenv("lock", "--project", str(scipy_project))
    assert_clean_error(conflict, 1, "cannot solve")
    assert "python" in conflict.stderr


def test_digest_is_stable_under_file_reformatting(scipy_project: Path) -> None:
    mlenv("lock", "--project", str(scipy_project), check=True)
    lockfile = scipy_project / "conda-lock.yml"
    digest = read_lock(lockfile).digest()
    document = yaml.safe_load(lockfile.read_text())
    random.Random(7).shuffle(document["package"])
    lockfile.write_text(yaml.safe_dump(document, default_flow_style=True, width=60))
    assert read_lock(lockfile).digest() == digest


def test_show_json(scipy_project: Path) -> None:
    mlenv("lock", "--project", str(scipy_project), check=True)
    data = json.loads(mlenv("show", "--json", "--project", str(scipy_project), check=True).stdout)
    lock = read_lock(scipy_project / "conda-lock.yml")
    assert data["name"] == "demo"
    assert data["digest"] == f"sha256:{lock.digest()}"
    assert data["image"] == f"demo:{lock.digest()[:12]}"
    assert data["platforms"] == ["linux-64"]
    assert data["packages"] == {"linux-64": {"conda": len(lock.packages), "pip": 0}}
    assert data["fresh"] is True
    assert data["variables"] == {"OMP_NUM_THREADS": "4"}
    assert data["secret_variables"] == ["API_TOKEN"]
    human = mlenv("show", "--project", str(scipy_project), check=True).stdout
    assert "demo" in human and lock.digest() in human and "fresh" in human


def test_show_without_lock(scipy_project: Path) -> None:
    assert_clean_error(mlenv("show", "--project", str(scipy_project)), 1, "conda-lock.yml", "mlenv lock")
