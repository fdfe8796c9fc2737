"""The OCI registry backend against Debian's docker-registry on 127.0.0.1 with htpasswd auth."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import LOCK_SAMPLES, assert_clean_error, mlenv, tree_hashes
from tests.registry_helpers import small_lock

NUMPY_SAMPLE = LOCK_SAMPLES / "numpy-conda-lock.yml"
ROBOSTACK_SAMPLE = LOCK_SAMPLES / "robostack-turtlesim-conda-lock.yml"


@pytest.fixture
def oci(oci_registry, monkeypatch: pytest.MonkeyPatch) -> str:  # noqa: ANN001
    """A fresh namespace on the shared registry, with credentials in the environment."""
    monkeypatch.setenv("MLENV_REGISTRY_USERNAME", oci_registry.user)
    monkeypatch.setenv("MLENV_REGISTRY_PASSWORD", oci_registry.password)
    url = oci_registry.url(f"ns{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("MLENV_REGISTRY", url)
    return url


def test_register_get_history_labels_archive(oci: str, shared_data: Path, tmp_path: Path) -> None:
    first = mlenv("register", "--lockfile", str(NUMPY_SAMPLE), "--name", "numpy-env", check=True)
    assert first.stdout.startswith("numpy-env:1 sha256:") and "(new)" in first.stdout
    again = mlenv("register", "--lockfile", str(NUMPY_SAMPLE), "--name", "numpy-env", check=True)
    assert again.stdout.startswith("numpy-env:1 ") and "existing" in again.stdout
    second = mlenv("register", "--lockfile", str(ROBOSTACK_SAMPLE), "--name", "numpy-env", "--label", "prod",
                   check=True)
    assert second.stdout.startswith("numpy-env:2 ")

    mlenv("get", "numpy-env@prod", "-o", str(tmp_path / "prod"), check=True)
    assert (tmp_path / "prod" / "conda-lock.yml").read_bytes() == ROBOSTACK_SAMPLE.read_bytes()
    manifest = json.loads((tmp_path / "prod" / "mlenv.json").read_text())
    assert manifest["version"] == 2 and manifest["registry_ref"] == "numpy-env:2"
    mlenv("get", "numpy-env:1", "-o", str(tmp_path / "one"), check=True)
    assert (tmp_path / "one" / "conda-lock.yml").read_bytes() == NUMPY_SAMPLE.read_bytes()

    mlenv("label", "numpy-env:1", "staging", check=True)
    history = json.loads(mlenv("history", "numpy-env", "--json", check=True).stdout)
    assert [(h["version"], h["labels"]) for h in history] == [(1, ["staging"]), (2, ["latest", "prod"])]
    assert all(h["created"] for h in history)

    listing = json.loads(mlenv("list", "--json", check=True).stdout)
    assert listing == [{"name": "numpy-env", "latest": 2, "versions": 2,
                        "archived": 0, "labels": {"latest": 2, "prod": 2, "staging": 1}, "dangling_labels": {},
                        "description": None}]
    mlenv("archive", "numpy-env:1", check=True)
    assert json.loads(mlenv("list", "--json", check=True).stdout)[0]["versions"] == 1
    mlenv("get", "numpy-env:1", "-o", str(tmp_path / "archived"), check=True)
    mlenv("restore", "numpy-env:1", check=True)
    assert json.loads(mlenv("list", "--json", check=True).stdout)[0]["versions"] == 2

    diff = json.loads(mlenv("diff", "numpy-env:1", "numpy-env@prod", "--json", check=True).stdout)
    assert "win-64" in diff["platforms"]["added"]


def test_artifact_layout(oci: str, shared_data: Path, oci_registry) -> None:  # noqa: ANN001
    import requests

    mlenv("register", "--lockfile", str(NUMPY_SAMPLE), "--name", "Layout-Env", check=True)
    namespace = oci.rsplit("/", 1)[1]
    auth = (oci_registry.user, oci_registry.password)
    base = f"http://{oci_registry.host}/v2/{namespace}/layout-env"
    tags = requests.get(f"{base}/tags/list", auth=auth, timeout=10).json()["tags"]
    assert {"v1", "latest"} <= set(tags) and any(t.startswith("digest-") for t in tags)
    manifest = requests.get(f"{base}/manifests/v1", auth=auth, timeout=10,
                            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}).json()
    assert manifest["artifactType"] == "application/vnd.mlenv.environment.v1"
    assert manifest["config"]["mediaType"] == "application/vnd.mlenv.environment.config.v1+json"
    assert [layer["mediaType"] for layer in manifest["layers"]] == [
        "application/vnd.mlenv.lockfile.v1+yaml", "application/vnd.mlenv.manifest.v1+json"]
    assert manifest["annotations"]["io.mlenv.version"] == "1"
    assert manifest["annotations"]["io.mlenv.name"] == "Layout-Env"


def test_bad_credentials_unreachable_and_anonymous(oci: str, shared_data: Path, oci_registry, monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:  # noqa: ANN001
    mlenv("register", "--lockfile", str(NUMPY_SAMPLE), "--name", "env", check=True)
    before = tree_hashes(oci_registry.root / "data")

    monkeypatch.setenv("MLENV_REGISTRY_PASSWORD", "wrong")
    result = mlenv("register", "--lockfile", str(ROBOSTACK_SAMPLE), "--name", "env")
    assert_clean_error(result, 1, "refused the credentials")
    monkeypatch.delenv("MLENV_REGISTRY_USERNAME")
    monkeypatch.delenv("MLENV_REGISTRY_PASSWORD")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
    assert_clean_error(mlenv("list"), 1, "requires credentials")
    assert tree_hashes(oci_registry.root / "data") == before

    down = mlenv("get", "env:1", "--registry", "oci://127.0.0.1:9/envs", "-o", str(tmp_path / "x"))
    assert_clean_error(down, 1, "oci://127.0.0.1:9/envs is unreachable")
    assert not (tmp_path / "x").exists()
    assert_clean_error(mlenv("list", "--registry", "oci://"), 2, "malformed registry URL")


def test_docker_config_credentials(oci: str, shared_data: Path, oci_registry, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:  # noqa: ANN001
    import base64

    monkeypatch.delenv("MLENV_REGISTRY_USERNAME")
    monkeypatch.delenv("MLENV_REGISTRY_PASSWORD")
    config = tmp_path / "docker"
    config.mkdir()
    token = base64.b64encode(f"{oci_registry.user}:{oci_registry.password}".encode()).decode()
    (config / "config.json").write_text(json.dumps({"auths": {oci_registry.host: {"auth": token}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    assert mlenv("register", "--lockfile", str(NUMPY_SAMPLE), "--name", "cfg").returncode == 0


def test_credentials_are_never_written(oci: str, shared_data: Path, oci_registry, isolated_registry: Path) -> None:  # noqa: ANN001
    mlenv("register", "--lockfile", str(NUMPY_SAMPLE), "--name", "secretive", check=True)
    password = oci_registry.password.encode()
    for root in (oci_registry.root / "data", isolated_registry):
        for path in root.rglob("*"):
            if path.is_file():
                assert password not in path.read_bytes(), path


RACER = """
import json, os, sys
sys.path.insert(0, {root!r})
from hatch_mlenv.registry import open_registry
from tests.registry_helpers import small_lock
registry = open_registry({url!r})
result = registry.register("race", small_lock({tag!r}), {{"tag": {tag!r}}}, {{}})
print(json.dumps([result.version.version, result.created]))
"""


def _race(url: str, tags: list[str]) -> list[tuple[int, bool]]:
    root = str(Path(__file__).resolve().parents[1])
    processes = [
        subprocess.Popen([sys.executable, "-c", RACER.format(root=root, url=url, tag=tag)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
        for tag in tags
    ]
    results = []
    for process in processes:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
        results.append(tuple(json.loads(out)))
    return results


def test_two_racing_registrations_get_distinct_versions(oci: str) -> None:
    results = _race(oci, ["a", "b"])
    assert sorted(v for v, _ in results) == [1, 2] and all(created for _, created in results)
    history = json.loads(mlenv("history", "race", "--json", check=True).stdout)
    assert [h["version"] for h in history] == [1, 2]
    assert len({h["digest"] for h in history}) == 2


def test_two_racing_identical_registrations_share_one_version(oci: str) -> None:
    results = _race(oci, ["same", "same"])
    assert [v for v, _ in results] == [1, 1]
    assert sorted(created for _, created in results) == [False, True]
    assert [h["version"] for h in json.loads(mlenv("history", "race", "--json", check=True).stdout)] == [1]


def test_corrupted_artifact_is_never_served(oci: str, oci_registry, tmp_path: Path) -> None:  # noqa: ANN001
    lockfile = tmp_path / "lock.yml"
    lockfile.write_text(small_lock("original"))
    mlenv("register", "--lockfile", str(lockfile), "--name", "tamper", check=True)
    # rewrite the stored lockfile blob in the registry's own storage
    blobs = list((oci_registry.root / "data").rglob("data"))
    tampered = 0
    for blob in blobs:
        if blob.is_file() and blob.read_bytes() == lockfile.read_bytes():
            blob.write_bytes(small_lock("tampered").encode())
            tampered += 1
    assert tampered == 1
    result = mlenv("get", "tamper:1", "-o", str(tmp_path / "out"))
    assert_clean_error(result, 1, "registry entry tamper:1 is corrupted")
    assert not (tmp_path / "out").exists()


def test_a_renumbered_version_is_refused(oci: str, tmp_path: Path) -> None:
    """Moving the tag v2 onto version 1's manifest does not make version 1 into version 2."""
    from hatch_mlenv.registry import open_registry

    for text in ("first", "second"):
        lockfile = tmp_path / f"{text}.yml"
        lockfile.write_text(small_lock(text))
        mlenv("register", "--lockfile", str(lockfile), "--name", "renum", check=True)
    registry = open_registry(oci)
    repo = registry.target.repository("renum")
    body, _ = registry._manifest(repo, "v1")  # what a user with push rights could do by hand
    registry.put_manifest(repo, "v2", body, "application/vnd.oci.image.manifest.v1+json")
    assert_clean_error(mlenv("get", "renum:2", "-o", str(tmp_path / "out")), 1, "registry entry renum:2 is corrupted")
    assert mlenv("get", "renum:1", "-o", str(tmp_path / "one")).returncode == 0


def test_listings_follow_pages(oci: str, tmp_path: Path) -> None:
    from hatch_mlenv.registry import open_registry

    for index in range(3):
        lock = tmp_path / f"l{index}.yml"
        lock.write_text(small_lock(str(index)))
        mlenv("register", "--lockfile", str(lock), "--name", f"paged{index}", check=True)
    registry = open_registry(oci)
    namespace = oci.rsplit("/", 1)[1]
    # one repository per page: every page is followed through the Link header
    repositories = registry._paged("_catalog?n=1", "repositories", "listing repositories")
    assert {f"{namespace}/paged{i}" for i in range(3)} <= set(repositories)
    tags = registry._paged(f"{namespace}/paged0/tags/list?n=1", "tags", "listing tags")
    assert {"v1", "latest"} <= set(tags)
    assert [e["name"] for e in json.loads(mlenv("list", "--json", check=True).stdout)] == [f"paged{i}" for i in range(3)]
