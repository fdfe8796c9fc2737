"""The oci image builder: no daemon to build, the same bytes from any home and cache, layers that
follow the lock, a real Docker engine to run the result, a real registry on loopback to push to.

The Docker and registry tests fail, never skip, without dockerd or docker-registry (`.ci/run`).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import tarfile
from pathlib import Path

import pytest

from tests.conftest import assert_clean_error, mlenv, write_project
from tests.test_image import docker_client  # noqa: F401 - the fixture

SECRET = "s3cr3t-token-value-0c1e"


@pytest.fixture
def oci_project(tmp_path: Path, channel: Path, pip_index: str) -> Path:
    """A project whose base image is an OCI layout beside it (busybox-static), by a relative path."""
    from fixtures.docker_base import write_busybox_layout

    name = f"oci-{tmp_path.name[-12:].lower().replace('_', '-')}"
    project = write_project(
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
        base-image = "oci:base-layout:busybox"
        """,
    )
    write_busybox_layout(project / "base-layout")
    mlenv("lock", "--project", str(project), check=True)
    return project


def build(project: Path, *args: str, check: bool = True):  # noqa: ANN201
    return mlenv("image", "build", "--builder", "oci", "--project", str(project), *args, check=check)


def _reference(project: Path) -> str:
    return mlenv("image", "tag", "--project", str(project), check=True).stdout.split()[0]


ZSTD_LAYER = "application/vnd.oci.image.layer.v1.tar+zstd"


def _decompress(media_type: str, data: bytes) -> bytes:
    if media_type == ZSTD_LAYER:
        import zstandard

        assert data[:4] == b"\x28\xb5\x2f\xfd"  # a zstd frame
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    assert media_type.endswith("+gzip"), media_type
    return gzip.decompress(data)


class Layout:
    """An OCI image layout directory as a test reads it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.index = json.loads((root / "index.json").read_text())
        self.manifest_digest = self.index["manifests"][0]["digest"]
        self.manifest = json.loads(self.blob(self.manifest_digest))
        self.config = json.loads(self.blob(self.manifest["config"]["digest"]))

    def blob(self, digest: str) -> bytes:
        data = (self.root / "blobs" / "sha256" / digest.split(":")[1]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest.split(":")[1]
        return data

    def layers(self) -> list[bytes]:
        """Uncompressed layer tars, base first."""
        return [_decompress(layer["mediaType"], self.blob(layer["digest"])) for layer in self.manifest["layers"]]

    def extract(self, target: Path, *, skip_base: int = 1) -> None:
        for data in self.layers()[skip_base:]:
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                tar.extractall(target, filter="tar")


def test_same_bytes_from_two_homes_and_caches(oci_project: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    one, two, three = tmp_path / "one", tmp_path / "two.tar", tmp_path / "three"
    built = build(oci_project, "-o", str(one))
    reference = _reference(oci_project)
    assert built.stdout.splitlines()[0].startswith(f"{reference} built (sha256:")
    assert built.stdout.splitlines()[1] == f"{reference} written to {one}"
    assert "writing" in built.stderr and "layers" in built.stderr  # progress on stderr
    # another user: another data directory and another (cold) package and wheel cache
    monkeypatch.setenv("MLENV_HOME", str(tmp_path / "other-home"))
    build(oci_project, "-o", str(two))
    monkeypatch.setenv("MLENV_HOME", str(tmp_path / "third-home"))
    build(oci_project, "-o", str(three))
    first, third = Layout(one), Layout(three)
    assert first.manifest_digest == third.manifest_digest
    assert sorted(p.name for p in (one / "blobs" / "sha256").iterdir()) == \
        sorted(p.name for p in (three / "blobs" / "sha256").iterdir())
    with tarfile.open(two) as tar:
        index = json.loads(tar.extractfile("index.json").read())
        names = tar.getnames()
    assert index["manifests"][0]["digest"] == first.manifest_digest
    assert names == sorted(names) and "manifest.json" in names and "oci-layout" in names
    # the same lock again into the same place: reused, nothing rebuilt
    again = build(oci_project, "-o", str(one))
    assert again.stdout.strip() == f"{reference} reused in {one}"

    # what makes the bytes the same
    assert first.config["created"] == "1970-01-01T00:00:00Z"
    for layer in first.manifest["layers"][1:]:
        compressed = first.blob(layer["digest"])
        assert compressed[3] == 0 and compressed[4:8] == b"\0\0\0\0"  # gzip: no file name, mtime 0
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(compressed))) as tar:
            members = tar.getmembers()
        assert [m.name for m in members] == sorted(m.name for m in members)
        for member in members:
            assert (member.mtime, member.uid, member.gid, member.uname, member.gname) == (0, 0, 0, "", "")
            assert member.mode in (0o755, 0o644, 0o777) and not member.pax_headers

    # SOURCE_DATE_EPOCH sets every time the image holds
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    dated = tmp_path / "dated"
    build(oci_project, "-o", str(dated))
    later = Layout(dated)
    assert later.config["created"] == "2023-11-14T22:13:20Z" and later.manifest_digest != first.manifest_digest
    with tarfile.open(fileobj=io.BytesIO(later.layers()[1])) as tar:
        assert {m.mtime for m in tar.getmembers()} == {1700000000}


def test_zstd_layers_are_the_same_image_under_their_own_tag(oci_project: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """`--layer-compression zstd`: the same config (so the same image ID and diff_ids) with zstd layers, the
    same bytes from a cold cache, under the tag `<digest12>-zstd` (other bytes, another tag); the base's own
    layers are kept as they are."""
    plain_out, first_out, second_out = tmp_path / "gzip", tmp_path / "zstd-1", tmp_path / "zstd-2.tar"
    build(oci_project, "-o", str(plain_out))
    reference = mlenv("image", "tag", "--project", str(oci_project), "--layer-compression", "zstd",
                      check=True).stdout.split()[0]
    assert reference == f"{_reference(oci_project)}-zstd"
    built = build(oci_project, "-o", str(first_out), "--layer-compression", "zstd")
    assert built.stdout.splitlines()[0].startswith(f"{reference} built (sha256:"), built.stdout
    monkeypatch.setenv("MLENV_HOME", str(tmp_path / "other-home"))  # cold package, wheel and layer caches
    build(oci_project, "-o", str(second_out), "--layer-compression", "zstd")
    plain, first = Layout(plain_out), Layout(first_out)
    with tarfile.open(second_out) as tar:
        assert json.loads(tar.extractfile("index.json").read())["manifests"][0]["digest"] == first.manifest_digest
    assert first.manifest["config"] == plain.manifest["config"]
    assert first.manifest_digest != plain.manifest_digest
    assert first.index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == reference.rsplit(":")[1]
    assert first.manifest["layers"][0] == plain.manifest["layers"][0]  # the base's layer, untouched
    own = first.manifest["layers"][1:]
    assert len(own) == len(plain.manifest["layers"]) - 1 and {layer["mediaType"] for layer in own} == {ZSTD_LAYER}
    tars = first.layers()[1:]
    diff_ids = first.config["rootfs"]["diff_ids"][1:]
    assert ["sha256:" + hashlib.sha256(data).hexdigest() for data in tars] == diff_ids
    assert tars == plain.layers()[1:]
    assert build(oci_project, "-o", str(first_out), "--layer-compression", "zstd").stdout.strip() == \
        f"{reference} reused in {first_out}"
    assert build(oci_project, "-o", str(plain_out)).stdout.strip() == f"{_reference(oci_project)} reused in {plain_out}"


def test_zstd_layers_are_not_loaded_into_an_engine_that_cannot_read_them(oci_project: Path, tmp_path: Path,
                                                                         docker_client) -> None:  # noqa: ANN001
    """Docker reads zstd layers from 23.0 on; an older engine is refused before anything is built."""
    import docker

    version = docker_client.version()["Version"]
    reference = f"{_reference(oci_project)}-zstd"
    loaded = build(oci_project, "--load", "--layer-compression", "zstd", check=False)
    if tuple(int(n) for n in re.findall(r"\d+", version)[:2]) >= (23, 0):  # not this machine's Debian engine
        assert loaded.returncode == 0, loaded.stderr
        out = docker_client.containers.run(reference, ["mlenv-hello"], remove=True)
        assert out.decode().strip() == "hello from /opt/env"
        docker_client.images.remove(reference, force=True)
        return
    assert_clean_error(loaded, 1, f"this Docker engine ({version}) cannot read zstd layers", "Docker 23.0 or later")
    assert "writing" not in loaded.stderr  # refused before the build
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(reference)


def test_which_engines_read_zstd_layers() -> None:
    """What `--load` asks of the engine's /version answer (this machine's engine is 20.10: the others
    are answers other engines give)."""
    from hatch_mlenv.image.oci import engine_reads_zstd

    assert not engine_reads_zstd({"Version": "20.10.24+dfsg1"})
    assert not engine_reads_zstd({"Version": "22.06.0-beta.0"}) and not engine_reads_zstd({})
    assert engine_reads_zstd({"Version": "23.0.0"}) and engine_reads_zstd({"Version": "27.3.1"})
    assert engine_reads_zstd({"Version": "4.9.3", "Components": [{"Name": "Podman Engine", "Version": "4.9.3"}]})


def test_no_host_paths_in_the_layers(oci_project: Path, tmp_path: Path, isolated_registry: Path) -> None:
    out = tmp_path / "img"
    build(oci_project, "-o", str(out))
    for data in Layout(out).layers()[1:]:
        assert str(isolated_registry).encode() not in data  # the package cache's path, in conda-meta by default


def test_layers_follow_the_lock(oci_project: Path, tmp_path: Path) -> None:
    before, after = tmp_path / "before", tmp_path / "after"
    build(oci_project, "-o", str(before))
    pyproject = oci_project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("mlenv-hello ==1.0.0", "mlenv-hello ==1.1.0"))
    mlenv("lock", "--project", str(oci_project), check=True)
    build(oci_project, "-o", str(after))
    old, new = Layout(before), Layout(after)

    def by_layer(layout: Layout) -> dict[str, str]:
        history = [h for h in layout.config["history"] if "hatch-mlenv" in h.get("created_by", "")]
        return {h["created_by"].split(": ", 1)[1]: layer["digest"]
                for h, layer in zip(history, layout.manifest["layers"][1:])}

    old_layers, new_layers = by_layer(old), by_layer(new)
    assert len(old_layers) >= 3
    changed = [name for name, digest in new_layers.items() if old_layers.get(name) != digest]
    # only the layer that holds mlenv-hello (its files and its conda-meta record) changed
    assert len(changed) == 1 and "conda:mlenv-hello" in changed[0], (changed, sorted(new_layers))
    assert old.manifest["layers"][0] == new.manifest["layers"][0]  # the base


def test_secrets_never_enter_the_oci_image(oci_project: Path, tmp_path: Path) -> None:
    out = tmp_path / "img.tar"
    build(oci_project, "-o", str(out))
    raw = out.read_bytes()
    assert SECRET.encode() not in raw and b"API_TOKEN" not in raw
    with tarfile.open(out) as tar:
        tar.extractall(tmp_path / "layout", filter="data")
    layout = Layout(tmp_path / "layout")
    for data in layout.layers():
        assert SECRET.encode() not in data
    config = layout.config["config"]
    assert not any(e.startswith("API_TOKEN=") for e in config["Env"]) and "OMP_NUM_THREADS=3" in config["Env"]
    assert all(SECRET not in v for v in config["Labels"].values())
    assert SECRET not in json.dumps(layout.config["history"]) and SECRET not in json.dumps(layout.manifest)


def test_the_image_loads_runs_and_verifies(oci_project: Path, tmp_path: Path, docker_client) -> None:  # noqa: ANN001
    reference = _reference(oci_project)
    out = tmp_path / "img"
    loaded = build(oci_project, "--load", "-o", str(out))
    assert loaded.stdout.splitlines()[1:] == [f"{reference} loaded into the Docker engine",
                                              f"{reference} written to {out}"]
    layout = Layout(out)
    image = docker_client.images.get(reference)
    assert image.id == layout.manifest["config"]["digest"]  # the engine's image ID is our config's digest
    try:
        run = docker_client.containers.run(reference, ["sh", "-c", "mlenv-hello; echo $OMP_NUM_THREADS $CONDA_PREFIX; "
                                                       "ls /opt/env/lib/python3.11/site-packages"], remove=True)
        hello, values, *site = run.decode().splitlines()
        assert hello == "hello from /opt/env" and values == "3 /opt/env" and "mlenv_tiny" in site
        assert image.labels["io.mlenv.base-image-digest"] == layout.manifest["annotations"]["org.opencontainers.image.base.digest"]
        assert image.labels["io.mlenv.digest"].startswith("sha256:")
        assert build(oci_project, "--load").stdout.strip() == f"{reference} reused in the Docker engine"
    finally:
        docker_client.images.remove(reference, force=True)

    root = tmp_path / "root"
    layout.extract(root)
    verified = mlenv("verify", "--project", str(oci_project), "--prefix", str(root / "opt" / "env"), check=True)
    assert "matches conda-lock.yml" in verified.stdout
    (root / "opt" / "env" / "bin" / "mlenv-hello").write_text("#!/bin/sh\necho tampered\n")
    assert mlenv("verify", "--project", str(oci_project), "--prefix", str(root / "opt" / "env")).returncode == 1


def test_activation_scripts_run_in_the_oci_image(oci_project: Path, docker_client) -> None:  # noqa: ANN001
    pyproject = oci_project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"python-dateutil"]', '"python-dateutil", "mlenv-activate"]'))
    mlenv("lock", "--project", str(oci_project), check=True)
    reference = _reference(oci_project)
    build(oci_project, "--load")
    try:
        config = docker_client.images.get(reference).attrs["Config"]
        assert config["Entrypoint"] == ["/opt/env/etc/hatch-mlenv/entrypoint.sh"] and config["Cmd"] == ["/bin/sh"]
        out = docker_client.containers.run(reference, ["sh", "-c", 'echo "$MLENV_ACTIVATED"; mlenv-hello'], remove=True)
        assert out.decode().splitlines() == ["activated in /opt/env", "hello from /opt/env"]
    finally:
        docker_client.images.remove(reference, force=True)


def _push_layout(registry, layout: Path, repo: str, tag: str) -> None:  # noqa: ANN001
    """Put an OCI layout's image into a registry (the base for a registry-based build)."""
    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"]
    manifest = (layout / "blobs" / "sha256" / digest.split(":")[1]).read_bytes()
    parsed = json.loads(manifest)
    for descriptor in [parsed["config"], *parsed["layers"]]:
        registry.upload_blob(repo, descriptor["digest"],
                             (layout / "blobs" / "sha256" / descriptor["digest"].split(":")[1]).read_bytes())
    registry.put_manifest(repo, tag, manifest, parsed["mediaType"])


def test_base_from_a_registry_push_with_referrers_and_pull(oci_project: Path, tmp_path: Path, oci_registry,
                                                           docker_client, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    from hatch_mlenv.registry.oci import OciRegistry

    monkeypatch.setenv("MLENV_REGISTRY_USERNAME", oci_registry.user)
    monkeypatch.setenv("MLENV_REGISTRY_PASSWORD", oci_registry.password)
    registry = OciRegistry(f"oci://{oci_registry.host}")
    _push_layout(registry, oci_project / "base-layout", "bases/busybox", "1")
    pyproject = oci_project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace(
        'base-image = "oci:base-layout:busybox"',
        f'base-image = "{oci_registry.host}/bases/busybox:1"\nregistry = "{oci_registry.host}"'))
    mlenv("lock", "--project", str(oci_project), check=True)
    reference = _reference(oci_project)
    pushed = build(oci_project, "--push", "-o", str(tmp_path / "img"))
    lines = pushed.stdout.splitlines()
    assert lines[0].startswith(f"{reference} built (sha256:")
    assert lines[1].startswith(f"{reference} pushed: ") and "bytes sent (100.00%)" not in lines[1]  # the base was there
    host = oci_registry.host
    assert re.search(rf"^mlenv: pushing sha256:[0-9a-f]{{12}} \([\d.]+ MiB\) to {re.escape(host)}/", pushed.stderr,
                     re.MULTILINE), pushed.stderr  # each blob it sends, as a step (MLENV_PROGRESS=1: see conftest)
    layout = Layout(tmp_path / "img")
    base_digest = json.loads(registry.fetch_manifest("bases/busybox", "1", ("application/vnd.oci.image.manifest.v1+json",))[0])
    assert layout.manifest["layers"][0] == base_digest["layers"][0]  # the base's layer, by digest
    assert build(oci_project, "--push").stdout.strip() == f"{reference} reused in the registry"
    # registered after the push: the next push adds the version's tag to the manifest already there
    mlenv("register", "--project", str(oci_project), check=True)
    tagged = build(oci_project, "--push").stdout.splitlines()
    repository = reference.rsplit(":", 1)[0]
    assert tagged == [f"{reference} reused in the registry", f"{repository}:v1 tagged in the registry"]
    v1 = registry.fetch_manifest(reference.split("/", 1)[1].rsplit(":", 1)[0], "v1",
                                 ("application/vnd.oci.image.manifest.v1+json",))
    assert "sha256:" + hashlib.sha256(v1[0]).hexdigest() == layout.manifest_digest
    assert build(oci_project, "--push").stdout.strip() == f"{reference} reused in the registry"

    # SBOM and lock as referrers: Debian's distribution 2.8 has no referrers API, so the fallback tag
    repo = reference.split("/", 1)[1].rsplit(":", 1)[0]
    assert registry.referrers(repo, layout.manifest_digest) is None
    fallback = registry.fetch_manifest(repo, f"sha256-{layout.manifest_digest.split(':')[1]}",
                                       ("application/vnd.oci.image.index.v1+json",))
    referrers = json.loads(fallback[0])["manifests"]
    assert sorted(r["artifactType"] for r in referrers) == ["application/vnd.cyclonedx+json",
                                                            "application/vnd.mlenv.lockfile.v1+yaml"]
    for referrer in referrers:
        artifact = json.loads(registry.fetch_manifest(repo, referrer["digest"],
                                                      ("application/vnd.oci.image.manifest.v1+json",))[0])
        assert artifact["subject"]["digest"] == layout.manifest_digest
        content = registry.blob(repo, artifact["layers"][0]["digest"])
        if referrer["artifactType"].endswith("yaml"):
            assert content == (oci_project / "conda-lock.yml").read_bytes()
        else:
            assert json.loads(content)["bomFormat"] == "CycloneDX"
            assert SECRET.encode() not in content

    # a one-package change sends only what changed
    pyproject.write_text(pyproject.read_text().replace("mlenv-hello ==1.0.0", "mlenv-hello ==1.1.0"))
    mlenv("lock", "--project", str(oci_project), check=True)
    second = build(oci_project, "--push").stdout.splitlines()[1]
    sent, total = (int(n.replace(",", "")) for n in re.match(r".* pushed: ([\d,]+) of ([\d,]+) bytes sent", second).groups())
    assert 0 < sent < total / 2, second

    # zstd layers go under their own tag, beside the gzip image of the same lock, which stays as it was
    manifest_type = ("application/vnd.oci.image.manifest.v1+json",)
    plain_tag = _reference(oci_project).rsplit(":", 1)[1]
    plain_before = registry.fetch_manifest(repo, plain_tag, manifest_type)[0]
    zstd = build(oci_project, "--push", "--layer-compression", "zstd").stdout.splitlines()
    assert zstd[0].startswith(f"{repository}:{plain_tag}-zstd built") and \
        zstd[1].startswith(f"{repository}:{plain_tag}-zstd pushed: "), zstd
    remote = json.loads(registry.fetch_manifest(repo, f"{plain_tag}-zstd", manifest_type)[0])
    assert {layer["mediaType"] for layer in remote["layers"][1:]} == {ZSTD_LAYER}
    assert remote["config"] == json.loads(plain_before)["config"]
    assert registry.fetch_manifest(repo, plain_tag, manifest_type)[0] == plain_before

    # the engine pulls the pushed image by digest and runs it
    auth = {"username": oci_registry.user, "password": oci_registry.password}
    repository = reference.rsplit(":", 1)[0]
    pulled = docker_client.images.pull(f"{repository}@{layout.manifest_digest}", auth_config=auth)
    try:
        out = docker_client.containers.run(pulled.id, ["mlenv-hello"], remove=True)
        assert out.decode().strip() == "hello from /opt/env"
    finally:
        docker_client.images.remove(pulled.id, force=True)


# -- bad input ----------------------------------------------------------------------------

def _no_leftovers(directory: Path) -> None:
    assert not [p.name for p in directory.iterdir() if p.name.startswith(".mlenv-oci")]


def test_base_not_found(oci_project: Path, tmp_path: Path) -> None:
    pyproject = oci_project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("oci:base-layout:busybox", "oci:no-such-layout"))
    mlenv("lock", "--project", str(oci_project), check=True)
    out = tmp_path / "img"
    assert_clean_error(build(oci_project, "-o", str(out), check=False), 1,
                       "base image 'oci:no-such-layout' not found", "not an OCI image layout")
    assert not out.exists()
    _no_leftovers(tmp_path)
    pyproject.write_text(pyproject.read_text().replace("oci:no-such-layout", "oci:base-layout:other-tag"))
    mlenv("lock", "--project", str(oci_project), check=True)
    assert_clean_error(build(oci_project, "-o", str(out), check=False), 1,
                       "base image 'oci:base-layout:other-tag' not found", "no image 'other-tag'")
    assert not out.exists()


def test_base_missing_from_the_registry_and_refused_credentials(oci_project: Path, tmp_path: Path, oci_registry,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    pyproject = oci_project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace(
        'base-image = "oci:base-layout:busybox"',
        f'base-image = "{oci_registry.host}/bases/nothing:1"\nregistry = "{oci_registry.host}"'))
    mlenv("lock", "--project", str(oci_project), check=True)
    monkeypatch.setenv("MLENV_REGISTRY_USERNAME", oci_registry.user)
    monkeypatch.setenv("MLENV_REGISTRY_PASSWORD", oci_registry.password)
    out = tmp_path / "img"
    assert_clean_error(build(oci_project, "-o", str(out), check=False), 1,
                       f"base image '{oci_registry.host}/bases/nothing:1' not found in the registry")
    monkeypatch.setenv("MLENV_REGISTRY_PASSWORD", "wrong")
    assert_clean_error(build(oci_project, "--push", "-o", str(out), check=False), 1,
                       "refused the credentials")
    assert not out.exists()
    _no_leftovers(tmp_path)


def test_unwritable_output(oci_project: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = build(oci_project, "-o", str(blocker / "img"), check=False)
    assert_clean_error(result, 1, str(blocker / "img"), "cannot write the image")
    assert blocker.read_text() == "not a directory"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert_clean_error(build(oci_project, "-o", str(foreign), check=False), 1, "is not an OCI image layout")
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    # a tar of the user's own files, and the base's own layout, are never replaced
    import tarfile

    backup = tmp_path / "backup.tar"
    with tarfile.open(backup, "w") as tar:
        tar.add(foreign / "notes.txt", arcname="notes.txt")
    before = backup.read_bytes()
    assert_clean_error(build(oci_project, "-o", str(backup), check=False), 1, str(backup),
                       "holds something hatch-mlenv did not write")
    assert backup.read_bytes() == before
    base = oci_project / "base-layout"
    index = (base / "index.json").read_bytes()
    assert_clean_error(build(oci_project, "-o", str(base), check=False), 1, "is the base image's layout")
    assert (base / "index.json").read_bytes() == index
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    assert_clean_error(build(oci_project, "-o", str(notes), check=False), 1, "is not a directory or a .tar")
    _no_leftovers(tmp_path)


def test_lock_without_linux(tmp_path: Path, channel: Path) -> None:
    project = write_project(tmp_path / "p", f'channels = ["{channel}"]\nplatforms = ["osx-arm64"]\nconda = ["mlenv-hello"]\n')
    mlenv("lock", "--project", str(project), check=True)
    out = tmp_path / "img"
    assert_clean_error(build(project, "-o", str(out), check=False), 1, "no linux-64 packages")
    assert not out.exists()
    _no_leftovers(tmp_path)


def test_options_that_need_the_oci_builder(oci_project: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    assert_clean_error(build(oci_project, check=False), 2, "needs somewhere to put the image")
    docker_with_output = mlenv("image", "build", "--project", str(oci_project), "-o", str(tmp_path / "x"))
    assert_clean_error(docker_with_output, 2, "options of --builder oci")
    docker_with_zstd = mlenv("image", "build", "--project", str(oci_project), "--layer-compression", "zstd")
    assert_clean_error(docker_with_zstd, 2, "zstd layers are written by the oci builder")
    assert_clean_error(build(oci_project, "-o", str(tmp_path / "x"), "--layer-compression", "lz4", check=False), 2,
                       "--layer-compression")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    assert_clean_error(build(oci_project, "-o", str(tmp_path / "x"), check=False), 2, "SOURCE_DATE_EPOCH")
    assert not (tmp_path / "x").exists()


def test_build_hook_with_the_oci_builder(oci_project: Path) -> None:
    import subprocess
    import sys

    pyproject = oci_project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + """
[build-system]
requires = ["hatchling", "hatch-mlenv"]
build-backend = "hatchling.build"
[tool.hatch.build.targets.wheel]
bypass-selection = true
[tool.hatch.build.hooks.mlenv]
image = "build"
image-builder = "oci"
[tool.hatch.envs.hatch-build]
type = "system"
""")

    def hatch_build() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "hatch", "build", "-t", "wheel"], cwd=oci_project,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=600)

    built = hatch_build()
    assert built.returncode == 0, built.stderr
    layout = Layout(oci_project / "build" / "mlenv-image.oci")
    manifest = json.loads(next((oci_project / "dist").glob("*.mlenv.json")).read_text())
    assert manifest["image_digest"] == layout.manifest_digest
    assert manifest["image"] == _reference(oci_project)
    assert layout.config["config"]["Labels"]["io.mlenv.version"] == "1"

    pyproject.write_text(pyproject.read_text().replace('image-builder = "oci"', 'image-builder = "kaniko"'))
    bad = hatch_build()
    assert bad.returncode != 0 and "tool.hatch.build.hooks.mlenv.image-builder: must be one of" in bad.stderr

    # zstd layers: the manifest names the image by its own tag
    pyproject.write_text(pyproject.read_text().replace('image-builder = "kaniko"',
                                                       'image-builder = "oci"\nimage-layer-compression = "zstd"'))
    built = hatch_build()
    assert built.returncode == 0, built.stderr
    layout = Layout(oci_project / "build" / "mlenv-image.oci")
    manifest = json.loads(next((oci_project / "dist").glob("*.mlenv.json")).read_text())
    assert (manifest["image"], manifest["image_digest"]) == (f"{_reference(oci_project)}-zstd", layout.manifest_digest)
    assert {layer["mediaType"] for layer in layout.manifest["layers"][1:]} == {ZSTD_LAYER}
    pyproject.write_text(pyproject.read_text().replace('image-layer-compression = "zstd"',
                                                       'image-layer-compression = "lz4"'))
    bad = hatch_build()
    assert bad.returncode != 0 and "tool.hatch.build.hooks.mlenv.image-layer-compression: must be one of" in bad.stderr
    pyproject.write_text(pyproject.read_text().replace('image-layer-compression = "lz4"', 'image-layer-compression = '
                                                       '"zstd"').replace('image-builder = "oci"', 'image-builder = "docker"'))
    bad = hatch_build()
    assert bad.returncode != 0 and "tool.hatch.build.hooks.mlenv.image-layer-compression: zstd layers are written " \
        "by the oci builder" in bad.stderr, bad.stderr
