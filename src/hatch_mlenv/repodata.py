"""What the channels of a lock's conda packages say of them (license, size) where a channel is a
directory on this machine (`file://`): conda-lock's format has no such fields, and remote
channels are never fetched for them. Used by the SBOM and the web page."""

from __future__ import annotations

import json
import threading
import urllib.parse
from pathlib import Path
from typing import Any, Iterable

from hatch_mlenv.lockfile import LockedPackage

# repodata.json files read, by path, with the (mtime, size) they had: a server reads the same
# channel for every page. A few entries: the defaults-2018 snapshot's linux-64 alone is 7 MB.
_READ: dict[Path, tuple[tuple[int, int], dict[str, Any]]] = {}
_KEEP = 8
_LOCK = threading.Lock()


def local_records(packages: Iterable[LockedPackage]) -> dict[str, dict[str, Any]]:
    """Package URL -> its repodata record, for the conda packages of `file://` channels."""
    found: dict[str, dict[str, Any]] = {}
    for package in packages:
        if package.manager != "conda" or not package.url.startswith("file://"):
            continue
        directory, _, filename = package.url.rpartition("/")
        record = _records(Path(urllib.parse.unquote(urllib.parse.urlparse(directory).path)) / "repodata.json").get(filename)
        if isinstance(record, dict):
            found[package.url] = record
    return found


def _records(path: Path) -> dict[str, Any]:
    try:
        stat = path.stat()
    except OSError:
        return {}
    stamp = (stat.st_mtime_ns, stat.st_size)
    with _LOCK:
        cached = _READ.get(path)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    try:
        repodata = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        repodata = {}
    records = {**repodata.get("packages", {}), **repodata.get("packages.conda", {})} if isinstance(repodata, dict) else {}
    with _LOCK:
        for stale in list(_READ)[:max(0, len(_READ) - _KEEP + 1)]:
            _READ.pop(stale, None)
        _READ[path] = (stamp, records)
    return records
