"""Scale and growth: a cold `mlenv lock` on channels of ~10k, ~100k and ~300k records.

The channels are the real defaults-2018 snapshot plus renamed copies of it
(copy k renames every package and every dependency to `<name>-c<k>`, virtual
packages excepted), so the dependency structure stays real. They are built
once into bench/results/channels/ and reused.

Baselines, each a fresh process on the same files:
  (a) `python -c` that only json.loads the channel's repodata files;
  (b) a bare `asyncio.run(rattler.solve(...))` of the same specs and virtual packages.
Targets at ~300k: mlenv lock <= 0.3x (a) and <= 1.5x (b) in time, <= 1.2x (b) in peak RSS.
Growth: lock time 300k/10k should grow slower than the record count.

Usage: python bench/scale.py [--runs N] [--sizes 10k 100k 300k]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from _harness import (
    DEFAULTS_2018,
    PYTHON,
    RESULTS_DIR,
    Command,
    bench_env,
    console_script,
    footer,
    header,
    median_rss,
    median_seconds,
    import_times,
    print_table,
    round_robin,
    run,
    scratch_dir,
    verdict,
    write_project,
)

SUBDIRS = ("linux-64", "noarch")
# Channel size label -> number of copies of the snapshot (the original counts as one).
SIZES = {"10k": 2, "100k": 18, "300k": 53}
BASE_SPECS = ["numpy", "pandas", "scipy", "matplotlib"]
PYTHON_SPEC = "python 3.6.*"  # what `python = "3.6"` becomes in the spec
# The virtual packages mlenv passes for linux-64: conda-lock's defaults, __glibc from the spec.
VIRTUAL_PACKAGES = [
    ("__unix", "0", "0"),
    ("__linux", "5.10", "0"),
    ("__glibc", "2.17", "0"),
    ("__cuda", "11.4", "0"),
    ("__archspec", "1", "x86_64"),
]

JSON_LOAD = "import json, sys\nfor p in sys.argv[1:]:\n    with open(p, 'rb') as f:\n        json.load(f)\n"
# The same 20 ms pause at exit that mlenv registers (hatch_mlenv._compat.settle_rattler_at_exit):
# without it py-rattler's threads sometimes abort the interpreter at shutdown.
BARE_SOLVE = """\
import asyncio, atexit, json, sys, time
import rattler
atexit.register(time.sleep, 0.02)
url, vp, *specs = sys.argv[1:]
virtual = [
    rattler.GenericVirtualPackage(rattler.PackageName(n), rattler.Version(v), rattler.BuildString(b))
    for n, v, b in json.loads(vp)
]
records = asyncio.run(
    rattler.solve([rattler.Channel(url)], specs, platforms=["linux-64", "noarch"], virtual_packages=virtual)
)
print(len(records))
"""


def copy_specs(copies: int) -> list[str]:
    """Two packages from two of the copies: c3 and c7 when they exist, else c1."""
    if copies > 7:
        return ["numpy-c3", "scipy-c7"]
    return ["numpy-c1", "scipy-c1"]


def renamed(records: dict[str, Any], suffix: str) -> dict[str, Any]:
    """The records with every package and dependency name suffixed; `__virtual` names kept."""

    def rename(dep: str) -> str:
        name, sep, rest = dep.partition(" ")
        return dep if name.startswith("__") else f"{name}{suffix}{sep}{rest}"

    out = {}
    for record in records.values():
        new = dict(record, name=record["name"] + suffix)
        new["depends"] = [rename(d) for d in record.get("depends", ())]
        if "constrains" in record:
            new["constrains"] = [rename(d) for d in record["constrains"]]
        out[f"{new['name']}-{record['version']}-{record['build']}.tar.bz2"] = new
    return out


def build_channel(copies: int) -> Path:
    """The snapshot plus `copies - 1` renamed copies, as a channel dir; cached."""
    channel = RESULTS_DIR / "channels" / f"defaults-2018-x{copies}"
    stamp = channel / "stamp.json"
    if stamp.is_file():
        return channel
    start = time.perf_counter()
    for subdir in SUBDIRS:
        source = json.loads((DEFAULTS_2018 / subdir / "repodata.json").read_text())
        packages = dict(source["packages"])
        for k in range(1, copies):
            packages.update(renamed(source["packages"], f"-c{k}"))
        repodata = {"info": {"subdir": subdir}, "packages": packages, "packages.conda": {}, "repodata_version": 1}
        (channel / subdir).mkdir(parents=True, exist_ok=True)
        (channel / subdir / "repodata.json").write_text(json.dumps(repodata))
    counts = {s: len(json.loads((channel / s / "repodata.json").read_text())["packages"]) for s in SUBDIRS}
    stamp.write_text(json.dumps({"copies": copies, "records": counts}))
    print(f"  built {channel.name}: {counts} in {time.perf_counter() - start:.1f}s")
    return channel


def records(channel: Path) -> dict[str, int]:
    return json.loads((channel / "stamp.json").read_text())["records"]


def lock_project(channel: Path, copies: int, root: Path) -> tuple[Path, list[str]]:
    specs = BASE_SPECS + copy_specs(copies)
    return write_project(root / channel.name, channel, specs), specs


def cold_lock(project: Path) -> Command:
    lockfile = project / "conda-lock.yml"
    argv = [str(console_script("mlenv")), "lock", "--project", str(project)]
    return Command(argv, before=lambda: lockfile.unlink(missing_ok=True))


def check_locked(project: Path, names: list[str]) -> str:
    """The copied packages must really be in the lock, or the benchmark measures nothing."""
    text = (project / "conda-lock.yml").read_text()
    missing = [n for n in names if not re.search(rf"^- name: {re.escape(n)}$", text, re.M)]
    return "ok" if not missing else f"MISSING {missing}"


def bare_solve(channel: Path, specs: list[str]) -> Command:
    return Command([PYTHON, "-c", BARE_SOLVE, channel.as_uri(), json.dumps(VIRTUAL_PACKAGES), PYTHON_SPEC, *specs])


def json_load(channel: Path) -> Command:
    return Command([PYTHON, "-c", JSON_LOAD, *(str(channel / s / "repodata.json") for s in SUBDIRS)])


def import_costs(project: Path, top: int = 10) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """One cold lock under `python -X importtime`: top-level imports by cumulative
    seconds, and the modules with the most self time wherever they sit."""
    (project / "conda-lock.yml").unlink(missing_ok=True)
    result = subprocess.run(
        [PYTHON, "-X", "importtime", str(console_script("mlenv")), "lock", "--project", str(project)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        check=True,
        env=bench_env(),
    )
    rows = import_times(result.stderr)
    cumulative = sorted(((n, c) for n, _, c, depth in rows if depth == 0), key=lambda r: r[1], reverse=True)
    self_time = sorted(((n, own) for n, own, _, _ in rows), key=lambda r: r[1], reverse=True)
    return [r for r in cumulative if r[1] >= 0.001][:top], self_time[:top]


def phases(project: Path) -> dict[str, Any]:
    result = subprocess.run(
        [PYTHON, str(Path(__file__).with_name("_lock_phases.py")), str(project)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        check=True,
        env=bench_env(),
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES),
                        help="channel sizes to measure (the targets are at 300k; growth needs 10k too)")
    args = parser.parse_args()
    if "300k" not in args.sizes:
        parser.error("--sizes must include 300k: the targets are measured there")
    header("scale: cold mlenv lock vs json.load and bare rattler.solve")

    sizes = {label: copies for label, copies in SIZES.items() if label in args.sizes}
    channels = {label: build_channel(copies) for label, copies in sizes.items()}
    root = scratch_dir("scale")
    growth = []
    for label, copies in sizes.items():
        channel = channels[label]
        project, specs = lock_project(channel, copies, root)
        commands = {"lock": cold_lock(project), "solve": bare_solve(channel, specs)}
        if label == "300k":
            commands["load"] = json_load(channel)
        samples = round_robin(args.runs, commands)
        growth.append((label, channel, project, specs, samples))

    label, channel, project, specs, samples = growth[-1]
    lock, solve, loaded = samples["lock"], samples["solve"], samples["load"]
    big = records(channel)
    t_lock, t_load, t_solve = median_seconds(lock), median_seconds(loaded), median_seconds(solve)
    m_lock, m_load, m_solve = median_rss(lock), median_rss(loaded), median_rss(solve)
    print(f"\nchannel {channel.name}: {big['linux-64']} linux-64 + {big['noarch']} noarch records")
    print(f"specs: python 3.6, {', '.join(specs)}; copied packages in the lock: {check_locked(project, specs[-2:])}")
    print_table(
        f"~{label} records, {args.runs} runs each, medians",
        ["fresh process", "wall s", "peak RSS MiB", "lock / this (time)", "lock / this (RSS)"],
        [
            ["mlenv lock (cold)", t_lock, f"{m_lock:.0f}", "1.00", "1.00"],
            ["(a) json.load repodata", t_load, f"{m_load:.0f}", f"{t_lock / t_load:.2f}", f"{m_lock / m_load:.2f}"],
            ["(b) bare rattler.solve", t_solve, f"{m_solve:.0f}", f"{t_lock / t_solve:.2f}", f"{m_lock / m_solve:.2f}"],
        ],
    )
    print(f"  target lock <= 0.3x (a) time:  {t_lock / t_load:.2f}x  {verdict(t_lock / t_load, 0.3)}")
    print(f"  target lock <= 1.5x (b) time:  {t_lock / t_solve:.2f}x  {verdict(t_lock / t_solve, 1.5)}")
    print(f"  target lock <= 1.2x (b) RSS:   {m_lock / m_solve:.2f}x  {verdict(m_lock / m_solve, 1.2)}")

    rows = []
    for label, channel, project, specs, samples in growth:
        t_lock, t_solve = median_seconds(samples["lock"]), median_seconds(samples["solve"])
        rows.append([
            f"~{label}", records(channel)["linux-64"], f"{', '.join(specs[-2:])}: {check_locked(project, specs[-2:])}",
            t_lock, f"{median_rss(samples['lock']):.0f}", t_solve, t_lock - t_solve,
        ])
    print_table(
        "growth: cold mlenv lock and bare solve by channel size, medians",
        ["channel", "linux-64 records", "copied specs: locked?", "lock s", "lock RSS MiB", "bare solve s", "lock - solve s"],
        rows,
    )
    if "10k" in sizes:
        record_ratio = rows[-1][1] / rows[0][1]
        time_ratio = rows[-1][3] / rows[0][3]
        solve_ratio = rows[-1][5] / rows[0][5]
        print(f"  records 300k/10k: {record_ratio:.1f}x; lock time: {time_ratio:.2f}x; bare solve time: {solve_ratio:.2f}x")
        print(f"  target sub-linear growth: {'met' if time_ratio < record_ratio else 'MISSED'}")

    project = growth[-1][2]
    print_table(
        "where a cold lock's time goes at ~300k (sequential phases in one fresh process)",
        ["phase", "s"],
        [[name, value] for name, value in phases(project).items()],
    )
    cumulative, self_time = import_costs(project)
    print_table(
        "imports of one cold lock (python -X importtime); conda_lock.lockfile is imported "
        "in a thread while rattler solves",
        ["top-level module", "cumulative s"],
        cumulative,
    )
    print_table("heaviest single modules (self time)", ["module", "self s"], self_time)
    footer()


if __name__ == "__main__":
    run(main)
