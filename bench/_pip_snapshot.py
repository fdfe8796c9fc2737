"""Rewrite bench/data/pip-metadata.json from pypi.org (network): `python -m bench._pip_snapshot`.

For each request of bench/pip.py, its closure on pypi.org: the newest NEWEST final versions of
each project with a wheel for the request's python (cpython manylinux <= 2_17 x86_64, or pure),
the newest of older major.minor series up to MAX_VERSIONS, and every pinned or conda-provided
version; each version's real Requires-Dist and Requires-Python (PEP 658 files, or the wheel's
METADATA read with HTTP range requests where PyPI has none).
"""

from __future__ import annotations

import email.parser
import json
import time
import urllib.error
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from packaging import tags
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import InvalidWheelFilename, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from bench._harness import scratch_dir
from bench.pip import PLATFORM, REQUESTS, SNAPSHOT, conda_packages, lock_conda
from hatch_mlenv.pip import marker_environment
from hatch_mlenv.pypi_names import canonical, provided_distributions

PYPI_SIMPLE = "https://pypi.org/simple"
NEWEST = 12
MAX_VERSIONS = 24


def _supported_tags(python: str) -> set[str]:
    major, minor = (int(x) for x in python.split(".")[:2])
    platforms = [f"manylinux_2_{m}_x86_64" for m in range(17, 4, -1)]
    platforms += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    found = set(tags.cpython_tags((major, minor), abis=[f"cp{major}{minor}" + ("m" if minor < 8 else "")],
                                  platforms=platforms))
    found |= set(tags.compatible_tags((major, minor), f"cp{major}{minor}", platforms))
    return {str(t) for t in found}


def _get(url: str, accept: str | None = None) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "hatch-mlenv-bench/1"})
    if accept:
        request.add_header("Accept", accept)
    for attempt in range(4):
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.read()
        except OSError:
            if attempt == 3:
                raise
            time.sleep(1 + attempt)
    raise AssertionError


def _usable_versions(page: dict, python: str, tags_: set[str]) -> dict[str, dict]:
    """version -> one usable wheel's file entry (not yanked, tag and Requires-Python fit)."""
    usable: dict[str, dict] = {}
    for entry in page["files"]:
        if not entry["filename"].endswith(".whl") or entry.get("yanked"):
            continue
        try:
            _, version, _, wheel_tags = parse_wheel_filename(entry["filename"])
        except InvalidWheelFilename:
            continue
        if not any(str(t) in tags_ for t in wheel_tags):
            continue
        requires_python = entry.get("requires-python")
        if requires_python:
            try:
                if not SpecifierSet(requires_python).contains(python, prereleases=True):
                    continue
            except InvalidSpecifier:
                pass
        # Keep the version as PyPI spells it in the filename's project/version part.
        text = entry["filename"].split("-")[1]
        has_metadata = bool(entry.get("core-metadata") or entry.get("dist-info-metadata"))
        current = usable.get(text)
        if current is None or (has_metadata and not current["_metadata"]):
            usable[text] = {**entry, "_metadata": has_metadata, "_version": version}
    return usable


def _choose(usable: dict[str, dict], pinned: set[str]) -> list[str]:
    finals = sorted((v for v, e in usable.items() if not e["_version"].is_prerelease),
                    key=lambda v: usable[v]["_version"], reverse=True)
    chosen = finals[:NEWEST]
    series = {usable[v]["_version"].release[:2] for v in chosen}
    for version in finals[NEWEST:]:
        if len(chosen) >= MAX_VERSIONS:
            break
        if usable[version]["_version"].release[:2] not in series:
            series.add(usable[version]["_version"].release[:2])
            chosen.append(version)
    chosen += [v for v in usable if v in pinned and v not in chosen]
    return chosen


def _metadata(name: str, version: str, entry: dict) -> dict:
    if entry["_metadata"]:
        text = _get(entry["url"] + ".metadata").decode("utf-8", "replace")
        headers = email.parser.HeaderParser().parsestr(text)
        return {"requires_python": headers.get("Requires-Python"),
                "requires_dist": headers.get_all("Requires-Dist") or []}
    # No PEP 658 file (PyPI has not backfilled every old wheel): read METADATA out of the
    # wheel itself with HTTP range requests (the zip's central directory, then one member).
    with zipfile.ZipFile(_RangeFile(entry["url"])) as wheel:
        member = next(n for n in wheel.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
        headers = email.parser.HeaderParser().parsestr(wheel.read(member).decode("utf-8", "replace"))
    return {"requires_python": headers.get("Requires-Python"), "requires_dist": headers.get_all("Requires-Dist") or []}


class _RangeFile:
    """A read-only, seekable view of a remote file, fetched in 64 KiB-aligned ranges."""

    BLOCK = 65536

    def __init__(self, url: str) -> None:
        self.url, self.position, self.blocks = url, 0, {}
        request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "hatch-mlenv-bench/1"})
        with urllib.request.urlopen(request, timeout=60) as response:
            self.size = int(response.headers["Content-Length"])

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = 0) -> int:
        self.position = offset if whence == 0 else self.position + offset if whence == 1 else self.size + offset
        return self.position

    def read(self, count: int = -1) -> bytes:
        end = self.size if count < 0 else min(self.size, self.position + count)
        chunks = []
        for block in range(self.position // self.BLOCK, (end - 1) // self.BLOCK + 1 if end > self.position else 0):
            if block not in self.blocks:
                first = block * self.BLOCK
                last = min(self.size, first + self.BLOCK) - 1
                request = urllib.request.Request(self.url, headers={"Range": f"bytes={first}-{last}",
                                                                    "User-Agent": "hatch-mlenv-bench/1"})
                with urllib.request.urlopen(request, timeout=60) as response:
                    data = response.read()
                if response.status != 206:
                    data = data[first:last + 1]
                self.blocks[block] = data
            chunks.append(self.blocks[block])
        data = b"".join(chunks)
        offset = self.position - (self.position // self.BLOCK) * self.BLOCK
        result = data[offset:offset + (end - self.position)]
        self.position = end
        return result


def take_snapshot() -> None:
    """Walk each request's closure on pypi.org and write bench/data/pip-metadata.json."""
    scratch = scratch_dir("pip-snapshot")
    pages: dict[str, dict] = {}
    metadata: dict[str, dict[str, dict]] = {}
    requests_out: dict[str, Any] = {}
    with ThreadPoolExecutor(max_workers=16) as pool:
        for request in REQUESTS:
            conda = conda_packages(lock_conda(scratch / request.key, request))
            python = next(p.version for p in conda if p.name == "python")
            provided = {name: p.version for name, p in provided_distributions(conda).items()}
            environment = marker_environment(PLATFORM, python)
            tags_ = _supported_tags(python)
            pinned: dict[str, set[str]] = {}
            for text in request.pip:
                requirement = Requirement(text)
                for spec in requirement.specifier:
                    if spec.operator == "==":
                        pinned.setdefault(canonical(requirement.name), set()).add(spec.version)
            for name, version in provided.items():
                pinned.setdefault(name, set()).add(version)
            chosen: dict[str, list[str]] = {}
            wave = sorted({canonical(Requirement(r).name) for r in request.pip})
            while wave:
                missing = [n for n in wave if n not in pages]
                pages.update(zip(missing, pool.map(_page_or_none, missing)))
                entries: dict[str, dict[str, dict]] = {}
                for name in wave:
                    if pages[name] is None:
                        print(f"  {name}: not on PyPI, skipped")
                        continue
                    usable = _usable_versions(pages[name], python, tags_)
                    chosen[name] = _choose(usable, pinned.get(name, set()))
                    entries[name] = {v: usable[v] for v in chosen[name]}
                jobs = [(n, v, e) for n, es in entries.items() for v, e in es.items()
                        if v not in metadata.get(n, {})]
                for (name, version, _), meta in zip(jobs, pool.map(lambda j: _metadata(*j), jobs)):
                    metadata.setdefault(name, {})[version] = meta
                following = set()
                for name in entries:
                    # Provided ones too: uv never reads their metadata, but the old resolver does.
                    for version in chosen[name]:
                        for text in metadata[name][version]["requires_dist"]:
                            try:
                                requirement = Requirement(text)
                            except InvalidRequirement:
                                continue
                            if requirement.marker is None or requirement.marker.evaluate(environment):
                                following.add(canonical(requirement.name))
                wave = sorted(following - set(chosen))
            requests_out[request.key] = {
                "python": python,
                "projects": {n: sorted(v, key=lambda x: _version_key(x)) for n, v in sorted(chosen.items())},
            }
            total = sum(len(v) for v in chosen.values())
            print(f"  {request.key}: python {python}, {len(chosen)} projects, {total} versions")
    used = {(n, v) for r in requests_out.values() for n, vs in r["projects"].items() for v in vs}
    document = {
        "taken": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": f"{PYPI_SIMPLE} (PEP 691 JSON), PEP 658 .metadata files (the wheel's METADATA, by HTTP range, where absent)",
        "selection": f"per request: the newest {NEWEST} final versions with a wheel for its python "
                     f"(cpython manylinux <= 2_17 x86_64 or pure), the newest of older major.minor series up to "
                     f"{MAX_VERSIONS}, and the pinned and conda-provided versions",
        "requests": requests_out,
        "metadata": {
            n: {v: m for v, m in sorted(vs.items(), key=lambda x: _version_key(x[0])) if (n, v) in used}
            for n, vs in sorted(metadata.items())
        },
    }
    SNAPSHOT.parent.mkdir(parents=True, exist_ok=True)
    SNAPSHOT.write_text(json.dumps(document, indent=0, sort_keys=False) + "\n", encoding="utf-8")
    print(f"  wrote {SNAPSHOT} ({SNAPSHOT.stat().st_size / 1e6:.2f} MB)")


def _page_or_none(name: str) -> dict | None:
    try:
        return json.loads(_get(f"{PYPI_SIMPLE}/{name}/", "application/vnd.pypi.simple.v1+json"))
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def _version_key(text: str) -> Any:
    try:
        return (0, Version(text), "")
    except InvalidVersion:
        return (1, Version("0"), text)


if __name__ == "__main__":
    take_snapshot()
