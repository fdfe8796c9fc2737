"""The measured children of bench/pip.py: `python -m bench._pip_child resolve|old ARGS...`.

Each writes a JSON report (times inside the process, its own and its children's peak RSS, the
pins) to the path it is given. `resolve` is the pip step as `mlenv lock` runs it; `old` is the
resolver hatch-mlenv used before uv: conda-lock 2.5.8's vendored poetry, stopped by SIGALRM.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import time
from pathlib import Path
from typing import Any

START = time.perf_counter()

from packaging.requirements import Requirement  # noqa: E402

from hatch_mlenv.lockfile import LockedPackage, read_lock, to_conda_lock  # noqa: E402
from hatch_mlenv.pip import resolve_pip  # noqa: E402
from hatch_mlenv.pypi_names import pypi_names_of  # noqa: E402
from hatch_mlenv.spec import load_spec  # noqa: E402

PLATFORM = "linux-64"


def conda_packages(lockfile: str | Path) -> list[LockedPackage]:
    return [p for p in read_lock(Path(lockfile)).for_platform(PLATFORM) if p.manager == "conda"]


def resolve(project: str, lockfile: str, report: str) -> None:
    """resolve_pip for the project's spec; the call's time and this process's RSS."""
    spec = load_spec(project)
    conda = conda_packages(lockfile)
    called = time.perf_counter()
    locked = resolve_pip(spec, PLATFORM, conda)
    done = time.perf_counter()
    Path(report).write_text(json.dumps({
        "call_seconds": done - called, "setup_seconds": called - START, "packages": len(locked),
        "self_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "children_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
        "locked": sorted(f"{p.name}=={p.version}" for p in locked),
    }))


def old(project: str, lockfile: str, report: str, cache: str, timeout: str, names: str = "community") -> None:
    """conda-lock 2.5.8's vendored poetry resolver, called as hatch-mlenv called it before uv.

    `names`: "community" maps conda names to PyPI names as the uv step does (msgpack-python
    -> msgpack); "identity" is the old code's table (every conda name to itself), with which
    poetry does not know that conda's msgpack-python is PyPI's msgpack.
    """
    start = time.perf_counter()

    def stop(signum: int, frame: object) -> None:
        Path(report).write_text(json.dumps({"stopped": True, "call_seconds": time.perf_counter() - start}))
        os._exit(3)

    signal.signal(signal.SIGALRM, stop)
    signal.alarm(int(float(timeout)))

    # lazy: only this child loads conda-lock (its vendored poetry patches subprocess, too)
    from conda_lock import lookup, pypi_solver
    from conda_lock._vendor.poetry.repositories import legacy_repository
    from conda_lock.models.lock_spec import VersionedDependency
    from conda_lock.models.pip_repository import PipRepository

    legacy_repository.REPOSITORY_CACHE_DIR = Path(cache)  # a fresh poetry cache per run
    pypi_solver._get_url = _url_keeping_port  # conda/conda-lock#649
    spec = load_spec(project)
    conda = conda_packages(lockfile)
    # The same conda -> PyPI names the uv step uses (msgpack-python -> msgpack, ...).
    lines = []
    for package in sorted(conda, key=lambda p: p.name):
        for name in (pypi_names_of(package)[:1] if names == "community" else ()) or (package.name,):
            lines += [f"{name}:", f"  conda_name: {package.name}", f"  conda_forge: {package.name}",
                      f"  pypi_name: {name}"]
    mapping = Path(cache) / "mapping.yaml"
    mapping.parent.mkdir(parents=True, exist_ok=True)
    mapping.write_text("\n".join(lines) + "\n", encoding="utf-8")
    lookup.set_lookup_location(mapping.as_uri())
    requirements = [Requirement(t) for t in spec.pip]
    python = next(p for p in conda if p.name == "python")
    called = time.perf_counter()
    solved = pypi_solver.solve_pypi(
        pip_specs={r.name: VersionedDependency(name=r.name, manager="pip", version=str(r.specifier) or "*",
                                               extras=sorted(r.extras)) for r in requirements},
        use_latest=[],
        pip_locked={},
        conda_locked={p.name: to_conda_lock(p) for p in conda},
        python_version=python.version,
        platform=PLATFORM,
        pip_repositories=[PipRepository.from_string(spec.pip_index_url)],
        allow_pypi_requests=False,
    )
    done = time.perf_counter()
    signal.alarm(0)
    Path(report).write_text(json.dumps({
        "call_seconds": done - called, "setup_seconds": called - start,
        "packages": sum(1 for d in solved.values() if d.manager == "pip"),
        "locked": sorted(f"{d.name}=={d.version}" for d in solved.values() if d.manager == "pip"),
    }))


def _url_keeping_port(link: Any) -> str:
    return link.url_without_fragment


# --- measuring ------------------------------------------------------------------------------------

if __name__ == "__main__":
    {"resolve": resolve, "old": old}[sys.argv[1]](*sys.argv[2:])
