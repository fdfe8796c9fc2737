"""The pip step of a lock: `resolve_pip` (uv) vs `uv pip compile` alone vs the old resolver.

Same requests for all three, against a local PEP 503 index on 127.0.0.1 built
from a committed snapshot of real PyPI metadata (bench/data/pip-metadata.json:
each project's real Requires-Dist and Requires-Python for a realistic set of
versions). The wheels are tiny py3-none-any archives that carry that metadata
(fixtures.pip_index, with PEP 658 `.metadata` files), so resolving is real and
nothing touches the network.

Requests (conda part locked once from the defaults-2018 snapshot, offline):
  - msgpack-seaborn: python 3.6 + conda msgpack-python, matplotlib, pandas,
    scipy (numpy comes with them); pip msgpack-numpy==0.4.7.1, seaborn==0.9.0;
  - ml-20: python 3.7.0 (conda python only) + 20 unpinned pip requirements in
    the style of a curated ML image (scikit-learn, pandas, ..., mlflow-skinny).

Measured, each run a fresh process (bench/_harness.py), round-robin after one
unmeasured warm-up round, min/median:
  - baseline: `uv pip compile` alone, with exactly the command and inputs
    (requirements.in, constraints.txt, uv.toml with `[[dependency-metadata]]`,
    stub wheels, flags) that `resolve_pip` generated, captured once in-process;
  - `resolve_pip(spec, "linux-64", conda)` in a fresh python (the step: uv
    plus reading the spec, stubs, pylock.toml and the PEP 658 metadata of
    every locked wheel); the child also reports the time inside the call;
  - both with a cold uv cache (a new empty UV_CACHE_DIR per run) and a warm one;
  - the old resolver, conda-lock 2.5.8's vendored poetry (`solve_pypi`, as
    hatch-mlenv called it before uv), with an empty poetry repository cache per
    run, stopped after --old-timeout seconds (SIGALRM in the child).
The local index is served by fixtures.pip_index (listen backlog 256). Peak RSS is `os.wait4`'s ru_maxrss of
the measured process: the largest single process among it and its children
(the resolve child also reports its own and its children's; their sum is an
upper bound).

Targets: the pip step of the 20-requirement list <= 1.5x `uv pip compile` alone;
peak memory <= 300 MB. Reported, never asserted.

Usage:
  python bench/pip.py [--runs N] [--old-runs N] [--old-timeout S] [--only KEY]
  python bench/pip.py --snapshot    # network: rewrite bench/data/pip-metadata.json from pypi.org
  python bench/pip.py --real-pypi   # network: msgpack-seaborn through resolve_pip on pypi.org
                                    # (and one old-resolver run, stopped after --old-timeout; 0 skips it)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from _harness import (
    DEFAULTS_2018,
    PYTHON,
    REPO,
    RESULTS_DIR,
    CommandFailed,
    bench_env,
    console_script,
    footer,
    header,
    measure,
    print_table,
    run,
    scratch_dir,
    verdict,
    write_project,
)


SNAPSHOT = Path(__file__).resolve().parent / "data" / "pip-metadata.json"
PYPI_SIMPLE = "https://pypi.org/simple"
PLATFORM = "linux-64"
# How many versions of each project the snapshot keeps (those with a wheel for the
# request's python): the newest NEWEST, plus the newest of older release series
# (major.minor) up to MAX_VERSIONS, plus every version a request pins.
NEWEST = 12
MAX_VERSIONS = 24


@dataclass(frozen=True)
class Request:
    key: str
    python: str  # the tool.mlenv python (conda)
    conda: tuple[str, ...]
    pip: tuple[str, ...]


REQUESTS = (
    Request(
        "msgpack-seaborn", "3.6",
        ("msgpack-python", "matplotlib", "pandas", "scipy"),
        ("msgpack-numpy==0.4.7.1", "seaborn==0.9.0"),
    ),
    Request(
        "ml-20", "3.7.0", (),
        ("scikit-learn", "pandas", "numpy", "scipy", "matplotlib", "seaborn", "joblib", "requests", "pyyaml",
         "tqdm", "click", "psutil", "protobuf", "mlflow-skinny", "lightgbm", "xgboost", "pyarrow", "fsspec",
         "cloudpickle", "statsmodels"),
    ),
)
TARGET_REQUEST = "ml-20"
TARGET_RATIO = 1.5
TARGET_MB = 300


# --- conda part: locked once, offline ------------------------------------------------------


def conda_project(root: Path, request: Request, *, pip_index: str | None = None) -> Path:
    """The request's project; without `pip_index`, its conda part only."""
    extra = ""
    if pip_index is not None:
        pip = ", ".join(json.dumps(r) for r in request.pip)
        extra = f'pip = [{pip}]\npip-index-url = "{pip_index}"\n'
    project = write_project(root, DEFAULTS_2018, list(request.conda), python=request.python)
    text = project.joinpath("pyproject.toml").read_text(encoding="utf-8")
    text = text.replace("conda = [", extra + "conda = [", 1)
    project.joinpath("pyproject.toml").write_text(text, encoding="utf-8")
    return project


def lock_conda(root: Path, request: Request) -> Path:
    """`mlenv lock` of the conda part; the lockfile."""
    project = conda_project(root, request)
    measure([str(console_script("mlenv")), "lock", "--project", str(project)], env=bench_env())
    return project / "conda-lock.yml"


def conda_packages(lockfile: Path) -> list:
    from hatch_mlenv.lockfile import read_lock

    return [p for p in read_lock(lockfile).for_platform(PLATFORM) if p.manager == "conda"]


# --- snapshot of real PyPI metadata (network; run once) -------------------------------------


def _supported_tags(python: str) -> set[str]:
    from packaging import tags

    major, minor = (int(x) for x in python.split(".")[:2])
    platforms = [f"manylinux_2_{m}_x86_64" for m in range(17, 4, -1)]
    platforms += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    found = set(tags.cpython_tags((major, minor), abis=[f"cp{major}{minor}" + ("m" if minor < 8 else "")],
                                  platforms=platforms))
    found |= set(tags.compatible_tags((major, minor), f"cp{major}{minor}", platforms))
    return {str(t) for t in found}


def _get(url: str, accept: str | None = None) -> bytes:
    import urllib.request

    request = urllib.request.Request(url, headers={"User-Agent": "hatch-mlenv-bench/1"})
    if accept:
        request.add_header("Accept", accept)
    for attempt in range(4):
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.read()
        except OSError:
            if attempt == 3:
                raise
            time.sleep(1 + attempt)
    raise AssertionError


def _usable_versions(page: dict, python: str, tags_: set[str]) -> dict[str, dict]:
    """version -> one usable wheel's file entry (not yanked, tag and Requires-Python fit)."""
    from packaging.specifiers import InvalidSpecifier, SpecifierSet
    from packaging.utils import InvalidWheelFilename, parse_wheel_filename

    usable: dict[str, dict] = {}
    for entry in page["files"]:
        if not entry["filename"].endswith(".whl") or entry.get("yanked"):
            continue
        try:
            _, version, _, wheel_tags = parse_wheel_filename(entry["filename"])
        except InvalidWheelFilename:
            continue
        if not any(str(t) in tags_ for t in wheel_tags):
            continue
        requires_python = entry.get("requires-python")
        if requires_python:
            try:
                if not SpecifierSet(requires_python).contains(python, prereleases=True):
                    continue
            except InvalidSpecifier:
                pass
        # Keep the version as PyPI spells it in the filename's project/version part.
        text = entry["filename"].split("-")[1]
        has_metadata = bool(entry.get("core-metadata") or entry.get("dist-info-metadata"))
        current = usable.get(text)
        if current is None or (has_metadata and not current["_metadata"]):
            usable[text] = {**entry, "_metadata": has_metadata, "_version": version}
    return usable


def _choose(usable: dict[str, dict], pinned: set[str]) -> list[str]:
    finals = sorted((v for v, e in usable.items() if not e["_version"].is_prerelease),
                    key=lambda v: usable[v]["_version"], reverse=True)
    chosen = finals[:NEWEST]
    series = {usable[v]["_version"].release[:2] for v in chosen}
    for version in finals[NEWEST:]:
        if len(chosen) >= MAX_VERSIONS:
            break
        if usable[version]["_version"].release[:2] not in series:
            series.add(usable[version]["_version"].release[:2])
            chosen.append(version)
    chosen += [v for v in usable if v in pinned and v not in chosen]
    return chosen


def _metadata(name: str, version: str, entry: dict) -> dict:
    import email.parser

    if entry["_metadata"]:
        text = _get(entry["url"] + ".metadata").decode("utf-8", "replace")
        headers = email.parser.HeaderParser().parsestr(text)
        return {"requires_python": headers.get("Requires-Python"),
                "requires_dist": headers.get_all("Requires-Dist") or []}
    # No PEP 658 file (PyPI has not backfilled every old wheel): read METADATA out of the
    # wheel itself with HTTP range requests (the zip's central directory, then one member).
    import zipfile

    with zipfile.ZipFile(_RangeFile(entry["url"])) as wheel:
        member = next(n for n in wheel.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
        headers = email.parser.HeaderParser().parsestr(wheel.read(member).decode("utf-8", "replace"))
    return {"requires_python": headers.get("Requires-Python"), "requires_dist": headers.get_all("Requires-Dist") or []}


class _RangeFile:
    """A read-only, seekable view of a remote file, fetched in 64 KiB-aligned ranges."""

    BLOCK = 65536

    def __init__(self, url: str) -> None:
        import urllib.request

        self.url, self.position, self.blocks = url, 0, {}
        request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "hatch-mlenv-bench/1"})
        with urllib.request.urlopen(request, timeout=60) as response:
            self.size = int(response.headers["Content-Length"])

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = 0) -> int:
        self.position = offset if whence == 0 else self.position + offset if whence == 1 else self.size + offset
        return self.position

    def read(self, count: int = -1) -> bytes:
        end = self.size if count < 0 else min(self.size, self.position + count)
        chunks = []
        for block in range(self.position // self.BLOCK, (end - 1) // self.BLOCK + 1 if end > self.position else 0):
            if block not in self.blocks:
                import urllib.request

                first = block * self.BLOCK
                last = min(self.size, first + self.BLOCK) - 1
                request = urllib.request.Request(self.url, headers={"Range": f"bytes={first}-{last}",
                                                                    "User-Agent": "hatch-mlenv-bench/1"})
                with urllib.request.urlopen(request, timeout=60) as response:
                    data = response.read()
                if response.status != 206:
                    data = data[first:last + 1]
                self.blocks[block] = data
            chunks.append(self.blocks[block])
        data = b"".join(chunks)
        offset = self.position - (self.position // self.BLOCK) * self.BLOCK
        result = data[offset:offset + (end - self.position)]
        self.position = end
        return result


def take_snapshot() -> None:
    """Walk each request's closure on pypi.org and write bench/data/pip-metadata.json."""
    from packaging.requirements import InvalidRequirement, Requirement

    from hatch_mlenv.pip import marker_environment
    from hatch_mlenv.pypi_names import canonical, provided_distributions

    header("pip: snapshot of real PyPI metadata (network)")
    scratch = scratch_dir("pip-snapshot")
    pages: dict[str, dict] = {}
    metadata: dict[str, dict[str, dict]] = {}
    requests_out: dict[str, Any] = {}
    with ThreadPoolExecutor(max_workers=16) as pool:
        for request in REQUESTS:
            conda = conda_packages(lock_conda(scratch / request.key, request))
            python = next(p.version for p in conda if p.name == "python")
            provided = {name: p.version for name, p in provided_distributions(conda).items()}
            environment = marker_environment(PLATFORM, python)
            tags_ = _supported_tags(python)
            pinned: dict[str, set[str]] = {}
            for text in request.pip:
                requirement = Requirement(text)
                for spec in requirement.specifier:
                    if spec.operator == "==":
                        pinned.setdefault(canonical(requirement.name), set()).add(spec.version)
            for name, version in provided.items():
                pinned.setdefault(name, set()).add(version)
            chosen: dict[str, list[str]] = {}
            wave = sorted({canonical(Requirement(r).name) for r in request.pip})
            while wave:
                missing = [n for n in wave if n not in pages]
                pages.update(zip(missing, pool.map(_page_or_none, missing)))
                entries: dict[str, dict[str, dict]] = {}
                for name in wave:
                    if pages[name] is None:
                        print(f"  {name}: not on PyPI, skipped")
                        continue
                    usable = _usable_versions(pages[name], python, tags_)
                    chosen[name] = _choose(usable, pinned.get(name, set()))
                    entries[name] = {v: usable[v] for v in chosen[name]}
                jobs = [(n, v, e) for n, es in entries.items() for v, e in es.items()
                        if v not in metadata.get(n, {})]
                for (name, version, _), meta in zip(jobs, pool.map(lambda j: _metadata(*j), jobs)):
                    metadata.setdefault(name, {})[version] = meta
                following = set()
                for name in entries:
                    # Provided ones too: uv never reads their metadata, but the old resolver does.
                    for version in chosen[name]:
                        for text in metadata[name][version]["requires_dist"]:
                            try:
                                requirement = Requirement(text)
                            except InvalidRequirement:
                                continue
                            if requirement.marker is None or requirement.marker.evaluate(environment):
                                following.add(canonical(requirement.name))
                wave = sorted(following - set(chosen))
            requests_out[request.key] = {
                "python": python,
                "projects": {n: sorted(v, key=lambda x: _version_key(x)) for n, v in sorted(chosen.items())},
            }
            total = sum(len(v) for v in chosen.values())
            print(f"  {request.key}: python {python}, {len(chosen)} projects, {total} versions")
    used = {(n, v) for r in requests_out.values() for n, vs in r["projects"].items() for v in vs}
    document = {
        "taken": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": f"{PYPI_SIMPLE} (PEP 691 JSON), PEP 658 .metadata files (the wheel's METADATA, by HTTP range, where absent)",
        "selection": f"per request: the newest {NEWEST} final versions with a wheel for its python "
                     f"(cpython manylinux <= 2_17 x86_64 or pure), the newest of older major.minor series up to "
                     f"{MAX_VERSIONS}, and the pinned and conda-provided versions",
        "requests": requests_out,
        "metadata": {
            n: {v: m for v, m in sorted(vs.items(), key=lambda x: _version_key(x[0])) if (n, v) in used}
            for n, vs in sorted(metadata.items())
        },
    }
    SNAPSHOT.parent.mkdir(parents=True, exist_ok=True)
    SNAPSHOT.write_text(json.dumps(document, indent=0, sort_keys=False) + "\n", encoding="utf-8")
    print(f"  wrote {SNAPSHOT} ({SNAPSHOT.stat().st_size / 1e6:.2f} MB)")


def _page_or_none(name: str) -> dict | None:
    import urllib.error

    try:
        return json.loads(_get(f"{PYPI_SIMPLE}/{name}/", "application/vnd.pypi.simple.v1+json"))
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def _version_key(text: str) -> Any:
    from packaging.version import InvalidVersion, Version

    try:
        return (0, Version(text), "")
    except InvalidVersion:
        return (1, Version("0"), text)


# --- the local index --------------------------------------------------------------------------


def build_local_index(request_key: str, snapshot: dict) -> Path:
    """bench/results/pip/index-<key>-<snapshot date>: tiny wheels with the snapshot's metadata (reused)."""
    from fixtures.pip_index import Wheel, build_index

    stamp = re.sub(r"\W", "", snapshot["taken"])
    root = RESULTS_DIR / "pip-index" / f"{request_key}-{stamp}"
    if (root / "simple" / "index.html").is_file():
        return root
    shutil.rmtree(root, ignore_errors=True)
    wheels = [
        Wheel(name, version, requires=tuple(snapshot["metadata"][name][version]["requires_dist"]),
              requires_python=snapshot["metadata"][name][version]["requires_python"])
        for name, versions in snapshot["requests"][request_key]["projects"].items()
        for version in versions
    ]
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    build_index(partial, wheels)
    partial.rename(root)
    return root


# --- child processes (what is measured) ---------------------------------------------------------


def child_resolve(project: str, lockfile: str, report: str) -> None:
    """resolve_pip for the project's spec; writes the call's time and this process's RSS."""
    start = time.perf_counter()
    from hatch_mlenv.pip import resolve_pip
    from hatch_mlenv.spec import load_spec

    import hatch_mlenv.pip._resolve as pip_step  # where resolve_pip looks _compile and _requirements up

    spans: dict[str, float] = {}

    def timed(name: str, function: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            begin = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spans[name] = spans.get(name, 0.0) + time.perf_counter() - begin
        return wrapper

    # The call's two parts, when hatch_mlenv.pip._resolve still has them: uv, then the PEP 658 fetch.
    for name in ("_compile", "_requirements"):
        if hasattr(pip_step, name):
            setattr(pip_step, name, timed(name, getattr(pip_step, name)))
    spec = load_spec(project)
    conda = conda_packages(Path(lockfile))
    called = time.perf_counter()
    locked = resolve_pip(spec, PLATFORM, conda)
    done = time.perf_counter()
    Path(report).write_text(json.dumps({
        "call_seconds": done - called, "setup_seconds": called - start, "packages": len(locked), "spans": spans,
        "self_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "children_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
        "with_dependencies": sum(1 for p in locked if p.dependencies),
        "locked": sorted(f"{p.name}=={p.version}" for p in locked),
    }))


def child_old(project: str, lockfile: str, report: str, cache: str, timeout: str, names: str = "community") -> None:
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

    from conda_lock import lookup, pypi_solver
    from conda_lock._vendor.poetry.repositories import legacy_repository
    from conda_lock.models.lock_spec import VersionedDependency
    from conda_lock.models.pip_repository import PipRepository
    from packaging.requirements import Requirement

    from hatch_mlenv.lockfile import to_conda_lock
    from hatch_mlenv.pypi_names import pypi_names_of
    from hatch_mlenv.spec import load_spec

    legacy_repository.REPOSITORY_CACHE_DIR = Path(cache)  # a fresh poetry cache per run
    pypi_solver._get_url = _url_keeping_port  # conda/conda-lock#649
    spec = load_spec(project)
    conda = conda_packages(Path(lockfile))
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


@dataclass
class Run:
    seconds: float
    rss_mib: float
    report: dict


def spawn(argv: Sequence[str], env: Mapping[str, str], report: Path | None = None, hard_timeout: float = 900) -> Run:
    """One measured process and the JSON its child wrote to `report`. A non-zero exit is fine
    when the child says it stopped (the old resolver stops on a timer); past `hard_timeout`
    the whole process group is killed."""
    sample = measure(argv, env=env, timeout=hard_timeout, allow_failure=True)
    if sample.rc == -9 and sample.seconds == hard_timeout:
        return Run(hard_timeout, float("nan"), {"stopped": True, "killed": True})
    data = json.loads(report.read_text()) if report is not None and report.is_file() else {}
    if sample.rc != 0 and not data.get("stopped"):
        raise CommandFailed(f"{' '.join(argv)} exited {sample.rc}:\n{sample.stdout[-3000:]}\n{sample.stderr[-3000:]}")
    return Run(sample.seconds, sample.peak_rss_mib, data)


def capture_uv(project: Path, lockfile: Path, keep: Path) -> tuple[list[str], int]:
    """Run resolve_pip once here, keeping the exact `uv pip compile` command and its input files."""
    import hatch_mlenv.pip._resolve as pip_step
    from hatch_mlenv.spec import load_spec

    captured: list[list[str]] = []
    variables: dict[str, str] = {}
    real_run = subprocess.run

    def spy(command: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(command, list) and "compile" in command and not captured:
            source = Path(command[command.index("--constraints") + 1]).parent
            shutil.rmtree(keep, ignore_errors=True)
            shutil.copytree(source, keep)
            captured.append([str(c).replace(str(source), str(keep)) for c in command])
            # What the step sets or removes in uv's environment (e.g. UV_INDEX_URL): the
            # baseline must see the same index, not fall back to pypi.org.
            env = kwargs.get("env") or os.environ
            variables.update({k: v for k, v in env.items() if os.environ.get(k) != v})
            variables.update({k: "" for k in os.environ if k not in env})
        return real_run(command, *args, **kwargs)

    pip_step.subprocess.run = spy
    try:
        with tempfile.TemporaryDirectory() as cache:
            os.environ["UV_CACHE_DIR"] = cache
            locked = pip_step.resolve_pip(load_spec(project), PLATFORM, conda_packages(lockfile))
    finally:
        pip_step.subprocess.run = real_run
        os.environ.pop("UV_CACHE_DIR", None)
    if not captured:
        raise SystemExit("resolve_pip ran no `uv pip compile`: hatch_mlenv.pip changed, update bench/pip.py")
    command = captured[0]
    (keep / "pylock.toml").unlink(missing_ok=True)
    return command, variables, len(locked)


def uv_env(variables: Mapping[str, str]) -> dict[str, str]:
    """bench_env() with the step's changes to uv's environment ("" = removed)."""
    env = bench_env()
    for key, value in variables.items():
        if value == "":
            env.pop(key, None)
        else:
            env[key] = value
    return env


def _with(command: list[str], option: str, value: str) -> list[str]:
    command = list(command)
    command[command.index(option) + 1] = value
    return command


def _pins(pylock: Path) -> set[str]:
    import tomllib

    return {f"{p['name']}=={p['version']}" for p in tomllib.loads(pylock.read_text(encoding="utf-8"))["packages"]}


def stats(values: Sequence[float]) -> tuple[float, float, float]:
    return min(values), statistics.median(values), max(values)


def measure_request(request: Request, snapshot: dict, index_url: str, work: Path, runs: int, old_runs: int,
                    old_timeout: float) -> dict[str, list[Run]]:
    lockfile = lock_conda(work / "conda", request)
    project = conda_project(work / "project", request, pip_index=index_url)
    command, variables, count = capture_uv(project, lockfile, work / "uv-input")
    if not any(index_url in part for part in [*command, *variables.values()]):
        raise SystemExit(f"the captured uv command does not name the local index {index_url}: update bench/pip.py")
    print(f"  uv pip compile alone: {' '.join(Path(c).name if c.startswith('/') else c for c in command)}"
          f" (environment: {', '.join(sorted(variables)) or 'unchanged'})")
    print(f"\n{request.key}: python {snapshot['requests'][request.key]['python']}, "
          f"{len(request.pip)} pip requirements -> {count} locked pip packages; index {index_url}")
    warm_cache = work / "uv-cache-warm"
    serial = iter(range(10**9))

    def uv_alone(cache: Path, *extra: str) -> Run:
        out = work / "uv-out" / str(next(serial))
        out.mkdir(parents=True)
        argv = _with(_with(command, "--output-file", str(out / "pylock.toml")), "--cache-dir", str(cache))
        sample = spawn([*argv, *extra], uv_env(variables))
        sample.report["pylock"] = str(out / "pylock.toml")
        return sample

    def step(cache: Path) -> Run:
        report = work / "reports" / f"{next(serial)}.json"
        report.parent.mkdir(parents=True, exist_ok=True)
        argv = [PYTHON, __file__, "--child", "resolve", str(project), str(lockfile), str(report)]
        # the step's own cache (wheel metadata by sha256) is as cold or warm as uv's
        return spawn(argv, bench_env(UV_CACHE_DIR=str(cache), MLENV_HOME=f"{cache}-mlenv-home"), report)

    def cold() -> Path:
        path = work / "uv-cache-cold" / str(next(serial))
        path.mkdir(parents=True)
        return path

    variants = {
        "uv pip compile alone, cold cache": lambda: uv_alone(cold()),
        "resolve_pip (uv step), cold cache": lambda: step(cold()),
        "uv pip compile alone, warm cache": lambda: uv_alone(warm_cache),
        "resolve_pip (uv step), warm cache": lambda: step(warm_cache),
    }
    uv_alone(warm_cache)  # fills the warm cache
    results: dict[str, list[Run]] = {label: [] for label in variants}
    for index in range(1 + runs):  # one unmeasured warm-up round
        for label, variant in variants.items():
            sample = variant()
            if index:
                results[label].append(sample)
    pins = {label: _pins(Path(ss[-1].report["pylock"])) for label, ss in results.items() if "uv alone" in label}
    if len({frozenset(p) for p in pins.values()}) != 1:
        print(f"  WARNING: the uv-alone variants locked different pins: {pins}")
    else:
        print(f"  every uv-alone variant locked the same {len(next(iter(pins.values())))} pins")
    old_label = "old resolver (conda-lock 2.5.8 poetry, community names)"
    results[old_label] = []
    for index in range(old_runs):
        report = work / "reports" / f"old-{index}.json"
        report.parent.mkdir(parents=True, exist_ok=True)
        cache = work / "poetry-cache" / str(index)
        argv = [PYTHON, __file__, "--child", "old", str(project), str(lockfile), str(report), str(cache),
                str(old_timeout)]
        sample = spawn(argv, bench_env(), report, hard_timeout=old_timeout + 60)
        results[old_label].append(sample)
        if sample.report.get("stopped"):
            break  # another run would only be stopped again
    return results


def print_results(request: Request, results: dict[str, list[Run]], old_timeout: float) -> dict[str, float]:
    rows = []
    medians: dict[str, float] = {}
    for label, samples in results.items():
        if not samples:
            continue
        stopped = any(s.report.get("stopped") for s in samples)
        seconds = stats([s.seconds for s in samples])
        rss = statistics.median(s.rss_mib for s in samples)
        call = ""
        if samples[0].report.get("call_seconds") is not None and not stopped:
            call = f"{statistics.median(s.report['call_seconds'] for s in samples):.3f}"
        extra = ""
        if "self_kib" in samples[0].report:
            extra = f"{statistics.median((s.report['self_kib'] + s.report['children_kib']) / 1024 for s in samples):.0f}"
        medians[label] = seconds[1]
        if "call_seconds" in samples[0].report and not stopped:
            medians[label + " (call)"] = statistics.median(s.report["call_seconds"] for s in samples)
        base_label = "uv pip compile alone, warm cache" if "warm" in label else "uv pip compile alone, cold cache"
        base = statistics.median(s.seconds for s in results[base_label])
        packages = samples[0].report.get("packages", "")
        if stopped:
            rows.append([label, f"> {old_timeout:g} (stopped)", "", "", f"{rss:.0f}", "", "",
                         f"> {old_timeout / base:.0f}"])
        else:
            rows.append([label, f"{seconds[0]:.3f}", f"{seconds[1]:.3f}", call, f"{rss:.0f}", extra, packages,
                         f"{seconds[1] / base:.2f}"])
    print_table(
        f"{request.key}: {len(next(iter(results.values())))} runs (old resolver: {len(results[list(results)[-1]])}), "
        "min / median",
        ["fresh process", "min s", "median s", "in call s", "peak RSS MiB", "py+uv MiB", "pip pkgs", "x uv alone"],
        rows,
    )
    breakdown = []
    for label, samples in results.items():
        if "resolve_pip" not in label:
            continue
        def part(get: Any) -> str:
            return f"{statistics.median(get(s.report) for s in samples):.3f}"
        compile_, fetch = (lambda r: r["spans"].get("_compile", 0.0)), (lambda r: r["spans"].get("_requirements", 0.0))
        breakdown.append([
            label.replace("resolve_pip (uv step), ", ""), f"{statistics.median(s.seconds for s in samples):.3f}",
            part(lambda r: r["setup_seconds"]), part(compile_), part(fetch),
            part(lambda r: r["call_seconds"] - compile_(r) - fetch(r)),
        ])
    print_table(f"{request.key}: inside the resolve_pip process, medians, s",
                ["uv cache", "process", "python + imports + spec + lock", "_compile (uv)", "_requirements (PEP 658)",
                 "rest of the call"], breakdown)
    old = [s.report for s in results[list(results)[-1]] if "locked" in s.report]
    step = [s.report for label, ss in results.items() if "resolve_pip" in label for s in ss if "locked" in s.report]
    if old and step:
        only_old = sorted(set(old[0]["locked"]) - set(step[0]["locked"]))
        only_uv = sorted(set(step[0]["locked"]) - set(old[0]["locked"]))
        print(f"  old resolver vs uv step: {len(set(old[0]['locked']) & set(step[0]['locked']))} pins alike; "
              f"only old: {', '.join(only_old) or '-'}; only uv: {', '.join(only_uv) or '-'}")
    return medians


def real_pypi(runs: int, old_timeout: float) -> None:
    """msgpack-seaborn through resolve_pip against pypi.org, cold and warm uv cache (network)."""
    header("pip: msgpack-seaborn through resolve_pip on real PyPI (network)")
    request = REQUESTS[0]
    work = scratch_dir("pip-real")
    lockfile = lock_conda(work / "conda", request)
    project = conda_project(work / "project", request, pip_index=PYPI_SIMPLE)
    warm = work / "uv-cache-warm"
    argv = [PYTHON, __file__, "--child", "resolve", str(project), str(lockfile), str(work / "fill.json")]
    spawn(argv, bench_env(UV_CACHE_DIR=str(warm), MLENV_HOME=f"{warm}-mlenv-home"), work / "fill.json")  # fills the warm caches
    rows = []
    samples: dict[str, list[Run]] = {"cold cache": [], "warm cache": []}
    for index in range(runs):
        for label in samples:
            cache = warm if label == "warm cache" else work / "uv-cache-cold" / str(index)
            report = work / "reports" / f"{label[:4]}-{index}.json"
            report.parent.mkdir(parents=True, exist_ok=True)
            argv = [PYTHON, __file__, "--child", "resolve", str(project), str(lockfile), str(report)]
            samples[label].append(spawn(argv, bench_env(UV_CACHE_DIR=str(cache), MLENV_HOME=f"{cache}-mlenv-home"), report))
    for label, runs_ in samples.items():
        low, mid, high = stats([s.seconds for s in runs_])
        call = statistics.median(s.report["call_seconds"] for s in runs_)
        rows.append([f"resolve_pip, {label}", f"{low:.3f}", f"{mid:.3f}", f"{high:.3f}", f"{call:.3f}",
                     f"{statistics.median(s.rss_mib for s in runs_):.0f}", runs_[0].report["packages"]])
    for names in ("community", "identity") if old_timeout > 0 else ():
        # One run each: the old resolver on pypi.org, stopped after old_timeout.
        report = work / "reports" / f"old-{names}.json"
        argv = [PYTHON, __file__, "--child", "old", str(project), str(lockfile), str(report),
                str(work / f"poetry-cache-{names}"), str(old_timeout), names]
        old = spawn(argv, bench_env(), report, hard_timeout=old_timeout + 60)
        label = f"old resolver, {names} names, 1 run"
        if old.report.get("stopped"):
            rows.append([label, f"> {old_timeout:g} (stopped)", "", "", "", f"{old.rss_mib:.0f}", ""])
        else:
            rows.append([label, f"{old.seconds:.3f}", "", "", f"{old.report['call_seconds']:.3f}",
                         f"{old.rss_mib:.0f}", old.report["packages"]])
            print(f"  {label}: {', '.join(old.report['locked'])}")
    print_table(f"{runs} runs each, round-robin, min / median / max",
                ["fresh process", "min s", "median s", "max s", "in call s", "peak RSS MiB", "pip packages"], rows)
    shutil.rmtree(work, ignore_errors=True)
    footer()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--old-runs", type=int, default=3)
    parser.add_argument("--old-timeout", type=float, default=120)
    parser.add_argument("--snapshot", action="store_true", help="rewrite the metadata snapshot from pypi.org")
    parser.add_argument("--real-pypi", action="store_true", help="time msgpack-seaborn on pypi.org")
    parser.add_argument("--only", choices=[r.key for r in REQUESTS], help="measure one request")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        {"resolve": child_resolve, "old": child_old}[args.child[0]](*args.child[1:])
        return
    if args.snapshot:
        take_snapshot()
        return
    if args.real_pypi:
        real_pypi(args.runs, args.old_timeout)
        return

    from fixtures.pip_index import serve

    header("pip: resolve_pip (uv step) vs uv pip compile alone vs the old resolver, local index")
    snapshot = json.loads(SNAPSHOT.read_text(encoding="utf-8"))
    print(f"  snapshot: {SNAPSHOT.relative_to(REPO)}, taken {snapshot['taken']} from pypi.org")
    import uv

    print(f"  uv {subprocess.run([uv.find_uv_bin(), '--version'], capture_output=True, text=True).stdout.split()[1]}")
    verdicts = []
    for request in REQUESTS:
        if args.only and request.key != args.only:
            continue
        started = time.perf_counter()
        root = build_local_index(request.key, snapshot)
        projects = snapshot["requests"][request.key]["projects"]
        print(f"\n{request.key}: local index of {sum(map(len, projects.values()))} wheels, {len(projects)} projects "
              f"({time.perf_counter() - started:.1f} s to build or reuse)")
        work = scratch_dir(f"pip-{request.key}")
        with serve(root) as index_url:
            results = measure_request(request, snapshot, index_url, work, args.runs, args.old_runs, args.old_timeout)
        medians = print_results(request, results, args.old_timeout)
        shutil.rmtree(work, ignore_errors=True)
        for cache in ("cold", "warm"):
            base = medians[f"uv pip compile alone, {cache} cache"]
            whole = medians[f"resolve_pip (uv step), {cache} cache"]
            call = medians[f"resolve_pip (uv step), {cache} cache (call)"]
            print(f"  {cache}: resolve_pip / uv alone: {whole / base:.2f}x (fresh process), "
                  f"{call / base:.2f}x (the call)")
            if request.key == TARGET_REQUEST:
                verdicts.append(f"target pip step <= {TARGET_RATIO:g}x uv alone, {cache} cache: "
                                f"{call / base:.2f}x (call) {verdict(call / base, TARGET_RATIO)}; "
                                f"{whole / base:.2f}x (process) {verdict(whole / base, TARGET_RATIO)}")
        peak = max(s.rss_mib for label, ss in results.items() if "resolve_pip" in label for s in ss)
        total = max((s.report["self_kib"] + s.report["children_kib"]) / 1024
                    for label, ss in results.items() if "resolve_pip" in label for s in ss)
        verdicts.append(f"target peak memory <= {TARGET_MB} MB ({request.key}): largest process "
                        f"{peak * 1.048576:.0f} MB, python + uv {total * 1.048576:.0f} MB "
                        f"{'met' if total * 1.048576 <= TARGET_MB else 'MISSED'}")
    print()
    for line in verdicts:
        print("  " + line)
    footer()


if __name__ == "__main__":
    run(main)
