"""Shared helpers for the benchmarks: timed child processes, projects, tables.

Every measurement is a fresh child process, started by the small `_spawn.py`
wrapper: wall time is spawn-to-reap and peak RSS is `os.wait4` on that one
child, so neither this process's memory nor another child's leaks into it.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"  # gitignored
SHARED_DATA = Path(os.environ.get("MLENV_SHARED_DATA", "/work/shared/data"))
DEFAULTS_2018 = SHARED_DATA / "defaults-2018"
PYTHON = sys.executable
SPAWN = BENCH_DIR / "_spawn.py"


@dataclass(frozen=True)
class Sample:
    seconds: float
    peak_rss_mib: float


class CommandFailed(RuntimeError):
    """A measured command exited non-zero: its timing would mean nothing."""


def measure(
    argv: Sequence[str], *, cwd: Path | None = None, env: Mapping[str, str] | None = None
) -> Sample:
    """Run `argv` once in a fresh process (via `_spawn.py`); its wall time and its own peak RSS."""
    with tempfile.TemporaryDirectory(prefix="mlenv-bench-") as scratch:
        report, out, err = (Path(scratch) / n for n in ("report.json", "stdout", "stderr"))
        with out.open("wb") as stdout, err.open("wb") as stderr:
            subprocess.run(
                [PYTHON, "-S", str(SPAWN), str(report), *argv],
                cwd=cwd,
                env=dict(env) if env is not None else None,
                stdout=stdout,
                stderr=stderr,
                check=True,
            )
        result = json.loads(report.read_text())
        if result["rc"] != 0:
            raise CommandFailed(f"{' '.join(argv)} exited {result['rc']}:\n{out.read_text()}\n{err.read_text()}")
    return Sample(result["seconds"], result["maxrss_kib"] / 1024)  # ru_maxrss is KiB on Linux


@dataclass(frozen=True)
class Command:
    """One thing to measure: argv, plus what to do before each run (e.g. delete a lockfile)."""

    argv: Sequence[str]
    before: Callable[[], None] | None = None
    cwd: Path | None = None
    env: Mapping[str, str] | None = None


def interleaved(runs: int, commands: Mapping[str, Command], *, warmup: int = 1) -> dict[str, list[Sample]]:
    """`runs` samples of each command, taken round-robin (A B C A B C ...) after `warmup`
    unmeasured rounds, so a burst of background load hits every command alike."""
    samples: dict[str, list[Sample]] = {label: [] for label in commands}
    for index in range(warmup + runs):
        for label, command in commands.items():
            if command.before is not None:
                command.before()
            sample = measure(command.argv, cwd=command.cwd, env=command.env or bench_env())
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


def median_seconds(samples: Sequence[Sample]) -> float:
    return statistics.median(s.seconds for s in samples)


def median_rss(samples: Sequence[Sample]) -> float:
    return statistics.median(s.peak_rss_mib for s in samples)


def verdict(ratio: float, limit: float) -> str:
    return f"met (≤ {limit:g}x)" if ratio <= limit else f"MISSED (> {limit:g}x)"


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


def write_project(
    root: Path,
    channel: Path,
    conda: Sequence[str],
    *,
    python: str = "3.6",
    extra: str = "",
) -> Path:
    """A project whose `[tool.mlenv]` locks `conda` from `channel` for linux-64."""
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

        [tool.mlenv.virtual-packages.linux-64]
        __glibc = "2.17"
        """
    ).replace("{extra}", textwrap.dedent(extra))
    (root / "pyproject.toml").write_text(text, encoding="utf-8")
    return root


def scratch_dir(name: str) -> Path:
    """A fresh directory under bench/results/ for one benchmark's projects."""
    path = RESULTS_DIR / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def run(main: Callable[[], None]) -> None:
    """Run a benchmark's main; a command that fails is reported in a few lines, not a traceback."""
    try:
        main()
    except CommandFailed as exc:
        print(f"\nbenchmark aborted, a measured command failed: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


def header(title: str) -> None:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"# {title}")
    print(f"  python {sys.version.split()[0]}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M')}, load average {load}")
    print(f"  bytecode cache: {RESULTS_DIR / 'pycache'} (PYTHONPYCACHEPREFIX)")


def footer() -> None:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\n  load average at the end: {load} (above ~0.5 on this machine, other work shared the cores)")
