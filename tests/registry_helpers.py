"""Small, valid lockfiles for registry tests, distinct by a variable's value."""

from __future__ import annotations

import json

import yaml


def small_lock(tag: str, *, numpy: str = "1.26.4") -> str:
    """A valid conda-lock v1 file; `tag` changes a variable, so each tag is its own digest."""
    document = {
        "version": 1,
        "metadata": {
            "content_hash": {"linux-64": "0" * 64},
            "channels": [{"url": "file:///channel", "used_env_vars": []}],
            "platforms": ["linux-64"],
            "sources": ["pyproject.toml"],
            "custom_metadata": {"mlenv.name": "reg", "mlenv.variables": json.dumps({"TAG": tag})},
        },
        "package": [
            {
                "name": "numpy",
                "version": numpy,
                "manager": "conda",
                "platform": "linux-64",
                "dependencies": {},
                "url": f"file:///channel/linux-64/numpy-{numpy}-0.tar.bz2",
                "hash": {"md5": "a" * 32, "sha256": "b" * 64},
                "category": "main",
                "optional": False,
                "build": "0",
            }
        ],
    }
    return yaml.safe_dump(document, sort_keys=False)
