"""Hashes of files on disk, read once in blocks: what every archive, wheel and installed file is checked by."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

# Hex digits of a lock's digest that name it in image tags and in directories (NAME-DIGEST12).
TAG_LENGTH = 12

def file_hashes(path: Path, kinds: Sequence[str]) -> dict[str, str]:
    """Hex digests of `path` for each hashlib name in `kinds`, in one read."""
    digests = {kind: hashlib.new(kind) for kind in kinds}
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            for digest in digests.values():
                digest.update(block)
    return {kind: digest.hexdigest() for kind, digest in digests.items()}


def file_sha256(path: Path) -> str:
    return file_hashes(path, ["sha256"])["sha256"]
