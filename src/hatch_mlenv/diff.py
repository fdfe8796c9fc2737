"""Compare two environments: packages added, removed and changed per platform and manager,
changed variables and base image, and what changed in their `[tool.mlenv]` definitions."""

from __future__ import annotations

import json
from typing import Any

from hatch_mlenv.lockfile import Lock, LockedPackage


def _entry(package: LockedPackage) -> dict[str, Any]:
    return {"version": package.version, "build": package.build}


def diff_locks(old: Lock, new: Lock) -> dict[str, Any]:
    """A JSON-ready difference; empty sections are left out of `packages`."""
    packages: dict[str, dict[str, Any]] = {}
    for platform in sorted(set(old.platforms) | set(new.platforms)):
        for manager in ("conda", "pip"):
            before = {p.name: p for p in old.packages if p.platform == platform and p.manager == manager}
            after = {p.name: p for p in new.packages if p.platform == platform and p.manager == manager}
            section = {
                "added": [{"name": n, **_entry(after[n])} for n in sorted(after.keys() - before.keys())],
                "removed": [{"name": n, **_entry(before[n])} for n in sorted(before.keys() - after.keys())],
                "changed": [
                    {"name": n, "old": _entry(before[n]), "new": _entry(after[n])}
                    for n in sorted(before.keys() & after.keys())
                    if (before[n].version, before[n].build, before[n].url) != (after[n].version, after[n].build, after[n].url)
                ],
            }
            if any(section.values()):
                packages.setdefault(platform, {})[manager] = section
    old_vars, new_vars = old.variables, new.variables
    variables = {
        "added": {k: new_vars[k] for k in sorted(new_vars.keys() - old_vars.keys())},
        "removed": {k: old_vars[k] for k in sorted(old_vars.keys() - new_vars.keys())},
        "changed": {k: [old_vars[k], new_vars[k]] for k in sorted(old_vars.keys() & new_vars.keys()) if old_vars[k] != new_vars[k]},
    }
    return {
        "identical": old.digest() == new.digest(),
        "platforms": {
            "added": sorted(set(new.platforms) - set(old.platforms)),
            "removed": sorted(set(old.platforms) - set(new.platforms)),
        },
        "packages": packages,
        "variables": variables,
        "base_image": None if old.base_image == new.base_image else [old.base_image, new.base_image],
        # sha256 of the base Dockerfiles: their content is part of the environment
        "base_dockerfile": None if old.base_dockerfile == new.base_dockerfile
        else [old.base_dockerfile, new.base_dockerfile],
    }


def diff_environments(old: Any, new: Any) -> dict[str, Any]:
    """`diff_locks` of two Environments, plus `definition`: the definition keys added, removed and
    changed (dotted paths), or None when a side has no definition (a bare lockfile)."""
    result = diff_locks(old.lock, new.lock)
    if old.definition is None or new.definition is None:
        return result | {"definition": None}
    before, after = _flatten(old.definition), _flatten(new.definition)
    return result | {"definition": {
        "added": {k: after[k] for k in sorted(after.keys() - before.keys())},
        "removed": {k: before[k] for k in sorted(before.keys() - after.keys())},
        "changed": {k: [before[k], after[k]] for k in sorted(before.keys() & after.keys()) if before[k] != after[k]},
    }}


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and key != "pypi-names":
            flat |= _flatten(value, f"{path}.")
        else:
            flat[path] = value
    return flat


def change_rows(result: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """The package changes of a diff as (platform, manager, package, change) rows: `+ 1.2 py_0`,
    `- 1.1`, `1.1 → 1.2`."""
    def shown(p: dict[str, Any]) -> str:
        return f"{p['version']} {p['build'] or ''}".rstrip()

    rows = []
    for platform, managers in result["packages"].items():
        for manager, section in managers.items():
            rows += [(platform, manager, p["name"], f"+ {shown(p)}") for p in section["added"]]
            rows += [(platform, manager, p["name"], f"- {shown(p)}") for p in section["removed"]]
            rows += [(platform, manager, p["name"], f"{shown(p['old'])} → {shown(p['new'])}") for p in section["changed"]]
    return rows


def other_lines(result: dict[str, Any]) -> list[str]:
    """Everything but the packages, one line each, in one format: `KIND KEY: + VALUE` (added),
    `- VALUE` (removed), `OLD → NEW` (changed); a list that changed gives its added and removed
    items. Variables are said once: from the definitions when both sides have one (secrets as
    `{"secret": true}`), else from the locks."""
    lines: list[str] = []
    definition = result["definition"]
    if definition is None:
        for kind, items in result["variables"].items():
            for key, value in items.items():
                lines += _change("variable", key, kind, value)
    lines += [f"platform {kind}: {platform}" for kind in ("added", "removed") for platform in result["platforms"][kind]]
    if result["base_image"]:
        lines.append(f"base image: {result['base_image'][0]} → {result['base_image'][1]}")
    if result["base_dockerfile"]:
        lines.append("base Dockerfile: sha256 {} → {}".format(*(d[:12] if d else "none" for d in result["base_dockerfile"])))
    for kind, items in (definition or {}).items():
        for key, value in items.items():
            if key.startswith("variables."):
                lines += _change("variable", key[len("variables."):], kind, value)
            else:
                lines += _change("definition", key, kind, value)
    return lines


def _change(what: str, key: str, kind: str, value: Any) -> list[str]:
    if kind == "added":
        return [f"{what} {key}: + {json.dumps(value)}"]
    if kind == "removed":
        return [f"{what} {key}: - {json.dumps(value)}"]
    old, new = value
    if isinstance(old, list) and isinstance(new, list):
        return ([f"{what} {key}: - {json.dumps(item)}" for item in old if item not in new]
                + [f"{what} {key}: + {json.dumps(item)}" for item in new if item not in old])
    return [f"{what} {key}: {json.dumps(old)} → {json.dumps(new)}"]


def same(result: dict[str, Any]) -> bool:
    """Whether a diff found nothing: the same lock and the same definition."""
    return result["identical"] and not any((result["definition"] or {}).values())
