"""The pip step: uv resolves each platform's pip requirements for its locked python; the
distributions conda already provides (under their PyPI names) are never locked twice.

Every lock below is checked the way a user would distrust it: each locked wheel's own
`Requires-Dist` (for the target platform) must be satisfied by the lock.
"""

from __future__ import annotations

import email.parser
import hashlib
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from packaging.requirements import Requirement

from fixtures.conda_channel import CondaPackage, _numpy, _python, _python_module, build_channel
from fixtures.pip_index import Sdist, Wheel, build_index, real_wheel, serve
from hatch_mlenv.lockfile import read_lock
from hatch_mlenv.pip import marker_environment
from hatch_mlenv.pypi_names import canonical
from tests.conftest import assert_clean_error, mlenv, tree_hashes, write_project


def _py_package(name: str, version: str, module: str, **extra: object) -> CondaPackage:
    return CondaPackage(name, version, noarch="python", depends=("python",),
                        files=_python_module(module, version, module, noarch=True), **extra)


@pytest.fixture(scope="module")
def pip_channel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """python for linux-64 and osx-arm64, and Python packages whose conda and PyPI names differ."""
    return build_channel(tmp_path_factory.mktemp("pip-channel"), [
        *_python("3.11.7", "linux-64"),
        *_python("3.11.7", "osx-arm64"),
        *_python("3.7.0", "linux-64"),
        _numpy("1.26.4", "3.11", "linux-64"),
        _numpy("1.26.4", "3.11", "osx-arm64"),
        _py_package("msgpack-python", "0.5.6", "msgpack"),            # PyPI msgpack, by the community table
        _py_package("pytables", "3.4.4", "tables"),                   # PyPI tables, by the community table
        _py_package("mlenv-conda-name", "1.2.0", "mlenv_pypi_name",   # by the record's purls
                    purls=("pkg:pypi/mlenv-pypi-name@1.2.0",)),
        _py_package("mlenv-private", "2.0.0", "mlenv_private_py"),    # by [tool.mlenv] pypi-names
    ])


def _index_content() -> list:
    return [
        real_wheel("msgpack_numpy-0.4.7.1-py2.py3-none-any.whl"),  # needs numpy and msgpack
        # Decoys: what pip would lock again if a conda package's PyPI name were missed.
        Wheel("msgpack", "0.5.6"), Wheel("msgpack", "1.0.0"), Wheel("numpy", "1.26.4"), Wheel("tables", "3.4.4"),
        Wheel("mlenv-pypi-name", "1.2.0"), Wheel("mlenv-private-py", "2.0.0"),
        Wheel("mlenv-uses-tables", "1.0", requires=("tables>=3",)),
        Wheel("mlenv-uses-purl", "1.0", requires=("mlenv-pypi-name>=1",)),
        Wheel("mlenv-uses-private", "1.0", requires=("mlenv-private-py",)),
        Wheel("mlenv-marker", "1.0", requires=("six", "mlenv-tiny; sys_platform == 'darwin'")),
        Wheel("mlenv-tiny", "0.2.0"), Wheel("six", "1.16.0"),
        Wheel("mlenv-py371", "1.0", requires_python=">=3.7.1"),
        Sdist("mlenv-sdist-only", "1.0"),
    ]


@pytest.fixture(scope="module")
def index_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_index(tmp_path_factory.mktemp("pip-index"), _index_content())


@pytest.fixture(scope="module")
def index(index_root: Path):  # -> Iterator[str]
    with serve(index_root) as url:
        yield url


def project(root: Path, channel: Path, body: str, index: str) -> Path:
    return write_project(root, f'channels = ["{channel}"]\nplatforms = ["linux-64"]\npip-index-url = "{index}"\n' + body)


def pip_versions(lockfile: Path, platform: str = "linux-64") -> dict[str, str]:
    return {p.name: p.version for p in read_lock(lockfile).for_platform(platform) if p.manager == "pip"}


def assert_requirements_locked(lockfile: Path, index_root: Path) -> None:
    """Each locked wheel's Requires-Dist for its platform is in the lock, and nothing is locked twice."""
    lock = read_lock(lockfile)
    for platform in lock.platforms:
        packages = lock.for_platform(platform)
        python = next(p for p in packages if p.name == "python")
        environment = marker_environment(platform, python.version)
        conda_provides = {canonical(p.name) for p in packages if p.manager == "conda"}
        for conda_name, pypi_names in lock.pypi_names.items():
            conda_provides |= {canonical(n) for n in pypi_names}
        pip = {canonical(p.name) for p in packages if p.manager == "pip"}
        assert not pip & conda_provides, f"locked twice on {platform}: {pip & conda_provides}"
        for package in packages:
            if package.manager != "pip":
                continue
            wheel = index_root / "files" / unquote(urlsplit(package.url).path).rsplit("/", 1)[1]
            with zipfile.ZipFile(wheel) as archive:
                name = next(n for n in archive.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
                metadata = email.parser.HeaderParser().parsestr(archive.read(name).decode())
            for text in metadata.get_all("Requires-Dist") or []:
                requirement = Requirement(text)
                if requirement.marker is None or requirement.marker.evaluate(environment):
                    assert canonical(requirement.name) in pip | conda_provides, (platform, package.name, text)
                    assert canonical(requirement.name) in package.dependencies, (package.name, package.dependencies)


def test_conda_packages_satisfy_pip_under_their_pypi_names(
    tmp_path: Path, pip_channel: Path, index: str, index_root: Path, isolated_registry: Path
) -> None:
    body = """
    python = "3.11"
    conda = ["numpy", "msgpack-python", "pytables", "mlenv-conda-name", "mlenv-private"]
    pip = ["msgpack-numpy==0.4.7.1", "mlenv-uses-tables", "mlenv-uses-purl", "mlenv-uses-private", "msgpack>=0.5"]
    pypi-names = { mlenv-private = "mlenv-private-py" }
    """
    proj = project(tmp_path / "p", pip_channel, body, index)
    result = mlenv("lock", "--project", str(proj), check=True)
    assert "resolving 4 pip requirements for linux-64 (python 3.11.7) with uv" in result.stderr
    lockfile = proj / "conda-lock.yml"
    assert pip_versions(lockfile) == {
        "msgpack-numpy": "0.4.7.1", "mlenv-uses-tables": "1.0", "mlenv-uses-purl": "1.0", "mlenv-uses-private": "1.0",
    }
    assert_requirements_locked(lockfile, index_root)
    lock = read_lock(lockfile)
    assert lock.pypi_names == {
        "mlenv-conda-name": ["mlenv-pypi-name"], "mlenv-private": ["mlenv-private-py"],
        "msgpack-python": ["msgpack"], "pytables": ["tables"],
    }
    numpy_ = next(p for p in lock.packages if p.name == "msgpack-numpy")
    assert numpy_.dependencies == {"msgpack": ">=0.5.2", "numpy": ">=1.9.0"}  # the real wheel's Requires-Dist
    assert numpy_.sha256 == "50d9e456d034ead6de53d9596a64bac4c9b0e15a682c4dce0efc556dc9d786fe"

    # Without its stamp, `lock --check` re-derives freshness from the file: the
    # recorded names say that conda msgpack-python satisfies pip msgpack.
    shutil.rmtree(isolated_registry / "cache" / "lock-stamps")
    assert mlenv("lock", "--check", "--project", str(proj)).returncode == 0

    # The override is what keeps mlenv-private-py out: without it pip locks a second copy.
    unmapped = project(tmp_path / "q", pip_channel, body.replace('pypi-names = { mlenv-private = "mlenv-private-py" }', ""),
                       index)
    mlenv("lock", "--project", str(unmapped), check=True)
    assert "mlenv-private-py" in pip_versions(unmapped / "conda-lock.yml")


def test_a_conda_version_that_does_not_satisfy_pip_is_an_error(tmp_path: Path, pip_channel: Path, index: str) -> None:
    proj = project(tmp_path, pip_channel, 'python = "3.11"\nconda = ["msgpack-python"]\npip = ["msgpack>=1.0"]\n', index)
    result = mlenv("lock", "--project", str(proj))
    assert_clean_error(result, 1, "'msgpack>=1.0'", "msgpack-python 0.5.6", "linux-64")
    assert not (proj / "conda-lock.yml").exists()


def test_markers_are_evaluated_for_each_target_platform(
    tmp_path: Path, pip_channel: Path, index: str, index_root: Path
) -> None:
    proj = project(tmp_path, pip_channel, 'python = "3.11"\npip = ["mlenv-marker"]\n', index)
    text = (proj / "pyproject.toml").read_text().replace('platforms = ["linux-64"]', 'platforms = ["linux-64", "osx-arm64"]')
    (proj / "pyproject.toml").write_text(text)
    mlenv("lock", "--project", str(proj), check=True)
    lockfile = proj / "conda-lock.yml"
    assert pip_versions(lockfile, "linux-64") == {"mlenv-marker": "1.0", "six": "1.16.0"}
    assert pip_versions(lockfile, "osx-arm64") == {"mlenv-marker": "1.0", "six": "1.16.0", "mlenv-tiny": "0.2.0"}
    assert_requirements_locked(lockfile, index_root)


@pytest.mark.parametrize(
    ("python", "requirement", "needles"),
    [
        ("3.7.0", "mlenv-py371", ("mlenv-py371", "python 3.7.0", "3.7.1")),      # requires-python conflict
        # no wheel for the target, and its source release does not build: what the build lacks
        ("3.11", "mlenv-sdist-only", ("mlenv-sdist-only", "does not build here",
                                      "setuptools is not on the index", "its build requires setuptools>=40.8.0")),
        ("3.11", "mlenv-not-on-the-index", ("mlenv-not-on-the-index", "not found")),
    ],
)
def test_unresolvable_pip_requirements_name_the_requirement_and_platform(
    tmp_path: Path, pip_channel: Path, index: str, python: str, requirement: str, needles: tuple[str, ...]
) -> None:
    proj = project(tmp_path, pip_channel, f'python = "{python}"\npip = ["{requirement}"]\n', index)
    result = mlenv("lock", "--project", str(proj))
    assert_clean_error(result, 1, "cannot resolve the pip requirements for linux-64", requirement)
    first = result.stderr.split("error: ", 1)[1].splitlines()[0]
    assert f"(python {python if python.count('.') == 2 else '3.11.7'})" in first
    for needle in needles[1:]:
        assert needle in result.stderr, (needle, result.stderr)
    assert not (proj / "conda-lock.yml").exists()
    assert result.stdout == ""


def _env_without(*names: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in names}


def test_index_credentials_are_used_and_never_written(
    tmp_path: Path, pip_channel: Path, index_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with serve(index_root, auth=("ci-bot", "s3cret-Pa55")) as plain:
        authed = plain.replace("http://", "http://${MLENV_TEST_USER}:${MLENV_TEST_PASSWORD}@")
        proj = project(tmp_path, pip_channel, 'python = "3.11"\npip = ["mlenv-marker"]\n', authed)

        missing = mlenv("lock", "--project", str(proj))
        assert_clean_error(missing, 2, "tool.mlenv.pip-index-url", "MLENV_TEST_USER")

        monkeypatch.setenv("MLENV_TEST_USER", "ci-bot")
        monkeypatch.setenv("MLENV_TEST_PASSWORD", "wrong-Pa55")
        refused = mlenv("lock", "--project", str(proj))
        assert_clean_error(refused, 1, "cannot resolve the pip requirements for linux-64", "mlenv-marker")
        assert "401" in refused.stderr and "wrong-Pa55" not in refused.stderr

        monkeypatch.setenv("MLENV_TEST_PASSWORD", "s3cret-Pa55")
        mlenv("lock", "--project", str(proj), check=True)
        lockfile = proj / "conda-lock.yml"
        assert pip_versions(lockfile) == {"mlenv-marker": "1.0", "six": "1.16.0"}
        outputs = [lockfile.read_text()]
        for fmt in ("requirements", "pylock", "environment-yml"):
            outputs.append(mlenv("export", "--project", str(proj), "--format", fmt, "--platform", "linux-64",
                                 check=True).stdout)
        # install fetches the wheels with the same credentials, from the lock's bare URLs
        installed = mlenv("install", "--project", str(proj), "--prefix", str(tmp_path / "env"), check=True)
        outputs += [installed.stdout, installed.stderr]
        for text in outputs:
            assert "s3cret-Pa55" not in text and "ci-bot" not in text

        # netrc works as well: a plain URL in the spec, the login in $NETRC
        netrc = tmp_path / "netrc"
        netrc.write_text("machine 127.0.0.1 login ci-bot password s3cret-Pa55\n")
        netrc.chmod(0o600)
        monkeypatch.setenv("NETRC", str(netrc))
        viarc = project(tmp_path / "rc", pip_channel, 'python = "3.11"\npip = ["mlenv-marker"]\n', plain)
        mlenv("lock", "--project", str(viarc), check=True)
        assert "s3cret-Pa55" not in (viarc / "conda-lock.yml").read_text()
        assert pip_versions(viarc / "conda-lock.yml") == pip_versions(lockfile)


def test_update_moves_only_the_named_pip_package(tmp_path: Path, pip_channel: Path) -> None:
    root = build_index(tmp_path / "index", [Wheel("mlenv-a", "1.0"), Wheel("mlenv-b", "1.0")])
    with serve(root) as url:
        proj = project(tmp_path / "p", pip_channel, 'python = "3.11"\npip = ["mlenv-a", "mlenv-b"]\n', url)
        mlenv("lock", "--project", str(proj), check=True)
        assert pip_versions(proj / "conda-lock.yml") == {"mlenv-a": "1.0", "mlenv-b": "1.0"}
        build_index(root, [Wheel("mlenv-a", "1.0"), Wheel("mlenv-b", "1.0"), Wheel("mlenv-a", "2.0"),
                           Wheel("mlenv-b", "2.0")])

        again = mlenv("lock", "--project", str(proj), check=True)
        assert "fresh (spec unchanged); not solving" in again.stdout and "uv" not in again.stderr

        mlenv("lock", "--update", "mlenv-a", "--project", str(proj), check=True)
        assert pip_versions(proj / "conda-lock.yml") == {"mlenv-a": "2.0", "mlenv-b": "1.0"}
        assert_requirements_locked(proj / "conda-lock.yml", root)


def test_export_pylock_installs_with_uv(tmp_path: Path, pip_channel: Path, index: str) -> None:
    from uv import find_uv_bin

    proj = project(tmp_path / "p", pip_channel, 'python = "3.11"\npip = ["mlenv-marker"]\n', index)
    mlenv("lock", "--project", str(proj), check=True)
    pylock = tmp_path / "pylock.toml"
    mlenv("export", "--project", str(proj), "--format", "pylock", "--platform", "linux-64", "-o", str(pylock),
          check=True)
    import tomllib

    document = tomllib.loads(pylock.read_text())
    assert document["lock-version"] == "1.0"
    locked = {p.name: p for p in read_lock(proj / "conda-lock.yml").for_platform("linux-64") if p.manager == "pip"}
    assert {p["name"]: p["version"] for p in document["packages"]} == {n: p.version for n, p in locked.items()}
    for package in document["packages"]:
        (wheel,) = package["wheels"]
        assert wheel["url"] == locked[package["name"]].url and wheel["hashes"]["sha256"] == locked[package["name"]].sha256

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    install = subprocess.run(
        [find_uv_bin(), "pip", "install", "--python", str(venv / "bin" / "python"), "-r", str(pylock),
         "--cache-dir", str(tmp_path / "uv-cache")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env_without("UV_INDEX_URL"),
    )
    assert install.returncode == 0, install.stderr
    probe = subprocess.run([str(venv / "bin" / "python"), "-c", "import mlenv_marker, six; print('ok')"],
                           stdout=subprocess.PIPE, text=True)
    assert probe.stdout == "ok\n"


def test_a_replaced_wheel_is_refused_at_install(tmp_path: Path, pip_channel: Path) -> None:
    root = build_index(tmp_path / "index", [Wheel("mlenv-a", "1.0"), Wheel("mlenv-b", "1.0")])
    with serve(root) as url:
        proj = project(tmp_path / "p", pip_channel, 'python = "3.11"\npip = ["mlenv-a"]\n', url)
        mlenv("lock", "--project", str(proj), check=True)
        # the index now serves other bytes under the locked wheel's name
        shutil.copyfile(root / "files" / "mlenv_b-1.0-py3-none-any.whl", root / "files" / "mlenv_a-1.0-py3-none-any.whl")
        before = tree_hashes(proj)
        result = mlenv("install", "--project", str(proj), "--prefix", str(tmp_path / "env"))
        assert_clean_error(result, 1, "mlenv_a-1.0-py3-none-any.whl", "sha256 mismatch")
        assert not (tmp_path / "env").exists()
        assert tree_hashes(proj) == before


def test_the_2018_request_that_hung_the_old_resolver(tmp_path: Path, defaults_2018: Path) -> None:
    """python 3.6 with conda msgpack-python and matplotlib from the real 2018 channel, pip
    msgpack-numpy==0.4.7.1 and seaborn==0.9.0 (the real wheels): the old resolver ran 22 minutes."""
    root = build_index(tmp_path / "index", [
        real_wheel("msgpack_numpy-0.4.7.1-py2.py3-none-any.whl"), real_wheel("seaborn-0.9.0-py3-none-any.whl"),
        # what PyPI also has, and pip must not lock again
        Wheel("msgpack", "0.5.6"), Wheel("numpy", "1.15.0"), Wheel("pandas", "0.23.4"), Wheel("scipy", "1.1.0"),
        Wheel("matplotlib", "2.2.3"),
    ])
    with serve(root) as url:
        proj = write_project(tmp_path / "p", f"""
            channels = ["{defaults_2018}"]
            platforms = ["linux-64"]
            python = "3.6"
            conda = ["msgpack-python", "matplotlib", "pandas", "scipy"]
            pip = ["msgpack-numpy==0.4.7.1", "seaborn==0.9.0"]
            pip-index-url = "{url}"
            [tool.mlenv.virtual-packages.linux-64]
            __glibc = "2.17"
            """)
        result = mlenv("lock", "--project", str(proj), check=True)
    python = next(p for p in read_lock(proj / "conda-lock.yml").packages if p.name == "python")
    assert python.version.startswith("3.6.")
    assert f"for linux-64 (python {python.version}) with uv" in result.stderr
    lockfile = proj / "conda-lock.yml"
    assert pip_versions(lockfile) == {"msgpack-numpy": "0.4.7.1", "seaborn": "0.9.0"}
    assert_requirements_locked(lockfile, root)
    assert read_lock(lockfile).pypi_names["msgpack-python"] == ["msgpack"]


def test_find_links_directory(tmp_path: Path, pip_channel: Path, index: str, index_root: Path) -> None:
    wheels = tmp_path / "p" / "wheels"
    build_index(tmp_path / "local", [Wheel("mlenv-local-only", "0.3", requires=("six",))])
    wheels.mkdir(parents=True)
    shutil.copy(tmp_path / "local" / "files" / "mlenv_local_only-0.3-py3-none-any.whl", wheels)
    proj = project(tmp_path / "p", pip_channel,
                   'python = "3.11"\npip = ["mlenv-local-only"]\npip-find-links = ["./wheels"]\n', index)
    mlenv("lock", "--project", str(proj), check=True)
    locked = {p.name: p for p in read_lock(proj / "conda-lock.yml").packages if p.manager == "pip"}
    assert set(locked) == {"mlenv-local-only", "six"}
    assert locked["mlenv-local-only"].url == (wheels / "mlenv_local_only-0.3-py3-none-any.whl").resolve().as_uri()
    assert locked["mlenv-local-only"].dependencies == {"six": ""}
    mlenv("install", "--project", str(proj), "--prefix", str(tmp_path / "env"), check=True)
    assert (tmp_path / "env" / "lib" / "python3.11" / "site-packages" / "mlenv_local_only" / "__init__.py").is_file()


@pytest.mark.parametrize(
    ("body", "key", "message"),
    [
        ('pypi-names = { mlenv-private = 3 }', "tool.mlenv.pypi-names.mlenv-private", "PyPI distribution name"),
        ('pypi-names = { mlenv-private = "not a name!" }', "tool.mlenv.pypi-names.mlenv-private", "invalid PyPI"),
        ('pypi-names = "mlenv-private"', "tool.mlenv.pypi-names", "must be a table"),
        ('pip-find-links = ["ftp://example.org/wheels"]', "tool.mlenv.pip-find-links[0]", "not a directory"),
        ('pip-find-links = ["./missing"]\npip = ["six"]', "tool.mlenv.pip-find-links", "is not a directory"),
        ('pip = ["six"]\npip-index-url = "http://${MLENV_TEST_UNSET}@127.0.0.1:9/simple"',
         "tool.mlenv.pip-index-url", "MLENV_TEST_UNSET is not set"),
    ],
)
def test_bad_pip_configuration(tmp_path: Path, pip_channel: Path, body: str, key: str, message: str) -> None:
    proj = write_project(tmp_path, f'channels = ["{pip_channel}"]\nplatforms = ["linux-64"]\npython = "3.11"\n{body}\n')
    before = tree_hashes(tmp_path)
    assert_clean_error(mlenv("lock", "--project", str(proj)), 2, key, message)
    assert tree_hashes(tmp_path) == before


def test_wheel_metadata_is_cached_by_sha256(tmp_path: Path, pip_channel: Path, isolated_registry: Path) -> None:
    root = build_index(tmp_path / "index", [Wheel("mlenv-a", "1.0", requires=("mlenv-b>=1",)), Wheel("mlenv-b", "1.0")])
    with serve(root) as url:
        proj = project(tmp_path / "p", pip_channel, 'python = "3.11"\npip = ["mlenv-a"]\n', url)
        mlenv("lock", "--project", str(proj), check=True)
        a = next(p for p in read_lock(proj / "conda-lock.yml").packages if p.name == "mlenv-a")
        assert (isolated_registry / "cache" / "wheel-metadata" / f"{a.sha256}.METADATA").is_file()
    # the index no longer serves PEP 658 metadata, nor byte ranges (uv reads the whole wheels):
    # the relock reads our cache
    for metadata in (root / "files").glob("*.metadata"):
        metadata.unlink()
    for page in (root / "simple").rglob("index.html"):
        page.write_text(re.sub(r' data-(dist-info|core)-metadata="[^"]*"', "", page.read_text()))
    with serve(root, ranges=False) as url:
        pyproject = proj / "pyproject.toml"
        pyproject.write_text(re.sub(r'pip-index-url = "[^"]*"', f'pip-index-url = "{url}"', pyproject.read_text()))
        mlenv("lock", "--force", "--project", str(proj), check=True)
    a = next(p for p in read_lock(proj / "conda-lock.yml").packages if p.name == "mlenv-a")
    assert a.dependencies == {"mlenv-b": ">=1"}


def test_a_forged_wheel_metadata_cache_entry_is_not_believed(
    tmp_path: Path, pip_channel: Path, isolated_registry: Path
) -> None:
    """Whoever can write the cache cannot put other dependencies into a lock: a cache entry is
    believed only under this user's seal. Replaced by plain METADATA naming another dependency,
    it is a miss: the relock reads the index again and records the wheel's real dependencies."""
    root = build_index(tmp_path / "index", [Wheel("mlenv-a", "1.0", requires=("mlenv-b>=1",)), Wheel("mlenv-b", "1.0")])
    with serve(root) as url:
        proj = project(tmp_path / "p", pip_channel, 'python = "3.11"\npip = ["mlenv-a"]\n', url)
        mlenv("lock", "--project", str(proj), check=True)
        a = next(p for p in read_lock(proj / "conda-lock.yml").packages if p.name == "mlenv-a")
        entry = isolated_registry / "cache" / "wheel-metadata" / f"{a.sha256}.METADATA"
        assert "mlenv-b" in entry.read_text()
        entry.write_text("Metadata-Version: 2.1\nName: mlenv-a\nVersion: 1.0\nRequires-Dist: mlenv-evil\n")
        mlenv("lock", "--force", "--project", str(proj), check=True)
    a = next(p for p in read_lock(proj / "conda-lock.yml").packages if p.name == "mlenv-a")
    assert a.dependencies == {"mlenv-b": ">=1"}


def test_wheels_without_pep658_metadata_are_read_with_range_requests(
    tmp_path: Path, pip_channel: Path, isolated_registry: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PyPI serves no `.metadata` for many older wheels (aiohttp 3.8.6, mlflow 1.27): their
    METADATA is read out of the remote wheel with HTTP range requests, so the lock still records
    their dependencies. The big wheel's central directory and METADATA lie beyond the first range."""
    filler = "".join(hashlib.sha256(str(i).encode()).hexdigest() for i in range(6000))  # ~380 KB, incompressible
    wheels = [
        Wheel("mlenv-old", "1.0", requires=("mlenv-b>=1", "six"), metadata_file=False,
              modules={f"mlenv_old/data{i}.py": f"X = {filler[i * 60000:(i + 1) * 60000]!r}\n" for i in range(6)}),
        Wheel("mlenv-b", "1.0", metadata_file=False), Wheel("six", "1.16.0"),
    ]
    root = build_index(tmp_path / "index", wheels)
    assert not list((root / "files").glob("mlenv_old*.metadata"))
    assert (root / "files" / "mlenv_old-1.0-py3-none-any.whl").stat().st_size > 3 * 64 * 1024
    with serve(root) as url:
        proj = project(tmp_path / "p", pip_channel, 'python = "3.11"\npip = ["mlenv-old"]\n', url)
        mlenv("lock", "--project", str(proj), check=True)
    old = next(p for p in read_lock(proj / "conda-lock.yml").packages if p.name == "mlenv-old")
    assert old.dependencies == {"mlenv-b": ">=1", "six": ""}
    assert_requirements_locked(proj / "conda-lock.yml", root)
    assert (isolated_registry / "cache" / "wheel-metadata" / f"{old.sha256}.METADATA").is_file()
    # without ranges and without PEP 658 (and an empty cache) the metadata cannot be had:
    # the lock is still written, without the dependencies
    monkeypatch.setenv("MLENV_HOME", str(tmp_path / "other-home"))
    with serve(root, ranges=False) as url:
        proj2 = project(tmp_path / "p2", pip_channel, 'python = "3.11"\npip = ["mlenv-old"]\n', url)
        mlenv("lock", "--project", str(proj2), check=True)
    assert next(p for p in read_lock(proj2 / "conda-lock.yml").packages if p.name == "mlenv-old").dependencies == {}


def test_an_index_that_fails_to_serve_metadata_fails_the_lock_instead_of_dropping_dependencies(
    tmp_path: Path, pip_channel: Path, isolated_registry: Path
) -> None:
    """uv resolves (it gets answers); then the index answers hatch-mlenv's metadata reads with 503:
    the lock fails, naming the package and the URL, and writes nothing, where it used to record
    the package with no dependencies."""
    root = build_index(tmp_path / "index", [Wheel("mlenv-a", "1.0", requires=("mlenv-b>=1",)), Wheel("mlenv-b", "1.0")])
    with serve(root, unavailable_to="python-requests") as url:
        proj = project(tmp_path / "p", pip_channel, 'python = "3.11"\npip = ["mlenv-a"]\n', url)
        result = mlenv("lock", "--project", str(proj))
    assert_clean_error(result, 1, "cannot read the metadata of mlenv-a 1.0", "mlenv_a-1.0-py3-none-any.whl.metadata",
                       "HTTP 503")
    assert not (proj / "conda-lock.yml").exists()


def test_each_platform_locks_the_wheel_its_installer_would_pick(tmp_path: Path, pip_channel: Path) -> None:
    """A version with several fitting wheels (a pure one and platform builds, as charset-normalizer
    has on PyPI): each platform locks the most specific one for it, never the pure fallback."""
    tags = ["py3-none-any", "cp311-cp311-manylinux_2_17_x86_64", "cp311-abi3-macosx_11_0_arm64",
            "cp311-cp311-manylinux_2_34_x86_64"]  # newer than the platform's __glibc 2.28: unusable there
    root = build_index(tmp_path / "index", [Wheel("mlenv-built", "1.0", tag=tag) for tag in tags])
    with serve(root) as url:
        proj = project(tmp_path / "p", pip_channel, 'python = "3.11"\npip = ["mlenv-built"]\n', url)
        text = (proj / "pyproject.toml").read_text().replace('platforms = ["linux-64"]', 'platforms = ["linux-64", "osx-arm64"]')
        (proj / "pyproject.toml").write_text(text)
        mlenv("lock", "--project", str(proj), check=True)
    chosen = {p.platform: p.url.rsplit("/", 1)[1] for p in read_lock(proj / "conda-lock.yml").packages if p.manager == "pip"}
    assert chosen == {"linux-64": "mlenv_built-1.0-cp311-cp311-manylinux_2_17_x86_64.whl",
                      "osx-arm64": "mlenv_built-1.0-cp311-abi3-macosx_11_0_arm64.whl"}
