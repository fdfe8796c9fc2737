"""References to registered versions: `NAME`, `NAME:VERSION`, `NAME@LABEL`, and the name and label rules;
and image references, `[registry/]repository:<digest12>`, computable from the lock alone.

A reference may carry its registry, so that one string names a version on any machine:
`oci://HOST[:PORT]/NAMESPACE/NAME:VERSION` (or `@LABEL`), `sqlite:///PATH#NAME:VERSION`, and
`REGISTRY:NAME@LABEL` for a registry named in the user's config file (`mlenv registry add`).
Low in the package: every command that takes a reference parses it here, and the image stage and
the registries name images here.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from hatch_mlenv.errors import UsageError
from hatch_mlenv.hashes import TAG_LENGTH
from hatch_mlenv.userconfig import is_registry_name, resolve

LATEST = "latest"
MAX_VERSION = 2**31 - 1  # version numbers are SQLite integers and OCI tags: keep them in range

# ASCII only, matched whole (re's `$` would let a trailing newline through; `\d` and
# str.isdigit() take any script's digits): one reference, one spelling.
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}"  # at most 100 characters, as in [tool.mlenv] name
_LABEL_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")
_VERSION_RE = re.compile(r"[0-9]+")
_REF_RE = re.compile(rf"(?P<name>{_NAME})(?::(?P<version>[^@:]+)|@(?P<label>[^@:]+))?")


@dataclass(frozen=True)
class Reference:
    """`NAME`, `NAME:VERSION` or `NAME@LABEL`; a bare name means `@latest`."""

    name: str
    version: int | None = None
    label: str | None = None
    registry: str | None = None  # the registry the string named (a URL or a configured name), if any

    def __str__(self) -> str:
        bare = f"{self.name}:{self.version}" if self.version is not None else f"{self.name}@{self.label or LATEST}"
        if self.registry is None:
            return bare
        if self.registry.startswith("oci://"):
            return f"{self.registry}/{bare}"
        if self.registry.startswith("sqlite://") or self.registry == "local":
            return f"{self.registry}#{bare}"
        return f"{self.registry}:{bare}"


def parse_reference(text: str, *, require_version: bool = False) -> Reference:
    """`NAME`, `NAME:VERSION`, `NAME@LABEL`, each optionally with its registry in front."""
    registry, bare = split_registry(text)
    try:
        ref = _parse_bare(bare, text, require_version)
    except UsageError:
        head, colon, rest = text.partition(":")
        if registry is None and colon and ("@" in rest or ":" in rest) and _is_reference(rest):
            resolve(head)  # REGISTRY:NAME@LABEL with an unknown REGISTRY: say which registries there are
        raise
    return ref if registry is None else Reference(ref.name, ref.version, ref.label, registry)


def split_registry(text: str) -> tuple[str | None, str]:
    """(registry, the rest) of a one-string reference; (None, text) when it names none.
    `X:DIGITS` is always NAME:VERSION, whatever registries are configured."""
    if text.startswith("oci://"):
        location, _, bare = text.rpartition("/")
        if location.count("/") < 3 or not bare:
            raise UsageError(f"malformed reference {text[:120]!r}: an OCI reference is "
                             "oci://HOST[:PORT]/NAMESPACE/NAME[:VERSION|@LABEL]")
        return location, bare
    if text.startswith("sqlite://") or text.startswith("local#"):
        location, hash_, bare = text.partition("#")
        if not hash_ or not bare:
            raise UsageError(f"malformed reference {text[:120]!r}: a registry file's reference is "
                             "sqlite:///PATH#NAME[:VERSION|@LABEL]")
        return location, bare
    head, colon, rest = text.partition(":")
    if colon and rest and not _VERSION_RE.fullmatch(rest) and is_registry_name(head):
        return head, rest
    return None, text


def _is_reference(text: str) -> bool:
    try:
        _parse_bare(text, text, False)
    except UsageError:
        return False
    return True


def _parse_bare(text: str, whole: str, require_version: bool) -> Reference:
    shown = f"{whole[:60]!r}..." if len(whole) > 60 else repr(whole)
    if any(character.isspace() for character in text):
        raise UsageError(f"malformed reference {shown}: a reference has no spaces "
                         "(use NAME, NAME:VERSION or NAME@LABEL)")
    match = _REF_RE.fullmatch(text)
    if not match:
        raise UsageError(f"malformed reference {shown}: use NAME, NAME:VERSION or NAME@LABEL "
                         "(a name has at most 100 characters)")
    version = match["version"]
    if version is not None:
        if not _VERSION_RE.fullmatch(version) or not 1 <= int(version) <= MAX_VERSION:
            raise UsageError(f"malformed reference {whole[:120]!r}: the version must be an integer from 1 to "
                             f"{MAX_VERSION}, in ASCII digits")
        return Reference(match["name"], int(version))
    if require_version:
        raise UsageError(f"malformed reference {shown}: use NAME:VERSION")
    label = match["label"]
    if label is not None:
        check_label(label)
    return Reference(match["name"], label=label)


def option_reference(option: str | None) -> Reference | None:
    """An option that names a `[tool.mlenv.envs.NAME]` or a registered version (hatch's `env`,
    pytest's `--mlenv-verify`): the Reference when it has a `:` or an `@`, else None."""
    if option is None or not (":" in option or "@" in option):
        return None
    return parse_reference(option)


def check_label(label: str) -> str:
    if not _LABEL_RE.fullmatch(label):
        raise UsageError(f"invalid label {label!r}: use ASCII letters, digits, '.', '_' and '-' (at most 64)")
    return label


def check_movable_label(label: str) -> str:
    """A label a user may point at a version: any valid one but `latest`, which registration
    alone moves (it always names the newest version)."""
    check_label(label)
    if label == LATEST:
        raise UsageError(f"label {LATEST!r} cannot be set by hand: it always points at the newest version "
                         "and only `mlenv register` moves it")
    return label


_NAME_RE = re.compile(_NAME)


def check_name(name: str) -> str:
    if not _NAME_RE.fullmatch(name):
        raise UsageError(f"invalid environment name {name!r}: use letters, digits, '.', '_' and '-'")
    return name


@dataclass(frozen=True)
class Target:
    """What a command works on: a project directory, a lockfile, or a registered version."""

    text: str
    path: str | None = None  # a project directory or a lockfile, as given
    reference: Reference | None = None

    @property
    def is_registered(self) -> bool:
        return self.reference is not None


_PATH_HINT = re.compile(r"^[.~]|[/\\]|\.(ya?ml|toml)$")


def parse_target(text: str) -> Target:
    """The one grammar of every command that reads an environment: a path that exists (a project
    directory or a lockfile) wins; text that looks like a path (`./x`, `a/b`, `x.yml`) must exist;
    anything else is `NAME`, `NAME:VERSION` or `NAME@LABEL` in a registry."""
    if not text.strip():
        raise UsageError("empty environment reference: give a project directory, a lockfile, "
                         "NAME, NAME:VERSION or NAME@LABEL")
    if os.path.exists(text):
        return Target(text, path=text)
    if text.startswith(("oci://", "sqlite://", "local#")):
        return Target(text, reference=parse_reference(text))
    if _PATH_HINT.search(text):
        if ":" in text or "@" in text:
            raise UsageError(f"malformed reference {text[:120]!r}: a name has no '/' and no leading '.'; "
                             "a path (a project directory or a lockfile) must exist")
        if text.endswith((".yml", ".yaml")):
            raise UsageError(f"{text}: lockfile not found")
        raise UsageError(f"{text}: no such project directory or lockfile")
    return Target(text, reference=parse_reference(text))


# -- image references ------------------------------------------------------------------------
DOCKER_HUB = "registry-1.docker.io"


def repository_name(name: str, repository: str | None = None, registry: str | None = None) -> str:
    """The image repository: `[tool.mlenv.docker] repository`, else the environment name, lowercased."""
    repository = repository or re.sub(r"[^a-z0-9._/-]+", "-", name.lower())
    if registry:
        repository = f"{registry.rstrip('/')}/{repository}"
    return repository


def image_reference(digest: str, spec: Any) -> str:
    """`[registry/]repository:<first 12 hex of the digest>`: known before any daemon is asked."""
    return f"{repository_name(spec.name, spec.docker.repository, spec.docker.registry)}:{digest[:TAG_LENGTH]}"


def base_dockerfile_reference(repository: str, sha256: str) -> str:
    """The base image built from a base Dockerfile: `<repository>-base:<first 12 hex of its sha256>`."""
    return f"{repository}-base:{sha256[:TAG_LENGTH]}"


def image_reference_for(name: str, digest: str) -> str:
    """The image reference of a lock registered without a project: `name:<digest12>`."""
    return f"{repository_name(name)}:{digest[:TAG_LENGTH]}"


def split_image_reference(reference: str) -> tuple[str, str, str]:
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


def require_registry(repository: str) -> None:
    """Refuse a repository without a registry host: there is nowhere to push it (a setting is
    missing: exit 2, before anything is built)."""
    first = repository.split("/")[0]
    if "/" not in repository or not ("." in first or ":" in first or first == "localhost"):
        raise UsageError(
            f"{repository}: no registry to push to; set [tool.mlenv.docker] registry (e.g. \"127.0.0.1:5000\")"
        )
