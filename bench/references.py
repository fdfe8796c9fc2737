"""Using a registered version by reference: what resolving `NAME:VERSION` costs.

The README's quickstart (its bundled channel, offline) is locked, registered and installed;
then, from an empty directory:
- in one process, imports paid: `Environment.load(project)` (baseline) vs
  `Environment.load("quickstart-train:1")` and `"quickstart-train@latest"` (registry opened,
  entry and digest verified, the version's directory found up to date), 40 each;
- fresh processes: the no-op `mlenv install --project DIR` vs `mlenv install quickstart-train:1`
  and `@latest`.
Targets: resolving adds <= 20 ms; a no-op `mlenv install NAME:VERSION` <= 0.1 s.
"""

from __future__ import annotations

import json
import shutil
import subprocess

from bench._harness import (MLENV, PYTHON, REPO, Command, Figure, Options, bench_env, benchmark, median_seconds,
                            print_samples, print_table, round_robin, scratch_dir)

LOADS = """\
import json, statistics, sys, time
from hatch_mlenv import Environment
project, runs = sys.argv[1], int(sys.argv[2])
def timed(ref):
    Environment.load(ref)
    samples = []
    for _ in range(runs):
        start = time.perf_counter(); Environment.load(ref); samples.append(time.perf_counter() - start)
    return statistics.median(samples)
print(json.dumps({"project": timed(project), "number": timed("quickstart-train:1"),
                  "label": timed("quickstart-train@latest")}))
"""


@benchmark
def references(options: Options) -> list[Figure]:
    root = scratch_dir("references")
    project, empty = root / "quickstart", root / "empty"
    shutil.copytree(REPO / "examples" / "quickstart", project,
                    ignore=shutil.ignore_patterns(".mlenv", "dist", "wheels", "conda-lock.yml"))
    empty.mkdir()
    env = bench_env(MLENV_HOME=str(root / "home"))
    for argv in (["lock", "--project", project], ["register", "--project", project],
                 ["install", "--project", project], ["install", "quickstart-train:1"]):
        subprocess.run([MLENV, *map(str, argv)], cwd=empty, env=env, check=True, capture_output=True)

    loads = json.loads(subprocess.run([PYTHON, "-c", LOADS, str(project), "40"], cwd=empty, env=env, check=True,
                                      capture_output=True, text=True).stdout)
    print_table("in-process Environment.load, median of 40, ms", ["reference", "ms", "added ms"],
                [(label, loads[key] * 1000, (loads[key] - loads["project"]) * 1000) for key, label in
                 (("project", "project directory (baseline)"), ("number", "quickstart-train:1"),
                  ("label", "quickstart-train@latest"))])
    install = "install --project DIR (baseline)"
    samples = round_robin(options.n(15, quick=5), {
        install: Command([MLENV, "install", "--project", str(project)], cwd=empty, env=env),
        "install quickstart-train:1": Command([MLENV, "install", "quickstart-train:1"], cwd=empty, env=env),
        "install quickstart-train@latest": Command([MLENV, "install", "quickstart-train@latest"], cwd=empty, env=env),
    })
    print_samples("no-op install", samples, install)
    by_number = median_seconds(samples["install quickstart-train:1"])
    added = (by_number - median_seconds(samples[install])) * 1000
    return [Figure("`Environment.load(NAME:1)` vs the project's, added", (loads["number"] - loads["project"]) * 1000,
                   "ms", 20.0),
            Figure("no-op `mlenv install NAME:1` vs `--project DIR`, added", added, "ms", 20.0, by_number,
                   median_seconds(samples[install])),
            Figure("no-op `mlenv install NAME:1`", by_number, "s", 0.1)]
