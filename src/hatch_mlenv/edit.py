"""Change a project's `[tool.mlenv]` the way a user would by hand: `init`, `add`, `remove`.

pyproject.toml is edited with tomlkit, so comments, key order and formatting stay as they were.
A change is written only once it is a valid definition and, unless asked otherwise, once it has
been locked: a spec that cannot be solved leaves pyproject.toml and the lock as they were. The
lock is written before pyproject.toml, so a command killed between the two leaves a lock that
reads as stale (its spec hash is the new definition's), never a definition silently unlocked.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import tomlkit
from tomlkit.items import Array, Table

import hatch_mlenv.importing as importing
import hatch_mlenv.lock as locking
from hatch_mlenv._compat import tomllib
from hatch_mlenv.definition._extends import spec_name
from hatch_mlenv.errors import ConfigError, UsageError
from hatch_mlenv.lockfile import atomic_write
from hatch_mlenv.platforms import current_platform
from hatch_mlenv.spec import PYPROJECT, Spec, environment_names, parse_spec

DEFAULT_CHANNELS = ("conda-forge",)


@dataclass(frozen=True)
class Edit:
    """What a command changed: the file, the key edited, the entries added/replaced/removed, and
    the lock's outcome (None with --no-lock)."""

    pyproject: Path
    key: str
    changed: tuple[str, ...]
    outcome: locking.LockOutcome | None
    spec: Spec


def init(project: Path, *, channels: Sequence[str] = (), platforms: Sequence[str] = (), python: str | None = None,
         source: str | None = None) -> tuple[Path, str, tuple[str, ...]]:
    """Write `[tool.mlenv]` into `project`'s pyproject.toml (a minimal one is created when there is
    none), keeping every other byte; with `source`, start from an environment.yml, a
    requirements.txt or `curated:NAME`. Returns the file, what it was started from and the lines of
    the source that could not be mapped."""
    pyproject = project.resolve() / PYPROJECT
    document = importing.read_document(pyproject) if pyproject.exists() else _minimal(project.resolve())
    if not isinstance(document.get("tool", {}), Table | dict):
        raise ConfigError(pyproject, "tool", "must be a table")
    if "mlenv" in document.get("tool", {}):
        raise ConfigError(pyproject, "tool.mlenv", "already defined; change it with `mlenv add`/`mlenv remove` "
                                                   "or by hand")
    table = tomlkit.table()
    origin, unmapped = "defaults", ()
    if source is not None and source.startswith("curated:"):
        table["extends"] = source
        origin = source
    elif source is not None:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(path, None, "file not found (give an environment.yml, a requirements.txt or curated:NAME)")
        imported = importing.from_file(path)
        for key, value in imported.table().items():
            table[key] = value
        origin, unmapped = str(path), tuple(imported.unmapped)
    if channels or "channels" not in table and not table.get("extends"):
        table["channels"] = list(channels or DEFAULT_CHANNELS)
    if platforms or not table.get("extends"):
        table["platforms"] = list(platforms or [current_platform()])
    if python is not None:
        table["python"] = python
    tool = document.setdefault("tool", tomlkit.table(is_super_table=True))
    tool["mlenv"] = table
    text = tomlkit.dumps(document)
    parse_spec(tomllib.loads(text), pyproject, None)  # what is written is a valid definition
    atomic_write(pyproject, text)
    return pyproject, origin, unmapped


def add(project: Path, specs: Sequence[str], *, pip: bool = False, env: str | None = None,
        platform: str | None = None, lock: bool = True) -> Edit:
    """Add (or replace, by package name) `specs` in the conda or pip list (of
    `[tool.mlenv.target.PLATFORM]` with `platform`), then lock."""
    key = "pip" if pip else "conda"
    pyproject, document, table = _table(project, env)
    if platform is not None:
        target = table.get("target")
        if target is None:
            target = table["target"] = tomlkit.table(is_super_table=True)
        if not isinstance(target, Table | dict):
            raise ConfigError(pyproject, _path(env, "target"), "must be a table")
        if platform not in target:
            target[platform] = tomlkit.table()
        table = target[platform]
        key = f"target.{platform}.{key}"
    field = key.rsplit(".", 1)[-1]
    entries = table.get(field)
    if entries is None:
        entries = table[field] = tomlkit.array()
        if platform is not None and len(table) == 1:  # a new table: a blank line before what follows it
            table.add(tomlkit.nl())
    elif not isinstance(entries, Array):
        raise ConfigError(pyproject, _path(env, key), "must be a list of strings")
    for text in specs:
        if not text.strip() or "\n" in text:
            raise UsageError(f"{text!r}: not a package spec")
        names = [spec_name(item) for item in entries]
        name = spec_name(text)
        if name in names:
            entries[names.index(name)] = text.strip()
        else:
            entries.append(text.strip())
    return _commit(pyproject, document, env, _path(env, key), tuple(s.strip() for s in specs), lock)


def remove(project: Path, names: Sequence[str], *, pip: bool | None = None, env: str | None = None,
           platform: str | None = None, lock: bool = True) -> Edit:
    """Remove the entries named `names` from the conda list, the pip list or both (pip=None), and
    from every `[tool.mlenv.target.PLATFORM]` list (with `platform`: from that one's only), then
    lock. A name listed nowhere is an error and nothing changes."""
    pyproject, document, table = _table(project, env)
    managers = ("pip",) if pip else ("conda",) if pip is False else ("conda", "pip")
    target = table.get("target") if isinstance(table.get("target"), Table | dict) else {}
    if platform is not None:
        lists = [(f"target.{platform}.{m}", target.get(platform, {}).get(m)) for m in managers]
    else:
        lists = [(m, table.get(m)) for m in managers]
        lists += [(f"target.{p}.{m}", body.get(m)) for p, body in target.items() if isinstance(body, Table | dict)
                  for m in managers]
    removed: list[str] = []
    touched: list[str] = []
    for wanted in names:
        found = False
        for key, entries in lists:
            if not isinstance(entries, Array):
                continue
            for index in reversed(range(len(entries))):
                if spec_name(entries[index]) == spec_name(wanted):
                    removed.append(str(entries[index]))
                    del entries[index]
                    found = True
                    touched += [] if _path(env, key) in touched else [_path(env, key)]
        if not found:
            where = " or ".join(_path(env, key) for key, _ in lists) or _path(env, f"target.{platform}")
            raise ConfigError(pyproject, where, f"{wanted!r} is not listed; nothing was changed")
    return _commit(pyproject, document, env, " and ".join(touched), tuple(removed), lock)


def _commit(pyproject: Path, document: tomlkit.TOMLDocument, env: str | None, key: str, changed: tuple[str, ...],
            lock: bool) -> Edit:
    text = tomlkit.dumps(document)
    data = tomllib.loads(text)
    spec = parse_spec(data, pyproject, env)  # a valid definition before anything is written
    for other in (None, *environment_names(data)):  # and every other environment of the file still is one
        if other != env:
            parse_spec(data, pyproject, other)
    outcome = locking.lock(spec) if lock else None
    atomic_write(pyproject, text)
    return Edit(pyproject, key, changed, outcome, spec)


def _table(project: Path, env: str | None) -> tuple[Path, tomlkit.TOMLDocument, Table]:
    pyproject = project.resolve() / PYPROJECT
    if not pyproject.is_file():
        raise ConfigError(pyproject, None, "file not found; start one with `mlenv init`")
    document = importing.read_document(pyproject)
    table = document.get("tool", {}).get("mlenv")
    if table is None:
        raise ConfigError(pyproject, "tool.mlenv", "missing table; start one with `mlenv init`")
    if env is not None:
        envs = table.get("envs", {})
        if env not in envs:
            raise ConfigError(pyproject, f"tool.mlenv.envs.{env}", "no such environment")
        table = envs[env]
    if not isinstance(table, Table | dict):
        raise ConfigError(pyproject, _path(env, "")[:-1], "must be a table")
    return pyproject, document, table


def _path(env: str | None, key: str) -> str:
    return f"tool.mlenv.envs.{env}.{key}" if env else f"tool.mlenv.{key}"




def _minimal(project: Path) -> tomlkit.TOMLDocument:
    document = tomlkit.document()
    table = tomlkit.table()
    table["name"] = re.sub(r"[^A-Za-z0-9._-]+", "-", project.name).strip("-._") or "project"
    table["version"] = "0.1.0"
    document["project"] = table
    return document
