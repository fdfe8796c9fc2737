"""No-op cost: `mlenv lock` on a fresh lock vs `mlenv --version` vs `python -c pass`.

Targets: no-op lock <= 1.3x `mlenv --version`; `mlenv --version` <= 3x `python -c pass`.
Measured with the installed console script (the real file in this interpreter's
scripts dir, which is what `shutil.which("mlenv")` finds under this interpreter)
and with `python -m hatch_mlenv`; when a shell would run a pyenv shim instead,
the shim is reported too (information only: its cost is pyenv's, not ours).

Usage: python bench/noop.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import subprocess
from pathlib import Path

from _harness import (
    DEFAULTS_2018,
    PYTHON,
    Command,
    bench_env,
    console_script,
    footer,
    header,
    measure,
    median_rss,
    median_seconds,
    print_table,
    round_robin,
    run,
    top_level_imports,
    scratch_dir,
    verdict,
    which,
    write_project,
)

SPECS = ["numpy", "pandas", "scipy", "matplotlib"]


def no_op_imports(argv: list[str], top: int = 8) -> list[tuple[str, float]]:
    """Top-level imports of one run under `python -X importtime`, by cumulative seconds."""
    result = subprocess.run(
        [PYTHON, "-X", "importtime", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        check=True, env=bench_env(),
    )
    return sorted(top_level_imports(result.stderr).items(), key=lambda r: r[1], reverse=True)[:top]


def shims(script: Path) -> list[Path]:
    """What a shell may run for `mlenv` instead of the script itself (e.g. a pyenv shim)."""
    found = {which("mlenv"), Path(os.environ.get("PYENV_ROOT", "~/.pyenv")).expanduser() / "shims" / "mlenv"}
    return sorted(p for p in found if p.is_file() and p.resolve() != script.resolve())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    header("noop: mlenv lock on a fresh lock vs mlenv --version vs python -c pass")

    project = write_project(scratch_dir("noop") / "project", DEFAULTS_2018, SPECS)
    script = str(console_script("mlenv"))
    lock_args = ["lock", "--project", str(project)]
    measure([script, *lock_args], env=bench_env())  # lock once; every measured run is then a no-op

    commands = {
        "python -c pass": Command([PYTHON, "-c", "pass"]),
        "mlenv --version": Command([script, "--version"]),
        "mlenv lock (no-op)": Command([script, *lock_args]),
        "python -m hatch_mlenv --version": Command([PYTHON, "-m", "hatch_mlenv", "--version"]),
        "python -m hatch_mlenv lock (no-op)": Command([PYTHON, "-m", "hatch_mlenv", *lock_args]),
    }
    for shim in shims(Path(script)):
        commands[f"{shim} --version"] = Command([str(shim), "--version"])
        commands[f"{shim} lock (no-op)"] = Command([str(shim), *lock_args])
    inherited = {k: v for k, v in bench_env().items() if k != "PYTHONPYCACHEPREFIX"}
    inherited["PYTHONDONTWRITEBYTECODE"] = "1"
    commands["mlenv lock (no-op), no bytecode cache"] = Command([script, *lock_args], env=inherited)

    samples = round_robin(args.runs, commands)
    base = median_seconds(samples["python -c pass"])
    rows = [
        [label, median_seconds(s), f"{median_rss(s):.0f}", f"{median_seconds(s) / base:.2f}"]
        for label, s in samples.items()
    ]
    print(f"\nproject: {project} ({DEFAULTS_2018.name}, python 3.6 + {', '.join(SPECS)})")
    print_table(
        f"{args.runs} runs each, interleaved, medians",
        ["fresh process", "wall s", "peak RSS MiB", "x python -c pass"],
        rows,
    )
    version = median_seconds(samples["mlenv --version"])
    noop = median_seconds(samples["mlenv lock (no-op)"])
    m_version = median_seconds(samples["python -m hatch_mlenv --version"])
    m_noop = median_seconds(samples["python -m hatch_mlenv lock (no-op)"])
    print(f"  target no-op lock <= 1.3x --version (console script):  {noop / version:.2f}x  {verdict(noop / version, 1.3)}")
    print(f"  target no-op lock <= 1.3x --version (python -m):       {m_noop / m_version:.2f}x  {verdict(m_noop / m_version, 1.3)}")
    print(f"  target --version <= 3x python -c pass (console script): {version / base:.2f}x  {verdict(version / base, 3)}")
    print(f"  target --version <= 3x python -c pass (python -m):      {m_version / base:.2f}x  {verdict(m_version / base, 3)}")

    print_table("top-level imports of `mlenv --version` (-X importtime)", ["module", "cumulative s"],
                no_op_imports([script, "--version"]))
    print_table("top-level imports of a no-op `mlenv lock` (-X importtime)", ["module", "cumulative s"],
                no_op_imports([script, *lock_args]))
    footer()


if __name__ == "__main__":
    run(main)
