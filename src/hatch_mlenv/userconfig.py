"""The user's own settings: `config.toml` in the user config directory (`paths.config_file`),
holding the default registry and registries by name:

    registry = "team"                       # the default, a name below or a URL
    [registries]
    team = "oci://registry.example:5000/ml"

A name stands for its URL wherever a registry is taken (`--registry team`, `MLENV_REGISTRY=team`,
`registry = "team"` in [tool.mlenv]) and in one-string references (`team:train@prod`). Credentials
never go into this file: the OCI side reads the Docker config and its credential helpers.
Low in the package: references and the registry selection read it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from hatch_mlenv._compat import tomllib
from hatch_mlenv.errors import ConfigError, UsageError
from hatch_mlenv.lockfile import atomic_write
from hatch_mlenv.paths import config_file

SCHEMES = ("local", "sqlite://", "oci://")
_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,63}")
_RESERVED = {"local", "sqlite", "oci", "latest"}


def read() -> dict[str, Any]:
    """The settings, checked: {"registry": str | None, "registries": {name: url}}; no file is none."""
    path = config_file()
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"registry": None, "registries": {}}
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, None, f"invalid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, None, f"cannot read: {exc}") from None
    unknown = sorted(set(document) - {"registry", "registries"})
    if unknown:
        raise ConfigError(path, unknown[0], "unknown key (this file holds `registry` and `[registries]`)")
    registries = document.get("registries", {})
    if not isinstance(registries, dict):
        raise ConfigError(path, "registries", "must be a table of NAME = \"URL\"")
    for name, url in registries.items():
        if not _NAME_RE.fullmatch(name) or name in _RESERVED:
            raise ConfigError(path, f"registries.{name}", "not a registry name (a letter, then letters, digits, "
                                                          "'.', '_', '-'; not local, sqlite, oci or latest)")
        if not isinstance(url, str):
            raise ConfigError(path, f"registries.{name}", "must be a URL string")
        check_url(url, path, f"registries.{name}")
    default = document.get("registry")
    if default is not None and (not isinstance(default, str) or not (default in registries or _is_url(default))):
        raise ConfigError(path, "registry", f"{default!r} is neither a name under [registries] nor a registry URL")
    return {"registry": default, "registries": dict(registries)}


def is_registry_name(text: str) -> bool:
    """Whether `text` names a configured registry (`team` in `team:train@prod`)."""
    return bool(_NAME_RE.fullmatch(text)) and text in read()["registries"]


def resolve(text: str | None) -> str:
    """A registry as given (a URL, or a name in the config file) as its URL; none given: the config
    file's default, else `local`. The file is read once, and not at all for a URL."""
    if text is not None and _is_url(text):
        return text
    settings = read()
    text = text or settings["registry"] or "local"
    if _is_url(text):
        return text
    registries = settings["registries"]
    if text in registries:
        return registries[text]
    known = ", ".join(sorted(registries)) or "none yet: `mlenv registry add NAME URL`"
    raise UsageError(f"unknown registry {text!r}: use local, sqlite:///PATH, oci://HOST[:PORT]/NAMESPACE or a "
                     f"registry named in {config_file()} ({known})")


def check_url(url: str, source: object = None, key: str | None = None) -> str:
    """A registry URL fit for the config file: one of our schemes and no credentials in it."""
    if not _is_url(url):
        raise ConfigError(source or config_file(), key, f"{url!r} is not a registry URL (local, sqlite:///PATH or "
                                                         "oci://HOST[:PORT]/NAMESPACE)")
    if "@" in urlsplit(url).netloc:
        raise ConfigError(source or config_file(), key, "a registry URL here holds no credentials; log in with "
                                                         "`docker login HOST` (the Docker config and its "
                                                         "credential helpers are read)")
    return url


def add_registry(name: str, url: str, *, default: bool = False) -> Path:
    """Name `url` (kept comments and order: tomlkit), and make it the default if asked."""
    import tomlkit  # lazy: only `mlenv registry add/remove` edits the file

    path = config_file()
    if not _NAME_RE.fullmatch(name) or name in _RESERVED:
        raise UsageError(f"invalid registry name {name!r}: a letter, then letters, digits, '.', '_', '-' "
                         "(not local, sqlite, oci or latest)")
    check_url(url, "URL")
    read()  # a broken file is said before it is edited
    document = tomlkit.parse(path.read_text(encoding="utf-8")) if path.exists() else tomlkit.document()
    registries = document.setdefault("registries", tomlkit.table())
    registries[name] = url
    if default:
        document["registry"] = name
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, tomlkit.dumps(document))
    return path


def remove_registry(name: str) -> Path:
    import tomlkit  # lazy: as above

    path = config_file()
    settings = read()
    if name not in settings["registries"]:
        raise UsageError(f"no registry named {name!r} in {path}")
    document = tomlkit.parse(path.read_text(encoding="utf-8"))
    del document["registries"][name]
    if settings["registry"] == name:
        del document["registry"]
    atomic_write(path, tomlkit.dumps(document))
    return path


def _is_url(text: str) -> bool:
    return text == "local" or text.startswith(SCHEMES[1:])
