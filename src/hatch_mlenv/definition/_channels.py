"""Where packages come from: conda channels, package indexes and find-links locations.

A URL may carry credentials only as `${VAR}` references, expanded from the environment when
it is fetched (`hatch_mlenv.credentials`); what is written to the lock and to a registered
definition never holds them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from hatch_mlenv.credentials import expand, public
from hatch_mlenv.definition._checks import NAME_RE, control_problem, url_reference_problem
from hatch_mlenv.definition._keys import Reader
from hatch_mlenv.errors import ConfigError

DEFAULT_CHANNELS = ("conda-forge",)
CONDA_CHANNEL_ALIAS = "https://conda.anaconda.org"


@dataclass(frozen=True)
class Channel:
    """A conda channel as written in the spec and as the URL the solver reads."""

    raw: str
    url: str
    key: str = "tool.mlenv.channels"

    @property
    def local_path(self) -> Path | None:
        if self.url.startswith("file://"):
            return Path(urlparse(self.url).path)
        return None

    @property
    def public_url(self) -> str:
        """The URL as written to the lock: no credentials, no token path."""
        return public(self.url)

    def fetch_url(self, pyproject: Path) -> str:
        """The URL to fetch from: `${VAR}` expanded, credentials included."""
        return expand(self.url, pyproject, self.key)

    @property
    def identity(self) -> str:
        """What the spec hash sees: a project-relative path as written, so that the
        unpacked sdist (or a moved checkout) still matches its lock; URLs as written
        to the lock, so that rotating a token does not make the lock stale."""
        if self.local_path is not None and not self.raw.startswith(("/", "file:", "~")):
            return Path(self.raw).as_posix().rstrip("/")
        return self.public_url


def parse_channel(pyproject: Path, key: str, raw: str) -> Channel:
    text = raw.strip()
    if not text:
        raise ConfigError(pyproject, key, "channel must not be empty")
    problem = control_problem(text) or url_reference_problem(text)
    if problem:
        raise ConfigError(pyproject, key, problem)
    parsed = urlparse(text)
    if parsed.scheme == "file":
        path = Path(parsed.path)
    elif parsed.scheme in ("http", "https", "s3", "gcs", "oci"):
        return Channel(raw, text.rstrip("/"), key)
    elif text.startswith((".", "/", "~")) or "/" in text or "\\" in text:
        path = (pyproject.parent / Path(text).expanduser()).resolve()
    else:
        if not NAME_RE.match(text):
            raise ConfigError(pyproject, key, f"invalid channel name {text!r}")
        return Channel(raw, f"{CONDA_CHANNEL_ALIAS}/{text}", key)
    return Channel(raw, path.resolve().as_uri(), key)


def parse_index_urls(reader: Reader, table: dict[str, Any]) -> tuple[str | None, list[str]]:
    """`pip-index-url` and `pip-extra-index-urls`: http(s) or file URLs, credentials as `${VAR}` only."""
    pyproject = reader.path
    pip_index_url = reader.string(table, "pip-index-url", None)
    extra_urls = reader.string_list(table, "pip-extra-index-urls", [])
    for key, url in [("pip-index-url", pip_index_url)] + [
        (f"pip-extra-index-urls[{i}]", u) for i, u in enumerate(extra_urls)
    ]:
        if url is not None and urlparse(url).scheme not in ("http", "https", "file"):
            raise ConfigError(pyproject, f"tool.mlenv.{key}", f"not an http(s) or file URL: {url!r}")
        problem = url is not None and (control_problem(url) or url_reference_problem(url))
        if problem:
            raise ConfigError(pyproject, f"tool.mlenv.{key}", problem)
    return pip_index_url, extra_urls


def parse_find_links(reader: Reader, table: dict[str, Any]) -> list[str]:
    """`pip-find-links`: http(s) URLs as written, local directories made absolute (relative to the project)."""
    pyproject = reader.path
    find_links = []
    for i, location in enumerate(reader.string_list(table, "pip-find-links", [])):
        key = f"tool.mlenv.pip-find-links[{i}]"
        problem = control_problem(location) or url_reference_problem(location)
        if problem:
            raise ConfigError(pyproject, key, problem)
        scheme = urlparse(location).scheme
        if scheme in ("http", "https"):
            find_links.append(location)
            continue
        path = Path(urlparse(location).path) if scheme == "file" else (pyproject.parent / Path(location).expanduser())
        if not location.strip() or scheme not in ("", "file"):
            raise ConfigError(pyproject, key, f"not a directory or an http(s) URL: {location!r}")
        find_links.append(str(path.resolve()))
    return find_links
