"""Credentials of channels and package indexes: used to fetch, never written.

A channel or index URL may carry `user:password@` or a conda token path
(`/t/TOKEN/`), literally or through `${VAR}` (expanded from the environment
when the URL is used, so the secret is in neither pyproject.toml nor the spec
hash); hosts without one fall back to `~/.netrc` (`$NETRC`) (and, for conda
channels, rattler's own authentication storage: `RATTLER_AUTH_FILE`, keyring).
Everything we write (lockfile, registry, exports, SBOM, conda-meta, messages)
sees the public URL: no user information, no token path.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from hatch_mlenv.errors import ConfigError

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand(url: str, source: Path, key: str) -> str:
    """`https://${USER}:${TOKEN}@host/simple` with the variables' values; a missing one is an error."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise ConfigError(source, key, f"environment variable {name} is not set (the URL uses ${{{name}}})")
        return os.environ[name]

    return _VARIABLE.sub(value, url)


_TOKEN_PATH = re.compile(r"^([a-z][a-z0-9+.-]*://[^/]*)/t/[^/]+(/|$)", re.IGNORECASE)


def public(url: str) -> str:
    """The URL as it may be written: without `user:password@` and without a `/t/TOKEN/` path."""
    return _TOKEN_PATH.sub(r"\1\2", strip(url))


_ONLY_A_VARIABLE = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*\}$")
_TOKEN_IN_PATH = re.compile(r"^([a-z][a-z0-9+.-]*://[^/]*)/t/([^/]+)(/|$)", re.IGNORECASE)


def references_only(url: str) -> str:
    """The URL as a stored definition may hold it: credentials only as `${VAR}` references,
    which each user's environment fills in; any literal user, password or token is removed."""
    parts = urlsplit(url)
    if not all(part is None or _ONLY_A_VARIABLE.match(part) for part in (parts.username, parts.password)):
        url = strip(url)
    token = _TOKEN_IN_PATH.match(url)
    if token is not None and not _ONLY_A_VARIABLE.match(token.group(2)):
        url = _TOKEN_IN_PATH.sub(r"\1\3", url)
    return url


def strip(url: str) -> str:
    """The URL without `user:password@`."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    netloc = parts.hostname or ""
    if parts.port is not None:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def redact(text: str, urls: Iterable[str]) -> str:
    """`text` with every password, user and token of `urls` replaced by `***`."""
    for url in urls:
        parts = urlsplit(url)
        token = _TOKEN_PATH.match(strip(url))
        secrets = [parts.password, parts.username]
        if token:
            secrets.append(strip(url)[len(token.group(1)) + 3:].split("/", 1)[0])
        for secret in secrets:
            if secret and len(secret) > 2:
                text = text.replace(secret, "***")
    return re.sub(r"//[^/@\s:]+:[^/@\s]+@", "//***:***@", text)


def authorization(url: str, known: Iterable[str] = ()) -> str | None:
    """A `Basic ...` header value for `url`: from a known URL of the same host, else netrc."""
    import base64

    target = urlsplit(url)
    for candidate in known:
        parts = urlsplit(candidate)
        if parts.hostname == target.hostname and parts.port == target.port and parts.username is not None:
            from urllib.parse import unquote

            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            return "Basic " + base64.b64encode(pair.encode()).decode()
    login = _netrc_login(target.hostname or "")
    if login is not None:
        return "Basic " + base64.b64encode(f"{login[0]}:{login[1]}".encode()).decode()
    return None


def _netrc_login(host: str) -> tuple[str, str] | None:
    import netrc

    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    if not host or not os.path.isfile(path):
        return None
    try:
        entry = netrc.netrc(path).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return None
    if entry is None:
        return None
    return entry[0] or "", entry[2] or ""
