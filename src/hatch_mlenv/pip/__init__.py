"""The pip step of a lock: PEP 508 requirements resolved with uv after the conda solve.

- `_resolve`: `resolve_pip`, one `uv pip compile` per platform against its locked python;
- `_target`: the target's marker environment, uv platform and wheel tags;
- `_metadata`: each locked package's dependencies, from the index's metadata or the file;
- `_explain`: a failed resolution in hatch-mlenv's words;
- `_pylock`: PEP 751 `pylock.toml`;
- `_indexes`: the package indexes, credentials included.
"""

from __future__ import annotations

from hatch_mlenv.pip._indexes import DEFAULT_INDEX, index_urls
from hatch_mlenv.pip._pylock import render_pylock
from hatch_mlenv.pip._resolve import resolve_pip
from hatch_mlenv.pip._target import marker_environment, target_tags, uv_platform

__all__ = ["DEFAULT_INDEX", "index_urls", "marker_environment", "render_pylock", "resolve_pip", "target_tags",
           "uv_platform"]
