"""HTTP to package indexes (metadata, index pages, downloads): one keep-alive session per process.

A lock reads the metadata of every pip package, often a hundred files from one host: with a new
connection per request (urllib) each one resolved the host's name and shook hands with it again,
and concurrent name lookups stall for seconds on some resolvers. The session keeps up to
`CONNECTIONS` connections per host open across threads. Credentials are sent as
they always were: never in the URL, an `Authorization` header from a
known URL of the same host, else netrc. Certificates: the system's store (as urllib) and
certifi's (as requests).
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import unquote, urlsplit

from hatch_mlenv import credentials

CONNECTIONS = 16  # per host: the metadata reads run 8 at a time, downloads one per install thread
TIMEOUT = 60

_SESSION: Any = None  # a requests.Session, made on first use
_LOCK = threading.Lock()


class HTTPFailure(OSError):
    """A request that failed: `status` is the HTTP status, None when no answer came."""

    def __init__(self, url: str, status: int | None, reason: str) -> None:
        super().__init__(f"HTTP {status} {reason}".rstrip() if status else reason)
        self.url, self.status = url, status


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes


def get(url: str, known: Iterable[str] = (), headers: dict[str, str] | None = None) -> Reply:
    """GET `url` whole (a `file://` URL is read as urllib read it); raises HTTPFailure for anything
    but a 2xx answer."""
    if url.startswith("file:"):
        with _local(url) as handle:
            return Reply(200, {}, handle.read())
    response = _send(url, known, headers, stream=False)
    return Reply(response.status_code, {k.lower(): v for k, v in response.headers.items()}, response.content)


def download(url: str, out: IO[bytes], known: Iterable[str] = ()) -> None:
    """GET `url` into `out`, in pieces (a `file://` URL is copied); raises HTTPFailure."""
    if url.startswith("file:"):
        with _local(url) as handle:
            shutil.copyfileobj(handle, out, 1 << 20)
        return
    import requests  # lazy: as in _session

    response = _send(url, known, None, stream=True)
    try:
        for piece in response.iter_content(1 << 20):
            out.write(piece)
    except requests.RequestException as exc:
        raise HTTPFailure(url, None, _reason(exc)) from None
    finally:
        response.close()


def _local(url: str) -> IO[bytes]:
    try:
        return open(unquote(urlsplit(url).path), "rb")  # noqa: SIM115 - the caller closes it
    except OSError as exc:
        raise HTTPFailure(url, None, exc.strerror or str(exc)) from None


def _send(url: str, known: Iterable[str], headers: dict[str, str] | None, *, stream: bool) -> Any:
    import requests  # lazy: as in _session

    public = credentials.strip(url)
    try:
        # `auth` always set: requests would otherwise replace our header with the host's netrc entry,
        # another service's password when the index shares its host with a channel (netrc is by host)
        response = _session().get(public, headers=headers, auth=_Authorization(credentials.authorization(url, known)),
                                  timeout=TIMEOUT, stream=stream)
    except requests.RequestException as exc:
        raise HTTPFailure(public, None, _reason(exc)) from None
    if not 200 <= response.status_code < 300:
        response.close()
        raise HTTPFailure(public, response.status_code, response.reason or "")
    return response


class _Authorization:
    """requests' `auth`: our `Authorization` value (None: none sent)."""

    def __init__(self, value: str | None) -> None:
        self.value = value

    def __call__(self, request: Any) -> Any:
        if self.value:
            request.headers["Authorization"] = self.value
        return request


def _reason(exc: BaseException) -> str:
    """The words of a failure without urllib3's wrapping: `[Errno 111] Connection refused`."""
    inner = exc.args[0] if exc.args else exc
    text = str(getattr(inner, "reason", None) or inner)
    return text.split(">: ", 1)[-1] if text.startswith("<") else text


def _session() -> Any:  # -> requests.Session
    global _SESSION
    with _LOCK:
        if _SESSION is None:
            import ssl

            import requests  # lazy: ~40 ms to import; only a lock, outdated or a download talks to an index
            from requests.adapters import HTTPAdapter

            class _Adapter(HTTPAdapter):
                def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
                    kwargs["ssl_context"] = ssl.create_default_context()  # the system's certificates too
                    super().init_poolmanager(*args, **kwargs)

            session = requests.Session()
            session.trust_env = True  # proxies from the environment, as urllib
            for scheme in ("https://", "http://"):
                session.mount(scheme, _Adapter(pool_connections=8, pool_maxsize=CONNECTIONS))
            _SESSION = session
        return _SESSION
