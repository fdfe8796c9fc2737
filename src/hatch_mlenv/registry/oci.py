"""The `oci://host[:port]/namespace` registry: versions as OCI artifacts, with the oras SDK.

Layout, for an environment NAME under `oci://host/ns`:

- repository `ns/NAME` (lowercased, as OCI requires);
- each version is an artifact (artifactType `application/vnd.mlenv.environment.v1`)
  whose layers are the lockfile and the manifest and whose config holds the
  provenance, tagged `v<N>` and `digest-<sha256 of the lock>`;
- labels are tags (`latest`, `prod`, ...) on the same artifact manifest;
- `mlenv-index` tags a small artifact holding what may change about a name
  (its description and which versions are archived); `mlenv-lock` tags the
  lease that serializes writers.

Registries have no transactions, so writers take a lease: read the `mlenv-lock`
tag; when it is free or expired, write it with a unique token, wait
`MLENV_OCI_SETTLE_MS` (default 250 ms), and read it back: whoever's token is
there holds the lease. Two writers both succeed in claiming it only if one of
them takes longer than the settle time between reading "free" and writing its
token; the settle time is there to make that window larger than any
loopback or LAN round trip. Under the lease a writer reads the tags, reuses the
version of an existing `digest-` tag (idempotent) or takes max(v<N>)+1, pushes
and tags, then releases. A lease left by a killed writer expires after
`MLENV_OCI_LEASE_SECONDS` (default 30).

Credentials come from `MLENV_REGISTRY_USERNAME`/`MLENV_REGISTRY_PASSWORD`, else the
Docker config (`~/.docker/config.json`, `DOCKER_CONFIG`), else the registry host's
`~/.netrc` (`$NETRC`) entry: the first source that has some is the only one used,
and a refusal names it. They are never written.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import requests

from hatch_mlenv._compat import oras_has_credentials, oras_request_once, oras_without_netrc
from hatch_mlenv.errors import NotFoundError, RegistryError, UsageError
from hatch_mlenv.hookspecs import hookimpl
from hatch_mlenv.lockfile import parse_lock
from hatch_mlenv.reference import LATEST, Reference, check_label
from hatch_mlenv.registry.base import EnvironmentSummary, Registration, Version, entry_hash, takes_latest, verify

ARTIFACT_TYPE = "application/vnd.mlenv.environment.v1"
DELETED_LABEL_ARTIFACT_TYPE = "application/vnd.mlenv.deleted-label.v1"
CONFIG_MEDIA_TYPE = "application/vnd.mlenv.environment.config.v1+json"
LOCKFILE_MEDIA_TYPE = "application/vnd.mlenv.lockfile.v1+yaml"
MANIFEST_MEDIA_TYPE = "application/vnd.mlenv.manifest.v1+json"
INDEX_ARTIFACT_TYPE = "application/vnd.mlenv.index.v1"
INDEX_MEDIA_TYPE = "application/vnd.mlenv.index.v1+json"
LEASE_ARTIFACT_TYPE = "application/vnd.mlenv.lease.v1"
LEASE_MEDIA_TYPE = "application/vnd.mlenv.lease.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"

INDEX_TAG = "mlenv-index"
LEASE_TAG = "mlenv-lock"
_VERSION_TAG = re.compile(r"^v(\d+)$")
_RESERVED = re.compile(r"^(v\d+|digest-.*|mlenv-.*)$")


_HOW_TO_LOG_IN = ("set MLENV_REGISTRY_USERNAME and MLENV_REGISTRY_PASSWORD, log in with docker, "
                  "or add the host to ~/.netrc")


def _anonymous(request: Any) -> Any:
    """A requests auth that adds nothing: no netrc entry either."""
    return request


def _settle_seconds() -> float:
    return int(os.environ.get("MLENV_OCI_SETTLE_MS", "250")) / 1000


def _lease_seconds() -> float:
    return float(os.environ.get("MLENV_OCI_LEASE_SECONDS", "30"))


@dataclass(frozen=True)
class _Target:
    host: str
    namespace: str

    def repository(self, name: str) -> str:
        return f"{self.namespace}/{name.lower()}" if self.namespace else name.lower()


class OciRegistry:
    def __init__(self, url: str) -> None:
        parsed = urlparse(url)
        if parsed.scheme != "oci" or not parsed.netloc:
            raise UsageError(f"malformed registry URL {url!r}: use oci://HOST[:PORT]/NAMESPACE")
        self.url = url
        self.target = _Target(parsed.netloc, parsed.path.strip("/"))
        host = self.hostname = parsed.hostname or ""
        # Plain HTTP only on loopback, where test and local registries live.
        self.insecure = host in ("127.0.0.1", "localhost", "::1") or os.environ.get("MLENV_REGISTRY_INSECURE") == "1"
        self.scheme = "http" if self.insecure else "https"
        self._client: Any = None
        self._credentials: str | None = None  # where the credentials in use came from

    # -- HTTP through the oras SDK's client and auth backends ------------------------------
    def _oras(self) -> Any:
        """oras' Registry client, with the auth backend the registry asks for.

        The registry is asked once, anonymously, which challenge it sends:
        `Basic` (htpasswd, Artifactory) or `Bearer` (distribution's token auth,
        Harbor, GHCR, ACR). Credentials: the first of MLENV_REGISTRY_USERNAME/
        PASSWORD, the Docker config (loaded by oras) and the host's netrc entry.
        requests' own netrc lookup is off: it would replace the credentials oras
        sends with the netrc entry's, whatever their source.
        """
        if self._client is not None:
            return self._client
        import oras.provider
        import requests

        try:
            probe = requests.get(f"{self.scheme}://{self.target.host}/v2/", timeout=10, auth=_anonymous)
        except requests.exceptions.RequestException:
            raise RegistryError(f"registry {self.url} is unreachable (connection refused or no route)") from None
        challenge = probe.headers.get("WWW-Authenticate", "").lower()
        backend = "basic" if challenge.startswith("basic") else "token"
        client = oras.provider.Registry(hostname=self.target.host, insecure=self.insecure, auth_backend=backend)
        oras_without_netrc(client)
        self._credentials = self._load_credentials(client)
        if probe.status_code == 401 and self._credentials is None:
            raise RegistryError(f"registry {self.url} requires credentials and none were given; {_HOW_TO_LOG_IN}")
        self._client = client
        return client

    def _load_credentials(self, client: Any) -> str | None:
        """Give `client` the credentials of the first source that has some; returns that source."""
        user, password = os.environ.get("MLENV_REGISTRY_USERNAME"), os.environ.get("MLENV_REGISTRY_PASSWORD")
        if user and password:
            client.auth.set_basic_auth(user, password)
            return "MLENV_REGISTRY_USERNAME/PASSWORD"
        # oras reads ~/.docker/config.json; docker itself honours $DOCKER_CONFIG too.
        configs = []
        if os.environ.get("DOCKER_CONFIG"):
            candidate = os.path.join(os.environ["DOCKER_CONFIG"], "config.json")
            if os.path.isfile(candidate):
                configs.append(candidate)
        try:
            container = client.get_container(f"{self.target.host}/{self.target.namespace or 'x'}/x")
            client.auth.load_configs(container, configs=configs or None)
        except Exception:  # an unreadable Docker config: the next source
            pass
        if oras_has_credentials(client):
            return "the Docker config (docker login)"
        from hatch_mlenv.credentials import netrc_login

        login = netrc_login(self.hostname)
        if login is not None:
            client.auth.set_basic_auth(login[0], login[1])
            return login[2]
        return None

    def _refused(self, method: str, path: str, status: str) -> RegistryError:
        if self._credentials is None:
            return RegistryError(
                f"registry {self.url} requires credentials for {method} {path} and none were given ({status}); "
                f"{_HOW_TO_LOG_IN}"
            )
        return RegistryError(f"registry {self.url} refused the credentials from {self._credentials} ({status})")

    def _request(self, method: str, path: str, **kwargs: Any):  # -> requests.Response
        client = self._oras()
        url = f"{self.scheme}://{self.target.host}/v2/{path}"
        try:
            response = oras_request_once(client, url, method, data=kwargs.get("data"), headers=kwargs.get("headers"))
        except requests.exceptions.ConnectionError:
            raise RegistryError(f"registry {self.url} is unreachable (connection refused or no route)") from None
        except requests.exceptions.RequestException as exc:
            raise RegistryError(f"registry {self.url}: {type(exc).__name__}: {exc}") from None
        except ValueError:  # oras: "Cannot respond to request for authentication."
            raise self._refused(method, path, "HTTP 401: no token issued") from None
        if response.status_code == 401:
            raise self._refused(method, path, "HTTP 401")
        if response.status_code == 403:
            raise RegistryError(f"registry {self.url} denied {method} {path} (HTTP 403)")
        return response

    def _check(self, response: Any, what: str) -> Any:
        if response.status_code >= 400:
            detail = response.text.strip().splitlines()[0][:200] if response.text else ""
            raise RegistryError(f"registry {self.url}: {what} failed (HTTP {response.status_code}) {detail}".rstrip())
        return response

    # -- blobs and manifests -------------------------------------------------------------
    def _push_blob(self, repo: str, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if not self.has_blob(repo, digest):
            self.upload_blob(repo, digest, data)
        return digest

    # Also what the oci image builder (hatch_mlenv.image.oci) pulls and pushes images with.
    def has_blob(self, repo: str, digest: str) -> bool:
        return self._request("HEAD", f"{repo}/blobs/{digest}").status_code == 200

    def blob(self, repo: str, digest: str) -> bytes:
        return self._check(self._request("GET", f"{repo}/blobs/{digest}"), f"reading blob {digest}").content

    def fetch_manifest(self, repo: str, reference: str, accept: tuple[str, ...]) -> tuple[bytes, str] | None:
        """A manifest or index by tag or digest and its media type; None when the registry has none."""
        response = self._request("GET", f"{repo}/manifests/{reference}", headers={"Accept": ", ".join(accept)})
        if response.status_code == 404:
            return None
        self._check(response, f"reading {repo}:{reference}")
        return response.content, response.headers.get("Content-Type", "").split(";")[0].strip()

    def put_manifest(self, repo: str, reference: str, body: bytes, media_type: str) -> str:
        self._check(
            self._request("PUT", f"{repo}/manifests/{reference}", data=body, headers={"Content-Type": media_type}),
            f"writing {repo}:{reference}",
        )
        return "sha256:" + hashlib.sha256(body).hexdigest()

    def referrers(self, repo: str, digest: str) -> dict[str, Any] | None:
        """The OCI 1.1 referrers index of a manifest; None when the registry has no referrers API."""
        response = self._request("GET", f"{repo}/referrers/{digest}", headers={"Accept": OCI_INDEX})
        if response.status_code == 404 or "json" not in response.headers.get("Content-Type", ""):
            return None
        return self._check(response, f"listing the referrers of {repo}@{digest}").json()

    def mount_blob(self, repo: str, digest: str, source_repo: str) -> bool:
        """Link a blob another repository of this registry holds (no bytes sent); False if it cannot."""
        response = self._request("POST", f"{repo}/blobs/uploads/?mount={digest}&from={source_repo}")
        return response.status_code == 201

    def upload_blob(self, repo: str, digest: str, data: Any) -> None:
        """Upload a blob in one PUT; `data` is bytes or a buffer (an mmap'd file: not consumed by a retry)."""
        start = self._check(self._request("POST", f"{repo}/blobs/uploads/"), "starting a blob upload")
        location = start.headers["Location"]
        separator = "&" if "?" in location else "?"
        if location.startswith("/v2/"):
            location = location[len("/v2/"):]
        elif "://" in location:
            location = location.split("/v2/", 1)[1]
        self._check(
            self._request(
                "PUT",
                f"{location}{separator}digest={digest}",
                data=data,
                headers={"Content-Type": "application/octet-stream"},
            ),
            "uploading a blob",
        )

    def _manifest(self, repo: str, reference: str) -> tuple[bytes, dict[str, Any]] | None:
        response = self._request("GET", f"{repo}/manifests/{reference}", headers={"Accept": OCI_MANIFEST})
        if response.status_code == 404:
            return None
        self._check(response, f"reading {repo}:{reference}")
        return response.content, response.json()

    def _tags(self, repo: str) -> list[str]:
        return self._paged(f"{repo}/tags/list", "tags", f"listing tags of {repo}")

    def _paged(self, path: str, field: str, what: str) -> list[str]:
        """All pages of a tag or repository listing (registries page them, RFC 5988 Link headers)."""
        items: list[str] = []
        while path:
            response = self._request("GET", path)
            if response.status_code == 404:
                return items
            items += self._check(response, what).json().get(field) or []
            link = response.headers.get("Link", "")
            match = re.search(r"<([^>]+)>;\s*rel=\"?next\"?", link)
            path = match.group(1).split("/v2/", 1)[-1] if match else ""
        return items

    def _artifact(self, repo: str, artifact_type: str, config_type: str, config: bytes,
                  layers: list[tuple[str, str, bytes]], annotations: dict[str, str]) -> bytes:
        config_digest = self._push_blob(repo, config)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": {"mediaType": config_type, "digest": config_digest, "size": len(config)},
            "layers": [
                {
                    "mediaType": media_type,
                    "digest": self._push_blob(repo, data),
                    "size": len(data),
                    "annotations": {"org.opencontainers.image.title": title},
                }
                for title, media_type, data in layers
            ],
            "annotations": annotations,
        }
        return json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()

    # -- the lease -------------------------------------------------------------------------
    def _acquire(self, repo: str) -> None:
        token = uuid.uuid4().hex
        deadline = time.monotonic() + max(60.0, _lease_seconds() * 2)
        delay = 0.05
        while time.monotonic() < deadline:
            holder = self._lease(repo)
            if holder is None or holder["expires"] < time.time() or holder.get("released"):
                body = json.dumps({"token": token, "expires": time.time() + _lease_seconds()}).encode()
                self.put_manifest(repo, LEASE_TAG, self._artifact(repo, LEASE_ARTIFACT_TYPE, LEASE_MEDIA_TYPE, body, [], {}),
                          OCI_MANIFEST)
                time.sleep(_settle_seconds())
                holder = self._lease(repo)
                if holder is not None and holder["token"] == token:
                    self._lease_token = token
                    return
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
        raise RegistryError(f"registry {self.url}: timed out waiting for the lock of {repo} (tag {LEASE_TAG})")

    def _release(self, repo: str) -> None:
        body = json.dumps({"token": self._lease_token, "expires": 0, "released": True}).encode()
        self.put_manifest(repo, LEASE_TAG, self._artifact(repo, LEASE_ARTIFACT_TYPE, LEASE_MEDIA_TYPE, body, [], {}),
                          OCI_MANIFEST)

    def _lease(self, repo: str) -> dict[str, Any] | None:
        found = self._manifest(repo, LEASE_TAG)
        if found is None:
            return None
        return json.loads(self.blob(repo, found[1]["config"]["digest"]))

    # -- the index: description and archived versions --------------------------------------
    def _index(self, repo: str) -> dict[str, Any]:
        found = self._manifest(repo, INDEX_TAG)
        if found is None:
            return {"description": None, "archived": []}
        return json.loads(self.blob(repo, found[1]["config"]["digest"]))

    def _write_index(self, repo: str, index: dict[str, Any]) -> None:
        body = json.dumps(index, sort_keys=True).encode()
        self.put_manifest(repo, INDEX_TAG, self._artifact(repo, INDEX_ARTIFACT_TYPE, INDEX_MEDIA_TYPE, body, [], {}),
                          OCI_MANIFEST)

    # -- the Registry protocol -------------------------------------------------------------
    def register(
        self,
        name: str,
        lockfile: str,
        manifest: dict[str, Any],
        provenance: dict[str, Any],
        *,
        labels: tuple[str, ...] = (),
        description: str | None = None,
    ) -> Registration:
        digest = parse_lock(lockfile, f"lockfile for {name}").digest()
        for label in labels:
            self._check_label(label)
        repo = self.target.repository(name)
        self._acquire(repo)
        try:
            tags = self._tags(repo)
            existing = self._manifest(repo, f"digest-{digest}") if f"digest-{digest}" in tags else None
            if existing is not None:
                number = int(existing[1]["annotations"]["io.mlenv.version"])
                body, created = existing[0], False
            else:
                number = max((int(m[1]) for t in tags if (m := _VERSION_TAG.match(t))), default=0) + 1
                config = json.dumps(
                    {"name": name, "version": number, "digest": digest, "provenance": provenance,
                     "entry_hash": entry_hash(name, number, lockfile, manifest, provenance)},
                    sort_keys=True,
                ).encode()
                body = self._artifact(
                    repo,
                    ARTIFACT_TYPE,
                    CONFIG_MEDIA_TYPE,
                    config,
                    [
                        ("conda-lock.yml", LOCKFILE_MEDIA_TYPE, lockfile.encode()),
                        ("mlenv.json", MANIFEST_MEDIA_TYPE, json.dumps(manifest, sort_keys=True).encode()),
                    ],
                    {
                        "io.mlenv.name": name,
                        "io.mlenv.version": str(number),
                        "io.mlenv.digest": f"sha256:{digest}",
                        "org.opencontainers.image.created": str(provenance.get("time") or ""),
                    },
                )
                self.put_manifest(repo, f"v{number}", body, OCI_MANIFEST)
                self.put_manifest(repo, f"digest-{digest}", body, OCI_MANIFEST)
                current = self._manifest(repo, LATEST) if LATEST in tags else None
                if takes_latest(provenance, self._provenance(repo, current[1]) if current else None):
                    self.put_manifest(repo, LATEST, body, OCI_MANIFEST)
                created = True
            for label in labels:
                self.put_manifest(repo, label, body, OCI_MANIFEST)
            if description is not None:
                index = self._index(repo)
                if index.get("description") != description:
                    self._write_index(repo, {**index, "description": description})
        finally:
            self._release(repo)
        return Registration(self._version(name, number), created)

    def _check_label(self, label: str) -> None:
        check_label(label)
        if _RESERVED.match(label):
            raise UsageError(f"label {label!r} is reserved on OCI registries (v<N>, digest-*, mlenv-*)")

    def _version(self, name: str, number: int, *, labels: tuple[str, ...] | None = None,
                 archived: bool | None = None) -> Version:
        repo = self.target.repository(name)
        found = self._manifest(repo, f"v{number}")
        if found is None:
            self._require(name)
            raise NotFoundError(f"{name} has no version {number}")
        body, manifest = found
        try:
            config = json.loads(self.blob(repo, manifest["config"]["digest"]))
            layers = {layer["annotations"]["org.opencontainers.image.title"]: layer for layer in manifest["layers"]}
            lockfile = self.blob(repo, layers["conda-lock.yml"]["digest"]).decode()
            env_manifest = json.loads(self.blob(repo, layers["mlenv.json"]["digest"]))
        except (KeyError, ValueError, UnicodeDecodeError):
            raise RegistryError(f"registry entry {name}:{number} is corrupted: not an mlenv artifact") from None
        if labels is None:
            labels = tuple(sorted(self._labels_of(repo, body)))
        if archived is None:
            archived = number in self._index(repo).get("archived", [])
        # entry_hash covers the number too: a v<N> tag moved onto another version's manifest is refused
        return Version(name, number, config["digest"], lockfile, env_manifest, config.get("provenance", {}),
                       labels, archived, config.get("entry_hash"))

    def _provenance(self, repo: str, manifest: dict[str, Any]) -> dict[str, Any] | None:
        try:
            return json.loads(self.blob(repo, manifest["config"]["digest"])).get("provenance") or {}
        except (KeyError, ValueError, TypeError):
            return None  # not a version (a damaged tag): the new version takes `latest`

    def _labels_of(self, repo: str, body: bytes) -> list[str]:
        wanted = "sha256:" + hashlib.sha256(body).hexdigest()
        result = []
        for tag in self._tags(repo):
            if _RESERVED.match(tag):
                continue
            head = self._request("HEAD", f"{repo}/manifests/{tag}", headers={"Accept": OCI_MANIFEST})
            if head.headers.get("Docker-Content-Digest") == wanted:
                result.append(tag)
        return result

    def _require(self, name: str) -> None:
        if not any(_VERSION_TAG.match(t) for t in self._tags(self.target.repository(name))):
            raise NotFoundError(f"no environment named {name!r} in {self.url}")

    def dangling_labels(self, name: str) -> dict[str, int]:
        """A tag always names a manifest, so an OCI label cannot point at nothing."""
        return {}

    def get(self, ref: Reference) -> Version:
        if ref.version is not None:
            return verify(self._version(ref.name, ref.version))
        label = ref.label or LATEST
        repo = self.target.repository(ref.name)
        found = self._manifest(repo, label)
        if found is None or _RESERVED.match(label):
            self._require(ref.name)
            raise NotFoundError(f"{ref.name} has no label {label!r}")
        number = int(found[1].get("annotations", {}).get("io.mlenv.version", 0))
        if not number:  # a deleted label's tombstone
            raise NotFoundError(f"{ref.name} has no label {label!r}")
        return verify(self._version(ref.name, number))

    def find_digest(self, name: str, digest: str) -> int | None:
        found = self._manifest(self.target.repository(name), f"digest-{digest}")
        return int(found[1]["annotations"]["io.mlenv.version"]) if found else None

    def history(self, name: str) -> list[Version]:
        versions, _ = self._history(name, None, None)
        return versions[::-1]

    def history_page(self, name: str, offset: int, limit: int) -> tuple[list[Version], int]:
        """`limit` versions from `offset`, newest first, and how many there are: only that
        page's artifacts are fetched (see `registry.base.history_page`)."""
        return self._history(name, offset, limit)

    def _history(self, name: str, offset: int | None, limit: int | None) -> tuple[list[Version], int]:
        repo = self.target.repository(name)
        tags = self._tags(repo)
        every = sorted((int(m[1]) for t in tags if (m := _VERSION_TAG.match(t))), reverse=True)
        if not every:
            raise NotFoundError(f"no environment named {name!r} in {self.url}")
        numbers = every if offset is None or limit is None else every[offset:offset + limit]
        archived = set(self._index(repo).get("archived", []))
        by_digest: dict[str, list[str]] = {}
        for tag in tags:
            if not _RESERVED.match(tag):
                head = self._request("HEAD", f"{repo}/manifests/{tag}", headers={"Accept": OCI_MANIFEST})
                by_digest.setdefault(head.headers.get("Docker-Content-Digest", ""), []).append(tag)
        versions = []
        for number in numbers:
            head = self._request("HEAD", f"{repo}/manifests/v{number}", headers={"Accept": OCI_MANIFEST})
            labels = tuple(sorted(by_digest.get(head.headers.get("Docker-Content-Digest", ""), [])))
            versions.append(self._version(name, number, labels=labels, archived=number in archived))
        return versions, len(every)

    def list(self, *, include_archived: bool = False) -> list[EnvironmentSummary]:
        repositories = self._paged("_catalog", "repositories", "listing repositories")
        prefix = f"{self.target.namespace}/" if self.target.namespace else ""
        result = []
        for repo in sorted(repositories):
            if not repo.startswith(prefix) or "/" in repo[len(prefix):]:
                continue
            tags = self._tags(repo)
            numbers = [int(m[1]) for t in tags if (m := _VERSION_TAG.match(t))]
            if not numbers:
                continue
            index = self._index(repo)
            archived = set(index.get("archived", []))
            visible = [n for n in numbers if include_archived or n not in archived]
            if not visible:
                continue
            by_digest = {}
            for n in numbers:
                head = self._request("HEAD", f"{repo}/manifests/v{n}", headers={"Accept": OCI_MANIFEST})
                by_digest[head.headers.get("Docker-Content-Digest")] = n
            labels = {}
            for tag in tags:
                if not _RESERVED.match(tag):
                    head = self._request("HEAD", f"{repo}/manifests/{tag}", headers={"Accept": OCI_MANIFEST})
                    number = by_digest.get(head.headers.get("Docker-Content-Digest"))
                    if number is not None:
                        labels[tag] = number
            name = self._name_of(repo, max(numbers))
            result.append(EnvironmentSummary(name, labels.get(LATEST), len(visible), labels, index.get("description"),
                                             archived=len([n for n in numbers if n in archived])))
        return result

    def _name_of(self, repo: str, number: int) -> str:
        found = self._manifest(repo, f"v{number}")
        return (found[1].get("annotations") or {}).get("io.mlenv.name", repo.rsplit("/", 1)[-1]) if found else repo

    def label(self, name: str, version: int, label: str) -> Version:
        self._check_label(label)
        repo = self.target.repository(name)
        found = self._manifest(repo, f"v{version}")
        if found is None:
            self._require(name)
            raise NotFoundError(f"{name} has no version {version}")
        self.put_manifest(repo, label, found[0], OCI_MANIFEST)
        return self._version(name, version)

    def unlabel(self, name: str, label: str) -> int:
        """Distribution 2.x cannot delete one tag of a manifest (only the manifest, with every tag):
        the tag is pointed at a small tombstone artifact instead, which no reader takes for a
        version (`get` says there is no such label; listings leave it out)."""
        self._check_label(label)
        repo = self.target.repository(name)
        found = self._manifest(repo, label)
        number = int((found[1].get("annotations") or {}).get("io.mlenv.version", 0)) if found else 0
        if not number:
            self._require(name)
            raise NotFoundError(f"{name} has no label {label!r}")
        body = self._artifact(repo, DELETED_LABEL_ARTIFACT_TYPE, CONFIG_MEDIA_TYPE, b"{}",
                              [("deleted", "application/vnd.mlenv.deleted-label.v1", label.encode())],
                              {"io.mlenv.deleted-label": label})
        self.put_manifest(repo, label, body, OCI_MANIFEST)
        return number

    def set_archived(self, name: str, version: int, archived: bool) -> Version:
        repo = self.target.repository(name)
        if self._manifest(repo, f"v{version}") is None:
            self._require(name)
            raise NotFoundError(f"{name} has no version {version}")
        self._acquire(repo)
        try:
            index = self._index(repo)
            current = set(index.get("archived", []))
            updated = current | {version} if archived else current - {version}
            if updated != current:
                self._write_index(repo, {**index, "archived": sorted(updated)})
        finally:
            self._release(repo)
        return self._version(name, version)


class OciBackend:
    name = "oci"

    def handles(self, url: str) -> bool:
        return url.startswith("oci://")

    def open(self, url: str) -> OciRegistry:
        return OciRegistry(url)


@hookimpl
def mlenv_register_registries() -> list[OciBackend]:
    return [OciBackend()]
