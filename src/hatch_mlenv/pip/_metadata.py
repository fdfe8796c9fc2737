"""The dependencies a lock records for each pip package: its `Requires-Dist` for the target,
read from the index's PEP 658 metadata, the wheel itself, or a source release's archive."""

from __future__ import annotations

import contextlib
import email.parser
import json
import zipfile
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import unquote, urlsplit

from packaging.requirements import InvalidRequirement, Requirement

from hatch_mlenv import credentials
from hatch_mlenv.distributions import fetch, is_sdist, sdist_metadata
from hatch_mlenv.errors import SolveError
from hatch_mlenv.httpclient import HTTPFailure, get
from hatch_mlenv.paths import cache_dir
from hatch_mlenv.progress import step
from hatch_mlenv.pypi_names import canonical
from hatch_mlenv.sealed import WHEEL_METADATA, read_sealed, write_sealed


def _requirements(
    entries: list[dict[str, str]], environment: dict[str, str], known: list[str]
) -> list[dict[str, str]]:
    """Each wheel's `Requires-Dist` for the target, as conda-lock records dependencies: {name: specifier}.

    Read from the core metadata that indexes serve next to wheels (PEP 658), or
    from the wheel itself for a local file, or from a source release's archive
    (downloaded into the cache the install takes it from); fetched in parallel,
    and kept in the user cache by the file's sha256 (its metadata never changes),
    so a relock or another platform with the same files asks the index nothing;
    sealed (`hatch_mlenv.sealed`): whoever can write the cache cannot put other
    dependencies into a lock.
    """
    if not entries:
        return []
    cache = cache_dir() / "wheel-metadata"

    def cached(entry: dict[str, str]) -> str | None:
        body = read_sealed(cache / f"{entry['sha256']}.METADATA", WHEEL_METADATA, entry["sha256"])  # under our seal
        try:
            known_text = json.loads(body) if body is not None else None
        except ValueError:
            return None
        return known_text if isinstance(known_text, str) else None

    def metadata(entry: dict[str, str]) -> str | None:
        cached_path = cache / f"{entry['sha256']}.METADATA"
        if is_sdist(entry["url"]):
            # "" when the archive declares nothing (termcolor 1.1.0): cached too, never read again
            text = sdist_metadata(fetch(entry["url"], entry["sha256"], f"{entry['name']} {entry['version']}",
                                        known)) or ""
        else:
            text = _core_metadata(entry, known)
        if text is not None:  # a cache: writing it never fails a lock
            write_sealed(cached_path, WHEEL_METADATA, entry["sha256"], json.dumps(text).encode())
        return text

    # what the cache holds is read here; threads only for what must be fetched (a warm relock starts none)
    texts = [cached(entry) for entry in entries]
    missing = [i for i, text in enumerate(texts) if text is None]
    if missing:
        sources = [entries[i] for i in missing if is_sdist(entries[i]["url"])]
        # a source release has no metadata beside it: the archive itself is read, which takes a while
        names = ", ".join(f"{e['name']} {e['version']}" for e in sources)
        reading = step(f"reading the metadata of {len(sources)} source release{'s' if len(sources) != 1 else ''} "
                       f"({names})") if sources else contextlib.nullcontext()
        with ThreadPoolExecutor(max_workers=min(8, len(missing))) as pool, reading:
            for i, text in zip(missing, pool.map(metadata, [entries[i] for i in missing])):
                texts[i] = text
    return [_dependencies(text, environment) for text in texts]


def _core_metadata(entry: dict[str, str], known: list[str]) -> str | None:
    """A wheel's METADATA: the PEP 658 file beside it, else (indexes serve none for many older
    wheels, as PyPI for aiohttp 3.8.6) read out of the remote wheel with HTTP range requests, as
    uv and pip do: the zip's end, its central directory, then only the METADATA member. None when
    it cannot be had (no ranges served, no METADATA). A server that fails to answer is an error:
    a lock must not record a package without its dependencies because of a timeout."""
    url = entry["url"]
    if url.startswith("file://"):
        with zipfile.ZipFile(unquote(urlsplit(url).path)) as wheel:
            return _metadata_member(wheel)
    public = credentials.strip(url)
    failed = f"cannot read the metadata of {entry['name']} {entry['version']}"
    try:
        return get(public + ".metadata", known).body.decode("utf-8", "replace")
    except HTTPFailure as exc:
        if exc.status != 404:
            raise SolveError(f"{failed} ({public}.metadata): {exc}") from None
    try:
        with zipfile.ZipFile(_RemoteFile(public, known)) as wheel:
            return _metadata_member(wheel)
    except HTTPFailure as exc:
        raise SolveError(f"{failed} ({public}): {exc}") from None
    except (_NoRanges, zipfile.BadZipFile, StopIteration, ValueError):
        return None  # no metadata to be had: the lock records no dependencies for it


class _NoRanges(Exception):
    """The server answers a `Range` request with something other than the range."""


def _metadata_member(wheel) -> str:  # noqa: ANN001 - a zipfile.ZipFile
    name = next(n for n in wheel.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
    return wheel.read(name).decode("utf-8", "replace")


class _RemoteFile:
    """A read-only, seekable view of a file on an HTTP server that honours `Range`, for zipfile:
    each read the cache cannot serve fetches at least 64 KiB from where it starts."""

    CHUNK = 64 * 1024

    def __init__(self, url: str, known: list[str]) -> None:
        self.url, self.known = url, known
        self.position = 0
        self.chunks: dict[int, bytes] = {}  # start offset -> bytes
        tail = self._get(f"bytes=-{self.CHUNK}")
        self.size = self._total
        self.chunks[self.size - len(tail)] = tail

    def _get(self, byte_range: str) -> bytes:
        try:
            reply = get(self.url, self.known, {"Range": byte_range, "Accept-Encoding": "identity"})
        except HTTPFailure as exc:
            if exc.status == 416:  # "range not satisfiable": as good as no ranges
                raise _NoRanges(self.url) from None
            raise
        content_range = reply.headers.get("content-range", "")
        if reply.status != 206 or "/" not in content_range:
            raise _NoRanges(self.url)
        self._total = int(content_range.rsplit("/", 1)[1])
        return reply.body

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.position, 2: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def read(self, count: int = -1) -> bytes:
        end = self.size if count is None or count < 0 else min(self.size, self.position + count)
        if end <= self.position:
            return b""
        for start, data in self.chunks.items():
            if start <= self.position and end <= start + len(data):
                found = data[self.position - start:end - start]
                self.position = end
                return found
        stop = max(end, min(self.size, self.position + self.CHUNK))
        data = self._get(f"bytes={self.position}-{stop - 1}")
        self.chunks[self.position] = data
        found = data[:end - self.position]
        self.position = end
        return found


def _dependencies(metadata: str | None, environment: dict[str, str]) -> dict[str, str]:
    if metadata is None:
        return {}
    dependencies = {}
    for text in email.parser.HeaderParser().parsestr(metadata).get_all("Requires-Dist") or []:
        try:
            requirement = Requirement(text)
        except InvalidRequirement:
            continue
        if requirement.marker is not None and not requirement.marker.evaluate(environment):
            continue
        # No specifier is "", not conda's "*": rattler reads a pip entry's dependencies as PEP 508.
        dependencies[canonical(requirement.name)] = str(requirement.specifier)
    return dict(sorted(dependencies.items()))
