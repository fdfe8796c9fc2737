"""`extends` and named environments: how one `[tool.mlenv]` table inherits from another (a curated
environment, another file, the top level)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import hatch_mlenv.curated as curated
from hatch_mlenv._compat import tomllib
from hatch_mlenv.errors import ConfigError

# Keys whose values extend the inherited ones (by package name) instead of replacing them.
_LIST_MERGE_KEYS = ("conda", "pip")
# Tables merged key by key.
_TABLE_MERGE_KEYS = ("variables", "virtual-packages", "system-requirements", "docker", "spark", "pypi-names")


def merge_tables(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """The merge rule of `extends` and named environments.

    A key of `override` replaces the inherited one, except: `conda` and `pip`
    extend the inherited lists (a spec for a package already there replaces
    it, in place), `variables`, `system-requirements`, `virtual-packages` and `docker` merge key by
    key (per platform for `virtual-packages`), and `target` merges per platform by these same rules.
    """
    merged = dict(base)
    for key, value in override.items():
        if key in _LIST_MERGE_KEYS and isinstance(value, list) and isinstance(base.get(key), list):
            merged[key] = merge_specs(base[key], value)
        elif key == "target" and isinstance(value, dict) and isinstance(base.get(key), dict):
            merged[key] = {**base[key], **{platform: merge_tables(base[key][platform], lists)
                                           if isinstance(lists, dict) and isinstance(base[key].get(platform), dict)
                                           else lists for platform, lists in value.items()}}
        elif key in _TABLE_MERGE_KEYS and isinstance(value, dict) and isinstance(base.get(key), dict):
            inner = dict(base[key])
            for k, v in value.items():
                inner[k] = {**inner[k], **v} if isinstance(v, dict) and isinstance(inner.get(k), dict) else v
            merged[key] = inner
        else:
            merged[key] = value
    return merged


def spec_name(text: Any) -> str:
    """The package name of a conda match spec or a PEP 508 requirement, normalised (`Numpy_X >=1` -> `numpy-x`)."""
    if not isinstance(text, str):
        return repr(text)
    name = re.split(r"[\s<>=!~\[;@(]", text.strip(), maxsplit=1)[0]
    return name.rsplit("::", 1)[-1].lower().replace("_", "-")  # `conda-forge::numpy` names numpy


def merge_specs(base: list[Any], extra: list[Any]) -> list[Any]:
    result = list(base)
    for item in extra:
        names = [spec_name(x) for x in result]
        if spec_name(item) in names:
            result[names.index(spec_name(item))] = item
        else:
            result.append(item)
    return result


def resolve_extends(table: dict[str, Any], source: Path, key: str, chain: tuple[str, ...]) -> dict[str, Any]:
    """Apply `extends` (a curated environment or another TOML file), recursively, refusing cycles."""
    parent_ref = table.get("extends")
    if parent_ref is None:
        return table
    if not isinstance(parent_ref, str) or not parent_ref.strip():
        raise ConfigError(source, key, "must be \"curated:NAME\" or a path to a TOML file with [tool.mlenv]")
    if parent_ref.startswith("curated:"):
        identity = parent_ref
        parent_source, parent_table = curated.load(parent_ref[len("curated:"):], source, key)
    else:
        parent_path = (source.parent / parent_ref).resolve()
        identity = str(parent_path)
        parent_source, parent_table = parent_path, _read_mlenv_table(parent_path, source, key)
    if identity in chain:
        cycle = " -> ".join([*chain, identity])
        raise ConfigError(source, key, f"extends cycle: {cycle}")
    parent = resolve_extends(parent_table, parent_source, "tool.mlenv.extends", (*chain, identity))
    own = {k: v for k, v in table.items() if k != "extends"}
    parent = {k: v for k, v in parent.items() if k not in ("extends", "envs", "name")}
    return merge_tables(parent, own)


def _read_mlenv_table(path: Path, source: Path, key: str) -> dict[str, Any]:
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(source, key, f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(source, key, f"cannot read {path}: {exc}") from None
    table = document.get("tool", {}).get("mlenv")
    if not isinstance(table, dict):
        raise ConfigError(source, key, f"{path} has no [tool.mlenv] table")
    return table
