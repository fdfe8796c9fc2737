"""The grammars a definition's names and values must fit: environment and variable names, and
values that become Dockerfile words, shell words, paths and URLs.

Each `*_problem` check takes a value as the spec (or a registered lock) gives it and returns what
is wrong with it against the grammar of what it becomes, or None. `parse_spec` runs them on every
spec, a registered version's definition included; `check_locked_values` on what a lock carries;
the image stage again on what it writes.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any, Mapping

from hatch_mlenv.definition._keys import type_name
from hatch_mlenv.errors import ConfigError

# Names (environments, channels, conda packages) and variable values have bounds, documented in the README.
MAX_NAME_LENGTH = 100
MAX_VARIABLE_BYTES = 32 * 1024
NAME_RE = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_NAME_LENGTH - 1}}}\Z")
VARIABLE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
# PEP 508 distribution names.
PYPI_NAME_RE = re.compile(r"^([A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9._-]*[A-Za-z0-9])\Z")

# Docker's distribution reference grammar (github.com/distribution/reference, regexp.go).
_ALNUM = r"[a-z0-9]+"
_PATH_COMPONENT = rf"{_ALNUM}(?:(?:[._]|__|-+){_ALNUM})*"
_REMOTE_NAME = rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_IMAGE_RE = re.compile(rf"(?P<name>(?:{_DOMAIN}/)?{_REMOTE_NAME})(?::{_TAG})?(?:@(?P<digest>{_DIGEST}))?")
_REPOSITORY_RE = re.compile(_REMOTE_NAME)
_REGISTRY_RE = re.compile(rf"{_DOMAIN}(?:/{_REMOTE_NAME})?")
_TAG_RE = re.compile(_TAG)
_DIGEST_RE = re.compile(_DIGEST)
_MAX_IMAGE_NAME = 255  # docker's NameTotalLengthMax
# An image prefix: POSIX portable file name characters (and '+'), so that it is one word in a
# Dockerfile, a shell script and conda's prefix replacement.
_PREFIX_RE = re.compile(r"(?:/[A-Za-z0-9._+-]+)+")
# C0 controls but tab, and DEL: no environment variable, Dockerfile line or properties line holds them.
_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_URL_REFERENCE_RE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")
OCI_LAYOUT_SCHEME = "oci:"


def control_problem(text: str) -> str | None:
    """What is wrong with a control character in `text`, or None when it has none."""
    found = _CONTROL_RE.search(text)
    if found is None:
        return None
    char = found.group()
    what = {"\0": "a NUL byte", "\n": "a line break", "\r": "a carriage return"}.get(char, "a control character")
    return f"contains {what} (U+{ord(char):04X})"


def split_oci_layout(base_image: str) -> tuple[str, str | None]:
    """`oci:PATH[:TAG|@DIGEST]` -> (PATH as written, TAG or DIGEST or None)."""
    spec = base_image[len(OCI_LAYOUT_SCHEME):]
    if "@" in spec:
        path, reference = spec.rsplit("@", 1)
        return path, reference
    if ":" in spec and "/" not in spec.rsplit(":", 1)[1]:
        path, reference = spec.rsplit(":", 1)
        return path, reference
    return spec, None


def image_reference_problem(text: str) -> str | None:
    """A base image: docker's reference grammar (`[host[:port]/]path[:tag][@digest]`), or an OCI
    layout `oci:PATH[:TAG|@DIGEST]` whose PATH is absolute or stays inside the project."""
    problem = control_problem(text)
    if problem is not None:
        return problem
    if text.startswith(OCI_LAYOUT_SCHEME):
        path, reference = split_oci_layout(text)
        if not path or any(c.isspace() for c in path):
            return "is not oci:PATH[:TAG|@DIGEST] (PATH empty or with spaces)"
        if reference is not None and not (
            (_DIGEST_RE.fullmatch(reference) if "@" in text else _TAG_RE.fullmatch(reference))
        ):
            return f"is not oci:PATH[:TAG|@DIGEST]: {reference!r} is not a tag or digest"
        if not path.startswith("/") and _escapes(path):
            return "names an OCI layout outside the project (oci:PATH is absolute or inside the project)"
        return None
    found = _IMAGE_RE.fullmatch(text)
    if found is None:
        return ("is not an image reference ([host[:port]/]name[:tag][@digest], name in lowercase "
                "letters, digits and . _ -), nor oci:PATH[:TAG]")
    if len(found.group("name")) > _MAX_IMAGE_NAME:
        return f"has a name longer than {_MAX_IMAGE_NAME} characters"
    digest = found.group("digest")
    if digest is not None and digest.startswith("sha256:") and not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        return "has a sha256 digest that is not 64 lowercase hex digits"
    return None


def repository_problem(text: str) -> str | None:
    """An image repository: OCI distribution's rules (lowercase path components joined by '/')."""
    if _REPOSITORY_RE.fullmatch(text) is None or len(text) > _MAX_IMAGE_NAME:
        return ("is not an image repository: lowercase letters and digits, separated by '.', '_', '__' or "
                "'-' within a component and '/' between components")
    return None


def registry_problem(text: str) -> str | None:
    """An image registry: `host[:port][/namespace]`, no scheme."""
    if _REGISTRY_RE.fullmatch(text) is None:
        return "is not an image registry: host[:port][/namespace], e.g. \"registry.example.com\" or \"127.0.0.1:5000\""
    return None


def prefix_problem(text: str) -> str | None:
    """The image's prefix: absolute, normalised, not `/`, portable file name characters only."""
    problem = control_problem(text)
    if problem is not None:
        return problem
    if not text.startswith("/"):
        return "must be an absolute path"
    if text == "/" or not text.strip("/"):
        return "must not be / (the environment is copied onto the base image at this path)"
    path = text.rstrip("/")
    if path.startswith("//") or posixpath.normpath(path) != path:
        return f"must be a normalised path, without '.', '..' or '//' (did you mean {posixpath.normpath(path)!r}?)"
    if _PREFIX_RE.fullmatch(path) is None:
        return "may hold only letters, digits, '.', '_', '+', '-' and '/'"
    return None


def variable_value_problem(value: str) -> str | None:
    """A variable's value becomes an environment entry, a Dockerfile ENV, a shell word and a Spark property."""
    problem = control_problem(value)
    if problem is None:
        return None
    if "\0" in value:
        return f"the value {problem}, which no environment variable can hold"
    return f"the value {problem}: a value is one line (a Dockerfile ENV and a Spark property cannot hold more)"


def url_reference_problem(url: str) -> str | None:
    """Every `${` of a URL starts a `${NAME}` reference (expanded from the environment when used)."""
    start = url.find("${")
    while start != -1:
        if _URL_REFERENCE_RE.match(url, start) is None:
            end = url.find("}", start)
            shown = url[start:end + 1] if end != -1 else url[start:]
            return f"malformed reference {shown!r}: write ${{NAME}}, NAME an environment variable name"
        start = url.find("${", start + 2)
    return None


def _escapes(relative: str) -> bool:
    """A relative path that leaves its directory once normalised."""
    normal = posixpath.normpath(relative.replace("\\", "/"))
    return normal == ".." or normal.startswith("../")


def check_locked_values(source: object, project_dir: Path, base_image: str | None,
                        variables: Mapping[str, Any]) -> None:
    """What a lock carries that reaches a Dockerfile or a process environment (its base image and
    variables, covered by its digest): the checks of the spec keys they came from, for a lock that
    was not written from this machine's spec (a registered version, a lockfile given by path)."""
    if base_image is not None:
        if not isinstance(base_image, str):
            raise ConfigError(source, "tool.mlenv.docker.base-image", f"must be a string, not {type_name(base_image)}")
        problem = image_reference_problem(base_image)
        if problem is not None:
            raise ConfigError(source, "tool.mlenv.docker.base-image", f"{base_image!r} {problem}")
    if not isinstance(variables, Mapping):
        raise ConfigError(source, "tool.mlenv.variables", f"must be a table, not {type_name(variables)}")
    for name, value in variables.items():
        if not isinstance(name, str) or not VARIABLE_RE.match(name) or len(name) > MAX_NAME_LENGTH:
            raise ConfigError(source, "tool.mlenv.variables", f"invalid environment variable name {name!r}")
        key = f"tool.mlenv.variables.{name}"
        if value is None:  # a secret: its value comes from the caller
            continue
        if not isinstance(value, str):
            raise ConfigError(source, key, f"must be a string, not {type_name(value)}")
        problem = variable_value_problem(value)
        if problem is not None:
            raise ConfigError(source, key, problem)
