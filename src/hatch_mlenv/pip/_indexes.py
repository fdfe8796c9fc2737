"""The package indexes a resolution reads, credentials included (for fetching only)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hatch_mlenv import credentials

if TYPE_CHECKING:
    from hatch_mlenv.spec import Spec

DEFAULT_INDEX = "https://pypi.org/simple"


def index_urls(spec: Spec) -> list[str]:
    """The spec's index URLs with `${VAR}` expanded: credentials included, for fetching only."""
    urls = [(spec.pip_index_url or DEFAULT_INDEX, "tool.mlenv.pip-index-url")]
    urls += [(u, f"tool.mlenv.pip-extra-index-urls[{i}]") for i, u in enumerate(spec.pip_extra_index_urls)]
    return [credentials.expand(url, spec.pyproject, key) for url, key in urls]
