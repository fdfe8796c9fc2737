"""The pip step of a lock: `resolve_pip` (uv) vs `uv pip compile` alone vs the old resolver.

Same requests for all three, against a local PEP 503 index on 127.0.0.1 built from a committed
snapshot of real PyPI metadata (bench/data/pip-metadata.json, rewritten from pypi.org by
`python -m bench._pip_snapshot`): tiny wheels that carry each version's real Requires-Dist and
Requires-Python (fixtures.pip_index, with PEP 658 files), so resolving is real and offline.
Requests (conda part locked from defaults-2018):
  - msgpack-seaborn: python 3.6 + conda msgpack-python, matplotlib, pandas, scipy; pip
    msgpack-numpy==0.4.7.1, seaborn==0.9.0;
  - ml-20: python 3.7.0 + 20 unpinned pip requirements of a curated ML image.
Measured, fresh processes, round-robin after a warm-up round:
  - baseline: `uv pip compile` alone, with exactly the command, inputs and environment
    `resolve_pip` generated (captured once, here, by watching subprocess.run);
  - `resolve_pip` in a fresh python (bench/_pip_child.py: the step, plus python start-up and
    reading the spec and lock);
  - both with a cold uv cache (a new one per run) and a warm one;
  - the old resolver (conda-lock 2.5.8's vendored poetry), stopped after 120 s.
With `--real-pypi`: msgpack-seaborn through `resolve_pip` against pypi.org (network); and a cold
`mlenv lock` of an 18-requirement ML training list on python 3.7 (107 packages, torch 1.13.1,
transformers 4.30.2: PyPI's metadata for each, two sdists) vs `uv pip compile` of the same
requirements, each with a new uv cache, a new MLENV_HOME and no earlier output (target <= 1.2x).
Targets (ml-20): the `resolve_pip` call <= 1.3x uv alone with a warm cache, <= 1.5x cold (a
fresh process also pays python start-up and reading the spec and lock, as `mlenv lock` has by
then); peak memory of python + uv <= 300 MB.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import uv

from bench._harness import (DEFAULTS_2018, MLENV, PYTHON, RESULTS_DIR, Command, CommandFailed, Figure, Options, bench_env,
                            benchmark, child_env, measure, print_samples, print_table, progress, round_robin, scratch_dir,
                            versus, write_project)
from fixtures.pip_index import Wheel, build_index, serve
from hatch_mlenv.lockfile import LockedPackage, read_lock
from hatch_mlenv.pip import resolve_pip
from hatch_mlenv.spec import load_spec

SNAPSHOT = Path(__file__).resolve().parent / "data" / "pip-metadata.json"
PLATFORM = "linux-64"
CHILD = ["-m", "bench._pip_child"]
OLD_TIMEOUT = 120.0


@dataclass(frozen=True)
class Request:
    key: str
    python: str  # the tool.mlenv python (conda)
    conda: tuple[str, ...]
    pip: tuple[str, ...]


REQUESTS = (
    Request("msgpack-seaborn", "3.6", ("msgpack-python", "matplotlib", "pandas", "scipy"),
            ("msgpack-numpy==0.4.7.1", "seaborn==0.9.0")),
    Request("ml-20", "3.7.0", (),
            ("scikit-learn", "pandas", "numpy", "scipy", "matplotlib", "seaborn", "joblib", "requests", "pyyaml",
             "tqdm", "click", "psutil", "protobuf", "mlflow-skinny", "lightgbm", "xgboost", "pyarrow", "fsspec",
             "cloudpickle", "statsmodels")),
)


def conda_project(root: Path, request: Request, pip_index: str | None = None) -> Path:
    """The request's project; without `pip_index`, its conda part only."""
    pip = f'pip = {json.dumps(list(request.pip))}\npip-index-url = "{pip_index}"\n' if pip_index else ""
    return write_project(root, DEFAULTS_2018, list(request.conda), python=request.python, mlenv=pip)


def lock_conda(root: Path, request: Request) -> Path:
    """`mlenv lock` of the conda part; the lockfile."""
    measure([MLENV, "lock", "--project", conda_project(root, request)])
    return root / "conda-lock.yml"


def conda_packages(lockfile: Path) -> list[LockedPackage]:
    return [p for p in read_lock(lockfile).for_platform(PLATFORM) if p.manager == "conda"]


def build_local_index(request_key: str, snapshot: dict) -> Path:
    """bench/results/pip-index/<key>-<snapshot date>: tiny wheels with the snapshot's metadata (reused)."""
    root = RESULTS_DIR / "pip-index" / f"{request_key}-{re.sub(r'[^0-9A-Za-z]', '', snapshot['taken'])}"
    if (root / "simple" / "index.html").is_file():
        return root
    wheels = [Wheel(name, version, requires=tuple(snapshot["metadata"][name][version]["requires_dist"]),
                    requires_python=snapshot["metadata"][name][version]["requires_python"])
              for name, versions in snapshot["requests"][request_key]["projects"].items() for version in versions]
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    build_index(partial, wheels)
    partial.rename(root)
    return root


@dataclass
class Run:
    seconds: float
    rss_mib: float
    report: dict


def spawn(argv: Sequence[str], env: Mapping[str, str], report: Path | None = None, hard_timeout: float = 900) -> Run:
    """One measured process and the JSON its child wrote to `report`. A non-zero exit is fine
    when the child says it stopped (the old resolver stops on a timer)."""
    sample = measure(argv, env=env, timeout=hard_timeout, allow_failure=True)
    if sample.rc == -9 and sample.seconds == hard_timeout:
        return Run(hard_timeout, float("nan"), {"stopped": True, "killed": True})
    data = json.loads(report.read_text()) if report is not None and report.is_file() else {}
    if sample.rc != 0 and not data.get("stopped"):
        raise CommandFailed(f"{' '.join(argv)} exited {sample.rc}:\n{sample.stdout[-3000:]}\n{sample.stderr[-3000:]}")
    return Run(sample.seconds, sample.peak_rss_mib, data)


def capture_uv(project: Path, lockfile: Path, keep: Path) -> tuple[list[str], dict[str, str], int]:
    """Run resolve_pip once here, keeping the exact `uv pip compile` command, its input files and
    what the step sets or removes in uv's environment ("" = removed: the baseline must see the
    same index, not fall back to pypi.org)."""
    captured: list[list[str]] = []
    variables: dict[str, str] = {}
    real_run = subprocess.run

    def spy(command: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(command, list) and "compile" in command and not captured:
            source = Path(command[command.index("--constraints") + 1]).parent
            shutil.rmtree(keep, ignore_errors=True)
            shutil.copytree(source, keep)
            captured.append([str(c).replace(str(source), str(keep)) for c in command])
            env = kwargs.get("env") or os.environ
            variables.update({k: v for k, v in env.items() if os.environ.get(k) != v})
            variables.update({k: "" for k in os.environ if k not in env})
        return real_run(command, *args, **kwargs)

    subprocess.run = spy
    try:
        with tempfile.TemporaryDirectory() as cache:
            os.environ["UV_CACHE_DIR"] = cache
            locked = resolve_pip(load_spec(project), PLATFORM, conda_packages(lockfile))
    finally:
        subprocess.run = real_run
        os.environ.pop("UV_CACHE_DIR", None)
    if not captured:
        raise CommandFailed("resolve_pip ran no `uv pip compile`: hatch_mlenv.pip changed, update bench/pip.py")
    (keep / "pylock.toml").unlink(missing_ok=True)
    return captured[0], variables, len(locked)


def _with(command: list[str], option: str, value: str) -> list[str]:
    command = list(command)
    command[command.index(option) + 1] = value
    return command


def measure_request(request: Request, index_url: str, work: Path, runs: int, old_runs: int) -> dict[str, list[Run]]:
    lockfile = lock_conda(work / "conda", request)
    project = conda_project(work / "project", request, pip_index=index_url)
    command, variables, count = capture_uv(project, lockfile, work / "uv-input")
    if not any(index_url in part for part in [*command, *variables.values()]):
        raise CommandFailed(f"the captured uv command does not name the local index {index_url}")
    uv_variables = bench_env()
    for key, value in variables.items():
        if value == "":
            uv_variables.pop(key, None)
        else:
            uv_variables[key] = value
    print(f"  {request.key}: {len(request.pip)} pip requirements -> {count} locked pip packages; uv pip compile "
          f"alone: {' '.join(Path(c).name if c.startswith('/') else c for c in command)}")
    warm_cache, serial = work / "uv-cache-warm", iter(range(10**9))

    def uv_alone(cache: Path) -> Run:
        out = work / "uv-out" / str(next(serial))
        out.mkdir(parents=True)
        run = spawn(_with(_with(command, "--output-file", str(out / "pylock.toml")), "--cache-dir", str(cache)),
                    uv_variables)
        run.report["pylock"] = str(out / "pylock.toml")
        return run

    def step(cache: Path) -> Run:
        report = work / "reports" / f"{next(serial)}.json"
        report.parent.mkdir(parents=True, exist_ok=True)
        # the step's own cache (wheel metadata by sha256) is as cold or warm as uv's
        return spawn([PYTHON, *CHILD, "resolve", str(project), str(lockfile), str(report)],
                     child_env(UV_CACHE_DIR=str(cache), MLENV_HOME=f"{cache}-mlenv-home"), report)

    def cold() -> Path:
        path = work / "uv-cache-cold" / str(next(serial))
        path.mkdir(parents=True)
        return path

    variants = {"uv pip compile alone, cold cache": lambda: uv_alone(cold()),
                "resolve_pip (uv step), cold cache": lambda: step(cold()),
                "uv pip compile alone, warm cache": lambda: uv_alone(warm_cache),
                "resolve_pip (uv step), warm cache": lambda: step(warm_cache)}
    uv_alone(warm_cache)  # fills the warm cache
    results: dict[str, list[Run]] = {label: [] for label in variants}
    for index in range(1 + runs):  # one unmeasured warm-up round
        for label, variant in variants.items():
            run = variant()
            if index:
                results[label].append(run)
    pins = {frozenset(_pins(Path(r.report["pylock"]))) for label, rs in results.items() if "alone" in label for r in rs}
    print(f"  every uv-alone run locked the same pins: {len(pins) == 1}")
    old = results["old resolver (conda-lock 2.5.8 poetry)"] = []
    for index in range(old_runs):
        report = work / "reports" / f"old-{index}.json"
        old.append(spawn([PYTHON, *CHILD, "old", str(project), str(lockfile), str(report),
                          str(work / "poetry-cache" / str(index)), str(OLD_TIMEOUT)], child_env(), report,
                         hard_timeout=OLD_TIMEOUT + 60))
        if old[-1].report.get("stopped"):
            break  # another run would only be stopped again
    return results


def _pins(pylock: Path) -> set[str]:
    return {f"{p['name']}=={p['version']}" for p in tomllib.loads(pylock.read_text(encoding="utf-8"))["packages"]}


def print_results(request: Request, results: dict[str, list[Run]]) -> None:
    rows = []
    for label, runs in results.items():
        if not runs:
            continue
        base = statistics.median(r.seconds for r in results["uv pip compile alone, " + (
            "warm cache" if "warm" in label else "cold cache")])
        if any(r.report.get("stopped") for r in runs):
            rows.append([label, f"> {OLD_TIMEOUT:g} (stopped)", "", "", f"{runs[0].rss_mib:.0f}", "", "", ""])
            continue
        seconds = statistics.median(r.seconds for r in runs)
        call = statistics.median(r.report["call_seconds"] for r in runs) if "call_seconds" in runs[0].report else None
        both = statistics.median((r.report["self_kib"] + r.report["children_kib"]) / 1024 for r in runs) \
            if "self_kib" in runs[0].report else None
        rows.append([label, min(r.seconds for r in runs), seconds, "" if call is None else call,
                     f"{statistics.median(r.rss_mib for r in runs):.0f}", "" if both is None else f"{both:.0f}",
                     runs[0].report.get("packages", ""), f"{seconds / base:.2f}"])
    print_table(f"{request.key}: {len(next(iter(results.values())))} run(s), min / median",
                ["fresh process", "min s", "median s", "in call s", "peak RSS MiB", "py+uv MiB", "pip pkgs",
                 "x uv alone"], rows)


ML_LIST = ("torch==1.13.1", "transformers==4.30.2", "datasets", "scikit-learn", "pandas", "numpy", "scipy", "matplotlib",
           "tensorboard", "tqdm", "requests", "pyyaml", "pillow", "sentencepiece", "tokenizers", "accelerate", "mlflow",
           "boto3")


def real_ml_list(runs: int) -> list[Figure]:
    """Cold `mlenv lock` of ML_LIST from pypi.org vs cold `uv pip compile` of it (network)."""
    work = scratch_dir("pip-real-ml")
    project = write_project(work / "project", DEFAULTS_2018, ["pip"], python="3.7", mlenv=(
        f'pip = {json.dumps(list(ML_LIST))}\npip-index-url = "https://pypi.org/simple"\n'))
    (work / "requirements.in").write_text("".join(f"{r}\n" for r in ML_LIST), encoding="utf-8")

    def fresh(n: int) -> dict[str, str]:
        return bench_env(MLENV_HOME=str(work / f"home-{n}"), UV_CACHE_DIR=str(work / f"uv-mlenv-{n}"))

    commands = {
        "mlenv lock, cold": Command([MLENV, "lock", "--project", str(project)], fresh,
                                    before=lambda: (project / "conda-lock.yml").unlink(missing_ok=True)),
        "uv pip compile alone, cold": Command(
            lambda n: [uv.find_uv_bin(), "pip", "compile", str(work / "requirements.in"), "--python", PYTHON,
                       "--python-version", "3.7.0", "--python-platform", "x86_64-manylinux_2_28",
                       "--cache-dir", str(work / f"uv-alone-{n}"), "-o", str(work / f"out-{n}.txt"), "--quiet"],
            bench_env(UV_INDEX_URL="https://pypi.org/simple")),
    }
    samples = round_robin(runs, commands, warmup=0)  # every run is cold: nothing to warm up
    print_samples("ML list on pypi.org, cold", samples, "uv pip compile alone, cold")
    packages = len(read_lock(project / "conda-lock.yml").packages)
    shutil.rmtree(work, ignore_errors=True)
    return [versus(f"cold `mlenv lock` of an ML list on pypi.org ({packages} packages) vs `uv pip compile` cold",
                   samples["mlenv lock, cold"], samples["uv pip compile alone, cold"], 1.2)]


def real_pypi(runs: int) -> list[Figure]:
    """msgpack-seaborn through resolve_pip against pypi.org, cold and warm uv cache (network)."""
    request, work = REQUESTS[0], scratch_dir("pip-real")
    lockfile = lock_conda(work / "conda", request)
    project = conda_project(work / "project", request, pip_index="https://pypi.org/simple")
    samples: dict[str, list[Run]] = {"cold cache": [], "warm cache": []}
    for index in range(1 + runs):  # the first round fills the warm cache
        for label in samples:
            cache = work / ("uv-cache-warm" if label == "warm cache" else f"uv-cache-cold-{index}")
            report = work / "reports" / f"{label[:4]}-{index}.json"
            report.parent.mkdir(parents=True, exist_ok=True)
            run = spawn([PYTHON, *CHILD, "resolve", str(project), str(lockfile), str(report)],
                        child_env(UV_CACHE_DIR=str(cache), MLENV_HOME=f"{cache}-mlenv-home"), report)
            if index:
                samples[label].append(run)
    shutil.rmtree(work, ignore_errors=True)
    return [Figure(f"msgpack-seaborn on pypi.org, `resolve_pip`, {label} (no baseline)",
                   statistics.median(r.seconds for r in runs), "s") for label, runs in samples.items()]


@benchmark
def pip(options: Options) -> list[Figure]:
    snapshot = json.loads(SNAPSHOT.read_text(encoding="utf-8"))
    version = subprocess.run([uv.find_uv_bin(), "--version"], capture_output=True, text=True).stdout.strip()
    print(f"  snapshot of pypi.org taken {snapshot['taken']}; {version}")
    figures = []
    for request in REQUESTS:
        progress(f"pip: {request.key}")
        work = scratch_dir(f"pip-{request.key}")
        with serve(build_local_index(request.key, snapshot)) as index_url:
            results = measure_request(request, index_url, work, options.n(5, quick=1), options.n(3, quick=1))
        print_results(request, results)
        shutil.rmtree(work, ignore_errors=True)
        if request.key != "ml-20":
            continue
        for cache, target in (("warm", 1.3), ("cold", 1.5)):
            step = results[f"resolve_pip (uv step), {cache} cache"]
            alone = statistics.median(r.seconds for r in results[f"uv pip compile alone, {cache} cache"])
            call = statistics.median(r.report["call_seconds"] for r in step)
            whole = statistics.median(r.seconds for r in step)
            figures += [Figure(f"pip step (ml-20, the call), {cache} uv cache, vs `uv pip compile` alone",
                               call / alone, "x", target, call, alone),
                        Figure(f"the same as a fresh process (+ python start-up, spec, lock), {cache} cache",
                               whole / alone, "x", None, whole, alone)]
        peak = max((r.report["self_kib"] + r.report["children_kib"]) / 1024 * 1.048576
                   for label, runs in results.items() if "resolve_pip" in label for r in runs)
        figures.append(Figure("pip step (ml-20): peak memory of python + uv", peak, "MB", 300.0))
    if options.real_pypi:
        figures += real_pypi(options.n(3, quick=1)) + real_ml_list(options.n(3, quick=1))
    return figures
