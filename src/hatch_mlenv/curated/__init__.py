"""Curated environments shipped with hatch-mlenv, used by `extends = "curated:NAME"`.

Each is a TOML file beside this module holding the keys of a `[tool.mlenv]`
table. A project's own keys override and extend them (see `spec.merge_tables`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hatch_mlenv._compat import tomllib
from hatch_mlenv.errors import ConfigError, did_you_mean

HERE = Path(__file__).parent


def names() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.toml"))


def path(name: str) -> Path:
    return HERE / f"{name}.toml"


def read(name: str) -> dict[str, Any]:
    return tomllib.loads(path(name).read_text(encoding="utf-8"))


def load(name: str, source: Path, key: str) -> tuple[Path, dict[str, Any]]:
    """The curated table `name`; an unknown name is a ConfigError naming `source` and `key`."""
    if name not in names():
        raise ConfigError(source, key, f"unknown curated environment {name!r}{did_you_mean(name, names(), known=True)}")
    return path(name), read(name)
