"""Images against a real Docker engine: build, run, reuse, secrets, push and pull, strategies, bad input.

These tests need dockerd (started by `.ci/run`) and fail, never skip, without it.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from hatch_mlenv.image.dockerfile import micromamba_dockerfile
from hatch_mlenv.image.plan import ImagePlan
from hatch_mlenv.lockfile import read_lock
from tests.conftest import assert_clean_error, mlenv, write_project

SECRET = "s3cr3t-token-value-6a41"
GOLDEN = Path(__file__).parent / "golden" / "micromamba.Dockerfile"


@pytest.fixture(scope="session")
def docker_client():  # -> docker.DockerClient
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"these tests need a running Docker engine (start dockerd; .ci/run does): {exc}")
    from fixtures.docker_base import ensure_base_image

    ensure_base_image(client)
    return client


@pytest.fixture
def image_project(tmp_path: Path, channel: Path, pip_index: str, docker_client) -> Path:  # noqa: ANN001
    from fixtures.docker_base import BASE_IMAGE

    name = f"img-{tmp_path.name[-12:].lower().replace('_', '-')}"
    return write_project(
        tmp_path / "proj",
        f"""
        name = "{name}"
        channels = ["{channel}"]
        platforms = ["linux-64"]
        python = "3.11"
        conda = ["mlenv-hello ==1.0.0", "python-dateutil"]
        pip = ["mlenv-tiny==0.2.0"]
        pip-index-url = "{pip_index}"
        variables = {{ OMP_NUM_THREADS = "3", API_TOKEN = {{ value = "{SECRET}", secret = true }} }}
        [tool.mlenv.docker]
        base-image = "{BASE_IMAGE}"
        """,
    )


def _tag(project: Path) -> str:
    from hatch_mlenv.reference import image_reference
    from hatch_mlenv.spec import load_spec

    return image_reference(read_lock(project / "conda-lock.yml").digest(), load_spec(project))


def run(client, image: str, command: str) -> str:  # noqa: ANN001
    return client.containers.run(image, ["sh", "-c", command], remove=True).decode()


def test_build_run_reuse_and_change(image_project: Path, docker_client) -> None:  # noqa: ANN001
    mlenv("lock", "--project", str(image_project), check=True)
    tag = _tag(image_project)
    assert mlenv("image", "tag", "--project", str(image_project), check=True).stdout.strip() == tag

    built = mlenv("image", "build", "--project", str(image_project), check=True)
    assert built.stdout.strip() == f"{tag} built"
    assert "Step 1/" in built.stderr and 'COPY ["env/", "/opt/env/"]' in built.stderr  # streamed steps
    # the placeholder in the package's script was rewritten for the image's prefix
    assert run(docker_client, tag, "mlenv-hello").strip() == "hello from /opt/env"
    assert run(docker_client, tag, "echo $OMP_NUM_THREADS $CONDA_PREFIX").split() == ["3", "/opt/env"]
    # the locked wheel is installed into the prefix's site-packages
    assert "mlenv_tiny" in run(docker_client, tag, "ls /opt/env/lib/python3.11/site-packages")
    labels = docker_client.images.get(tag).labels
    digest = read_lock(image_project / "conda-lock.yml").digest()
    assert labels["io.mlenv.digest"] == f"sha256:{digest}"
    assert labels["io.mlenv.name"] == tag.split(":")[0]
    assert labels["io.mlenv.base-image-digest"].startswith("sha256:")
    assert labels["org.opencontainers.image.title"] == tag.split(":")[0]

    again = mlenv("image", "build", "--project", str(image_project), check=True)
    assert again.stdout.strip() == f"{tag} reused"

    # registering adds the v<N> tag and label-free reuse keeps the image
    mlenv("register", "--project", str(image_project), check=True)
    tags = mlenv("image", "tag", "--project", str(image_project), check=True).stdout.split()
    assert tags == [tag, f"{tag.split(':')[0]}:v1"]
    assert mlenv("image", "build", "--project", str(image_project), check=True).stdout.strip() == f"{tag} reused"
    assert docker_client.images.get(f"{tag.split(':')[0]}:v1").id == docker_client.images.get(tag).id

    pyproject = image_project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("mlenv-hello ==1.0.0", "mlenv-hello ==1.1.0"))
    mlenv("lock", "--project", str(image_project), check=True)
    new_tag = _tag(image_project)
    assert new_tag != tag
    assert mlenv("image", "build", "--project", str(image_project), check=True).stdout.strip() == f"{new_tag} built"
    assert run(docker_client, new_tag, "mlenv-hello").strip() == "hello again from /opt/env"


def test_build_a_registered_version_from_an_empty_directory(image_project: Path, docker_client,  # noqa: ANN001
                                                             tmp_path: Path) -> None:
    mlenv("lock", "--project", str(image_project), check=True)
    mlenv("register", "--project", str(image_project), "--label", "production", check=True)
    tag = _tag(image_project)
    name = tag.split(":")[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    built = mlenv("image", "build", f"{name}@production", cwd=empty, check=True)
    assert built.stdout.strip() == f"{tag} built"
    assert docker_client.images.get(f"{name}:v1").id == docker_client.images.get(tag).id
    assert run(docker_client, tag, "mlenv-hello").strip() == "hello from /opt/env"
    assert list(empty.iterdir()) == []


def test_secrets_never_reach_the_image(image_project: Path, docker_client) -> None:  # noqa: ANN001
    mlenv("lock", "--project", str(image_project), check=True)
    mlenv("image", "build", "--project", str(image_project), check=True)
    image = docker_client.images.get(_tag(image_project))
    config = image.attrs["Config"]
    assert not any(SECRET in e or e.startswith("API_TOKEN=") for e in config["Env"])
    assert all(SECRET not in v for v in (config.get("Labels") or {}).values())
    for entry in docker_client.api.history(image.id):
        assert SECRET not in entry.get("CreatedBy", "") and SECRET not in entry.get("Comment", "")
    saved = b"".join(image.save())
    assert SECRET.encode() not in saved
    with tarfile.open(fileobj=io.BytesIO(saved)) as outer:
        for member in outer.getmembers():
            if member.name.endswith(".tar"):
                layer = outer.extractfile(member).read()
                assert SECRET.encode() not in layer


def test_the_image_runs_the_packages_activation_scripts(image_project: Path, docker_client) -> None:  # noqa: ANN001
    pyproject = image_project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"python-dateutil"]', '"python-dateutil", "mlenv-activate"]'))
    pyproject.write_text(pyproject.read_text().replace('OMP_NUM_THREADS = "3"', 'OMP_NUM_THREADS = "3", A_B = "it\'s"'))
    mlenv("lock", "--project", str(image_project), check=True)
    tag = _tag(image_project)
    mlenv("image", "build", "--project", str(image_project), check=True)
    probe = 'echo "$MLENV_ACTIVATED"; echo "$PATH"; echo "$OMP_NUM_THREADS $A_B $CONDA_PREFIX"; mlenv-hello'
    activated, path, values, hello = run(docker_client, tag, probe).splitlines()  # the script's chatter: stderr
    assert activated == "activated in /opt/env"
    assert path.startswith("/opt/env/bin:/opt/env/share/mlenv-activate/bin:") and path.count("/opt/env/bin") == 1
    assert values == "3 it's /opt/env" and hello == "hello from /opt/env"
    logs = docker_client.containers.run(tag, ["true"], remove=False, stderr=True, stdout=False, detach=True)
    try:
        assert logs.wait()["StatusCode"] == 0
        assert logs.logs(stdout=False, stderr=True).decode() == "mlenv-activate: activated\n"
    finally:
        logs.remove()
    import docker

    with pytest.raises(docker.errors.ContainerError) as failed:  # the command's exit status is the container's
        run(docker_client, tag, "exit 7")
    assert failed.value.exit_status == 7
    config = docker_client.images.get(tag).attrs["Config"]
    assert config["Entrypoint"] == ["/opt/env/etc/hatch-mlenv/entrypoint.sh"] and config["Cmd"] == ["/bin/sh"]
    assert SECRET not in docker_client.containers.run(tag, ["cat", "/opt/env/etc/hatch-mlenv/entrypoint.sh"],
                                                       remove=True).decode()


def test_push_remove_pull_by_digest_and_run(image_project: Path, docker_client, oci_registry,
                                            monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    pyproject = image_project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("[tool.mlenv.docker]\n",
                                                       f'[tool.mlenv.docker]\nregistry = "{oci_registry.host}"\n'))
    monkeypatch.setenv("MLENV_REGISTRY_USERNAME", oci_registry.user)
    monkeypatch.setenv("MLENV_REGISTRY_PASSWORD", oci_registry.password)
    mlenv("lock", "--project", str(image_project), check=True)
    tag = _tag(image_project)
    assert tag.startswith(f"{oci_registry.host}/")
    pushed = mlenv("image", "build", "--push", "--project", str(image_project), check=True)
    assert pushed.stdout.splitlines() == [f"{tag} built", f"{tag} pushed"]
    assert mlenv("image", "push", "--project", str(image_project), check=True).stdout.strip() == f"{tag} reused"

    auth = {"username": oci_registry.user, "password": oci_registry.password}
    remote = docker_client.images.get_registry_data(tag, auth_config=auth)
    repository = tag.rsplit(":", 1)[0]
    docker_client.images.remove(tag, force=True)
    pulled = docker_client.images.pull(f"{repository}@{remote.id}", auth_config=auth)
    assert run(docker_client, pulled.id, "mlenv-hello").strip() == "hello from /opt/env"


def test_dockerfile_strategy_is_deterministic(image_project: Path, tmp_path: Path) -> None:
    mlenv("lock", "--project", str(image_project), check=True)
    one, two = tmp_path / "one", tmp_path / "two"
    for out in (one, two):
        mlenv("image", "context", "--strategy", "dockerfile", "-o", str(out), "--project", str(image_project),
              check=True)
    assert (one / "Dockerfile").read_bytes() == (two / "Dockerfile").read_bytes()
    assert (one / "conda-lock.yml").read_bytes() == (image_project / "conda-lock.yml").read_bytes()
    dockerfile = (one / "Dockerfile").read_text()
    assert "micromamba create --yes --prefix /opt/env --file /tmp/conda-lock.yml" in dockerfile
    assert 'COPY --from=builder ["/opt/env", "/opt/env"]' in dockerfile
    assert SECRET not in dockerfile and "API_TOKEN" not in dockerfile


def test_micromamba_dockerfile_golden() -> None:
    plan = ImagePlan(
        name="fraud-train",
        digest="0123456789abcdef" * 4,
        repository="registry.example.com/fraud-train",
        base_image="debian:12-slim",
        prefix="/opt/env",
        variables={"OMP_NUM_THREADS": "4", "QUOTED": 'say "hi"'},
        version=7,
    )
    text = micromamba_dockerfile(plan)
    from hatch_mlenv import __version__

    assert text == GOLDEN.read_text().replace("{version}", __version__)


def test_host_context_has_an_installed_prefix(image_project: Path, tmp_path: Path) -> None:
    mlenv("lock", "--project", str(image_project), check=True)
    out = tmp_path / "ctx"
    mlenv("image", "context", "-o", str(out), "--project", str(image_project), check=True)
    assert (out / "env" / "conda-meta").is_dir()
    assert (out / "env" / "bin" / "mlenv-hello").read_text().strip().endswith('"hello from /opt/env"')
    assert (out / "Dockerfile").read_text().splitlines()[1].startswith("FROM mlenv-test-base:busybox")
    # nothing to activate beyond ENV: no entrypoint, the base image's own is kept
    assert "ENTRYPOINT" not in (out / "Dockerfile").read_text() and not (out / "env" / "etc" / "hatch-mlenv").exists()
    busy = mlenv("image", "context", "-o", str(out), "--project", str(image_project))
    assert_clean_error(busy, 1, "not empty")


def test_engine_not_running(image_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mlenv("lock", "--project", str(image_project), check=True)
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    assert_clean_error(mlenv("image", "build", "--project", str(image_project)), 1, "cannot reach the Docker engine")


def test_missing_base_image_leaves_no_tag(image_project: Path, docker_client) -> None:  # noqa: ANN001
    pyproject = image_project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('base-image = "mlenv-test-base:busybox"',
                                                       'base-image = "mlenv-no-such-base:1"'))
    mlenv("lock", "--project", str(image_project), check=True)
    result = mlenv("image", "build", "--project", str(image_project))
    assert_clean_error(result, 1, "base image 'mlenv-no-such-base:1' is not in the Docker engine")
    import docker

    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(_tag(image_project))


def test_push_to_unreachable_registry(image_project: Path) -> None:
    pyproject = image_project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("[tool.mlenv.docker]\n",
                                                       '[tool.mlenv.docker]\nregistry = "127.0.0.1:9"\n'))
    mlenv("lock", "--project", str(image_project), check=True)
    result = mlenv("image", "push", "--project", str(image_project))
    assert_clean_error(result, 1, "127.0.0.1:9")


def test_lock_without_linux(tmp_path: Path, channel: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = write_project(tmp_path, f'channels = ["{channel}"]\nplatforms = ["osx-arm64"]\nconda = ["mlenv-hello"]\n')
    mlenv("lock", "--project", str(project), check=True)
    # the lock is checked before any engine is asked: no engine needed to be told
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'no-engine.sock'}")
    for command in (["image", "build"], ["image", "context", "-o", str(tmp_path / "ctx")]):
        assert_clean_error(mlenv(*command, "--project", str(project)), 1, "no linux-64 packages")
    assert not (tmp_path / "ctx").exists()


def test_broken_archive_fails_and_a_broken_cache_heals(image_project: Path, channel: Path, tmp_path: Path,
                                                       docker_client, isolated_registry: Path) -> None:  # noqa: ANN001
    # a copy of the channel whose mlenv-hello archive is damaged after indexing
    broken = tmp_path / "broken-channel"
    shutil.copytree(channel, broken)
    archive = next((broken / "linux-64").glob("mlenv-hello-1.0.0-*.tar.bz2"))
    archive.write_bytes(archive.read_bytes()[:200])
    pyproject = image_project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace(str(channel), str(broken)))
    mlenv("lock", "--project", str(image_project), check=True)
    result = mlenv("image", "build", "--project", str(image_project))
    # refused before anything is linked: the archive no longer has the hash the channel's index (and so the lock) gave
    assert_clean_error(result, 1, "mlenv-hello 1.0.0", "sha256 mismatch", "nothing was installed")
    import docker

    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(_tag(image_project))

    # a damaged entry in the host's package cache is detected and re-extracted
    pyproject.write_text(pyproject.read_text().replace(str(broken), str(channel)))
    mlenv("lock", "--project", str(image_project), check=True)
    mlenv("image", "context", "-o", str(tmp_path / "warm"), "--project", str(image_project), check=True)
    cached = next(p for p in (isolated_registry / "cache" / "pkgs").glob("mlenv-hello-1.0.0-*") if p.is_dir())
    (cached / "bin" / "mlenv-hello").write_text("#!/bin/sh\necho tampered\n")
    mlenv("image", "build", "--project", str(image_project), check=True)
    assert run(docker_client, _tag(image_project), "mlenv-hello").strip() == "hello from /opt/env"


def test_build_hook_builds_the_image(image_project: Path, docker_client) -> None:  # noqa: ANN001
    import subprocess
    import sys

    pyproject = image_project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + """
[build-system]
requires = ["hatchling", "hatch-mlenv"]
build-backend = "hatchling.build"
[tool.hatch.build.targets.wheel]
bypass-selection = true
[tool.hatch.build.hooks.mlenv]
image = "build"
[tool.hatch.envs.hatch-build]
type = "system"
""")
    build = subprocess.Popen([sys.executable, "-m", "hatch", "build", "-t", "wheel"], cwd=image_project,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = build.communicate(timeout=600)
    assert build.returncode == 0, err
    tag = _tag(image_project)
    manifest = json.loads(next((image_project / "dist").glob("*.mlenv.json")).read_text())
    assert manifest["image"] == tag and manifest["version"] == 1
    image = docker_client.images.get(tag)
    assert image.labels["io.mlenv.version"] == "1"
    assert docker_client.images.get(f"{tag.split(':')[0]}:v1").id == image.id

    pyproject.write_text(pyproject.read_text().replace('image = "build"', 'image = "sometimes"'))
    bad = subprocess.Popen([sys.executable, "-m", "hatch", "build", "-t", "wheel"], cwd=image_project,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = bad.communicate(timeout=600)
    assert bad.returncode != 0 and "tool.hatch.build.hooks.mlenv.image: must be one of" in err


def test_the_image_says_what_it_needs_and_sets_the_nvidia_runtime(
    tmp_path: Path, channel: Path, docker_client, monkeypatch: pytest.MonkeyPatch  # noqa: ANN001
) -> None:
    from fixtures.docker_base import BASE_IMAGE

    project = write_project(tmp_path / "proj", f"""
        name = "img-cuda-{tmp_path.name[-8:].lower().replace('_', '-')}"
        channels = ["{channel}"]
        platforms = ["linux-64"]
        conda = ["cuda-thing", "libfoo"]
        [tool.mlenv.system-requirements]
        cuda = "12.2"
        [tool.mlenv.docker]
        base-image = "{BASE_IMAGE}"
        """)
    mlenv("lock", "--project", str(project), check=True)
    monkeypatch.setenv("CONDA_OVERRIDE_CUDA", "")  # the build machine needs no GPU: the image's host will
    tag = _tag(project)
    assert mlenv("image", "build", "--project", str(project), check=True).stdout.strip() == f"{tag} built"
    image = docker_client.images.get(tag)
    assert image.labels["io.mlenv.requires.cuda"] == ">=12.2"  # declared, above cuda-thing's >=12
    assert image.labels["io.mlenv.requires.glibc"] == ">=2.17"  # libfoo's
    env = dict(line.split("=", 1) for line in image.attrs["Config"]["Env"])
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert env["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility"
    assert env["NVIDIA_REQUIRE_CUDA"] == "cuda>=12.2"
    assert run(docker_client, tag, "echo $NVIDIA_VISIBLE_DEVICES").strip() == "all"

    out = tmp_path / "ctx"
    mlenv("image", "context", "--strategy", "dockerfile", "-o", str(out), "--project", str(project), check=True)
    dockerfile = (out / "Dockerfile").read_text()
    assert 'io.mlenv.requires.cuda=">=12.2"' in dockerfile and 'NVIDIA_VISIBLE_DEVICES="all"' in dockerfile


def test_a_cpu_image_gets_no_nvidia_variables_and_the_lock_variables_win() -> None:
    base = dict(name="x", digest="0" * 64, repository="x", base_image="b", prefix="/opt/env")
    assert ImagePlan(**base, variables={}).runtime_variables() == {}
    assert not any(k.startswith("io.mlenv.requires") for k in ImagePlan(**base, variables={}).labels())
    gpu = ImagePlan(**base, variables={"NVIDIA_VISIBLE_DEVICES": "0"}, needs={"__cuda": ">=11.8,<13"})
    assert gpu.runtime_variables() == {"NVIDIA_DRIVER_CAPABILITIES": "compute,utility"}  # no plain floor: no REQUIRE
    assert gpu.labels()["io.mlenv.requires.cuda"] == ">=11.8,<13"
