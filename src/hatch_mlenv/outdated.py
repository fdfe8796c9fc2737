"""Which locked packages have newer releases: conda packages in the definition's channels (read
with rattler's gateway, as a solve reads them), pip packages in its indexes (their PEP 503 pages).
For each: the newest release the definition's own request admits (a package the definition does
not name admits any) and the newest of all."""

from __future__ import annotations

import asyncio
import html.parser
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import rattler
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import InvalidSdistFilename, InvalidWheelFilename, parse_sdist_filename, parse_wheel_filename
from packaging.version import InvalidVersion, Version

import hatch_mlenv.progress as progress
from hatch_mlenv._compat import settle_rattler_at_exit
from hatch_mlenv.credentials import channel_client, redact
from hatch_mlenv.errors import SolveError
from hatch_mlenv.httpclient import HTTPFailure, get
from hatch_mlenv.lockfile import LockedPackage
from hatch_mlenv.pip import index_urls
from hatch_mlenv.pypi_names import canonical


@dataclass(frozen=True)
class Newer:
    platform: str
    manager: str
    name: str
    locked: str
    within: str | None  # the newest release the definition's request admits, if newer than the locked one
    latest: str  # the newest release of all

    def row(self) -> dict[str, Any]:
        return {"platform": self.platform, "manager": self.manager, "name": self.name, "locked": self.locked,
                "within_spec": self.within, "latest": self.latest}


def outdated(env: Any) -> list[Newer]:
    """The locked packages of `env` (an Environment) with a newer release, sorted by platform,
    manager and name."""
    spec, lock = env.spec, env.lock
    found: list[Newer] = []
    conda = [p for p in lock.packages if p.manager == "conda"]
    if conda:
        with progress.step("reading the channels' package lists"):
            found += _conda(spec, conda)
    pip = [p for p in lock.packages if p.manager == "pip"]
    if pip:
        with progress.step("reading the package indexes"):
            pythons = {p.platform: p.version for p in conda if p.name == "python"}  # what pip resolved for
            found += _pip(spec, pip, pythons)
    return sorted(found, key=lambda n: (n.platform, n.manager, n.name))


def _conda(spec: Any, packages: list[LockedPackage]) -> list[Newer]:
    settle_rattler_at_exit()  # its runtime threads abort the interpreter's exit otherwise
    fetch_urls = spec.channel_fetch_urls()
    access = channel_client(fetch_urls)
    platforms = sorted({p.platform for p in packages})

    async def query_all() -> list[list[Any]]:
        # one gateway for every platform (noarch is read once), the platforms at the same time, as a solve does
        gateway = rattler.Gateway(client=access.client)
        channels = [rattler.Channel(url) for url in access.urls]

        async def query(platform: str) -> list[Any]:
            names = sorted({p.name for p in packages if p.platform == platform})
            try:
                batches = await gateway.query(channels, [platform, "noarch"], names, recursive=False)
            except Exception as exc:  # the gateway's errors: unreachable or unreadable channels
                raise SolveError(redact(f"cannot read the channels for {platform}: {exc}", fetch_urls)) from None
            return [record for batch in batches for record in batch]

        return await asyncio.gather(*(query(platform) for platform in platforms))

    found = dict(zip(platforms, asyncio.run(query_all())))
    result: list[Newer] = []
    for platform, records in found.items():
        requested = {match.name.normalized: match
                     for match in (rattler.MatchSpec(s, strict=False) for s in spec.conda_specs_for(platform))}
        for package in (p for p in packages if p.platform == platform):
            candidates = [r for r in records if r.name.normalized == package.name]
            newest = _newest(candidates, package.version)
            if newest is None:
                continue
            wanted = requested.get(package.name)
            within = _newest([r for r in candidates if wanted is None or wanted.matches(r)], package.version)
            result.append(Newer(platform, "conda", package.name, package.version,
                                str(within.version) if within is not None else None, str(newest.version)))
    return result


def _newest(records: list[Any], than: str) -> Any:
    newer = [r for r in records if r.version > rattler.Version(than)]
    return max(newer, key=lambda r: r.version) if newer else None


def _pip(spec: Any, packages: list[LockedPackage], pythons: dict[str, str]) -> list[Newer]:
    requested: dict[tuple[str, str], Requirement] = {}
    for platform in spec.platforms:
        for text in spec.pip_for(platform):
            try:
                requirement = Requirement(text)
            except InvalidRequirement:
                continue  # a path or URL requirement: pinned by what it points to
            requested[platform, canonical(requirement.name)] = requirement
    indexes = index_urls(spec)
    names = sorted({canonical(p.name) for p in packages})
    with ThreadPoolExecutor(max_workers=8) as pool:  # one page a name: wait on the index for several at once
        versions = dict(zip(names, pool.map(lambda name: _index_versions(indexes, name), names)))
    result: list[Newer] = []
    for package in packages:
        python = pythons.get(package.platform)
        # a release whose every file needs another python cannot be locked here: it is not newer for this lock
        available = {version for version, needs in versions[canonical(package.name)].items()
                     if python is None or any(need is None or need.contains(python, prereleases=True) for need in needs)}
        try:
            locked = Version(package.version)
        except InvalidVersion:
            continue
        newer = [v for v in available if v > locked and not v.is_prerelease]
        if not newer:
            continue
        wanted = requested.get((package.platform, canonical(package.name)))
        within = [v for v in newer if wanted is None or wanted.specifier.contains(v)]
        result.append(Newer(package.platform, "pip", package.name, package.version,
                            str(max(within)) if within else None, str(max(newer))))
    return result


class _Links(html.parser.HTMLParser):
    """The files of a PEP 503 page, each with its `data-requires-python` (PEP 503/345), if any."""

    def __init__(self) -> None:
        super().__init__()
        self.files: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs) if tag == "a" else {}
        href = attributes.get("href")
        if href:  # html.parser has already unescaped `&lt;` in the attribute
            self.files.append((href.split("#", 1)[0].rsplit("/", 1)[-1], attributes.get("data-requires-python")))


def _index_versions(indexes: list[str], name: str) -> dict[Version, list[SpecifierSet | None]]:
    """Every release of `name` in the indexes (the simple API's HTML page, PEP 503), with the
    Requires-Python of each of its files (None: any python)."""
    versions: dict[Version, list[SpecifierSet | None]] = {}
    for index in indexes:
        url = f"{index.rstrip('/')}/{name}/"
        try:
            page = get(url, indexes, {"Accept": "text/html"}).body.decode("utf-8", "replace")
        except HTTPFailure as exc:
            if exc.status == 404:
                continue  # not on this index
            raise SolveError(redact(f"cannot read {url}: {exc}", indexes)) from None
        links = _Links()
        links.feed(page)
        for file, requires_python in links.files:
            try:
                version = (parse_wheel_filename(file)[1] if file.endswith(".whl") else parse_sdist_filename(file)[1])
                need = SpecifierSet(requires_python) if requires_python else None
            except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion, InvalidSpecifier):
                continue
            versions.setdefault(version, []).append(need)
    return versions
