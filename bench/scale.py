"""Scale and growth of a cold `mlenv lock` on channels of ~10k, ~100k and ~300k records.

The channels are defaults-2018 plus renamed copies of it (bench/_fixtures.scaled_channel:
copy k renames every package and dependency to `<name>-c<k>`), so the dependency structure
stays real. The spec: python 3.6, numpy, pandas, scipy, matplotlib, plus two packages of two
copies (checked to be in the lock). Each run deletes the lockfile first. Baselines, fresh
processes on the same files: (a) only `json.load` of the repodata; (b) a bare
`asyncio.run(rattler.solve(...))` of the same specs and virtual packages.
Targets at ~300k: lock <= 0.3x (a), <= 1.5x (b) in time and <= 1.2x (b) in peak RSS; lock time
grows slower than the record count (10k -> 300k).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from bench._fixtures import SUBDIRS, records, scaled_channel
from bench._harness import (BENCH_DIR, MLENV, PYTHON, Command, Figure, Options, bench_env, benchmark, median_rss,
                            median_seconds, print_imports, print_samples, print_table, round_robin, scratch_dir,
                            versus, write_project)

SIZES = {"10k": 2, "100k": 18, "300k": 53}  # label -> copies of the snapshot (the original counts as one)
SPECS = ["numpy", "pandas", "scipy", "matplotlib"]
# The virtual packages mlenv passes for linux-64: conda-lock's defaults, __glibc from the spec.
VIRTUAL_PACKAGES = [("__unix", "0", "0"), ("__linux", "5.10", "0"), ("__glibc", "2.17", "0"),
                    ("__cuda", "11.4", "0"), ("__archspec", "1", "x86_64")]
JSON_LOAD = "import json, sys\nfor p in sys.argv[1:]:\n    with open(p, 'rb') as f:\n        json.load(f)\n"
# The same 20 ms pause at exit that mlenv registers (hatch_mlenv._compat.settle_rattler_at_exit):
# without it py-rattler's threads sometimes abort the interpreter at shutdown.
BARE_SOLVE = """\
import asyncio, atexit, json, sys, time
import rattler
atexit.register(time.sleep, 0.02)
url, vp, *specs = sys.argv[1:]
virtual = [rattler.GenericVirtualPackage(rattler.PackageName(n), rattler.Version(v), rattler.BuildString(b))
           for n, v, b in json.loads(vp)]
records = asyncio.run(rattler.solve([rattler.Channel(url)], specs, platforms=["linux-64", "noarch"],
                                    virtual_packages=virtual))
print(len(records))
"""


def copied(project: Path, names: list[str]) -> str:
    """The copied packages must really be in the lock, or the benchmark measures nothing."""
    text = (project / "conda-lock.yml").read_text()
    missing = [n for n in names if not re.search(rf"^- name: {re.escape(n)}$", text, re.M)]
    return "ok" if not missing else f"MISSING {missing}"


@benchmark
def scale(options: Options) -> list[Figure]:
    root, runs = scratch_dir("scale"), options.n(5, quick=2)
    growth = {}
    for label, copies in SIZES.items():
        channel = scaled_channel(copies)
        specs = SPECS + (["numpy-c3", "scipy-c7"] if copies > 7 else ["numpy-c1", "scipy-c1"])
        project = write_project(root / channel.name, channel, specs)
        commands = {
            "mlenv lock (cold)": Command([MLENV, "lock", "--project", str(project)],
                                         before=lambda p=project: (p / "conda-lock.yml").unlink(missing_ok=True)),
            "(b) bare rattler.solve": Command([PYTHON, "-c", BARE_SOLVE, channel.as_uri(),
                                               json.dumps(VIRTUAL_PACKAGES), "python 3.6.*", *specs]),
        }
        if label == "300k":
            commands["(a) json.load repodata"] = Command([PYTHON, "-c", JSON_LOAD,
                                                          *(str(channel / s / "repodata.json") for s in SUBDIRS)])
        samples = round_robin(runs, commands)
        print_samples(f"~{label}: {records(channel)['linux-64']} linux-64 records; copied packages locked: "
                      f"{copied(project, specs[-2:])}", samples, "mlenv lock (cold)")
        growth[label] = (records(channel)["linux-64"], samples, project)

    print_table("growth: cold mlenv lock and bare solve by channel size, medians",
                ["channel", "linux-64 records", "lock s", "lock RSS MiB", "bare solve s", "lock - solve s"],
                [[f"~{label}", n, median_seconds(s["mlenv lock (cold)"]), f"{median_rss(s['mlenv lock (cold)']):.0f}",
                  median_seconds(s["(b) bare rattler.solve"]),
                  median_seconds(s["mlenv lock (cold)"]) - median_seconds(s["(b) bare rattler.solve"])]
                 for label, (n, s, _) in growth.items()])
    project = growth["300k"][2]
    phases = subprocess.run([PYTHON, str(BENCH_DIR / "_lock_phases.py"), str(project)], capture_output=True,
                            text=True, check=True, env=bench_env()).stdout.strip().splitlines()[-1]
    print_table("where a cold lock's time goes at ~300k (phases one after another in one fresh process)",
                ["phase", "s"], list(json.loads(phases).items()))
    (project / "conda-lock.yml").unlink()
    print_imports("a cold lock at ~300k", [MLENV, "lock", "--project", project], top=10)

    big, small = growth["300k"][1], growth["10k"][1]
    lock, solve, load = big["mlenv lock (cold)"], big["(b) bare rattler.solve"], big["(a) json.load repodata"]
    rss = median_rss(lock) / median_rss(solve)
    time_growth = median_seconds(lock) / median_seconds(small["mlenv lock (cold)"])
    records_growth = growth["300k"][0] / growth["10k"][0]
    return [versus("cold `mlenv lock` at ~300k records vs a bare rattler solve", lock, solve, 1.5),
            versus("cold `mlenv lock` at ~300k vs `json.load` of the repodata", lock, load, 0.3),
            Figure("peak RSS of that lock vs the bare solve", rss, "x", 1.2),
            Figure(f"lock time growth 10k -> 300k ({time_growth:.1f}x) vs records ({records_growth:.1f}x)",
                   time_growth / records_growth, "x", 1.0)]
