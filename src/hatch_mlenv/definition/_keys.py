"""Typed getters over `[tool.mlenv]` tables: every error names the file and the key path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hatch_mlenv.errors import ConfigError, did_you_mean


def printable(text: str) -> str:
    """A key as an error message shows it: on one line, whatever it holds."""
    return text if text.isprintable() else repr(text)[1:-1]


def type_name(value: object) -> str:
    return {
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a float",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)


class Reader:
    """Typed getters that name the file and the key path in every error."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def check_keys(self, table: dict[str, Any], base: str, allowed: tuple[str, ...]) -> None:
        for key in table:
            if key not in allowed:
                raise ConfigError(self.path, f"{base}.{printable(key)}", f"unknown key{did_you_mean(key, allowed)}")

    def _get(self, table: dict[str, Any], key: str, base: str) -> tuple[str, Any]:
        return f"{base}.{key}", table.get(key)

    def string(self, table: dict[str, Any], key: str, default: Any, base: str = "tool.mlenv") -> Any:
        path, value = self._get(table, key, base)
        if value is None:
            return default
        if not isinstance(value, str):
            raise ConfigError(self.path, path, f"must be a string, not {type_name(value)}")
        return value

    def boolean(self, table: dict[str, Any], key: str, default: bool, base: str = "tool.mlenv") -> bool:
        path, value = self._get(table, key, base)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ConfigError(self.path, path, f"must be true or false, not {type_name(value)}")
        return value

    def string_list(self, table: dict[str, Any], key: str, default: list[str], base: str = "tool.mlenv") -> list[str]:
        path, value = self._get(table, key, base)
        if value is None:
            return list(default)
        if not isinstance(value, list):
            raise ConfigError(self.path, path, f"must be an array of strings, not {type_name(value)}")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise ConfigError(self.path, f"{path}[{i}]", f"must be a string, not {type_name(item)}")
        return list(value)

    def table(self, table: dict[str, Any], key: str, base: str = "tool.mlenv") -> dict[str, Any]:
        path, value = self._get(table, key, base)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(self.path, path, f"must be a table, not {type_name(value)}")
        return value
