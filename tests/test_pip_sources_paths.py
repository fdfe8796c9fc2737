"""A locked source release on every other path that installs: an image from the docker builder
and from the oci builder, the dockerfile strategy's context, the hatch environment, and the
packed archive for Spark (`mlenv install`/`run` are in test_pip_sources.py).

One project is locked once for the module: termcolor 1.1.0 and promise 2.3 as PyPI ships them
(source releases only), six as a wheel, on the host-python channel; its `oci` environment differs
only in the base image (an OCI layout instead of the engine's busybox image). Each test has its
own cold cache, so each path builds the sources itself, with the python of the prefix it fills.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from fixtures.host_python import host_python_minor
from tests.conftest import mlenv
from tests.test_hatch_env import hatch, hatch_home, ok  # noqa: F401 - hatch_home: the fixture
from tests.test_image import docker_client  # noqa: F401 - the fixture
from tests.test_oci_image import Layout
from tests.test_pip_sources import TERMCOLOR_SHA, channels, index, index_root, pip_packages, project  # noqa: F401

BUILDING = "building termcolor-1.1.0.tar.gz from source"
IMPORT = "import termcolor, promise; print(termcolor.colored('ok', 'red') == '\\x1b[31mok\\x1b[0m', promise.__file__)"


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory, channels: tuple[Path, Path], index: str) -> Path:  # noqa: F811
    from fixtures.docker_base import BASE_IMAGE, write_busybox_layout

    root = tmp_path_factory.mktemp("sdist-paths")
    proj = project(root / "proj", channels[:1], index, f"""
        name = "mlenv-sdist-paths"
        pip = ["termcolor==1.1.0", "promise==2.3"]
        [tool.mlenv.docker]
        base-image = "{BASE_IMAGE}"
        [tool.mlenv.envs.oci.docker]
        base-image = "oci:base-layout:busybox"

        [build-system]
        requires = ["hatchling"]
        build-backend = "hatchling.build"
        [tool.hatch.build.targets.wheel]
        packages = ["src/demo"]
        [tool.hatch.envs.train]
        type = "mlenv"
        """)
    (proj / "src" / "demo").mkdir(parents=True)
    (proj / "src" / "demo" / "__init__.py").write_text("VALUE = 1\n")
    write_busybox_layout(proj / "base-layout")
    with pytest.MonkeyPatch.context() as patch:  # the module's own home: the tests' homes stay cold
        patch.setenv("MLENV_HOME", str(root / "home"))
        mlenv("lock", "--project", str(proj), check=True)
        mlenv("lock", "--project", str(proj), "--env", "oci", check=True)
    for lockfile in ("conda-lock.yml", "conda-lock.oci.yml"):
        pip = pip_packages(proj / lockfile)
        assert sorted(pip) == ["promise", "six", "termcolor"] and pip["termcolor"].sha256 == TERMCOLOR_SHA
    return proj


def site_packages(prefix: Path) -> Path:
    return prefix / "lib" / f"python{host_python_minor()}" / "site-packages"


def assert_built_package(prefix: Path) -> None:
    """The wheels built from the sources are installed, recorded as ours, at the locked versions."""
    site = site_packages(prefix)
    assert "def colored(" in (site / "termcolor.py").read_text()
    assert (site / "promise" / "__init__.py").is_file()
    for dist_info in ("termcolor-1.1.0.dist-info", "promise-2.3.dist-info"):
        assert (site / dist_info / "INSTALLER").read_text() == "hatch-mlenv\n"
        assert (site / dist_info / "RECORD").is_file()


def test_the_docker_builder_puts_the_built_sources_in_the_image(
    locked: Path, docker_client, tmp_path: Path, isolated_registry: Path  # noqa: ANN001, F811
) -> None:
    tag = mlenv("image", "tag", "--project", str(locked), check=True).stdout.split()[0]
    built = mlenv("image", "build", "--project", str(locked), check=True)
    try:
        assert built.stdout.strip() == f"{tag} built"
        assert BUILDING in built.stderr  # by the staged prefix's own python, for /opt/env
        cached = isolated_registry / "cache" / "built-wheels" / TERMCOLOR_SHA / f"python{host_python_minor()}-linux-64"
        assert [w.name for w in cached.glob("*.whl")] == ["termcolor-1.1.0-py3-none-any.whl"]
        # the image's python is the host's, by absolute path: read the prefix out of the image instead
        container = docker_client.containers.create(tag, ["true"])
        try:
            stream, _ = container.get_archive("/opt/env")
            data = b"".join(stream)
        finally:
            container.remove()
    finally:
        docker_client.images.remove(tag, force=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(tmp_path / "image", filter="tar")
    prefix = tmp_path / "image" / "env"
    assert_built_package(prefix)
    verified = mlenv("verify", "--project", str(locked), "--prefix", str(prefix), check=True)
    assert "matches conda-lock.yml" in verified.stdout


def test_the_oci_builder_layers_the_built_sources_to_the_same_bytes_anywhere(
    locked: Path, tmp_path: Path, isolated_registry: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def build(out: Path) -> subprocess.CompletedProcess[str]:
        return mlenv("image", "build", "--builder", "oci", "--project", str(locked), "--env", "oci",
                     "-o", str(out), check=True)

    first = build(tmp_path / "one")
    assert BUILDING in first.stderr
    layout = Layout(tmp_path / "one")
    # the built packages' files follow the lock: each in its package's layer, not in the unowned one
    history = [h["created_by"] for h in layout.config["history"]]
    assert any("pip:termcolor" in h for h in history) and any("pip:promise" in h for h in history), history
    for data in layout.layers()[1:]:
        assert str(isolated_registry).encode() not in data  # nor the cache the sources were built in
    root = tmp_path / "root"
    layout.extract(root)
    assert_built_package(root / "opt" / "env")
    verified = mlenv("verify", "--project", str(locked), "--env", "oci", "--prefix", str(root / "opt" / "env"),
                     check=True)
    assert "matches conda-lock.oci.yml" in verified.stdout

    # another machine: a cold cache builds the sources again, into the same image
    monkeypatch.setenv("MLENV_HOME", str(tmp_path / "other-home"))
    second = build(tmp_path / "two")
    assert BUILDING in second.stderr
    assert Layout(tmp_path / "two").manifest_digest == layout.manifest_digest


def test_the_dockerfile_context_hands_the_source_release_to_micromamba(locked: Path, tmp_path: Path) -> None:
    """Not built here (micromamba needs the network): the context carries the lock as it is, and
    micromamba's pip step (`pip install --no-deps`, `name @ url#sha256=...`) builds the source."""
    out = tmp_path / "ctx"
    mlenv("image", "context", "--strategy", "dockerfile", "-o", str(out), "--project", str(locked), check=True)
    assert sorted(p.name for p in out.iterdir()) == [".dockerignore", "Dockerfile", "conda-lock.yml"]
    assert (out / "conda-lock.yml").read_bytes() == (locked / "conda-lock.yml").read_bytes()
    termcolor = pip_packages(out / "conda-lock.yml")["termcolor"]
    assert termcolor.url.endswith("/termcolor-1.1.0.tar.gz") and termcolor.sha256 == TERMCOLOR_SHA
    assert "--file /tmp/conda-lock.yml" in (out / "Dockerfile").read_text()


def test_hatch_run_builds_the_sources_into_its_environment(locked: Path, isolated_registry: Path) -> None:
    prefix = locked / ".mlenv" / "envs" / "mlenv-sdist-paths"
    first = hatch("run", "train:python", "-c", f"{IMPORT}; import demo, sys; print(sys.prefix)", cwd=locked)
    assert ok(first).split() == ["True", str(site_packages(prefix) / "promise" / "__init__.py"), str(prefix)]
    assert BUILDING in first.stderr and "mlenv: installed mlenv-sdist-paths" in first.stderr
    assert_built_package(prefix)
    cached = isolated_registry / "cache" / "built-wheels" / TERMCOLOR_SHA / f"python{host_python_minor()}-linux-64"
    assert cached.is_dir()
    # in sync: nothing is built or installed again, and the built packages are not damage
    again = hatch("run", "train:python", "-c", IMPORT, cwd=locked)
    assert ok(again).split()[0] == "True"
    assert "building" not in again.stderr and "installed" not in again.stderr
    assert "nothing to do" in mlenv("install", "--verify", "--project", str(locked), check=True).stdout


def test_the_spark_pack_carries_the_built_sources(locked: Path, tmp_path: Path) -> None:
    prefix, archive = tmp_path / "env", tmp_path / "env.tar.gz"
    installed = mlenv("install", "--project", str(locked), "--prefix", str(prefix), check=True)
    assert BUILDING in installed.stderr
    mlenv("pack", "--project", str(locked), "--prefix", str(prefix), "-o", str(archive), check=True)
    target = tmp_path / "unpacked" / "elsewhere"
    target.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="tar")
    assert_built_package(target)
    unpack = subprocess.run([str(target / "bin" / "conda-unpack")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
    assert unpack.returncode == 0, unpack.stderr
    ran = subprocess.run([str(target / "bin" / "python"), "-c", IMPORT], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == ["True", str(site_packages(target) / "promise" / "__init__.py")]
