"""The oci image builder vs the docker builder on the same lock: cold build, rebuild after a
one-package change, reuse; and the bytes a push sends after that change, as a fraction of the image.

The lock is bench/image.py's realistic one (python, numpy, pytorch-cpu, openblas, a data package:
~130 MB installed, its generated channel reused from bench/results/channels/image-big/) plus a
small package, `mlenv-tweak`, from a channel made here in two versions: the one-package change is
1.0 -> 1.1. The docker builder builds on bench/image.py's imported busybox base; the oci builder on
the same root filesystem as an OCI layout directory (`oci:base:busybox`).

Measured, each a fresh process (`_harness.py`), round-robin, medians:
  - cold: `mlenv image build` with an empty package cache (fresh MLENV_HOME); the docker builder's
    image is removed first, the oci builder's output layout too;
  - one-package change: the same command for the lock with mlenv-tweak 1.1, with the cache warm
    from building the 1.0 lock (the oci builder also keeps its compressed layers there);
  - reuse: the same command again, the image (or the layout) already there.
Then, against Debian's docker-registry on loopback: `--push` of the 1.0 image into an empty
registry, then of the 1.1 image: the bytes each sends, as the oci builder reports them.
Targets: oci cold <= 0.5x the docker builder's cold build; oci reuse <= 0.3 s.

Usage: python bench/oci_image.py [--runs N]
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import time
from pathlib import Path

from _harness import (CommandFailed, Command, Sample, bench_env, console_script, footer, header, measure, median_seconds,
                      print_table, round_robin, run, scratch_dir, verdict, write_project)
from image import BASE_IMAGE, Engine, build_big_channel, rmtree

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # fixtures/

SPECS = ["numpy", "pytorch-cpu", "mlenv-data"]
PUSHED = re.compile(r"pushed: ([\d,]+) of ([\d,]+) bytes sent")


def tweak_channel(root: Path) -> Path:
    from fixtures.conda_channel import CondaPackage, build_channel

    packages = [CondaPackage("mlenv-tweak", version, noarch="generic", license="CC0-1.0",
                             files={"share/mlenv-tweak/VERSION": f"{version}\n" * 1000})
                for version in ("1.0", "1.1")]
    return build_channel(root / "tweak-channel", packages)


def project(root: Path, channels: list[Path], tweak: str, base: str, registry: str | None = None) -> Path:
    """bench/image.py's environment plus mlenv-tweak `tweak`, from both channels, on `base`."""
    write_project(root, channels[0], [*SPECS, f"mlenv-tweak =={tweak}"], python="3.11")
    pyproject = root / "pyproject.toml"
    listed = ", ".join(f'"{c}"' for c in channels)
    text = pyproject.read_text().replace(f'channels = ["{channels[0]}"]', f"channels = [{listed}]")
    docker = f'\n[tool.mlenv.docker]\nbase-image = "{base}"\nrepository = "mlenv-bench-oci"\n'
    pyproject.write_text(text + docker + (f'registry = "{registry}"\n' if registry else ""))
    return root


def expect(word: str):  # noqa: ANN201 - the first line of either builder's output says built or reused
    def check(outcome: Sample, _n: int = 0) -> None:
        if word not in (outcome.stdout.splitlines() or [""])[0]:
            raise CommandFailed(f"expected {word!r}, got {outcome.stdout!r}")
    return check


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each command (default 3)")
    args = parser.parse_args()
    header("oci image builder vs docker builder: cold, one-package change, reuse; bytes pushed")
    started = time.perf_counter()
    engine = Engine()
    try:
        measure_builders(engine, args.runs)
    finally:
        engine.close()
    print(f"\n  total {time.perf_counter() - started:.0f} s; images removed")
    footer()


def measure_builders(engine: Engine, runs: int) -> None:
    from fixtures.docker_base import write_busybox_layout

    print(f"  {engine.version()}")
    root = scratch_dir("oci-image")
    channels = [build_big_channel(), tweak_channel(root)]
    mlenv = str(console_script("mlenv"))
    projects = {}
    for builder, base in (("docker", BASE_IMAGE), ("oci", "oci:base:busybox")):
        for tweak in ("1.0", "1.1"):
            path = project(root / f"{builder}-{tweak}", channels, tweak, base)
            if builder == "oci":
                write_busybox_layout(path / "base")
            projects[builder, tweak] = path
            measure([mlenv, "lock", "--project", str(path)], env=bench_env(MLENV_HOME=str(root / "lock-home")))
    cold_home, warm_home = root / "cold-home", root / "warm-home"
    cold, warm = bench_env(MLENV_HOME=str(cold_home)), bench_env(MLENV_HOME=str(warm_home))
    out_a, out_b = root / "out-1.0", root / "out-1.1"

    def docker(tweak: str) -> list[str]:
        return [mlenv, "image", "build", "--project", str(projects["docker", tweak])]

    def oci(tweak: str, out: Path) -> list[str]:
        return [mlenv, "image", "build", "--builder", "oci", "-o", str(out), "--project", str(projects["oci", tweak])]

    # warm caches: both 1.0 images built once with warm_home (docker's kept for reuse)
    measure(docker("1.0"), env=warm)
    measure(oci("1.0", out_a), env=warm)
    steps = {
        "docker builder: cold": dict(argv=docker("1.0"), env=cold, before=lambda: (engine.clean(), rmtree(cold_home)()),
                                     check=expect("built")),
        "oci builder: cold": dict(argv=oci("1.0", root / "out-cold"), env=cold,
                                  before=rmtree(cold_home, root / "out-cold"), check=expect("built")),
        "docker builder: one-package change": dict(argv=docker("1.1"), env=warm, before=engine.clean,
                                                   check=expect("built")),
        "oci builder: one-package change": dict(argv=oci("1.1", out_b), env=warm, before=rmtree(out_b),
                                                check=expect("built")),
    }
    print(f"\nmeasuring {len(steps)} commands x {runs} runs, round-robin ...", flush=True)
    got = round_robin(runs, {k: Command(**v) for k, v in steps.items()})
    measure(docker("1.0"), env=warm)  # for reuse
    reuse = {
        "docker builder: reuse": Command(docker("1.0"), warm, check=expect("reused")),
        "oci builder: reuse (-o layout holds it)": Command(oci("1.0", out_a), warm, check=expect("reused")),
        "mlenv --version": Command([mlenv, "--version"], warm),
    }
    again = round_robin(max(runs, 5), reuse, warmup=1)
    size = sum(f.stat().st_size for f in (out_a / "blobs" / "sha256").iterdir())
    rows = [[label, median_seconds(outcomes), f"{min(o.seconds for o in outcomes):.2f}-"
             f"{max(o.seconds for o in outcomes):.2f}"] for label, outcomes in {**got, **again}.items()]
    print_table(f"builds: medians of {runs} (reuse: {max(runs, 5)}) fresh processes", ["command", "wall s", "min-max s"],
                rows)
    ratio = {k: median_seconds(got[f"oci builder: {k}"]) / median_seconds(got[f"docker builder: {k}"]) for k in ("cold", "one-package change")}
    oci_reuse = median_seconds(again["oci builder: reuse (-o layout holds it)"])
    print_table("targets", ["", "value", "verdict"], [
        ["oci cold / docker cold", f"{ratio['cold']:.2f}x", verdict(ratio["cold"], 0.5)],
        ["oci one-package change / docker", f"{ratio['one-package change']:.2f}x", "(no target)"],
        ["oci reuse", f"{oci_reuse:.3f} s", "met (<= 0.3 s)" if oci_reuse <= 0.3 else "MISSED (> 0.3 s)"],
    ])
    print(f"  oci image (layout blobs): {size / 2**20:.0f} MiB compressed; layers: "
          f"{len(list((out_a / 'blobs' / 'sha256').iterdir())) - 2}")
    push(root, channels, mlenv)


def push(root: Path, channels: list[Path], mlenv: str) -> None:
    from fixtures.docker_base import write_busybox_layout
    from fixtures.oci_registry import run_registry

    with run_registry(root / "registry", auth=False) as registry:
        sent = []
        for tweak in ("1.0", "1.1"):
            path = project(root / f"push-{tweak}", channels, tweak, "oci:base:busybox", registry.host)
            write_busybox_layout(path / "base")
            env = bench_env(MLENV_HOME=str(root / "warm-home"))
            measure([mlenv, "lock", "--project", str(path)], env=env)
            outcome = measure([mlenv, "image", "build", "--builder", "oci", "--push", "--project", str(path)], env=env)
            match = PUSHED.search(outcome.stdout)
            if match is None:
                raise SystemExit(f"no push report in: {outcome.stdout}")
            pushed, total = (int(n.replace(",", "")) for n in match.groups())
            sent.append((tweak, pushed, total, outcome.seconds))
        shutil.rmtree(root / "registry" / "data", ignore_errors=True)
    print_table("push to a registry on loopback (oci builder)", ["image", "bytes sent", "image bytes", "fraction sent", "wall s"],
                [[f"mlenv-tweak {t}" + (" (empty registry)" if t == "1.0" else " (one-package change)"),
                  f"{p:,}", f"{n:,}", f"{p / n:.4%}", w] for t, p, n, w in sent])


if __name__ == "__main__":
    run(main)
