"""The environment's layers: files grouped so that layers follow the lock, written as
reproducible tars (sorted, fixed times and owners, GNU headers), compressed with gzip (no name,
mtime 0; what every engine reads) or, when asked, zstd (`layer-compression = "zstd"`: several times
faster to write and to read, for Docker 23+, containerd 1.5+, podman; not Docker 20.10).

A package of `LARGE_PACKAGE` bytes or more gets a layer of its own, the others share `BUCKETS`
layers chosen by a hash of their name, so changing one package changes the layer that holds it
(and the last, small layer of files no package owns), not the whole environment. Compressed
layers are kept in the user cache by their uncompressed digest: a rebuild compresses only what
changed (the bytes are the same either way).
"""

from __future__ import annotations

import csv
import datetime
import gzip
import hashlib
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hatch_mlenv.errors import ImageError, UsageError
from hatch_mlenv.image.layout import (
    LAYER_GZIP,
    LAYER_ZSTD,
    Descriptor,
    cache_blobs,
    link_or_copy,
    open_tar,
    sha256_file,
    tar_entries,
)

LARGE_PACKAGE = 4 * 2**20  # installed bytes from which a package has a layer of its own
MAX_OWN_LAYERS = 60  # the largest packages only: engines refuse images of more than ~127 layers
BUCKETS = 8  # layers shared by the smaller packages
GZIP_LEVEL = 1  # fixed: part of the bytes. 1 is 2.2x faster than 6 for 3% more bytes (bench/oci_image.py)
# zstd's default level, fixed too. Compressed by one worker thread: zstd's multithreaded output is the
# same for any number of workers (not the same as with none), so a machine of any size writes these bytes.
ZSTD_LEVEL = 3
# name -> (media type, the cache's name for these bytes); gzip first: the default, what every engine reads
COMPRESSIONS = {"gzip": (LAYER_GZIP, f"{GZIP_LEVEL}"), "zstd": (LAYER_ZSTD, f"zstd{ZSTD_LEVEL}")}


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


def iso_time(seconds: int) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class LayerPlan:
    """One layer of the environment: what it holds (paths relative to the image root) and why."""

    key: str  # "pkg:NAME", "group:K" or "mlenv"
    comment: str  # for the history: which packages
    paths: tuple[str, ...]
    size: int  # installed bytes


def _owners(prefix: Path) -> tuple[dict[str, str], dict[str, int]]:
    """prefix-relative path -> owning package ("conda:NAME" / "pip:NAME"), and each package's bytes."""
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


def write_layer(source_root: Path, layer: LayerPlan, blobs: Path, mtime: int,
                compression: str = "gzip") -> tuple[Descriptor, str]:
    """The layer as a compressed blob in `blobs` (sha256/<hex>); returns its descriptor and diff_id.

    The uncompressed tar is hashed first (cheap); its compressed form is taken from the
    user cache when an earlier build made the same tar, else compressed and cached."""
    media_type, variant = COMPRESSIONS[compression]
    if compression == "zstd":  # zstd's bytes are those of one libzstd: the cache keeps each version's apart
        variant += "-" + ".".join(map(str, _zstandard().ZSTD_VERSION))
    plain = _Hashing()
    with open_tar(plain) as tar:
        tar_entries(tar, source_root, layer.paths, mtime)
    diff_id = plain.digest
    cached = cache_blobs().parent / "layers" / f"{diff_id.split(':')[1]}-{variant}"
    if cached.is_file():
        digest = sha256_file(cached)
        target = blobs / digest.split(":")[1]
        link_or_copy(cached, target)
        return Descriptor(media_type, digest, target.stat().st_size), diff_id
    blobs.mkdir(parents=True, exist_ok=True)
    partial = blobs / f".{layer.key.replace(':', '-').replace('/', '-')}.part"
    with open(partial, "wb") as out:
        compressed = _Hashing(out)
        with _compressing(compression, compressed) as stream:
            check = _Hashing(stream)
            with open_tar(check) as tar:
                tar_entries(tar, source_root, layer.paths, mtime)
    if check.digest != diff_id:  # a file changed between the two passes
        partial.unlink()
        raise ImageError(f"the files of layer {layer.key} changed while the image was written")
    target = blobs / compressed.digest.split(":")[1]
    os.replace(partial, target)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        link_or_copy(target, cached)
    except OSError:
        pass  # a cache that cannot be written costs time, not correctness
    return Descriptor(media_type, compressed.digest, compressed.size), diff_id


def _compressing(compression: str, sink: Any) -> Any:
    """A stream that compresses what it is given into `sink`, as a context manager that ends the stream."""
    if compression == "zstd":
        compressor = _zstandard().ZstdCompressor(level=ZSTD_LEVEL, threads=1, write_checksum=True,
                                              write_content_size=False)
        return compressor.stream_writer(sink, closefd=False)
    return gzip.GzipFile(filename="", mode="wb", compresslevel=GZIP_LEVEL, fileobj=sink, mtime=0)


def _zstandard() -> Any:
    """The zstandard module (only a zstd build imports it)."""
    try:
        import zstandard
    except ImportError as exc:
        raise ImageError(f"zstd layers need the zstandard package, which cannot be imported here: {exc}; "
                         "reinstall hatch-mlenv, or build with gzip layers (the default)") from None
    return zstandard


def normalise_records(prefix: Path) -> None:
    """conda-meta records name the host's package cache (`extracted_package_dir`, `link.source`):
    meaningless in an image, and different on every machine."""
    for path in sorted((prefix / "conda-meta").glob("*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        record.pop("extracted_package_dir", None)
        if isinstance(record.get("link"), dict):
            record["link"]["source"] = ""
        path.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n", encoding="utf-8")
