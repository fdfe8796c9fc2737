"""PEP 751 `pylock.toml` for locked pip packages: what uv takes as preferences, and what
`mlenv export` writes."""

from __future__ import annotations

import json
from collections.abc import Iterable

from hatch_mlenv.distributions import is_sdist
from hatch_mlenv.lockfile import LockedPackage
from hatch_mlenv.pip._target import marker_environment


def render_pylock(packages: Iterable[LockedPackage], python_version: str | None = None, platform: str | None = None) -> str:
    """PEP 751 `pylock.toml` text for locked pip packages: every entry with its wheel (or, for a
    source release, its sdist) URL and sha256."""
    lines = ['lock-version = "1.0"', 'created-by = "hatch-mlenv"']
    if python_version is not None:
        lines.append(f'requires-python = "=={".".join(python_version.split(".")[:2])}.*"')
    if platform is not None and python_version is not None:
        marker = marker_environment(platform, python_version)
        environment = f"sys_platform == '{marker['sys_platform']}' and platform_machine == '{marker['platform_machine']}'"
        lines.append(f"environments = [{json.dumps(environment)}]")
    for package in sorted(packages, key=lambda p: p.name):
        # JSON strings are valid TOML basic strings.
        lines += [
            "",
            "[[packages]]",
            f"name = {json.dumps(package.name)}",
            f"version = {json.dumps(package.version)}",
            (f"sdist = {{ url = {json.dumps(package.url)}, hashes = {{ sha256 = {json.dumps(package.sha256)} }} }}"
             if is_sdist(package.url) else
             f"wheels = [{{ url = {json.dumps(package.url)}, hashes = {{ sha256 = {json.dumps(package.sha256)} }} }}]"),
        ]
    return "\n".join(lines) + "\n"
