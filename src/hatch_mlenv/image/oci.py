"""The `oci` image builder: an image assembled without any daemon, the same bytes on any machine.

- The base image is taken by digest from an OCI registry (`host[:port]/repo[:tag|@digest]`,
  Docker Hub names too) or from an OCI image layout directory (`oci:PATH[:TAG|@DIGEST]`,
  PATH relative to the project), as `[tool.mlenv.docker] base-image` names it. Its digest is
  recorded in the manifest's annotations and in the `io.mlenv.base-image-digest` label.
- The linux-64 lock is installed for the image's prefix exactly as the docker builder's host
  strategy does (`image.stage`), then written as layers that follow the lock: a package
  of `LARGE_PACKAGE` bytes or more gets a layer of its own, the others share `BUCKETS` layers
  chosen by a hash of their name, so changing one package changes the layer that holds it (and
  the last, small layer of files no package owns), not the whole environment.
- Reproducible to the byte: entries sorted, mtime `SOURCE_DATE_EPOCH` (else 0), uid/gid 0 and
  no user names, modes normalised (0755/0644, links 0777), GNU tar headers (no pax records),
  gzip with mtime 0, no file name and a fixed level (or zstd at a fixed level, in zstd's
  multithreaded format, when asked: tags end in `-zstd`); the config's `created` is the same epoch.
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

import dataclasses
import hashlib
import json
import mmap
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hatch_mlenv._version import __version__
from hatch_mlenv.errors import ImageError, MlenvError, RegistryError
from hatch_mlenv.errors import first_line as _first_line
from hatch_mlenv.image.engine import docker_client, image_exists
from hatch_mlenv.image.layers import LayerPlan, epoch, iso_time, normalise_records, plan_layers, write_layer
from hatch_mlenv.image.layout import (
    OCI_CONFIG,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_MANIFEST,
    Base,
    Descriptor,
    canonical,
    check_output,
    layout_tar,
    resolve_base,
    write_index,
)
from hatch_mlenv.image.plan import ENTRYPOINT, ImagePlan, Staging
from hatch_mlenv.image.stage import stage_prefix
from hatch_mlenv.progress import step

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # Docker's, for a base without PATH


@dataclass
class OciBuildResult:
    reference: str
    status: str  # "built" or "reused"
    digest: str | None  # the image manifest's digest
    lines: list[str] = field(default_factory=list)  # one per output, for the CLI to print


@dataclass
class Job:
    """What a build has left to do once the outputs that already hold the image are known."""

    plan: ImagePlan
    output: Path | None  # absolute
    to_write: bool
    push: bool
    load: bool
    result: OciBuildResult
    client: Any = None  # the Docker engine to load into
    registry: Any = None  # the registry to push to (an OciRegistry)

    @property
    def done(self) -> bool:
        return not (self.to_write or self.load or self.push)


def plan_outputs(plan: ImagePlan, *, output: Path | None = None, push: bool = False, load: bool = False) -> Job:
    """Check the outputs before anything is built, and find those that hold the image already
    (the layout or tar at `output`, the Docker engine, the registry): they are reused. A push
    needs a registry (`reference.require_registry`, checked by the caller first)."""
    tag = plan.tags[0]
    digest = None
    if output is not None:
        output = output.absolute()
        digest = check_output(output, plan.base_image, plan.base_layout, tag, plan.digest)
    result = OciBuildResult(plan.reference, "reused", None)
    to_write = output is not None and digest is None
    if output is not None and not to_write:
        result.digest = digest
        result.lines.append(f"{plan.reference} reused in {output}")
    client = None
    if load:
        client = docker_client()
        if plan.compression == "zstd":
            _check_engine_reads_zstd(client, plan.reference)
        if image_exists(client, plan.reference):
            result.lines.append(f"{plan.reference} reused in the Docker engine")
            load = False
    registry = None
    if push:
        from hatch_mlenv.registry.oci import OciRegistry  # lazy: as in `layout._registry_base`

        repo = plan.registry_path
        registry = OciRegistry(f"oci://{plan.registry_host}")
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
    return Job(plan, output, to_write, push, load, result, client, registry)


def build_oci(job: Job, staging: Staging | None, artifacts: tuple[tuple[str, str, bytes], ...] = (),
          echo: Callable[[str], None] = print) -> OciBuildResult:
    """Build the image of `job.plan` from the prefix staged from `staging` (None: a user-managed
    environment, the base as it is) and write, push (with `artifacts` as referrers) and load it
    as `job` says. A failure leaves no partial layout or tar behind."""
    plan, output, result = job.plan, job.output, job.result
    parent = output.parent if output is not None else None
    try:
        if parent is not None:
            parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".mlenv-oci-", dir=parent))
    except OSError as exc:
        raise ImageError(f"{output}: cannot write the image there: {exc.strerror or exc}") from None
    try:
        layout = scratch / "layout"
        image = assemble(plan, staging, layout, echo=echo)
        result.status, result.digest = "built", image.manifest.digest
        result.lines.insert(0, f"{plan.reference} built ({image.manifest.digest})")
        tar_path = None
        if job.to_write and output.suffix == ".tar":
            tar_path = scratch / "image.tar"
            with open(tar_path, "wb") as out:
                layout_tar(layout, out)
        if job.push:
            result.lines.append(push_image(job.registry, image, plan.registry_host, plan.registry_path, artifacts))
        if job.load:
            if tar_path is None:
                tar_path = scratch / "image.tar"
                with open(tar_path, "wb") as out:
                    layout_tar(layout, out)
            _load(job.client, tar_path, plan.reference)
            result.lines.append(f"{plan.reference} loaded into the Docker engine")
        if job.to_write:
            _replace(tar_path if output.suffix == ".tar" else layout, output)
            result.lines.append(f"{plan.reference} written to {output}")
    except OSError as exc:
        raise ImageError(f"{output or scratch}: cannot write the image: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return result


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


def assemble(plan: ImagePlan, staging: Staging | None, layout: Path, *,
             echo: Callable[[str], None] = print) -> Image:
    """Build the image of `plan` into the (new, empty) layout directory `layout`."""
    seconds = epoch()
    echo(f"mlenv: base image {plan.base_image}")
    base = resolve_base(plan.base_image, plan.base_layout, plan.base_reference, plan.base_registry)
    plan = dataclasses.replace(plan, base_digest=base.digest)
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    for descriptor in base.layers:
        base.fetch(descriptor, blobs / descriptor.digest.split(":")[1])
    own: list[LayerPlan] = []
    written: list[tuple[Descriptor, str]] = []
    entrypoint = False
    if plan.managed and staging is not None:
        with tempfile.TemporaryDirectory(prefix=".mlenv-oci-root-", dir=layout.parent) as scratch:
            root = Path(scratch)
            staged = root / plan.prefix.strip("/")
            entrypoint = stage_prefix(staging, staged, plan)
            normalise_records(staged)
            own = plan_layers(staged, plan.prefix)
            echo(f"mlenv: writing {len(own)} layers")
            workers = max(1, min(len(own), os.cpu_count() or 1, 4))
            with ThreadPoolExecutor(max_workers=workers) as pool:
                written = list(pool.map(lambda layer: write_layer(root, layer, blobs, seconds, plan.compression), own))
    config = _config(base, plan, [d for _, d in written], own, entrypoint, seconds)
    config_bytes = canonical(config)
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
            "org.opencontainers.image.created": iso_time(seconds),
            "io.mlenv.digest": f"sha256:{plan.digest}",
        },
    }
    manifest_bytes = canonical(manifest)
    manifest_descriptor = Descriptor(OCI_MANIFEST, "sha256:" + hashlib.sha256(manifest_bytes).hexdigest(),
                                     len(manifest_bytes))
    (blobs / manifest_descriptor.digest.split(":")[1]).write_bytes(manifest_bytes)
    image = Image(layout, manifest_descriptor, config_descriptor, layers,
                  tuple(zip(own, (d for d, _ in written))), tuple(plan.tags), plan.repository, base)
    write_index(layout, manifest_descriptor, config_descriptor, layers, plan.repository, tuple(plan.tags), plan.digest)
    return image


def _env(base_env: list[str], plan: ImagePlan) -> list[str]:
    values = dict(item.split("=", 1) if "=" in item else (item, "") for item in base_env)
    ours: dict[str, str] = {}
    if plan.managed:
        ours["PATH"] = f"{plan.prefix}/bin:{values.get('PATH') or DEFAULT_PATH}"
        ours["CONDA_PREFIX"] = plan.prefix
    ours.update(sorted(plan.variables.items()))
    merged = {k: ours.get(k, v) for k, v in values.items()}
    merged.update({k: v for k, v in ours.items() if k not in merged})
    return [f"{k}={v}" for k, v in merged.items()]


def _config(base: Base, plan: ImagePlan, diff_ids: list[str], own: list[LayerPlan], entrypoint: bool, seconds: int) -> dict[str, Any]:
    inner = dict(base.config.get("config") or {})
    inner["Env"] = _env(list(inner.get("Env") or []), plan)
    inner["Labels"] = {**(inner.get("Labels") or {}), **plan.labels()}
    if entrypoint:
        inner["Entrypoint"], inner["Cmd"] = [f"{plan.prefix}/{ENTRYPOINT}"], ["/bin/sh"]
    created = iso_time(seconds)
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


# -- outputs -------------------------------------------------------------------------------

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


ZSTD_ENGINE = (23, 0)  # Docker Engine 23.0 is the first to read zstd layers (moby/moby#41759)


def engine_reads_zstd(version: dict[str, Any]) -> bool:
    """Whether the engine that answered `version` (the Engine API's /version) reads zstd layers:
    Docker from 23.0; Podman's Docker-compatible API (which gives Podman's own version) always."""
    components = version.get("Components") or []
    if any("podman" in str(c.get("Name", "")).lower() for c in components if isinstance(c, dict)):
        return True
    numbers = tuple(int(part) for part in re.findall(r"\d+", str(version.get("Version") or ""))[:2])
    return len(numbers) == 2 and numbers >= ZSTD_ENGINE


def _check_engine_reads_zstd(client: Any, reference: str) -> None:
    """Refuse, before anything is built, to load zstd layers into an engine that cannot read them."""
    try:
        answer = client.version()
    except Exception as exc:  # docker's APIError, connection errors
        raise ImageError(f"loading {reference}: cannot ask the Docker engine its version: {_first_line(exc)}") from None
    if not engine_reads_zstd(answer):
        version = str(answer.get("Version") or "")
        raise ImageError(f"loading {reference}: this Docker engine ({version or 'version unknown'}) cannot read zstd "
                         f"layers (Docker {ZSTD_ENGINE[0]}.{ZSTD_ENGINE[1]} or later can); build it with gzip layers "
                         "(the default) to load it here, or write it with -o / --push for a newer engine, "
                         "containerd or podman")


def _load(client: Any, tar_path: Path, reference: str) -> None:
    try:
        with open(tar_path, "rb") as data:
            client.images.load(data)
        client.images.get(reference)
    except MlenvError:
        raise
    except Exception as exc:  # docker's APIError, ImageNotFound, connection errors
        raise ImageError(f"loading {reference} into the Docker engine failed: {_first_line(exc)}") from None


def push_image(registry: Any, image: Image, host: str, repo: str, artifacts: tuple[tuple[str, str, bytes], ...]) -> str:
    """Push the layout's blobs (those the registry lacks), the manifest under each tag, and the
    SBOM and the lock as referrers; returns a line saying what went over the wire."""
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
            with step(f"pushing {descriptor.digest[:19]} ({descriptor.size / 2**20:.1f} MiB) to {host}/{repo}"), \
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
        attach_referrers(registry, repo, image.manifest, artifacts)
    except RegistryError as exc:
        raise ImageError(f"pushing {image.repository}:{image.tags[0]}: {exc}") from None
    total = pushed + skipped
    share = f" ({pushed / total:.2%})" if total else ""
    return f"{image.repository}:{image.tags[0]} pushed: {pushed:,} of {total:,} bytes sent{share}, the rest already there"


def attach_referrers(registry: Any, repo: str, subject: Descriptor,
                     artifacts: tuple[tuple[str, str, bytes], ...]) -> list[dict[str, Any]]:
    """`artifacts` (the CycloneDX SBOM and the lock, `plan.artifacts`) as artifacts whose subject is the image (OCI 1.1); where the
    registry has no referrers API, the `sha256-<hex>` tag holds an index of them, as oras does.
    Returns the referrers' descriptors (with their artifactType)."""
    empty = b"{}"
    empty_digest = "sha256:" + hashlib.sha256(empty).hexdigest()
    if not registry.has_blob(repo, empty_digest):
        registry.upload_blob(repo, empty_digest, empty)
    annotations = {"org.opencontainers.image.created": iso_time(epoch())}
    referrers = []
    for artifact_type, title, data in artifacts:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if not registry.has_blob(repo, digest):
            registry.upload_blob(repo, digest, data)
        body = canonical({
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
            registry.put_manifest(repo, fallback, canonical(index), OCI_INDEX)
    return referrers
