"""`[tool.mlenv.docker] base-dockerfile`: system libraries under the environment, against the real
Docker engine. No base can be pulled here: the base Dockerfile builds FROM the imported busybox base.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from hatch_mlenv.lockfile import read_lock
from tests.conftest import assert_clean_error, mlenv, write_project
from tests.test_image import _tag, docker_client, run  # noqa: F401 - docker_client is a fixture

BASE = """\
FROM mlenv-test-base:busybox
RUN mkdir -p /usr/lib/x86_64-linux-gnu && echo "libGL 1.7 stand-in" > /usr/lib/x86_64-linux-gnu/libGL.so.1
"""


@pytest.fixture
def base_project(tmp_path: Path, channel: Path, docker_client) -> Path:  # noqa: ANN001, F811
    name = f"bdf-{tmp_path.name[-12:].lower().replace('_', '-')}"
    project = write_project(
        tmp_path / "proj",
        f"""
        name = "{name}"
        channels = ["{channel}"]
        platforms = ["linux-64"]
        conda = ["mlenv-hello ==1.0.0"]
        [tool.mlenv.docker]
        base-dockerfile = "docker/base.Dockerfile"
        """,
    )
    (project / "docker").mkdir()
    (project / "docker" / "base.Dockerfile").write_text(BASE)
    return project


def _base_tag(project: Path) -> str:
    sha = hashlib.sha256((project / "docker" / "base.Dockerfile").read_bytes()).hexdigest()
    return f"{_tag(project).rsplit(':', 1)[0]}-base:{sha[:12]}"


def _gone(client, reference: str) -> bool:  # noqa: ANN001
    import docker

    try:
        client.images.get(reference)
    except docker.errors.ImageNotFound:
        return True
    return False


def test_the_base_is_built_first_and_its_content_is_in_the_tag(base_project: Path, docker_client) -> None:  # noqa: ANN001, F811
    dockerfile = base_project / "docker" / "base.Dockerfile"
    mlenv("lock", "--project", str(base_project), check=True)
    lock = read_lock(base_project / "conda-lock.yml")
    assert lock.base_dockerfile == hashlib.sha256(dockerfile.read_bytes()).hexdigest()
    tag, base_tag = _tag(base_project), _base_tag(base_project)

    built = mlenv("image", "build", "--project", str(base_project), check=True)
    assert built.stdout.strip() == f"{tag} built"
    assert f"building the base image {base_tag} from {dockerfile}" in built.stderr
    assert "RUN mkdir -p /usr/lib/x86_64-linux-gnu" in built.stderr  # the base's steps are streamed
    # the environment runs on the system library the base Dockerfile added
    assert run(docker_client, tag, "cat /usr/lib/x86_64-linux-gnu/libGL.so.1; mlenv-hello").splitlines() == [
        "libGL 1.7 stand-in", "hello from /opt/env"]
    labels = docker_client.images.get(tag).labels
    assert labels["io.mlenv.base-dockerfile"] == f"sha256:{lock.base_dockerfile}"
    assert labels["io.mlenv.base-image-digest"] == docker_client.images.get(base_tag).id
    assert labels["org.opencontainers.image.base.name"] == base_tag
    manifest = json.loads(mlenv("show", "--project", str(base_project), "--json", check=True).stdout)
    assert manifest["image"] == tag and manifest["base_dockerfile_sha256"] == lock.base_dockerfile

    again = mlenv("image", "build", "--project", str(base_project), check=True)
    assert again.stdout.strip() == f"{tag} reused"

    # an edit of the Dockerfile: the lock is stale, and the new lock has another tag, on another base
    old_lock = base_project.parent / "old-lock.yml"
    old_lock.write_bytes((base_project / "conda-lock.yml").read_bytes())
    dockerfile.write_text(BASE.replace("1.7", "1.8"))
    stale = mlenv("lock", "--check", "--project", str(base_project))
    assert stale.returncode == 1 and "changed since" in stale.stderr, stale.stderr
    # the image follows the lock: until it is locked again, the base cannot be built from the edited file
    docker_client.images.remove(tag, force=True)
    docker_client.images.remove(base_tag, force=True)
    refused = mlenv("image", "build", "--frozen", "--project", str(base_project))
    assert_clean_error(refused, 1, str(dockerfile), "changed since conda-lock.yml was written", "mlenv lock")
    assert _gone(docker_client, tag)

    mlenv("lock", "--project", str(base_project), check=True)
    new_tag, new_base = _tag(base_project), _base_tag(base_project)
    assert new_tag != tag and new_base != base_tag
    # the same packages: only the base Dockerfile's sha256 changed the digest
    assert read_lock(base_project / "conda-lock.yml").packages == lock.packages
    new_sha = read_lock(base_project / "conda-lock.yml").base_dockerfile
    diff = mlenv("diff", str(old_lock), str(base_project / "conda-lock.yml"), "--json", check=True).stdout
    assert json.loads(diff)["base_dockerfile"] == [lock.base_dockerfile, new_sha]
    shown = mlenv("diff", str(old_lock), str(base_project / "conda-lock.yml"), check=True).stdout
    assert f"base Dockerfile: sha256 {lock.base_dockerfile[:12]} → {new_sha[:12]}" in shown
    assert mlenv("image", "build", "--project", str(base_project), check=True).stdout.strip() == f"{new_tag} built"
    assert run(docker_client, new_tag, "cat /usr/lib/x86_64-linux-gnu/libGL.so.1").strip() == "libGL 1.8 stand-in"


def test_a_registered_version_builds_its_base_only_where_the_dockerfile_is(
        base_project: Path, docker_client, tmp_path: Path) -> None:  # noqa: ANN001, F811
    mlenv("lock", "--project", str(base_project), check=True)
    mlenv("register", "--project", str(base_project), check=True)
    tag, base_tag = _tag(base_project), _base_tag(base_project)
    name = tag.rsplit(":", 1)[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    shown = json.loads(mlenv("show", f"{name}:1", "--json", cwd=empty, check=True).stdout)
    assert shown["definition"]["docker"] == {"base-dockerfile": str(base_project / "docker" / "base.Dockerfile")}

    built = mlenv("image", "build", f"{name}:1", cwd=empty, check=True)
    assert built.stdout.strip() == f"{tag} built" and "building the base image" in built.stderr
    assert run(docker_client, tag, "cat /usr/lib/x86_64-linux-gnu/libGL.so.1").strip() == "libGL 1.7 stand-in"

    # as on a machine without the project: no Dockerfile and no base image
    (base_project / "docker" / "base.Dockerfile").unlink()
    docker_client.images.remove(f"{name}:v1", force=True)
    docker_client.images.remove(tag, force=True)
    docker_client.images.remove(base_tag, force=True)
    missing = mlenv("image", "build", f"{name}:1", cwd=empty)
    assert_clean_error(missing, 1, f"{name}:1", "base Dockerfile", "not on this machine", base_tag)
    assert _gone(docker_client, tag) and list(empty.iterdir()) == []


def test_a_failing_base_dockerfile_leaves_no_tag(base_project: Path, docker_client) -> None:  # noqa: ANN001, F811
    dockerfile = base_project / "docker" / "base.Dockerfile"
    dockerfile.write_text(BASE + "RUN echo 'E: Unable to locate package libgl1' >&2 && exit 100\n")
    mlenv("lock", "--project", str(base_project), check=True)
    result = mlenv("image", "build", "--project", str(base_project))
    # the build's own log streams first; the error's first line names the file, the key and the step
    log, _, error = result.stderr.partition("\nerror: ")
    assert "Step 3/3 : RUN echo" in log
    result.stderr = "error: " + error
    assert_clean_error(result, 1, str(dockerfile), "(tool.mlenv.docker.base-dockerfile): building",
                       "failed at Step 3/3", "returned a non-zero code: 100")
    assert "Unable to locate package libgl1" in error  # the failing step's output, under the first line
    assert _gone(docker_client, _base_tag(base_project)) and _gone(docker_client, _tag(base_project))


def test_a_missing_base_dockerfile(base_project: Path) -> None:
    (base_project / "docker" / "base.Dockerfile").unlink()
    result = mlenv("lock", "--project", str(base_project))
    assert_clean_error(result, 2, "pyproject.toml: tool.mlenv.docker.base-dockerfile",
                       str(base_project / "docker" / "base.Dockerfile"), "does not exist")
    assert not (base_project / "conda-lock.yml").exists()
    (base_project / "docker" / "base.Dockerfile").mkdir()
    assert_clean_error(mlenv("lock", "--project", str(base_project)), 2, "is a directory, not a Dockerfile")


def test_a_lock_from_before_the_key_is_refused(base_project: Path) -> None:
    pyproject = base_project / "pyproject.toml"
    text = pyproject.read_text()
    pyproject.write_text(text.replace('base-dockerfile = "docker/base.Dockerfile"', ""))
    mlenv("lock", "--project", str(base_project), check=True)
    assert read_lock(base_project / "conda-lock.yml").base_dockerfile is None
    pyproject.write_text(text)
    assert mlenv("lock", "--check", "--project", str(base_project)).returncode == 1
    result = mlenv("image", "build", "--frozen", "--project", str(base_project))
    assert_clean_error(result, 1, "conda-lock.yml: written before tool.mlenv.docker.base-dockerfile was set",
                       "mlenv lock")


def test_the_oci_builder_and_the_dockerfile_strategy_refuse_it(base_project: Path, tmp_path: Path) -> None:
    mlenv("lock", "--project", str(base_project), check=True)
    out = tmp_path / "layout"
    result = mlenv("image", "build", "--builder", "oci", "-o", str(out), "--project", str(base_project))
    assert_clean_error(result, 2, "pyproject.toml: tool.mlenv.docker.base-dockerfile", "the oci builder builds no "
                       "Dockerfile", "already in a registry or an OCI layout", "set base-image in place of")
    assert not out.exists()
    context = mlenv("image", "context", "--strategy", "dockerfile", "-o", str(tmp_path / "ctx"),
                    "--project", str(base_project))
    assert_clean_error(context, 2, "tool.mlenv.docker.base-dockerfile", "remote builders", "set base-image")
    assert not (tmp_path / "ctx").exists()
