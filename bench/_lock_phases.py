"""Time the phases of one cold `mlenv lock`, run one after another in this fresh process.

Usage: python bench/_lock_phases.py PROJECT_DIR  -> one JSON object {phase: seconds} on stdout.

It calls the same library functions `hatch_mlenv.lock.lock()` calls, in the same
order (the solve with its background import of conda-lock's models), so the sum
is close to the real wall time. It uses
internal names (`solve_spec`, `render`): when they change, it says so and exits 0.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(project: Path) -> dict[str, float]:
    phases: dict[str, float] = {}
    mark = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        phases[name] = now - mark
        mark = now

    import hatch_mlenv.cli  # noqa: F401  (what every `mlenv` invocation pays first)

    lap("import hatch_mlenv.cli (click)")
    from hatch_mlenv import lock as locking
    from hatch_mlenv.lockfile import atomic_write, read_lock
    from hatch_mlenv.spec import load_spec

    lap("import hatch_mlenv.lock")
    spec = load_spec(project)
    spec.lockfile.unlink(missing_ok=True)
    lap("load spec")
    import rattler  # noqa: F401

    lap("import rattler")
    spec.check_channels()
    spec.check_match_specs()
    lap("check match specs")
    packages = locking.solve_spec(spec, None, ())
    lap("solve (gateway + resolvo)")
    from hatch_mlenv._compat import import_conda_lock_models

    import_conda_lock_models()  # done by the preload thread during the solve: ~0 here
    lap("import conda-lock's models (left after the solve)")
    text = locking.render(spec, packages)
    lap("render (conda-lock models)")
    atomic_write(spec.lockfile, text)
    lap("write (atomic, fsync)")
    read_lock(spec.lockfile).digest()
    lap("re-read lock + digest")
    return phases


if __name__ == "__main__":
    try:
        result = main(Path(sys.argv[1]))
    except (ImportError, AttributeError, TypeError) as exc:
        print(json.dumps({"error": f"phase breakdown unavailable (internal API changed?): {exc}"}))
    else:
        print(json.dumps(result))
