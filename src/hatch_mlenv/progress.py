"""Progress of a step that can take longer than a second: on stderr, never on stdout.

On a terminal a transient rich status (a spinner that disappears when the step
ends); elsewhere (CI logs, pipes) one plain `mlenv: ...` line when it starts.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def step(message: str) -> Iterator[None]:
    if sys.stderr.isatty():
        from rich.console import Console

        with Console(stderr=True).status(message):
            yield
        return
    print(f"mlenv: {message}", file=sys.stderr, flush=True)
    yield


def note(message: str) -> None:
    """Something the user should know that does not stop the command: one stderr line."""
    print(f"mlenv: note: {message}", file=sys.stderr, flush=True)
