"""Using a registered version by reference: what resolving `NAME:VERSION` costs.

Targets (issue 14): resolving a reference against the local registry adds <= 20 ms to a
command; `mlenv install NAME:VERSION` of an already-installed digest is the same no-op as
today's project install (<= 0.1 s).

Baseline, in the same run: the same environment loaded / installed from its project.
- in-process: `Environment.load(project)` vs `Environment.load("NAME:1")` (registry opened,
  entry and digest verified, the version's directory found up to date), after imports;
- whole command: `mlenv install --project DIR` vs `mlenv install NAME:1` vs `NAME@latest`,
  both no-ops on an installed prefix.

The environment is the README's quickstart (its bundled channel), so it runs offline.

Usage: python bench/references.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from _harness import (
    PYTHON,
    Command,
    bench_env,
    console_script,
    footer,
    header,
    round_robin,
    median_seconds,
    print_table,
    run,
    scratch_dir,
    verdict,
)

QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart"
ADDED_LIMIT_MS = 20.0
NOOP_LIMIT_S = 0.1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    header("references: NAME:VERSION vs the project")

    root = scratch_dir("references")
    project = root / "quickstart"
    shutil.copytree(QUICKSTART, project, ignore=shutil.ignore_patterns(".mlenv", "dist", "wheels", "conda-lock.yml"))
    empty = root / "empty"
    empty.mkdir()
    env = bench_env(MLENV_HOME=str(root / "home"))
    mlenv = str(console_script("mlenv"))
    for argv in ([mlenv, "lock", "--project", str(project)], [mlenv, "register", "--project", str(project)],
                 [mlenv, "install", "--project", str(project)], [mlenv, "install", "quickstart-train:1"]):
        subprocess.run(argv, cwd=empty, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    # in-process: the resolver alone, imports already paid
    code = (
        "import json, time, statistics\n"
        "from hatch_mlenv.environment import Environment\n"
        f"project = {str(project)!r}\n"
        "Environment.load(project); Environment.load('quickstart-train:1')\n"
        "def timed(ref):\n"
        "    samples = []\n"
        "    for _ in range(40):\n"
        "        start = time.perf_counter(); Environment.load(ref); samples.append(time.perf_counter() - start)\n"
        "    return statistics.median(samples)\n"
        "print(json.dumps({'project': timed(project), 'number': timed('quickstart-train:1'),\n"
        "                  'label': timed('quickstart-train@latest')}))\n"
    )
    import json

    loads = json.loads(subprocess.run([PYTHON, "-c", code], cwd=empty, env=env, check=True,
                                      capture_output=True, text=True).stdout)
    print_table("in-process Environment.load, median of 40 (ms)", ["reference", "ms", "added ms"], [
        ("project directory (baseline)", loads["project"] * 1000, 0.0),
        ("quickstart-train:1", loads["number"] * 1000, (loads["number"] - loads["project"]) * 1000),
        ("quickstart-train@latest", loads["label"] * 1000, (loads["label"] - loads["project"]) * 1000),
    ])

    samples = round_robin(args.runs, {
        "project": Command([mlenv, "install", "--project", str(project)], cwd=empty, env=env),
        "number": Command([mlenv, "install", "quickstart-train:1"], cwd=empty, env=env),
        "label": Command([mlenv, "install", "quickstart-train@latest"], cwd=empty, env=env),
    })
    base = median_seconds(samples["project"])
    rows = []
    for label, text in (("project", "install --project DIR (baseline)"), ("number", "install quickstart-train:1"),
                        ("label", "install quickstart-train@latest")):
        seconds = median_seconds(samples[label])
        added = (seconds - base) * 1000
        rows.append((text, seconds, added, f"{seconds / base:.2f}x",
                     "-" if label == "project" else verdict(added / ADDED_LIMIT_MS, 1.0).replace("1x", f"{ADDED_LIMIT_MS:g} ms")
                     + (", no-op " + ("met" if seconds <= NOOP_LIMIT_S else "MISSED") + f" (≤ {NOOP_LIMIT_S} s)")))
    print_table(f"no-op install, whole command, median of {args.runs} (s)",
                ["command", "s", "added ms", "ratio", "target"], rows)
    footer()


if __name__ == "__main__":
    run(main)
