"""Where hatch-mlenv keeps its own state: `$MLENV_HOME` when set (tests, CI), else the
user directories platformdirs names. Imports nothing heavy: the no-op lock reads it."""

from __future__ import annotations

import os
from pathlib import Path

ENV_HOME = "MLENV_HOME"


def data_dir() -> Path:
    """Persistent state (the local registry): `$MLENV_HOME`, else the user data directory."""
    home = os.environ.get(ENV_HOME)
    if home:
        return Path(home)
    from platformdirs import user_data_path

    return user_data_path("hatch-mlenv", appauthor=False)


def cache_dir() -> Path:
    """Disposable state (packages, wheels, lock stamps): `$MLENV_HOME/cache`, else the user cache directory."""
    home = os.environ.get(ENV_HOME)
    if home:
        return Path(home) / "cache"
    from platformdirs import user_cache_path

    return user_cache_path("hatch-mlenv", appauthor=False)


def config_file() -> Path:
    """The user's settings (named registries, the default one): `$MLENV_CONFIG`, else
    `$MLENV_HOME/config.toml`, else `config.toml` in the user config directory."""
    configured = os.environ.get("MLENV_CONFIG")
    if configured:
        return Path(configured)
    home = os.environ.get(ENV_HOME)
    if home:
        return Path(home) / "config.toml"
    from platformdirs import user_config_path

    return user_config_path("hatch-mlenv", appauthor=False) / "config.toml"
