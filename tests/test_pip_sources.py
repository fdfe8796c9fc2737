"""Real requirements as written: source releases, extras over conda packages, and pip failures
whose first line is the cause.

The index serves real PyPI source releases of the TensorFlow 1.x era (termcolor 1.1.0, a
distutils setup.py; promise 2.3, setuptools with `requires.txt` markers and extras; absl-py
0.4.0, whose setup.py refuses any python >= 3.10) and the real setuptools wheel their isolated
builds need, beside generated wheels. The conda side is the host-python channel, so a prefix's
python really builds and imports what was installed.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from fixtures.conda_channel import CondaPackage, _python_module, build_channel
from fixtures.host_python import host_python_minor, make_host_python_channel
from fixtures.pip_index import Wheel, build_index, real_wheel, serve
from hatch_mlenv.lockfile import META_SDISTS, read_lock
from tests.conftest import assert_clean_error, mlenv, write_project

TERMCOLOR_SHA = "1d6d69ce66211143803fbc56652b41d73b4a400a2891d7bf7a1cdf4c02de613b"
PROMISE_SHA = "dfd18337c523ba4b6a58801c164c1904a9d4d1b1747c7d5dbf45b693a49d93d0"


@pytest.fixture(scope="module")
def channels(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The host python, and conda packages that provide Python distributions: `mlenv-frame-core`
    provides PyPI's `mlenv-frame` (by its purl), as conda's dask-core provides dask; `six`."""
    host = make_host_python_channel(tmp_path_factory.mktemp("host-channel"))
    minor = host_python_minor()
    extra = build_channel(tmp_path_factory.mktemp("provides-channel"), [
        CondaPackage("mlenv-frame-core", "1.0", noarch="python", depends=("python",),
                     files=_python_module("mlenv-frame", "1.0", "mlenv_frame", noarch=True, py=minor),
                     purls=("pkg:pypi/mlenv-frame@1.0",)),
        CondaPackage("six", "1.16.0", noarch="python", depends=("python",),
                     files=_python_module("six", "1.16.0", "six", noarch=True, py=minor)),
    ])
    return host, extra


@pytest.fixture(scope="module")
def index_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_index(tmp_path_factory.mktemp("sources-index"), [
        real_wheel("termcolor-1.1.0.tar.gz"),
        real_wheel("promise-2.3.tar.gz"),
        real_wheel("absl-py-0.4.0.tar.gz"),
        real_wheel("setuptools-80.9.0-py3-none-any.whl"),  # what the isolated builds install
        real_wheel("six-1.16.0-py2.py3-none-any.whl"),
        Wheel("mlenv-tiny", "0.2.0"),
        # dask's shape: no base requirements, an extra that asks for more
        Wheel("mlenv-frame", "1.0", requires=('mlenv-tiny>=0.2; extra == "dataframe"',
                                              'six>=1.10; extra == "dataframe"')),
        Wheel("mlenv-needs-old-six", "1.0", requires=("six<1.10",)),
        Wheel("mlenv-py399", "1.0", requires_python=">=3.99"),
    ])


@pytest.fixture(scope="module")
def index(index_root: Path):  # -> Iterator[str]
    with serve(index_root) as url:
        yield url


def project(root: Path, channels: tuple[Path, ...], index: str, body: str) -> Path:
    listed = ", ".join(f'"{c}"' for c in channels)
    return write_project(root, f'channels = [{listed}]\nplatforms = ["linux-64"]\npython = "{host_python_minor()}"\n'
                               f'pip-index-url = "{index}"\n' + body)


def pip_packages(lockfile: Path) -> dict[str, object]:
    return {p.name: p for p in read_lock(lockfile).for_platform("linux-64") if p.manager == "pip"}


def first_error_line(stderr: str) -> str:
    return next(line for line in stderr.splitlines() if line.startswith("error: "))


def test_source_releases_are_locked_built_once_and_run(
    tmp_path: Path, channels: tuple[Path, Path], index: str, isolated_registry: Path
) -> None:
    proj = project(tmp_path / "p", channels[:1], index, 'pip = ["termcolor==1.1.0", "promise==2.3"]\n')
    lockfile = proj / "conda-lock.yml"
    mlenv("lock", "--project", str(proj), check=True)

    pip = pip_packages(lockfile)
    assert sorted(pip) == ["promise", "six", "termcolor"]
    assert pip["termcolor"].url.endswith("/termcolor-1.1.0.tar.gz") and pip["termcolor"].sha256 == TERMCOLOR_SHA
    assert pip["promise"].url.endswith("/promise-2.3.tar.gz") and pip["promise"].sha256 == PROMISE_SHA
    # promise's requires.txt: six always; typing only below python 3.5; its [test] extra never
    assert pip["promise"].dependencies == {"six": ""}
    assert pip["termcolor"].dependencies == {}
    assert json.loads(read_lock(lockfile).custom[META_SDISTS]) == ["promise", "termcolor"]

    pylock = mlenv("export", "--project", str(proj), "--format", "pylock", "--platform", "linux-64", check=True).stdout
    assert f'sdist = {{ url = "{pip["termcolor"].url}", hashes = {{ sha256 = "{TERMCOLOR_SHA}" }} }}' in pylock

    installed = mlenv("install", "--project", str(proj), check=True)
    assert "building termcolor-1.1.0.tar.gz from source" in installed.stderr
    built = isolated_registry / "cache" / "built-wheels" / TERMCOLOR_SHA / f"python{host_python_minor()}-linux-64"
    assert [w.name for w in built.glob("*.whl")] == ["termcolor-1.1.0-py3-none-any.whl"]

    script = "import termcolor, promise; print(termcolor.colored('ok', 'red') == '\\x1b[31mok\\x1b[0m', promise.Promise)"
    ran = mlenv("run", "--project", str(proj), "--", "python", "-c", script, check=True)
    assert ran.stdout.startswith("True <class 'promise.promise.Promise'>")
    assert mlenv("verify", "--project", str(proj)).returncode == 0

    # a second prefix of the same lock takes the built wheels from the cache
    again = mlenv("install", "--project", str(proj), "--prefix", str(tmp_path / "second"), check=True)
    assert "building" not in again.stderr
    assert (tmp_path / "second" / "lib" / f"python{host_python_minor()}" / "site-packages" / "termcolor.py").is_file()

    # gc keeps what the installed lock builds from and collects a build nothing locks
    orphan = isolated_registry / "cache" / "built-wheels" / ("0" * 64) / "python3.11-linux-64"
    orphan.mkdir(parents=True)
    (orphan / "gone-1.0-py3-none-any.whl").write_bytes(b"x")
    removed = {e["path"] for e in json.loads(mlenv("gc", "--dry-run", "--json", check=True).stdout)["removed"]}
    assert str(orphan.parent) in removed
    assert not any(TERMCOLOR_SHA in path or PROMISE_SHA in path for path in removed), removed


def test_pip_only_binary_refuses_source_releases(tmp_path: Path, channels: tuple[Path, Path], index: str) -> None:
    proj = project(tmp_path / "all", channels[:1], index, 'pip = ["termcolor==1.1.0"]\npip-only-binary = true\n')
    result = mlenv("lock", "--project", str(proj))
    assert_clean_error(result, 1, "cannot resolve the pip requirements for linux-64", "termcolor",
                       "tool.mlenv.pip-only-binary forbids building it from source")
    assert "--only-binary" not in result.stderr and "--no-build" not in result.stderr
    assert not (proj / "conda-lock.yml").exists()

    # by name: the others may still come from source
    named = project(tmp_path / "named", channels[:1], index,
                    'pip = ["termcolor==1.1.0", "promise==2.3"]\npip-only-binary = ["Promise"]\n')
    assert_clean_error(mlenv("lock", "--project", str(named)), 1, "promise", "pip-only-binary")
    named.joinpath("pyproject.toml").write_text(
        named.joinpath("pyproject.toml").read_text().replace('["Promise"]', '["six"]'))
    mlenv("lock", "--project", str(named), check=True)
    assert sorted(pip_packages(named / "conda-lock.yml")) == ["promise", "six", "termcolor"]

    for value, needle in (('"yes"', "must be true, false or an array"), ('["not a name"]', "pip-only-binary[0]")):
        bad = project(tmp_path / f"bad{len(value)}", channels[:1], index, f"pip = []\npip-only-binary = {value}\n")
        assert_clean_error(mlenv("lock", "--project", str(bad)), 2, "tool.mlenv.pip-only-binary", needle)


def test_a_source_release_that_does_not_build_names_the_build_error(
    tmp_path: Path, channels: tuple[Path, Path], index: str
) -> None:
    proj = project(tmp_path, channels[:1], index, 'pip = ["absl-py==0.4.0"]\n')
    result = mlenv("lock", "--project", str(proj))
    assert_clean_error(result, 1, "absl-py==0.4.0", "source release does not build here",
                       "RuntimeError: Python version 2.7 or 3.4+ is required.")
    assert "pip-only-binary" in result.stderr  # the way to refuse sources, in our words
    assert not (proj / "conda-lock.yml").exists()


def test_extras_of_a_conda_provided_distribution_are_locked(
    tmp_path: Path, channels: tuple[Path, Path], index: str
) -> None:
    # conda provides mlenv-frame (as conda's dask-core provides dask) and six; the extra asks for both
    proj = project(tmp_path, channels, index, 'conda = ["mlenv-frame-core 1.0", "six"]\n'
                                              'pip = ["mlenv-frame[dataframe]==1.0"]\n')
    mlenv("lock", "--project", str(proj), check=True)
    lock = read_lock(proj / "conda-lock.yml")
    conda = {p.name for p in lock.for_platform("linux-64") if p.manager == "conda"}
    assert {"mlenv-frame-core", "six"} <= conda
    # what the extra requires: six from conda (not locked twice), mlenv-tiny from PyPI; mlenv-frame stays conda's
    assert sorted(pip_packages(proj / "conda-lock.yml")) == ["mlenv-tiny"]

    mlenv("install", "--project", str(proj), check=True)
    ran = mlenv("run", "--project", str(proj), "--", "python", "-c",
                "import mlenv_frame, mlenv_tiny, six; print(mlenv_frame.__version__, mlenv_tiny.__version__)", check=True)
    assert ran.stdout.split() == ["1.0", "0.2.0"]

    # an index without mlenv-frame 1.0 cannot say what the extra asks for: one line says so
    no_metadata = project(tmp_path / "r", channels, index, 'conda = ["mlenv-frame-core 1.0"]\n'
                                                          'pip = ["mlenv-frame[dataframe]==1.0"]\n')
    mlenv("lock", "--project", str(no_metadata), check=True)
    bare = build_index(tmp_path / "bare-index", [Wheel("mlenv-tiny", "0.2.0")])
    with serve(bare) as other:
        text = no_metadata.joinpath("pyproject.toml").read_text().replace(index, other)
        no_metadata.joinpath("pyproject.toml").write_text(text)
        before = no_metadata.joinpath("conda-lock.yml").read_bytes()
        result = mlenv("lock", "--project", str(no_metadata))
    assert_clean_error(result, 1, "the extras asked of mlenv-frame need its metadata at conda's version 1.0")
    assert no_metadata.joinpath("conda-lock.yml").read_bytes() == before

    # without conda's six, the extra's six comes from PyPI
    without_six = project(tmp_path / "q", channels, index, 'conda = ["mlenv-frame-core 1.0"]\n'
                                                           'pip = ["mlenv-frame[dataframe]==1.0"]\n')
    mlenv("lock", "--project", str(without_six), check=True)
    assert sorted(pip_packages(without_six / "conda-lock.yml")) == ["mlenv-tiny", "six"]


@pytest.mark.parametrize(
    ("conda", "requirement", "needles"),
    [
        # the deepest cause first, conda's version labelled as conda's
        ('["six"]', "mlenv-needs-old-six", ("mlenv-needs-old-six depend on six<1.10, but conda provides six 1.16.0",)),
        # the target python in our words, with our own hint
        ("[]", "mlenv-py399", ("mlenv-py399==1.0 depends on Python>=3.99, which the environment's python",)),
        ("[]", "mlenv-not-on-the-index", ("mlenv-not-on-the-index is not on the index http://127.0.0.1",)),
    ],
)
def test_pip_failures_name_the_cause_on_the_first_line(
    tmp_path: Path, channels: tuple[Path, Path], index: str, conda: str, requirement: str, needles: tuple[str, ...]
) -> None:
    proj = project(tmp_path, channels, index, f'conda = {conda}\npip = ["{requirement}"]\n')
    result = mlenv("lock", "--project", str(proj))
    assert_clean_error(result, 1, "cannot resolve the pip requirements for linux-64", *needles)
    for flag in ("--python-version", "--only-binary", "--no-build", "--find-links", "--python-platform"):
        assert flag not in result.stderr, (flag, result.stderr)
    assert "you require six==" not in result.stderr  # the user never asked for conda's pin
    assert not (proj / "conda-lock.yml").exists()


def test_pip_check_agrees_with_the_lock_after_building_sources(
    tmp_path: Path, channels: tuple[Path, Path], index: str
) -> None:
    """The wheels built from sources carry the lock's versions: the prefix's own metadata agrees."""
    proj = project(tmp_path, channels[:1], index, 'pip = ["promise==2.3"]\n')
    mlenv("lock", "--project", str(proj), check=True)
    prefix = tmp_path / "env"
    mlenv("install", "--project", str(proj), "--prefix", str(prefix), check=True)
    listed = subprocess.run(
        [str(prefix / "bin" / "python"), "-c",
         "import importlib.metadata as m; print(sorted((d.metadata['Name'], d.version) for d in m.distributions()))"],
        # not capture_output: conda-lock's vendored poetry, once imported, replaces subprocess.run
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=True,
    ).stdout
    assert "('promise', '2.3')" in listed and "('six', '1.16.0')" in listed


def test_build_constraints_reach_the_lock_and_the_install(
    tmp_path: Path, channels: tuple[Path, Path], index: str
) -> None:
    """What a source release's isolated build installs can be constrained (pyspark 2.x needs
    `pypandoc<1.8`): the lock's metadata build and the install's wheel build both obey."""
    from hatch_mlenv.errors import InstallError
    from hatch_mlenv.install.wheels import install_wheels

    # the index has setuptools 80.9.0 only: a constraint it cannot meet makes the build fail, by name
    refused = project(tmp_path / "r", channels[:1], index,
                      'pip = ["termcolor==1.1.0"]\npip-build-constraints = ["setuptools<1"]\n')
    result = mlenv("lock", "--project", str(refused))
    assert_clean_error(result, 1, "termcolor==1.1.0", "does not build here", "setuptools")
    assert "pip-build-constraints" in result.stderr

    proj = project(tmp_path / "p", channels[:1], index,
                   'pip = ["termcolor==1.1.0"]\npip-build-constraints = ["setuptools>=80"]\n')
    mlenv("lock", "--project", str(proj), check=True)
    termcolor = pip_packages(proj / "conda-lock.yml")["termcolor"]
    mlenv("install", "--project", str(proj), check=True)  # met: the build runs
    prefix = proj / ".mlenv" / "envs" / "demo"
    with pytest.raises(InstallError, match=r"^cannot build termcolor-1.1.0.tar.gz from source: .*setuptools"):
        install_wheels([termcolor], prefix, host_python_minor(), indexes=[index], build_constraints=["setuptools<1"])
    assert (prefix / "lib" / f"python{host_python_minor()}" / "site-packages" / "termcolor.py").is_file()

    bad = project(tmp_path / "b", channels[:1], index, 'pip = []\npip-build-constraints = ["not a requirement!"]\n')
    assert_clean_error(mlenv("lock", "--project", str(bad)), 2, "tool.mlenv.pip-build-constraints[0]")
