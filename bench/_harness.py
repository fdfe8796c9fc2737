"""The one harness of bench/: timed child processes, round-robin runs, figures with their
targets, the tables, and the deterministic content of the generated channels. The runner
(`python -m bench`, bench/__main__.py) finds the benchmarks registered here with @benchmark.

Every measurement is a fresh child process started through this very file run as a
script (`python -S bench/_harness.py OUT ARGV...`): it fork()s and exec()s the command
and reads the child's own peak RSS with `os.wait4`. Python's subprocess starts children
with vfork/posix_spawn, and Linux then folds the *parent's* peak RSS into the child's
`ru_maxrss` at exec: a benchmark that has loaded 300 MB of repodata would see that in
every child. Wall time is spawn-to-reap, without this wrapper's own start-up.
"""

from __future__ import annotations

import json
import os
import sys
import time

if __name__ == "__main__":  # the spawn wrapper: nothing else runs, nothing else is imported
    out, argv = sys.argv[1], sys.argv[2:]
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(argv[0], argv)
        finally:
            os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - start
    with open(out, "w") as handle:
        json.dump({"seconds": seconds, "maxrss_kib": usage.ru_maxrss, "rc": os.waitstatus_to_exitcode(status)}, handle)
    raise SystemExit(0)

import random
import re
import shutil
import signal
import statistics
import subprocess
import sysconfig
import tempfile
import textwrap
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence, Union

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"  # gitignored
SHARED_DATA = Path(os.environ.get("MLENV_SHARED_DATA", "/work/shared/data"))
DEFAULTS_2018 = SHARED_DATA / "defaults-2018"
PYTHON = sys.executable
sys.path.insert(0, str(REPO))  # fixtures/, tests/


# -- benchmarks, options, figures -------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """What the runner was asked: `--runs N` overrides every benchmark's own default,
    `--quick` takes the fewest runs that still give a figure, `--real-pypi` allows the network."""

    runs: int | None = None
    quick: bool = False
    real_pypi: bool = False

    def n(self, default: int, quick: int = 1) -> int:
        return self.runs if self.runs is not None else quick if self.quick else default


@dataclass(frozen=True)
class Figure:
    """One row of the summary: `value` is subject / baseline (unit "x") or an absolute figure
    in `unit`; met when value <= target."""

    case: str
    value: float
    unit: str = "x"
    target: float | None = None
    subject: float | None = None  # seconds, when the figure is a ratio of two medians
    baseline: float | None = None

    @property
    def verdict(self) -> str:
        if self.target is None:
            return "-"
        if self.value != self.value:  # nan: nothing measured
            return "no figure"
        return "met" if self.value <= self.target else "MISSED"


def versus(case: str, subject: Sequence[Sample] | float, baseline: Sequence[Sample] | float,
           target: float | None = None) -> Figure:
    """subject / baseline, each a median of samples or seconds."""
    s = subject if isinstance(subject, (int, float)) else median_seconds(subject)
    b = baseline if isinstance(baseline, (int, float)) else median_seconds(baseline)
    return Figure(case, s / b, "x", target, s, b)


Benchmark = Callable[[Options], list[Figure]]
BENCHMARKS: dict[str, Benchmark] = {}


def benchmark(function: Benchmark) -> Benchmark:
    """Register a case file's benchmark under its module's name (`python -m bench NAME`)."""
    BENCHMARKS[function.__module__.rpartition(".")[2]] = function
    return function


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- one measured process ---------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One fresh process: wall seconds, its own peak RSS, exit code and output."""

    seconds: float
    peak_rss_mib: float
    rc: int = 0
    stdout: str = ""
    stderr: str = ""

    def json(self) -> dict:
        """The last stdout line as JSON (what the benchmarks' child scripts report)."""
        return json.loads(self.stdout.strip().splitlines()[-1])


class CommandFailed(RuntimeError):
    """A measured command exited non-zero: its timing would mean nothing."""


def measure(argv: Sequence[str | Path], *, cwd: Path | None = None, env: Mapping[str, str] | None = None,
            timeout: float | None = None, allow_failure: bool = False) -> Sample:
    """Run `argv` once in a fresh process; its wall time, peak RSS and output.

    A non-zero exit raises CommandFailed unless `allow_failure`; past `timeout` the
    whole process group is killed (rc -9, wall = the timeout)."""
    argv = [str(a) for a in argv]
    with tempfile.TemporaryDirectory(prefix="mlenv-bench-") as scratch:
        report, out, err = (Path(scratch) / n for n in ("report.json", "stdout", "stderr"))
        with out.open("wb") as stdout, err.open("wb") as stderr:
            process = subprocess.Popen([PYTHON, "-S", __file__, str(report), *argv], cwd=cwd,
                                       env=dict(env) if env is not None else bench_env(),
                                       stdout=stdout, stderr=stderr, start_new_session=True)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                if not allow_failure:
                    raise CommandFailed(f"{' '.join(argv)} did not finish in {timeout} s") from None
                return Sample(float(timeout or 0), float("nan"), -9)
        texts = out.read_text(errors="replace"), err.read_text(errors="replace")
        result = json.loads(report.read_text())
    if result["rc"] != 0 and not allow_failure:
        raise CommandFailed(f"{' '.join(argv)} exited {result['rc']}:\n{texts[0][-2000:]}\n{texts[1][-2000:]}")
    return Sample(result["seconds"], result["maxrss_kib"] / 1024, result["rc"], *texts)  # ru_maxrss: KiB


Argv = Union[Sequence[str], Callable[[int], Sequence[str]]]
Env = Union[Mapping[str, str], Callable[[int], Mapping[str, str]], None]


@dataclass(frozen=True)
class Command:
    """One thing to measure. `argv` and `env` may take the run's number (a run that must
    write a new directory); `before` runs before each run (e.g. delete a lockfile);
    `check(sample, n)` raises CommandFailed when the output shows the run measured the
    wrong thing; an `optional` command that fails is reported, not fatal."""

    argv: Argv
    env: Env = None
    before: Callable[[], object] | None = None
    cwd: Path | None = None
    check: Callable[[Sample, int], None] | None = None
    optional: bool = False


FAILED: dict[str, str] = {}  # optional commands that failed, and why


def round_robin(runs: int, commands: Mapping[str, Command], *, warmup: int = 1, sync: bool = False,
                first: int = 0) -> dict[str, list[Sample]]:
    """`runs` samples of each command, taken A B C A B C ... after `warmup` unmeasured rounds,
    so that a burst of background load hits every command alike. `sync`: flush dirty pages
    before every run, so no run pays for an earlier one's writeback. Runs are numbered
    from `first`."""
    samples: dict[str, list[Sample]] = {label: [] for label in commands}
    for index in range(warmup + runs):
        n = first + index
        for label, command in commands.items():
            if label in FAILED:
                continue
            if command.before is not None:
                command.before()
            if sync:
                os.sync()
            argv = command.argv(n) if callable(command.argv) else command.argv
            env = command.env(n) if callable(command.env) else command.env
            try:
                sample = measure(argv, cwd=command.cwd, env=env if env is not None else bench_env())
                if command.check is not None:
                    command.check(sample, n)
            except CommandFailed as exc:
                if not command.optional:
                    raise
                FAILED[label] = str(exc).strip().splitlines()[-1]
                continue
            if index >= warmup:
                samples[label].append(sample)
    return samples


def bench_env(**extra: str) -> dict[str, str]:
    """The environment for measured commands: bytecode cached as on a user's machine, but
    under bench/results/ (never in the source tree), whatever PYTHONDONTWRITEBYTECODE says."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(RESULTS_DIR / "pycache")
    env.update(extra)
    return env


def child_env(**extra: str) -> dict[str, str]:
    """bench_env() for a child that imports bench/ or fixtures/ (`python -m bench.NAME ...`)."""
    path = os.pathsep.join(p for p in (str(REPO / "src"), str(REPO), os.environ.get("PYTHONPATH")) if p)
    return bench_env(PYTHONPATH=path, **extra)


# -- figures and tables -----------------------------------------------------------------------


def median_seconds(samples: Sequence[Sample]) -> float:
    return statistics.median(s.seconds for s in samples) if samples else float("nan")


def median_rss(samples: Sequence[Sample]) -> float:
    return statistics.median(s.peak_rss_mib for s in samples) if samples else float("nan")


def medians(dicts: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Key by key medians, in the first dict's order."""
    return {key: statistics.median(d.get(key, 0.0) for d in dicts) for key in dicts[0]}


def p95(values: Sequence[float]) -> float:
    """Nearest-rank 95th percentile (with 10 samples: the largest)."""
    ordered = sorted(values)
    return ordered[max(0, -(-len(ordered) * 95 // 100) - 1)]


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]], left: int = 1) -> None:
    """A plain aligned table (the first `left` columns flush left): for terminals and CI logs alike."""
    cells = [[str(h) for h in headers]] + [[_cell(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    print(f"\n{title}")
    for index, row in enumerate(cells):
        print("  " + "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if index == 0:
            print("  " + "  ".join("-" * w for w in widths))


def _cell(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def print_samples(title: str, samples: Mapping[str, Sequence[Sample]], base: str) -> None:
    """The usual table: each command's median, min, max and peak RSS, and its ratio to `base`."""
    b = median_seconds(samples[base])
    rows = [[label, median_seconds(s), min(x.seconds for x in s), max(x.seconds for x in s), f"{median_rss(s):.0f}",
             f"{median_seconds(s) / b:.2f}"] for label, s in samples.items() if s]
    runs = max(len(s) for s in samples.values())
    print_table(f"{title}: {runs} run(s) each, round-robin, medians (fresh processes)",
                ["command", "wall s", "min s", "max s", "peak RSS MiB", f"x {base}"], rows)


_IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \| ( *)(\S+)\s*$")


def import_times(stderr: str) -> list[tuple[str, float, float, int]]:
    """`-X importtime` output as (module, self s, cumulative s, depth), in the order printed."""
    rows = []
    for line in stderr.splitlines():
        match = _IMPORT_LINE.match(line)
        if match:
            rows.append((match.group(4), int(match.group(1)) / 1e6, int(match.group(2)) / 1e6, len(match.group(3)) // 2))
    return rows


def top_level_imports(stderr: str) -> dict[str, float]:
    """Cumulative seconds of each top-level import (nested ones are inside them), summed by name."""
    totals: dict[str, float] = {}
    for name, _self, cumulative, depth in import_times(stderr):
        if depth == 0:
            totals[name] = totals.get(name, 0.0) + cumulative
    return totals


def print_imports(title: str, argv: Sequence[str | Path], top: int = 8, **env: str) -> None:
    """The top-level imports of one run of a python command, by cumulative seconds (-X importtime)."""
    result = subprocess.run([PYTHON, "-X", "importtime", *map(str, argv)], capture_output=True, text=True, check=True,
                            env=bench_env(**env))
    found = sorted(top_level_imports(result.stderr).items(), key=lambda r: r[1], reverse=True)
    print_table(f"top-level imports of {title} (-X importtime)", ["module", "cumulative s"], found[:top])


# -- commands, projects, scratch --------------------------------------------------------------


def console_script(name: str) -> Path:
    """The real console script in this interpreter's scripts dir (not a pyenv shim: ~45 ms a call)."""
    script = Path(sysconfig.get_path("scripts")) / name
    if script.is_file():
        return script
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"{name}: console script not found; is hatch-mlenv installed?")
    return Path(found)


MLENV = str(console_script("mlenv"))


def write_project(root: Path, channel: Path | Sequence[Path], conda: Sequence[str], *, python: str = "3.6",
                  extra: str = "", mlenv: str = "", platforms: Sequence[str] = ("linux-64",)) -> Path:
    """A project whose `[tool.mlenv]` locks `conda` from `channel` (`extra`: more top-level
    tables before it, `mlenv`: more keys of it), __glibc 2.17 on every platform."""
    root.mkdir(parents=True, exist_ok=True)
    channels = ", ".join(f'"{c}"' for c in ([channel] if isinstance(channel, Path) else channel))
    glibc = "".join(f'[tool.mlenv.virtual-packages.{p}]\n__glibc = "2.17"\n' for p in platforms)
    text = textwrap.dedent(extra) + textwrap.dedent(f"""\
        [project]
        name = "bench"
        version = "0.1"

        [tool.mlenv]
        channels = [{channels}]
        platforms = {json.dumps(list(platforms))}
        python = "{python}"
        conda = {json.dumps(list(conda))}
        """) + textwrap.dedent(mlenv) + "\n" + glibc
    (root / "pyproject.toml").write_text(text, encoding="utf-8")
    return root


def scratch_dir(name: str) -> Path:
    """A fresh directory under bench/results/ for one benchmark's projects."""
    path = RESULTS_DIR / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def rmtree(*paths: Path) -> Callable[[], None]:
    """A `before` that removes `paths`."""
    def remove() -> None:
        for path in paths:
            shutil.rmtree(path, ignore_errors=True)
    return remove


# -- content of the generated channels (deterministic) ----------------------------------------


def rng(*seed: object) -> random.Random:
    return random.Random(zlib.crc32("/".join(map(str, seed)).encode()))


_LOW = bytes.maketrans(bytes(range(256)), bytes(i & 7 for i in range(256)))


def binary(size: int, *seed: object) -> bytes:
    """Machine-code-like bytes: random blocks between zero and low-entropy ones (bz2: ~1.7x)."""
    rnd = rng("bin", *seed)
    parts, total = [], 0
    while total < size:
        parts += [rnd.randbytes(2048), bytes(1024), rnd.randbytes(1024).translate(_LOW)]
        total += 4096
    return b"".join(parts)[:size]


_WORDS = ("self", "array", "dtype", "shape", "axis", "value", "index", "result", "frame", "module", "level",
          "buffer", "kwargs", "args", "other", "name", "copy", "method", "data", "out", "key", "func", "obj")


def text(size: int, *seed: object) -> bytes:
    """Python-source-like text (bz2: ~4x)."""
    rnd = rng("text", *seed)
    lines, total, n = [], 0, 0
    while total < size:
        a, b, c, d = rnd.choices(_WORDS, k=4)
        line = (f"def {a}_{b}_{n}({c}, {d}=None):\n    \"\"\"Return the {a} of {c}.\"\"\"\n"
                f"    return {b}({c}, {d}) + {rnd.getrandbits(24)}\n\n")
        lines.append(line)
        total += len(line)
        n += 1
    return "".join(lines).encode()[:size]


def dist_info(site: str, name: str, version: str) -> dict[str, bytes]:
    """The `.dist-info` a conda package of a Python distribution carries."""
    dist = f"{site}/{name.replace('-', '_')}-{version}.dist-info"
    return {f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
            f"{dist}/INSTALLER": b"conda\n"}
