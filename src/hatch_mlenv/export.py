"""Export a lock in the formats other tools read: environment.yml, conda explicit, pip requirements, pylock.toml."""

from __future__ import annotations

from typing import Any

from hatch_mlenv.errors import UsageError
from hatch_mlenv.lockfile import Lock

FORMATS = ("environment-yml", "explicit", "requirements", "pylock")


def export(env: Any, platform: str, fmt: str) -> str:
    """The Environment's lock for `platform` in format `fmt` (see FORMATS)."""
    lock: Lock = env.lock
    name = env.name
    packages = lock.for_platform(platform)
    if not packages:
        raise UsageError(f"no packages locked for {platform} (locked: {', '.join(lock.platforms) or 'none'})")
    conda = sorted((p for p in packages if p.manager == "conda"), key=lambda p: p.name)
    pip = sorted((p for p in packages if p.manager == "pip"), key=lambda p: p.name)
    if fmt == "environment-yml":
        import yaml

        dependencies: list = [f"{p.name}={p.version}={p.build}" if p.build else f"{p.name}={p.version}" for p in conda]
        if pip:
            dependencies.append({"pip": [f"{p.name}=={p.version}" for p in pip]})
        document = {"name": name, "channels": list(lock.channels), "dependencies": dependencies}
        variables = {k: v for k, v in lock.variables.items() if v is not None}
        if variables:
            document["variables"] = variables
        header = f"# {name} for {platform}, pinned from its lock (sha256:{lock.digest()}) by hatch-mlenv\n"
        return header + yaml.safe_dump(document, sort_keys=False)
    if fmt == "explicit":
        lines = [f"# {name} for {platform} (sha256:{lock.digest()}), exported by hatch-mlenv",
                 f"# platform: {platform}", "@EXPLICIT"]
        lines += [f"{p.url}#{p.md5}" if p.md5 else p.url for p in conda]
        return "\n".join(lines) + "\n"
    if fmt == "requirements":
        lines = [f"# pip packages of {name} for {platform} (sha256:{lock.digest()}); install with --require-hashes"]
        for p in pip:
            if not p.sha256:
                raise UsageError(f"{p.name} {p.version} has no sha256 in the lock; cannot pin it with --hash")
            lines.append(f"{p.name}=={p.version} --hash=sha256:{p.sha256}")
        return "\n".join(lines) + "\n"
    if fmt == "pylock":
        from hatch_mlenv.pip import render_pylock

        missing = [p for p in pip if not p.sha256]
        if missing:
            raise UsageError(f"{missing[0].name} {missing[0].version} has no sha256 in the lock; pylock.toml needs one")
        python = next((p for p in conda if p.name == "python"), None)
        header = f"# pip packages of {name} for {platform} (sha256:{lock.digest()}), exported by hatch-mlenv\n"
        return header + render_pylock(pip, python.version if python else None, platform if python else None)
    raise UsageError(f"unknown format {fmt!r}: use {', '.join(FORMATS)}")
