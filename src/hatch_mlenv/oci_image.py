"""The `oci` image builder: an image assembled without any daemon, the same bytes on any machine.

- The base image is taken by digest from an OCI registry (`host[:port]/repo[:tag|@digest]`,
  Docker Hub names too) or from an OCI image layout directory (`oci:PATH[:TAG|@DIGEST]`,
  PATH relative to the project), as `[tool.mlenv.docker] base-image` names it. Its digest is
  recorded in the manifest's annotations and in the `io.mlenv.base-image-digest` label.
- The linux-64 lock is installed for the image's prefix exactly as the docker builder's host
  strategy does (`image.stage_prefix`), then written as layers that follow the lock: a package
  of `LARGE_PACKAGE` bytes or more gets a layer of its own, the others share `BUCKETS` layers
  chosen by a hash of their name, so changing one package changes the layer that holds it (and
  the last, small layer of files no package owns), not the whole environment.
- Reproducible to the byte: entries sorted, mtime `SOURCE_DATE_EPOCH` (else 0), uid/gid 0 and
  no user names, modes normalised (0755/0644, links 0777), GNU tar headers (no pax records),
  gzip with mtime 0, no file name and a fixed level; the config's `created` is the same epoch.
  What the installer leaves that names this host (the package cache's path in conda-meta) is
  taken out. Compressed layers are kept in the user cache by their uncompressed digest: a
  rebuild compresses only what changed (the bytes are the same either way).
- Outputs: an OCI image layout directory, or a tar of one (`.tar`), that also carries Docker's
  `manifest.json` so `docker load` of any engine takes it; `--push` to the image's registry
  with the OCI environment registry's client (same credentials), reporting pushed and skipped
  bytes, with the CycloneDX SBOM and the lock attached as OCI referrers (the referrers API, or
  the `sha256-<hex>` fallback tag where the registry has none); `--load` into a Docker engine.
- An output that already holds this image (by tag) is reused, not rebuilt. A failure leaves no
  partial layout or tar behind.
"""

from __future__ import annotations

import datetime
import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hatch_mlenv import __version__, progress
from hatch_mlenv.errors import ConfigError, ImageError, MlenvError, UsageError
from hatch_mlenv.errors import first_line as _first_line

OCI_LAYOUT = {"imageLayoutVersion": "1.0.0"}
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
SBOM_TYPE = "application/vnd.cyclonedx+json"
LOCK_TYPE = "application/vnd.mlenv.lockfile.v1+yaml"
_MANIFEST_TYPES = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST)
# The base's layers keep their bytes; Docker's media types become their OCI equivalents.
_LAYER_TYPES = {DOCKER_LAYER_GZIP: LAYER_GZIP, DOCKER_LAYER_TAR: LAYER_TAR, LAYER_GZIP: LAYER_GZIP, LAYER_TAR: LAYER_TAR}

LARGE_PACKAGE = 4 * 2**20  # installed bytes from which a package has a layer of its own
MAX_OWN_LAYERS = 60  # the largest packages only: engines refuse images of more than ~127 layers
BUCKETS = 8  # layers shared by the smaller packages
GZIP_LEVEL = 1  # fixed: part of the bytes. 1 is 2.2x faster than 6 for 3% more bytes (bench/oci_image.py)
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # Docker's, for a base without PATH
DOCKER_HUB = "registry-1.docker.io"


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


def epoch() -> int:
    """`SOURCE_DATE_EPOCH` (reproducible-builds.org), else 0: every time the image holds."""
    value = os.environ.get("SOURCE_DATE_EPOCH", "0").strip() or "0"
    try:
        seconds = int(value)
    except ValueError:
        raise UsageError(f"SOURCE_DATE_EPOCH must be a whole number of seconds since 1970, not {value!r}") from None
    if seconds < 0:
        raise UsageError(f"SOURCE_DATE_EPOCH must not be negative, not {value!r}")
    return seconds


def _created(seconds: int) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _canonical(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def resolve_base(base_image: str, project_dir: Path) -> Base:
    """The base image named by `[tool.mlenv.docker] base-image`, by digest."""
    if base_image.startswith("oci:"):
        return _layout_base(base_image, project_dir)
    return _registry_base(base_image)


def _choose_platform(index: dict[str, Any], base_image: str) -> dict[str, Any]:
    for entry in index.get("manifests") or []:
        platform = entry.get("platform") or {}
        if platform.get("os") == "linux" and platform.get("architecture") == "amd64":
            return entry
    raise ImageError(f"base image {base_image!r} has no linux/amd64 image in its index")


def _layout_location(base_image: str, project_dir: Path) -> tuple[Path, str | None]:
    """`oci:PATH[:TAG|@DIGEST]` -> the layout directory (PATH relative to the project) and the tag or digest.
    The spec's reading (`spec.image_reference_problem`) keeps a relative PATH inside the project."""
    from hatch_mlenv.spec import split_oci_layout

    spec, reference = split_oci_layout(base_image)
    return ((project_dir / spec).resolve() if not Path(spec).is_absolute() else Path(spec)), reference


def _layout_base(base_image: str, project_dir: Path) -> Base:
    root, reference = _layout_location(base_image, project_dir)
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
        _link_or_copy(source, target)
        if _sha256_file(target) != descriptor.digest:
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


def split_reference(reference: str) -> tuple[str, str, str]:
    """`host[:port]/repo[:tag][@digest]` -> (registry host, repository, tag or digest); Docker Hub for no host."""
    name, digest = (reference.split("@", 1) + [""])[:2]
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        host, path = first, rest
    else:
        host, path = DOCKER_HUB, name if "/" in name else f"library/{name}"
    tag = ""
    if ":" in path.rsplit("/", 1)[-1]:
        path, tag = path.rsplit(":", 1)
    return host, path, digest or tag or "latest"


def _open_registry(host: str):  # -> OciRegistry
    from hatch_mlenv.registry.oci import OciRegistry

    return OciRegistry(f"oci://{host}")


def _registry_base(base_image: str) -> Base:
    from hatch_mlenv.errors import RegistryError

    host, repo, reference = split_reference(base_image)
    registry = _open_registry(host)
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
            if not cached.is_file() or _sha256_file(cached) != descriptor.digest:
                data = registry.blob(repo, descriptor.digest)
                if "sha256:" + hashlib.sha256(data).hexdigest() != descriptor.digest:
                    raise ImageError(f"base image {base_image!r}: blob {descriptor.digest} does not match its digest")
                cached.parent.mkdir(parents=True, exist_ok=True)
                partial = cached.with_name(cached.name + f".{os.getpid()}.part")
                partial.write_bytes(data)
                os.replace(partial, cached)
            _link_or_copy(cached, target)

        config = json.loads(registry.blob(repo, manifest["config"]["digest"]))
    except RegistryError as exc:
        raise ImageError(f"base image {base_image!r}: {exc}") from None
    return _base_from(base_image, digest, manifest, config, fetch, (host, repo))


def cache_blobs() -> Path:
    from hatch_mlenv.paths import cache_dir

    return cache_dir() / "oci" / "blobs"


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        return
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


# -- layers --------------------------------------------------------------------------------

@dataclass(frozen=True)
class LayerPlan:
    """One layer of the environment: what it holds (paths relative to the image root) and why."""

    key: str  # "pkg:NAME", "group:K" or "mlenv"
    comment: str  # for the history: which packages
    paths: tuple[str, ...]
    size: int  # installed bytes


def _owners(prefix: Path) -> tuple[dict[str, str], dict[str, int]]:
    """prefix-relative path -> owning package ("conda:NAME" / "pip:NAME"), and each package's bytes."""
    import csv

    owner: dict[str, str] = {}
    for record_path in sorted((prefix / "conda-meta").glob("*.json")):
        record = json.loads(record_path.read_text(encoding="utf-8"))
        key = f"conda:{record['name']}"
        owner.setdefault(f"conda-meta/{record_path.name}", key)
        for path in record.get("files") or []:
            owner.setdefault(path, key)
    for record_file in sorted(prefix.glob("lib/python*/site-packages/*.dist-info/RECORD")):
        dist_info = record_file.parent
        if (dist_info / "INSTALLER").is_file() and (dist_info / "INSTALLER").read_text().strip() == "conda":
            continue
        key = f"pip:{dist_info.name.split('-')[0].lower()}"
        for row in csv.reader(record_file.read_text(errors="replace").splitlines()):
            if row:
                path = os.path.relpath(os.path.normpath(dist_info.parent / row[0]), prefix)
                owner.setdefault(path, key)
    sizes: dict[str, int] = {}
    for path, key in owner.items():
        full = prefix / path
        if full.is_file() and not full.is_symlink():
            sizes[key] = sizes.get(key, 0) + full.stat().st_size
        else:
            sizes.setdefault(key, 0)
    return owner, sizes


def _bucket(package: str) -> int:
    return int(hashlib.sha256(package.encode()).hexdigest()[:8], 16) % BUCKETS


def plan_layers(prefix: Path, image_prefix: str) -> list[LayerPlan]:
    """The environment's files grouped into layers that follow the lock (see the module's docstring)."""
    owner, sizes = _owners(prefix)
    large = sorted((k for k, s in sizes.items() if s >= LARGE_PACKAGE), key=lambda k: (-sizes[k], k))[:MAX_OWN_LAYERS]
    own = set(large)
    root = image_prefix.strip("/")
    groups: dict[str, list[str]] = {}
    for entry in _walk(prefix):
        key = owner.get(entry)
        if key is None:
            layer = "mlenv"
        elif key in own:
            layer = f"pkg:{key}"
        else:
            layer = f"group:{_bucket(key)}"
        groups.setdefault(layer, []).append(f"{root}/{entry}")
    members: dict[str, set[str]] = {}
    for path, key in owner.items():
        members.setdefault(f"pkg:{key}" if key in own else f"group:{_bucket(key)}", set()).add(key)
    order = [f"pkg:{k}" for k in large] + [f"group:{i}" for i in range(BUCKETS)] + ["mlenv"]
    layers = []
    for key in order:
        if key not in groups:
            continue
        names = sorted(members.get(key, ()))
        comment = f"files no package owns under {image_prefix}" if key == "mlenv" else ", ".join(names)
        size = sum(sizes.get(n, 0) for n in names)
        layers.append(LayerPlan(key, comment, tuple(sorted(groups[key])), size))
    return layers


def _walk(prefix: Path) -> Iterator[str]:
    """Every file and symlink under prefix (relative), and every empty directory."""
    for root, dirs, files in os.walk(prefix):
        relative = os.path.relpath(root, prefix)
        for name in dirs:
            full = os.path.join(root, name)
            if os.path.islink(full):
                yield os.path.normpath(os.path.join(relative, name))
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d))]
        for name in files:
            yield os.path.normpath(os.path.join(relative, name))
        if not dirs and not files and relative != ".":
            yield relative + "/"


class _Hashing(io.RawIOBase):
    """A write-only stream that hashes and counts what passes through to `sink` (None: nowhere)."""

    def __init__(self, sink: Any = None) -> None:
        self.sink, self.sha, self.size = sink, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.sha.update(data)
        self.size += len(data)
        if self.sink is not None:
            self.sink.write(data)
        return len(data)

    @property
    def digest(self) -> str:
        return "sha256:" + self.sha.hexdigest()


def _tar_entries(tar: tarfile.TarFile, source_root: Path, paths: tuple[str, ...], mtime: int) -> None:
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


def _open_tar(stream: Any) -> tarfile.TarFile:
    return tarfile.open(fileobj=stream, mode="w|", format=tarfile.GNU_FORMAT, encoding="utf-8", errors="surrogateescape")


def write_layer(source_root: Path, layer: LayerPlan, blobs: Path, mtime: int) -> tuple[Descriptor, str]:
    """The layer as a gzip blob in `blobs` (sha256/<hex>); returns its descriptor and diff_id.

    The uncompressed tar is hashed first (cheap); its compressed form is taken from the
    user cache when an earlier build made the same tar, else compressed and cached."""
    plain = _Hashing()
    with _open_tar(plain) as tar:
        _tar_entries(tar, source_root, layer.paths, mtime)
    diff_id = plain.digest
    cached = cache_blobs().parent / "layers" / f"{diff_id.split(':')[1]}-{GZIP_LEVEL}"
    if cached.is_file():
        digest = _sha256_file(cached)
        target = blobs / digest.split(":")[1]
        _link_or_copy(cached, target)
        return Descriptor(LAYER_GZIP, digest, target.stat().st_size), diff_id
    blobs.mkdir(parents=True, exist_ok=True)
    partial = blobs / f".{layer.key.replace(':', '-').replace('/', '-')}.part"
    with open(partial, "wb") as out:
        compressed = _Hashing(out)
        with gzip.GzipFile(filename="", mode="wb", compresslevel=GZIP_LEVEL, fileobj=compressed, mtime=0) as gz:
            check = _Hashing(gz)
            with _open_tar(check) as tar:
                _tar_entries(tar, source_root, layer.paths, mtime)
    if check.digest != diff_id:  # a file changed between the two passes
        partial.unlink()
        raise ImageError(f"the files of layer {layer.key} changed while the image was written")
    target = blobs / compressed.digest.split(":")[1]
    os.replace(partial, target)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        _link_or_copy(target, cached)
    except OSError:
        pass  # a cache that cannot be written costs time, not correctness
    return Descriptor(LAYER_GZIP, compressed.digest, compressed.size), diff_id


def _normalise_records(prefix: Path) -> None:
    """conda-meta records name the host's package cache (`extracted_package_dir`, `link.source`):
    meaningless in an image, and different on every machine."""
    for path in sorted((prefix / "conda-meta").glob("*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        record.pop("extracted_package_dir", None)
        if isinstance(record.get("link"), dict):
            record["link"]["source"] = ""
        path.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n", encoding="utf-8")


# -- the image -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Image:
    """A built image in a layout directory: its manifest and what each layer holds."""

    layout: Path
    manifest: Descriptor
    config: Descriptor
    layers: tuple[Descriptor, ...]  # base first
    own_layers: tuple[tuple[LayerPlan, Descriptor], ...]
    tags: tuple[str, ...]
    repository: str
    base: Base


def _env(base_env: list[str], plan: Any) -> list[str]:
    values = dict(item.split("=", 1) if "=" in item else (item, "") for item in base_env)
    ours: dict[str, str] = {}
    if plan.managed:
        ours["PATH"] = f"{plan.prefix}/bin:{values.get('PATH') or DEFAULT_PATH}"
        ours["CONDA_PREFIX"] = plan.prefix
    ours.update(sorted(plan.variables.items()))
    merged = {k: ours.get(k, v) for k, v in values.items()}
    merged.update({k: v for k, v in ours.items() if k not in merged})
    return [f"{k}={v}" for k, v in merged.items()]


def _config(base: Base, plan: Any, diff_ids: list[str], own: list[LayerPlan], entrypoint: bool, seconds: int) -> dict[str, Any]:
    from hatch_mlenv.image import ENTRYPOINT

    inner = dict(base.config.get("config") or {})
    inner["Env"] = _env(list(inner.get("Env") or []), plan)
    inner["Labels"] = {**(inner.get("Labels") or {}), **plan.labels()}
    if entrypoint:
        inner["Entrypoint"], inner["Cmd"] = [f"{plan.prefix}/{ENTRYPOINT}"], ["/bin/sh"]
    created = _created(seconds)
    history = list(base.config.get("history") or [])
    history += [{"created": created, "created_by": f"hatch-mlenv {__version__}: {layer.key} ({layer.comment})",
                 "comment": "hatch-mlenv oci builder"} for layer in own]
    config = {key: base.config[key] for key in ("architecture", "os", "os.version", "os.features", "variant")
              if key in base.config}
    config.setdefault("architecture", "amd64")
    config.setdefault("os", "linux")
    return config | {
        "created": created,
        "config": inner,
        "rootfs": {"type": "layers", "diff_ids": list((base.config.get("rootfs") or {}).get("diff_ids") or []) + diff_ids},
        "history": history,
    }


def assemble(env: Any, layout: Path, *, version: int | None = None, echo: Callable[[str], None] = progress.echo) -> Image:
    """Build the image of `env` into the (new, empty) layout directory `layout`."""
    from concurrent.futures import ThreadPoolExecutor

    from hatch_mlenv.image import plan_for, require_linux, stage_prefix

    require_linux(env.lock, env.spec.lockfile)
    seconds = epoch()
    plan = plan_for(env, version)
    echo(f"mlenv: base image {plan.base_image}")
    base = resolve_base(plan.base_image, env.spec.project_dir)
    plan = plan_for(env, version, base.digest)
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    for descriptor in base.layers:
        base.fetch(descriptor, blobs / descriptor.digest.split(":")[1])
    own: list[LayerPlan] = []
    written: list[tuple[Descriptor, str]] = []
    entrypoint = False
    if plan.managed:
        with tempfile.TemporaryDirectory(prefix=".mlenv-oci-root-", dir=layout.parent) as scratch:
            root = Path(scratch)
            staged = root / plan.prefix.strip("/")
            entrypoint = stage_prefix(env, staged, plan)
            _normalise_records(staged)
            own = plan_layers(staged, plan.prefix)
            echo(f"mlenv: writing {len(own)} layers")
            workers = max(1, min(len(own), os.cpu_count() or 1, 4))
            with ThreadPoolExecutor(max_workers=workers) as pool:
                written = list(pool.map(lambda layer: write_layer(root, layer, blobs, seconds), own))
    config = _config(base, plan, [d for _, d in written], own, entrypoint, seconds)
    config_bytes = _canonical(config)
    config_descriptor = Descriptor(OCI_CONFIG, "sha256:" + hashlib.sha256(config_bytes).hexdigest(), len(config_bytes))
    (blobs / config_descriptor.digest.split(":")[1]).write_bytes(config_bytes)
    layers = tuple(base.layers) + tuple(d for d, _ in written)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_descriptor.as_dict(),
        "layers": [d.as_dict() for d in layers],
        "annotations": {
            "org.opencontainers.image.base.name": plan.base_image,
            "org.opencontainers.image.base.digest": base.digest,
            "org.opencontainers.image.created": _created(seconds),
            "io.mlenv.digest": f"sha256:{plan.digest}",
        },
    }
    manifest_bytes = _canonical(manifest)
    manifest_descriptor = Descriptor(OCI_MANIFEST, "sha256:" + hashlib.sha256(manifest_bytes).hexdigest(),
                                     len(manifest_bytes))
    (blobs / manifest_descriptor.digest.split(":")[1]).write_bytes(manifest_bytes)
    image = Image(layout, manifest_descriptor, config_descriptor, layers,
                  tuple(zip(own, (d for d, _ in written))), tuple(plan.tags), plan.repository, base)
    _write_index(image, plan.digest)
    return image


def _write_index(image: Image, lock_digest: str) -> None:
    """index.json (one entry per tag), oci-layout, and Docker's manifest.json (for `docker load`)."""
    entries = [
        Descriptor(OCI_MANIFEST, image.manifest.digest, image.manifest.size, {
            "org.opencontainers.image.ref.name": tag,
            "io.containerd.image.name": f"{image.repository}:{tag}",
            "io.mlenv.digest": f"sha256:{lock_digest}",
        }).as_dict()
        for tag in image.tags
    ]
    (image.layout / "index.json").write_bytes(_canonical({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}))
    (image.layout / "oci-layout").write_bytes(_canonical(OCI_LAYOUT))
    docker = [{
        "Config": f"blobs/sha256/{image.config.digest.split(':')[1]}",
        "RepoTags": [f"{image.repository}:{tag}" for tag in image.tags],
        "Layers": [f"blobs/sha256/{d.digest.split(':')[1]}" for d in image.layers],
    }]
    (image.layout / "manifest.json").write_bytes(_canonical({"list": docker})[len(b'{"list":'):-1])


def layout_tar(layout: Path, out: Any) -> None:
    """The layout directory as one tar (sorted, fixed times and owners: the same bytes each time)."""
    paths = tuple(
        str(p.relative_to(layout)) for p in layout.rglob("*") if p.is_file() and not p.name.endswith(".part")
    )
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.GNU_FORMAT, encoding="utf-8") as tar:
        _tar_entries(tar, layout, paths, 0)


def _check_output(output: Path, base_image: str, project_dir: Path) -> None:
    """`-o` replaces what is there only when it is an image this builder wrote (every image in its
    index carries `io.mlenv.digest`), and never the base's own layout: checked before building."""
    if base_image.startswith("oci:"):
        base_root, _reference = _layout_location(base_image, project_dir)
        if output.resolve() == base_root.resolve():
            raise ImageError(f"{output}: is the base image's layout ({base_image}); choose another -o")
    if not output.exists() or (output.is_dir() and not any(output.iterdir())):
        return
    if output.is_dir() and not (output / "oci-layout").is_file():
        raise ImageError(f"{output}: exists and is not an OCI image layout; choose another -o")
    if not output.is_dir() and output.suffix != ".tar":
        raise ImageError(f"{output}: exists and is not a directory or a .tar; choose another -o")
    manifests = _index_entries(output)
    if not manifests or not all("io.mlenv.digest" in (entry.get("annotations") or {}) for entry in manifests):
        raise ImageError(f"{output}: exists and holds something hatch-mlenv did not write (other images, or "
                         "another file); it is not replaced: choose another -o or remove it")


def _index_entries(output: Path) -> list[dict[str, Any]] | None:
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


def _layout_holds(output: Path, tag: str, lock_digest: str) -> str | None:
    """The manifest digest of `tag` in an existing layout dir or tar at `output`, if it is this lock's."""
    if not output.exists():
        return None
    for entry in _index_entries(output) or []:
        annotations = entry.get("annotations") or {}
        if annotations.get("org.opencontainers.image.ref.name") == tag and annotations.get("io.mlenv.digest") == f"sha256:{lock_digest}":
            return entry.get("digest")
    return None


# -- outputs -------------------------------------------------------------------------------

@dataclass
class OciBuildResult:
    reference: str
    status: str  # "built" or "reused"
    digest: str | None  # the image manifest's digest
    lines: list[str] = field(default_factory=list)  # one per output, for the CLI to print


def build_oci(
    env: Any,
    *,
    builder: str = "oci",
    output: Path | None = None,
    push: bool = False,
    load: bool = False,
    version: int | None = None,
    echo: Callable[[str], None] = progress.echo,
) -> OciBuildResult:
    """Build (or reuse) the image of `env` without a daemon; write it to `output` (a layout
    directory, or a tar when the name ends in .tar), push it and/or load it into Docker."""
    from hatch_mlenv.image import plan_for, require_linux, require_registry
    from hatch_mlenv.spec import BASE_DOCKERFILE_KEY

    if builder != "oci":
        raise UsageError("-o/--output and --load are options of --builder oci")
    if output is None and not push and not load:
        raise UsageError("--builder oci needs somewhere to put the image: -o PATH, --push or --load")
    require_linux(env.lock, env.spec.lockfile)
    plan = plan_for(env, version)
    if plan.base_dockerfile or env.spec.docker.base_dockerfile is not None:
        raise ConfigError(env.spec.pyproject, BASE_DOCKERFILE_KEY, "the oci builder builds no Dockerfile; it takes "
                          "a base already in a registry or an OCI layout: build the base with `mlenv image build` "
                          "(the docker builder) or `docker build`, push it, and set base-image in place of "
                          "base-dockerfile")
    if output is not None:
        output = output.absolute()
        _check_output(output, plan.base_image, env.spec.project_dir)
    if push:
        require_registry(plan.repository)
    tag = plan.tags[0]
    result = OciBuildResult(plan.reference, "reused", None)
    to_write = output is not None and (digest := _layout_holds(output, tag, plan.digest)) is None
    if output is not None and not to_write:
        result.digest = digest
        result.lines.append(f"{plan.reference} reused in {output}")
    client = None
    if load:
        from hatch_mlenv.image import docker_client, image_exists

        client = docker_client()
        if image_exists(client, plan.reference):
            result.lines.append(f"{plan.reference} reused in the Docker engine")
            load = False
    registry = None
    if push:
        host, repo, _ = split_reference(plan.reference)
        registry = _open_registry(host)
        from hatch_mlenv.errors import RegistryError

        try:
            remote = registry.fetch_manifest(repo, tag, (OCI_MANIFEST,))
        except RegistryError as exc:
            raise ImageError(f"pushing {plan.reference}: {exc}") from None
        if remote is not None:
            result.digest = result.digest or "sha256:" + hashlib.sha256(remote[0]).hexdigest()
            result.lines.append(f"{plan.reference} reused in the registry")
            push = False
            for other in plan.tags[1:]:  # pushed before it was registered: its v<N> tag is added now
                try:
                    if registry.fetch_manifest(repo, other, (OCI_MANIFEST,)) is None:
                        registry.put_manifest(repo, other, remote[0], OCI_MANIFEST)
                        result.lines.append(f"{plan.repository}:{other} tagged in the registry")
                except RegistryError as exc:
                    raise ImageError(f"tagging {plan.repository}:{other}: {exc}") from None
    if not (to_write or load or push):
        return result

    parent = output.parent if output is not None else None
    try:
        if parent is not None:
            parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".mlenv-oci-", dir=parent))
    except OSError as exc:
        raise ImageError(f"{output}: cannot write the image there: {exc.strerror or exc}") from None
    try:
        layout = scratch / "layout"
        image = assemble(env, layout, version=version, echo=echo)
        result.status, result.digest = "built", image.manifest.digest
        result.lines.insert(0, f"{plan.reference} built ({image.manifest.digest})")
        tar_path = None
        if to_write and output.suffix == ".tar":
            tar_path = scratch / "image.tar"
            with open(tar_path, "wb") as out:
                layout_tar(layout, out)
        if push:
            result.lines.append(push_image(registry, image, env, echo))
        if load:
            if tar_path is None:
                tar_path = scratch / "image.tar"
                with open(tar_path, "wb") as out:
                    layout_tar(layout, out)
            _load(client, tar_path, plan.reference)
            result.lines.append(f"{plan.reference} loaded into the Docker engine")
        if to_write:
            _replace(tar_path if output.suffix == ".tar" else layout, output)
            result.lines.append(f"{plan.reference} written to {output}")
    except OSError as exc:
        raise ImageError(f"{output or scratch}: cannot write the image: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return result


def _replace(source: Path, output: Path) -> None:
    """Put `source` at `output` in one rename (an older layout there is replaced)."""
    if output.is_dir():
        old = output.with_name(f".{output.name}.old-{os.getpid()}")
        os.rename(output, old)
        try:
            os.rename(source, output)
        except OSError:
            os.rename(old, output)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(source, output)


def _load(client: Any, tar_path: Path, reference: str) -> None:
    try:
        with open(tar_path, "rb") as data:
            client.images.load(data)
        client.images.get(reference)
    except MlenvError:
        raise
    except Exception as exc:  # docker's APIError, ImageNotFound, connection errors
        raise ImageError(f"loading {reference} into the Docker engine failed: {_first_line(exc)}") from None


def push_image(registry: Any, image: Image, env: Any, echo: Callable[[str], None]) -> str:
    """Push the layout's blobs (those the registry lacks), the manifest under each tag, and the
    SBOM and the lock as referrers; returns a line saying what went over the wire."""
    import mmap

    from hatch_mlenv.errors import RegistryError

    host, repo, _ = split_reference(f"{image.repository}:{image.tags[0]}")
    pushed = skipped = 0
    blobs = image.layout / "blobs" / "sha256"
    source = image.base.source if image.base.source and image.base.source[0] == host else None
    base_digests = {d.digest for d in image.base.layers}
    try:
        for descriptor in (*image.layers, image.config):
            if registry.has_blob(repo, descriptor.digest) or (
                    source and descriptor.digest in base_digests and registry.mount_blob(repo, descriptor.digest, source[1])):
                skipped += descriptor.size
                continue
            with progress.step(f"pushing {descriptor.digest[:19]} ({descriptor.size / 2**20:.1f} MiB) to {host}/{repo}"), \
                    open(blobs / descriptor.digest.split(":")[1], "rb") as handle:
                if descriptor.size == 0:
                    registry.upload_blob(repo, descriptor.digest, b"")
                else:
                    with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                        registry.upload_blob(repo, descriptor.digest, memoryview(mapped))
            pushed += descriptor.size
        body = (blobs / image.manifest.digest.split(":")[1]).read_bytes()
        for tag in image.tags:
            registry.put_manifest(repo, tag, body, OCI_MANIFEST)
        attach_referrers(registry, repo, image.manifest, env)
    except RegistryError as exc:
        raise ImageError(f"pushing {image.repository}:{image.tags[0]}: {exc}") from None
    total = pushed + skipped
    share = f" ({pushed / total:.2%})" if total else ""
    return f"{image.repository}:{image.tags[0]} pushed: {pushed:,} of {total:,} bytes sent{share}, the rest already there"


def attach_referrers(registry: Any, repo: str, subject: Descriptor, env: Any) -> list[dict[str, Any]]:
    """The CycloneDX SBOM and the lock as artifacts whose subject is the image (OCI 1.1); where the
    registry has no referrers API, the `sha256-<hex>` tag holds an index of them, as oras does.
    Returns the referrers' descriptors (with their artifactType)."""
    from hatch_mlenv.sbom import cyclonedx

    empty = b"{}"
    empty_digest = "sha256:" + hashlib.sha256(empty).hexdigest()
    if not registry.has_blob(repo, empty_digest):
        registry.upload_blob(repo, empty_digest, empty)
    annotations = {"org.opencontainers.image.created": _created(epoch())}
    artifacts = ((SBOM_TYPE, "sbom.cdx.json", json.dumps(cyclonedx(env), indent=2, sort_keys=True).encode()),
                 (LOCK_TYPE, env.spec.lockfile.name, env.spec.lockfile.read_bytes()))
    referrers = []
    for artifact_type, title, data in artifacts:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if not registry.has_blob(repo, digest):
            registry.upload_blob(repo, digest, data)
        body = _canonical({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": {"mediaType": OCI_EMPTY, "digest": empty_digest, "size": len(empty)},
            "layers": [{"mediaType": artifact_type, "digest": digest, "size": len(data),
                        "annotations": {"org.opencontainers.image.title": title}}],
            "subject": subject.as_dict(),
            "annotations": annotations,
        })
        manifest_digest = "sha256:" + hashlib.sha256(body).hexdigest()
        registry.put_manifest(repo, manifest_digest, body, OCI_MANIFEST)
        referrers.append({"mediaType": OCI_MANIFEST, "digest": manifest_digest, "size": len(body),
                          "artifactType": artifact_type, "annotations": annotations})
    if registry.referrers(repo, subject.digest) is None:
        fallback = f"sha256-{subject.digest.split(':')[1]}"
        found = registry.fetch_manifest(repo, fallback, (OCI_INDEX,))
        known = (json.loads(found[0]).get("manifests") or []) if found else []
        have = {entry.get("digest") for entry in known}
        added = [r for r in referrers if r["digest"] not in have]
        if added or not found:
            index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": known + added}
            registry.put_manifest(repo, fallback, _canonical(index), OCI_INDEX)
    return referrers
