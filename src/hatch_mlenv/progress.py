"""Progress of a step that can take longer than a second, and notes: on stderr, never on stdout.

On a terminal a step is a transient rich status (a spinner that disappears when the step ends).
Elsewhere (CI logs, pipes) steps say nothing unless asked, by `mlenv -v` or `MLENV_PROGRESS=1`:
then one plain `mlenv: ...` line when each starts. `mlenv -q` or `MLENV_QUIET=1` silences steps
and notes everywhere; warnings and errors are never silenced. The CLI sets the level of its own
process (`configure`); the hatch plugins, the build hook and library calls read the variables.
Rich honours `NO_COLOR`.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any

QUIET, NORMAL, VERBOSE = -1, 0, 1
_configured: int | None = None  # the CLI's -q / -v; None: from the environment
_status: list[Any] = []  # the terminal's running status, while a step shows it


def configure(level: int | None) -> None:
    """Set the level for this process (QUIET, NORMAL or VERBOSE); None: back to the variables."""
    global _configured
    _configured = level


def level() -> int:
    if _configured is not None:
        return _configured
    if _flag("MLENV_QUIET"):
        return QUIET
    return VERBOSE if _flag("MLENV_PROGRESS") else NORMAL


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def interactive() -> bool:
    """Whether progress may draw on stderr (a spinner, rattler's download bars): a terminal, not quiet."""
    return level() > QUIET and sys.stderr.isatty()


def shown() -> bool:
    """Whether steps are reported at all: on a terminal, or when asked."""
    return level() >= VERBOSE or interactive()


def prepare() -> None:
    """Import now, on the calling thread, all that a terminal status will need: a conda solve runs
    while another thread imports conda-lock's models, and imports nothing meanwhile
    (`_compat.preload_conda_lock_models`). Nothing to do when no status will be shown."""
    if not interactive():
        return
    import io

    from rich.console import Console
    from rich.status import Status

    console = Console(file=io.StringIO(), force_terminal=True, width=80)
    console.print(Status("", console=console).renderable)  # the spinner's lazy imports
    import rich.file_proxy  # noqa: F401  (what a live display swaps stdout/stderr for)
    import rich.live_render  # noqa: F401


@contextlib.contextmanager
def step(message: str, *, live: bool = True) -> Iterator[None]:
    """Report `message` while the block runs. `live=False`: something else draws on the terminal
    meanwhile (rattler's bars), so no spinner there; the plain line is still written when asked."""
    if not shown():
        yield
        return
    if not sys.stderr.isatty():
        print(f"mlenv: {message}", file=sys.stderr, flush=True)
        yield
        return
    if not live or threading.current_thread() is not threading.main_thread():
        yield
        return
    if _status:  # a step inside a step: the running spinner says the inner one, then the outer again
        status, outer = _status[-1]
        status.update(message)
        try:
            yield
        finally:
            status.update(outer)
        return
    from rich.console import Console

    with Console(stderr=True).status(message) as status:
        _status.append((status, message))
        try:
            yield
        finally:
            _status.pop()


def echo(line: str) -> None:
    """A line of a long step's own output (a Docker build's steps): on stderr when steps are shown."""
    if shown():
        print(line, file=sys.stderr, flush=True)


def note(message: str) -> None:
    """Something the user should know that does not stop the command: one stderr line (not with -q)."""
    if level() > QUIET:
        print(f"mlenv: note: {message}", file=sys.stderr, flush=True)
