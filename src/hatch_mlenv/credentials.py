"""Credentials of channels and package indexes: used to fetch, never written.

A channel or index URL may carry `user:password@` or a conda token path
(`/t/TOKEN/`), literally or through `${VAR}` (expanded from the environment
when the URL is used, so the secret is in neither pyproject.toml nor the spec
hash); hosts without one fall back to `~/.netrc` (`$NETRC`) (and, for conda
channels, rattler's own authentication storage: `RATTLER_AUTH_FILE`, keyring).
Everything we write (lockfile, registry, exports, SBOM, conda-meta, messages)
sees the public URL: no user information, no token path.

Nor does any library we hand a channel to: rattler persists the URLs it is
given (its repodata cache's `.info.json` and shard caches, the `url` of a
conda-meta record), so it only ever gets the public URL, and the
credentials travel in memory, in the middleware of its HTTP client
(`channel_client`).
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit, urlunsplit

from hatch_mlenv.errors import ConfigError

if TYPE_CHECKING:
    from rattler.networking import Client  # lazy: rattler takes ~0.12 s to import; only a download needs it

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
    target = urlsplit(url)
    for candidate in known:
        parts = urlsplit(candidate)
        if parts.hostname == target.hostname and parts.port == target.port and parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            return "Basic " + base64.b64encode(pair.encode()).decode()
    login = netrc_login(target.hostname or "")
    if login is not None:
        return "Basic " + base64.b64encode(f"{login[0]}:{login[1]}".encode()).decode()
    return None


def netrc_file() -> str:
    """The netrc file as a message names it: `$NETRC`, else `~/.netrc`."""
    return os.environ.get("NETRC") or "~/.netrc"


def netrc_login(host: str) -> tuple[str, str, str] | None:
    """(login, password, the file as `netrc_file` names it) of `host`'s netrc entry, if any."""
    path = os.path.expanduser(netrc_file())
    if not host or not os.path.isfile(path):
        return None
    import netrc  # here: only a user with a netrc file pays for the module

    try:
        entry = netrc.netrc(path).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return None
    if entry is None:
        return None
    return entry[0] or "", entry[2] or "", netrc_file()


@dataclass(frozen=True)
class ChannelAccess:
    """Channels as rattler may see them, and a client that carries their credentials."""

    urls: list[str]  # public: no user information, no token path
    client: Client


def channel_client(fetch_urls: Sequence[str]) -> ChannelAccess:
    """The public URLs of `fetch_urls` and a rattler client that authenticates them in memory.

    The client is rattler's standard stack (retry, its authentication storage:
    `RATTLER_AUTH_FILE`, keyring, netrc; OCI, GCS, S3) with two middlewares in
    front: one adds the `Authorization` header of a channel's `user:password@`
    to every request under the channel, which rattler's storage then leaves
    alone (explicit credentials win); the other, a mirror of the channel on
    itself, puts a conda token's `/t/TOKEN/` back into the request's path, as
    rattler's own `CondaToken` authentication does. Neither changes the URL
    rattler records: caches and conda-meta see the public one.

    rattler gives the header middleware the request's host and path only, not
    its port: credentials are matched by host and the longest channel path,
    as rattler's own storage matches them by host.
    """
    from rattler.networking import (  # lazy: as above
        AddHeadersMiddleware,
        AuthenticationMiddleware,
        Client,
        GCSMiddleware,
        MirrorMiddleware,
        OciMiddleware,
        RetryMiddleware,
        S3Middleware,
    )

    urls: list[str] = []
    headers: list[tuple[str, str, dict[str, str]]] = []  # (host, path prefix, headers), longest path first
    mirrors: dict[str, list[str]] = {}
    for fetch_url in fetch_urls:
        public_url = public(fetch_url)
        urls.append(public_url)
        parts = urlsplit(fetch_url)
        host = (parts.hostname or "").lower()
        prefix = urlsplit(public_url).path.rstrip("/") + "/"
        if parts.username is not None or parts.password is not None:
            pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
            headers.append((host, prefix, {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}))
        token = _TOKEN_PATH.match(strip(fetch_url))
        if token is not None:
            tokened = strip(fetch_url).rstrip("/") + "/"
            mirrors[public_url.rstrip("/") + "/"] = [tokened]
    headers.sort(key=lambda entry: len(entry[1]), reverse=True)

    def authorization_for(request_host: str, path: str) -> dict[str, str] | None:
        # Runs on rattler's threads while it solves: no imports, no I/O (see _compat.SOLVE_IMPORTS).
        request_host = request_host.strip("[]").lower()
        for host, prefix, header in headers:
            if host == request_host and (path + "/").startswith(prefix):
                return header
        return None

    middlewares: list[Any] = [RetryMiddleware(3)]
    if headers:
        middlewares.append(AddHeadersMiddleware(authorization_for))
    if mirrors:
        middlewares.append(MirrorMiddleware(mirrors))
    middlewares += [AuthenticationMiddleware(), OciMiddleware(), GCSMiddleware(), S3Middleware()]
    return ChannelAccess(urls=urls, client=Client(middlewares))
