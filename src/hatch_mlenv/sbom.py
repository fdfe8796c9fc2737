"""A CycloneDX 1.5 JSON SBOM of a locked environment: every conda and pip package of every
platform, with its package URL (purl), hashes, and the license where the channel gives it."""

from __future__ import annotations

import urllib.parse
import uuid
from typing import Any

from hatch_mlenv._version import __version__
from hatch_mlenv.lockfile import LockedPackage
from hatch_mlenv.repodata import local_records


def _conda_purl(package: LockedPackage) -> str:
    url = package.url
    channel, _, rest = url.rpartition(f"/{package.platform}/") if f"/{package.platform}/" in url else url.rpartition("/noarch/")
    subdir = package.platform if f"/{package.platform}/" in url else "noarch"
    kind = "conda" if url.endswith(".conda") else "tar.bz2"
    query = urllib.parse.urlencode(
        {"build": package.build or "", "channel": channel, "subdir": subdir, "type": kind}, safe=":/"
    )
    return f"pkg:conda/{package.name}@{urllib.parse.quote(package.version)}?{query}"


def _pypi_purl(package: LockedPackage) -> str:
    name = package.name.lower().replace("_", "-")
    return f"pkg:pypi/{name}@{urllib.parse.quote(package.version)}"


def _licenses(packages: list[LockedPackage]) -> dict[str, str]:
    """License by package URL, from the repodata of file:// channels (remote ones are not fetched)."""
    return {url: record["license"] for url, record in local_records(packages).items() if record.get("license")}


def cyclonedx(env: Any) -> dict[str, Any]:
    lock = env.lock
    digest = lock.digest()
    licenses = _licenses(list(lock.packages))
    components = []
    for package in sorted(lock.packages, key=lambda p: (p.platform, p.manager, p.name)):
        component: dict[str, Any] = {
            "type": "library",
            "bom-ref": f"{package.platform}/{package.manager}/{package.name}@{package.version}",
            "name": package.name,
            "version": package.version,
            "purl": _conda_purl(package) if package.manager == "conda" else _pypi_purl(package),
            "externalReferences": [{"type": "distribution", "url": package.url}],
            "properties": [
                {"name": "mlenv:platform", "value": package.platform},
                {"name": "mlenv:manager", "value": package.manager},
            ],
        }
        hashes = []
        if package.sha256:
            hashes.append({"alg": "SHA-256", "content": package.sha256})
        if package.md5:
            hashes.append({"alg": "MD5", "content": package.md5})
        if hashes:
            component["hashes"] = hashes
        if package.build:
            component["properties"].append({"name": "mlenv:build", "value": package.build})
        if package.url in licenses:
            component["licenses"] = [{"license": {"name": licenses[package.url]}}]
        components.append(component)
    return {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        # The same lock always gives the same serial number: the SBOM is as reproducible as the lock.
        "serialNumber": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, 'mlenv:' + digest)}",
        "version": 1,
        "metadata": {
            "tools": {"components": [{"type": "application", "name": "hatch-mlenv", "version": __version__}]},
            "component": {
                "type": "application",
                "bom-ref": f"mlenv:{env.name}",
                "name": env.name,
                "version": f"sha256:{digest}",
                "properties": [
                    {"name": "mlenv:digest", "value": f"sha256:{digest}"},
                    {"name": "mlenv:lockfile", "value": env.spec.lockfile.name},
                    {"name": "mlenv:platforms", "value": ",".join(sorted(lock.platforms))},
                ],
            },
        },
        "components": components,
    }
