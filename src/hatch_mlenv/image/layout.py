"""OCI image layouts: reading a base image (from a layout directory or a registry, by digest) and
writing an image's layout (blobs, `index.json`, Docker's `manifest.json`, a tar of it).

Everything written here is canonical JSON or a tar with every varying field fixed: the same
image gives the same bytes on any machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hatch_mlenv.errors import ImageError, RegistryError
from hatch_mlenv.errors import first_line as _first_line
from hatch_mlenv.paths import cache_dir

OCI_LAYOUT = {"imageLayoutVersion": "1.0.0"}
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
SBOM_TYPE = "application/vnd.cyclonedx+json"
LOCK_TYPE = "application/vnd.mlenv.lockfile.v1+yaml"
_MANIFEST_TYPES = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST)
# The base's layers keep their bytes; Docker's media types become their OCI equivalents.
# A base with zstd layers is refused: a gzip image built on it would carry them into an engine that
# cannot read them, under the tag that promises gzip.
_LAYER_TYPES = {DOCKER_LAYER_GZIP: LAYER_GZIP, DOCKER_LAYER_TAR: LAYER_TAR, LAYER_GZIP: LAYER_GZIP, LAYER_TAR: LAYER_TAR}


# -- descriptors and the base image -------------------------------------------------------

@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] | None = field(default=None, hash=False)

    def as_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            result["annotations"] = self.annotations
        return result


@dataclass(frozen=True)
class Base:
    name: str  # as the spec gives it
    digest: str  # of its manifest: what the image is built on
    config: dict[str, Any]
    layers: tuple[Descriptor, ...]
    fetch: Callable[[Descriptor, Path], None]  # writes a blob (checked against its digest) to a path
    source: tuple[str, str] | None = None  # (registry host, repository) when pulled from a registry


def canonical(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def resolve_base(base_image: str, layout: Path | None, reference: str | None, registry: tuple[str, str] | None) -> Base:
    """The base image named by `[tool.mlenv.docker] base-image`, by digest: from the OCI layout
    directory `layout` (an `oci:` base), else from `registry` (host, repository); `reference` is
    the tag or digest (None: a layout's only image). The plan has read all three from the name."""
    if layout is not None:
        return _layout_base(base_image, layout, reference)
    host, repo = registry or ("", "")
    return _registry_base(base_image, host, repo, reference or "latest")


def _choose_platform(index: dict[str, Any], base_image: str) -> dict[str, Any]:
    for entry in index.get("manifests") or []:
        platform = entry.get("platform") or {}
        if platform.get("os") == "linux" and platform.get("architecture") == "amd64":
            return entry
    raise ImageError(f"base image {base_image!r} has no linux/amd64 image in its index")


def _layout_base(base_image: str, root: Path, reference: str | None) -> Base:
    index_path = root / "index.json"
    if not index_path.is_file():
        raise ImageError(f"base image {base_image!r} not found: {root} is not an OCI image layout (no index.json)")

    def read_blob(digest: str) -> bytes:
        path = root / "blobs" / digest.replace(":", "/", 1)
        try:
            data = path.read_bytes()
        except OSError:
            raise ImageError(f"base image {base_image!r}: blob {digest} is missing from {root}") from None
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise ImageError(f"base image {base_image!r}: blob {digest} in {root} does not match its digest")
        return data

    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError) as exc:
        raise ImageError(f"base image {base_image!r}: cannot read {index_path}: {_first_line(exc)}") from None
    entries = index.get("manifests") or []
    if reference is not None and reference.startswith("sha256:"):
        chosen = [e for e in entries if e.get("digest") == reference]
    elif reference is not None:
        chosen = [e for e in entries if (e.get("annotations") or {}).get("org.opencontainers.image.ref.name") == reference]
    else:
        chosen = entries
    if len(chosen) != 1:
        what = f"no image {reference!r}" if reference and not chosen else f"{len(chosen)} images; name one as oci:PATH:TAG"
        raise ImageError(f"base image {base_image!r} not found: {root} holds {what}")
    entry = chosen[0]
    manifest = json.loads(read_blob(entry["digest"]))
    if entry.get("mediaType") in (OCI_INDEX, DOCKER_LIST) or manifest.get("manifests"):
        entry = _choose_platform(manifest, base_image)
        manifest = json.loads(read_blob(entry["digest"]))

    def fetch(descriptor: Descriptor, target: Path) -> None:
        source = root / "blobs" / descriptor.digest.replace(":", "/", 1)
        if not source.is_file():
            raise ImageError(f"base image {base_image!r}: blob {descriptor.digest} is missing from {root}")
        link_or_copy(source, target)
        if sha256_file(target) != descriptor.digest:
            target.unlink()
            raise ImageError(f"base image {base_image!r}: blob {descriptor.digest} in {root} does not match its digest")

    return _base_from(base_image, entry["digest"], manifest, json.loads(read_blob(manifest["config"]["digest"])), fetch)


def _base_from(name: str, digest: str, manifest: dict[str, Any], config: dict[str, Any],
               fetch: Callable[[Descriptor, Path], None], source: tuple[str, str] | None = None) -> Base:
    layers = []
    for layer in manifest.get("layers") or []:
        media_type = _LAYER_TYPES.get(layer.get("mediaType", ""))
        if media_type is None:
            raise ImageError(f"base image {name!r}: layer media type {layer.get('mediaType')!r} is not supported")
        layers.append(Descriptor(media_type, layer["digest"], int(layer["size"])))
    return Base(name, digest, config, tuple(layers), fetch, source)


def _registry_base(base_image: str, host: str, repo: str, reference: str) -> Base:
    # lazy: the registry client (requests, oras), only when a base is pulled; `mlenv image tag` needs none
    from hatch_mlenv.registry.oci import OciRegistry

    registry = OciRegistry(f"oci://{host}")
    try:
        found = registry.fetch_manifest(repo, reference, _MANIFEST_TYPES)
        if found is None:
            raise ImageError(f"base image {base_image!r} not found in the registry {host}")
        body, media_type = found
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise ImageError(f"base image {base_image!r}: the registry sent a manifest of digest {digest}")
        manifest = json.loads(body)
        if media_type in (OCI_INDEX, DOCKER_LIST) or manifest.get("manifests"):
            digest = _choose_platform(manifest, base_image)["digest"]
            found = registry.fetch_manifest(repo, digest, _MANIFEST_TYPES)
            if found is None:
                raise ImageError(f"base image {base_image!r}: the registry has no manifest {digest}")
            manifest = json.loads(found[0])
        blobs = cache_blobs()

        def fetch(descriptor: Descriptor, target: Path) -> None:
            cached = blobs / descriptor.digest.replace(":", "/", 1)
            if not cached.is_file() or sha256_file(cached) != descriptor.digest:
                data = registry.blob(repo, descriptor.digest)
                if "sha256:" + hashlib.sha256(data).hexdigest() != descriptor.digest:
                    raise ImageError(f"base image {base_image!r}: blob {descriptor.digest} does not match its digest")
                cached.parent.mkdir(parents=True, exist_ok=True)
                partial = cached.with_name(cached.name + f".{os.getpid()}.part")
                partial.write_bytes(data)
                os.replace(partial, cached)
            link_or_copy(cached, target)

        config = json.loads(registry.blob(repo, manifest["config"]["digest"]))
    except RegistryError as exc:
        raise ImageError(f"base image {base_image!r}: {exc}") from None
    return _base_from(base_image, digest, manifest, config, fetch, (host, repo))


def cache_blobs() -> Path:
    return cache_dir() / "oci" / "blobs"


def link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        return
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


# -- writing a layout ----------------------------------------------------------------------

def tar_entries(tar: tarfile.TarFile, source_root: Path, paths: tuple[str, ...], mtime: int) -> None:
    """Write `paths` (relative to the image root; files under `source_root`) with their parent
    directories, sorted, with every varying field fixed."""
    written: set[str] = set()

    def info(name: str) -> tarfile.TarInfo:
        entry = tarfile.TarInfo(name)
        entry.mtime, entry.uid, entry.gid, entry.uname, entry.gname = mtime, 0, 0, "", ""
        return entry

    entries: dict[str, str] = {}
    for path in paths:
        is_dir = path.endswith("/")
        path = path.rstrip("/")
        parts = path.split("/")
        for depth in range(1, len(parts)):
            entries.setdefault("/".join(parts[:depth]), "dir")
        entries[path] = "dir" if is_dir else "entry"
    for name in sorted(entries):
        if name in written:
            continue
        written.add(name)
        source = source_root / name
        entry = info(name)
        if entries[name] == "dir":
            entry.type, entry.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(entry)
        elif source.is_symlink():
            entry.type, entry.mode, entry.linkname = tarfile.SYMTYPE, 0o777, os.readlink(source)
            tar.addfile(entry)
        else:
            stat = source.stat()
            entry.size, entry.mode = stat.st_size, 0o755 if stat.st_mode & 0o111 else 0o644
            with open(source, "rb") as handle:
                tar.addfile(entry, handle)


def open_tar(stream: Any) -> tarfile.TarFile:
    return tarfile.open(fileobj=stream, mode="w|", format=tarfile.GNU_FORMAT, encoding="utf-8", errors="surrogateescape")


def write_index(layout: Path, manifest: Descriptor, config: Descriptor, layers: tuple[Descriptor, ...],
                repository: str, tags: tuple[str, ...], lock_digest: str) -> None:
    """index.json (one entry per tag), oci-layout, and Docker's manifest.json (for `docker load`)."""
    entries = [
        Descriptor(OCI_MANIFEST, manifest.digest, manifest.size, {
            "org.opencontainers.image.ref.name": tag,
            "io.containerd.image.name": f"{repository}:{tag}",
            "io.mlenv.digest": f"sha256:{lock_digest}",
        }).as_dict()
        for tag in tags
    ]
    (layout / "index.json").write_bytes(canonical({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}))
    (layout / "oci-layout").write_bytes(canonical(OCI_LAYOUT))
    docker = [{
        "Config": f"blobs/sha256/{config.digest.split(':')[1]}",
        "RepoTags": [f"{repository}:{tag}" for tag in tags],
        "Layers": [f"blobs/sha256/{d.digest.split(':')[1]}" for d in layers],
    }]
    (layout / "manifest.json").write_bytes(canonical({"list": docker})[len(b'{"list":'):-1])


def layout_tar(layout: Path, out: Any) -> None:
    """The layout directory as one tar (sorted, fixed times and owners: the same bytes each time)."""
    paths = tuple(
        str(p.relative_to(layout)) for p in layout.rglob("*") if p.is_file() and not p.name.endswith(".part")
    )
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.GNU_FORMAT, encoding="utf-8") as tar:
        tar_entries(tar, layout, paths, 0)


# -- what an output already holds ----------------------------------------------------------

def check_output(output: Path, base_image: str, base_layout: Path | None, tag: str, lock_digest: str) -> str | None:
    """`-o` replaces what is there only when it is an image this builder wrote (every image in its
    index carries `io.mlenv.digest`), and never the base's own layout (`base_layout`): checked
    before building. Returns the manifest digest of `tag` when `output` holds this lock's image."""
    if base_layout is not None and output.resolve() == base_layout.resolve():
        raise ImageError(f"{output}: is the base image's layout ({base_image}); choose another -o")
    if not output.exists() or (output.is_dir() and not any(output.iterdir())):
        return None
    if output.is_dir() and not (output / "oci-layout").is_file():
        raise ImageError(f"{output}: exists and is not an OCI image layout; choose another -o")
    if not output.is_dir() and output.suffix != ".tar":
        raise ImageError(f"{output}: exists and is not a directory or a .tar; choose another -o")
    manifests = index_entries(output)
    if not manifests or not all("io.mlenv.digest" in (entry.get("annotations") or {}) for entry in manifests):
        raise ImageError(f"{output}: exists and holds something hatch-mlenv did not write (other images, or "
                         "another file); it is not replaced: choose another -o or remove it")
    return layout_holds(output, tag, lock_digest)


def index_entries(output: Path) -> list[dict[str, Any]] | None:
    """The manifests of the `index.json` of a layout directory or tar; None when there is none."""
    try:
        if output.is_dir():
            index = json.loads((output / "index.json").read_text())
        else:
            with tarfile.open(output) as tar:
                member = tar.extractfile("index.json")
                index = json.loads(member.read()) if member else {}
    except (OSError, ValueError, KeyError, tarfile.TarError):
        return None
    return list(index.get("manifests") or []) if isinstance(index, dict) else None


def layout_holds(output: Path, tag: str, lock_digest: str) -> str | None:
    """The manifest digest of `tag` in an existing layout dir or tar at `output`, if it is this lock's."""
    if not output.exists():
        return None
    for entry in index_entries(output) or []:
        annotations = entry.get("annotations") or {}
        if annotations.get("org.opencontainers.image.ref.name") == tag and annotations.get("io.mlenv.digest") == f"sha256:{lock_digest}":
            return entry.get("digest")
    return None
