"""The one harness every benchmark uses: timed child processes, round-robin runs, medians,
tables, projects, and the generated file content of the synthetic channels.

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


def measure(
    argv: Sequence[str],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    allow_failure: bool = False,
) -> Sample:
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
    before: Callable[[], None] | None = None
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


# -- figures ----------------------------------------------------------------------------------


def median_seconds(samples: Sequence[Sample]) -> float:
    return statistics.median(s.seconds for s in samples)


def median_rss(samples: Sequence[Sample]) -> float:
    return statistics.median(s.peak_rss_mib for s in samples)


def medians(dicts: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Key by key medians, in the first dict's order."""
    return {key: statistics.median(d.get(key, 0.0) for d in dicts) for key in dicts[0]}


def verdict(ratio: float, limit: float) -> str:
    return f"met (≤ {limit:g}x)" if ratio <= limit else f"MISSED (> {limit:g}x)"


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


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain aligned table: benchmarks print to terminals and CI logs alike."""
    cells = [[str(h) for h in headers]] + [[_cell(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    print(f"\n{title}")
    for index, row in enumerate(cells):
        print("  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if index == 0:
            print("  " + "  ".join("-" * w for w in widths))


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def header(title: str) -> None:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"# {title}")
    print(f"  python {sys.version.split()[0]}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M')}, load average {load}")
    print(f"  bytecode cache: {RESULTS_DIR / 'pycache'} (PYTHONPYCACHEPREFIX)")


def footer() -> None:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\n  load average at the end: {load} (above ~0.5 on this machine, other work shared the cores)")


def run(main: Callable[[], None]) -> None:
    """Run a benchmark's main; a command that fails is reported in a few lines, not a traceback."""
    try:
        main()
    except CommandFailed as exc:
        print(f"\nbenchmark aborted, a measured command failed: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


# -- commands, projects, scratch --------------------------------------------------------------


def console_script(name: str) -> Path:
    """The real console script in this interpreter's scripts dir (not a pyenv shim)."""
    script = Path(sysconfig.get_path("scripts")) / name
    if script.is_file():
        return script
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"{name}: console script not found; is hatch-mlenv installed?")
    return Path(found)


def which(name: str) -> Path:
    """What a user's shell runs for `name` (may be a pyenv shim)."""
    found = shutil.which(name)
    return Path(found) if found else console_script(name)


def write_project(root: Path, channel: Path, conda: Sequence[str], *, python: str = "3.6", extra: str = "",
                  mlenv: str = "") -> Path:
    """A project whose `[tool.mlenv]` locks `conda` from `channel` for linux-64 (`mlenv`: more keys)."""
    root.mkdir(parents=True, exist_ok=True)
    specs = ", ".join(f'"{s}"' for s in conda)
    text = textwrap.dedent(
        f"""\
        [project]
        name = "bench"
        version = "0.1"
        {{extra}}
        [tool.mlenv]
        channels = ["{channel}"]
        platforms = ["linux-64"]
        python = "{python}"
        conda = [{specs}]
        {{mlenv}}
        [tool.mlenv.virtual-packages.linux-64]
        __glibc = "2.17"
        """
    ).replace("{extra}", textwrap.dedent(extra)).replace("{mlenv}", textwrap.dedent(mlenv))
    (root / "pyproject.toml").write_text(text, encoding="utf-8")
    return root


def scratch_dir(name: str) -> Path:
    """A fresh directory under bench/results/ for one benchmark's projects."""
    path = RESULTS_DIR / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


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
