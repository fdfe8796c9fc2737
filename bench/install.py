"""`mlenv install` of a realistic environment: cold cache, warm cache, no-op and a one-package
change, against a plain copy of the same files (`cp -a`, `cp -al`) as the limit.

The environment (bench/_fixtures.install_channel): 36 generated conda packages (35 in each
lock) shaped like a small scientific stack: 4,856 files, 165 MB of payload (74 MB of
.tar.bz2), 38 text files with the prefix placeholder; plus two wheels (210 modules) from a
loopback index. Every run writes a new directory; nothing is deleted until the end: on this
machine's journal-less ext4 every inode allocation skips the inodes freed in the last minute,
and `cp -a` right after an `rm -r` of the previous copy took 1.4-3.3 s instead of 0.2 s. Dirty
pages are flushed before every run. Measured, fresh processes, round-robin:
- cold: a new, empty MLENV_HOME; warm: a MLENV_HOME whose cache holds everything;
- no-op: the same prefix again; one package changed: pandas 2.1.4 <-> 2.1.3 (342 files) in turn;
- `cp -a`/`cp -al` of an installed prefix; `mlenv --version`; `tar -xjf` of every archive, one
  per core (what a cold cache must at least do);
- the warm install with rattler's cache validation `full` (what mlenv asks for), `fast` and
  `skip`: the child swaps `ValidationMode.full` before the CLI runs and reports what was asked.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Callable

from bench._fixtures import SP, install_channel, install_wheels
from bench._harness import (MLENV, PYTHON, Command, CommandFailed, Figure, Options, Sample, bench_env, benchmark,
                            measure, print_samples, round_robin, scratch_dir, versus, write_project)
from fixtures.pip_index import build_index, serve

SPECS_A = ["numpy", "scipy", "pandas ==2.1.4", "pyyaml", "jinja2", "requests", "tqdm", "packaging", "pip"]
SPECS_B = [s.replace("2.1.4", "2.1.3") for s in SPECS_A]
TAR = """\
import os, subprocess, sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
dest, archives = Path(sys.argv[1]), sys.argv[2:]
def extract(archive):
    target = dest / Path(archive).name
    target.mkdir(parents=True)
    subprocess.run(["tar", "-xjf", archive, "-C", str(target)], check=True)
with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
    list(pool.map(extract, sorted(archives, key=os.path.getsize, reverse=True)))
"""
# The CLI with rattler's cache validation swapped: hatch_mlenv asks for ValidationMode.full().
VALIDATION = """\
import atexit, sys
from rattler.package_cache import PackageCacheLayer, ValidationMode
from hatch_mlenv.cli import main
ValidationMode.full = getattr(ValidationMode, sys.argv[1])
asked, layer = [], PackageCacheLayer.with_validation_mode
PackageCacheLayer.with_validation_mode = lambda self, mode: (asked.append(repr(mode)), layer(self, mode))[1]
atexit.register(lambda: print("validation asked:", asked, file=sys.stderr))
main(args=sys.argv[2:], prog_name="mlenv")
"""


def tree_stats(root: Path) -> dict[str, int]:
    stats = {"files": 0, "bytes": 0, "linked": 0}
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            st = path.stat()
            stats["files"], stats["bytes"], stats["linked"] = (stats["files"] + 1, stats["bytes"] + st.st_size,
                                                               stats["linked"] + (st.st_nlink > 1))
    return stats


@benchmark
def install(options: Options) -> list[Figure]:
    channel, info = install_channel()
    root = scratch_dir("install")
    runs_dir = root / "runs"  # one new directory per run; all removed at the very end
    warm = bench_env(MLENV_HOME=str(root / "home-warm"))
    prefixes = {name: root / name / "env" for name in ("noop", "incremental", "reference")}

    def run_dir(name: str, n: int) -> Path:
        return runs_dir / f"{name}-{n}"

    def cold(n: int) -> dict[str, str]:
        return bench_env(MLENV_HOME=str(run_dir("home-cold", n)))

    with serve(build_index(root / "index", install_wheels())) as index_url:
        projects = {}
        for key, specs in (("A", SPECS_A), ("B", SPECS_B)):
            projects[key] = write_project(root / f"project-{key}", channel, specs, python="3.11", mlenv=(
                f'pip = ["mlenv-bench-viz==1.0.0"]\npip-index-url = "{index_url}"\n'))
            measure([MLENV, "lock", "--project", projects[key]])
        a, b = str(projects["A"]), str(projects["B"])

        def install_into(project: str, prefix: Path) -> list[str]:
            return [MLENV, "install", "--project", project, "--prefix", str(prefix)]

        for project, prefix in ((b, "incremental"), (a, "reference"), (a, "noop"), (a, "incremental")):
            measure(install_into(project, prefixes[prefix]), env=warm)  # the warm cache, the reused prefixes
        reference = prefixes["reference"]
        digest_a = json.loads((reference / ".mlenv-state.json").read_text())["digest"]
        noop_state = prefixes["noop"] / ".mlenv-state.json"
        noop_mtime = noop_state.stat().st_mtime_ns

        def installed(name: str) -> Callable[[Sample, int], None]:
            def check(_: Sample, n: int) -> None:
                prefix = run_dir(name, n)
                state = json.loads((prefix / ".mlenv-state.json").read_text())
                if state["digest"] != digest_a or not (prefix / SP / "mlenv_bench_viz-1.0.0.dist-info").is_dir():
                    raise CommandFailed(f"{prefix}: not the lock of project A")
            return check

        def changed_to(version: str) -> Callable[[Sample, int], None]:
            def check(_: Sample, n: int) -> None:
                if not list((prefixes["incremental"] / "conda-meta").glob(f"pandas-{version}-*.json")):
                    raise CommandFailed(f"incremental: pandas {version} is not installed")
            return check

        def untouched(_: Sample, n: int) -> None:
            if noop_state.stat().st_mtime_ns != noop_mtime:
                raise CommandFailed("the no-op install rewrote the prefix")

        def validation(mode: str) -> Command:
            def check(sample: Sample, n: int) -> None:
                installed(f"valid-{mode}")(sample, n)
                if mode not in sample.stderr.rpartition("validation asked:")[2].lower():
                    raise CommandFailed(f"validation {mode}: mlenv asked rattler for {sample.stderr[-300:]!r}")
            return Command(lambda n: [PYTHON, "-c", VALIDATION, mode, *install_into(a, run_dir(f"valid-{mode}", n))[1:]],
                           warm, check=check)

        stats = tree_stats(reference)  # before `cp -al` of it adds links
        archives = sorted(str(p) for p in channel.glob("*/*.tar.bz2") if "pandas-2.1.3" not in p.name)
        commands = {
            "mlenv install, cold cache": Command(lambda n: install_into(a, run_dir("cold", n)), cold,
                                                 check=installed("cold")),
            "mlenv install, warm cache": Command(lambda n: install_into(a, run_dir("warm", n)), warm,
                                                 check=installed("warm")),
            "cp -a (limit)": Command(lambda n: ["cp", "-a", str(reference), str(run_dir("cp-a", n))]),
            "cp -al (limit)": Command(lambda n: ["cp", "-al", str(reference), str(run_dir("cp-al", n))]),
            "mlenv install, 1 package changed (A->B)": Command(install_into(b, prefixes["incremental"]), warm,
                                                               check=changed_to("2.1.3")),
            "mlenv install, 1 package changed (B->A)": Command(install_into(a, prefixes["incremental"]), warm,
                                                               check=changed_to("2.1.4")),
            "mlenv install, no-op": Command(install_into(a, prefixes["noop"]), warm, check=untouched),
            "mlenv --version": Command([MLENV, "--version"]),
            "reference: tar -xjf every archive": Command(lambda n: [PYTHON, "-c", TAR, str(run_dir("tar", n)),
                                                                    *archives]),
            **{f"warm install, rattler validation {mode}": validation(mode) for mode in ("full", "fast", "skip")},
        }
        samples = round_robin(options.n(5, quick=1), commands, sync=True)
    cache = tree_stats(root / "home-warm" / "cache" / "pkgs")
    start = time.perf_counter()
    shutil.rmtree(root)  # all of it: the next run then starts with nothing to delete
    in_lock = [p for k, p in info["packages"].items() if k != "pandas-2.1.3"]
    print(f"  lock A: {len(in_lock)} conda packages, {sum(p['files'] for p in in_lock)} files, "
          f"{sum(p['bytes'] for p in in_lock) / 1e6:.0f} MB ({sum(p['archive'] for p in in_lock) / 1e6:.0f} MB of "
          f".tar.bz2), + 2 wheels; installed prefix: {stats['files']} files ({stats['linked']} hard-linked from the "
          f"cache), {stats['bytes'] / 1e6:.0f} MB; warm cache {cache['bytes'] / 1e6:.0f} MB; "
          f"removed in {time.perf_counter() - start:.1f} s")
    print_samples("install", samples, "cp -al (limit)")
    changed = [s for label, ss in samples.items() if "1 package changed" in label for s in ss]
    return [versus("cold `mlenv install` vs `cp -a` of the prefix", samples["mlenv install, cold cache"],
                   samples["cp -a (limit)"]),
            versus("cold `mlenv install` vs `tar -xjf` of every archive", samples["mlenv install, cold cache"],
                   samples["reference: tar -xjf every archive"]),
            versus("warm `mlenv install` vs `cp -al` of the prefix", samples["mlenv install, warm cache"],
                   samples["cp -al (limit)"], 2.0),
            versus("one package changed vs `cp -al`", statistics.median(s.seconds for s in changed),
                   samples["cp -al (limit)"]),
            versus("no-op `mlenv install` vs `mlenv --version`", samples["mlenv install, no-op"],
                   samples["mlenv --version"]),
            versus("warm install, rattler validation full vs fast", samples["warm install, rattler validation full"],
                   samples["warm install, rattler validation fast"])]
