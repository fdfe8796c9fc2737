"""The oci (daemonless) image builder vs the docker builder on the same lock: cold build, rebuild
after a one-package change, reuse; and the bytes a push sends after that change.

The lock is image.py's (bench/_fixtures.image_channel) plus `mlenv-tweak` from a channel made
here in 1.0 and 1.1: the one-package change. The docker builder builds on the bench's busybox
base, the oci builder on the same root filesystem as an OCI layout directory. Cold: a fresh
MLENV_HOME, no image or layout; change: the 1.1 lock with the caches warm from 1.0; reuse: the
same command again. Baseline of the cold oci build also: `mlenv install` of the same lock into
an empty prefix with a fresh MLENV_HOME. Then `--push` of 1.0 into an empty loopback registry,
and of 1.1. Targets: oci cold <= 0.5x docker cold, <= 1.3x the install alone; oci reuse <= 0.3 s.
The cold oci build with zstd layers (`--layer-compression zstd`, not the default) is measured
beside it against the same baselines, with its image's bytes against the gzip image's.
"""

from __future__ import annotations

import re
from pathlib import Path

from bench._fixtures import BASE_IMAGE, docker_engine, image_channel
from bench._harness import (MLENV, Command, CommandFailed, Figure, Options, Sample, bench_env, benchmark, measure,
                            median_seconds, print_samples, print_table, rmtree, round_robin, scratch_dir, versus,
                            write_project)
from fixtures.conda_channel import CondaPackage, build_channel
from fixtures.docker_base import write_busybox_layout
from fixtures.oci_registry import run_registry

SPECS = ["numpy", "pytorch-cpu", "mlenv-data"]
PUSHED = re.compile(r"pushed: ([\d,]+) of ([\d,]+) bytes sent")


def project(root: Path, channels: list[Path], tweak: str, base: str, registry: str | None = None) -> Path:
    write_project(root, channels, [*SPECS, f"mlenv-tweak =={tweak}"], python="3.11")
    if base.startswith("oci:"):
        write_busybox_layout(root / "base")
    with (root / "pyproject.toml").open("a") as handle:
        handle.write(f'\n[tool.mlenv.docker]\nbase-image = "{base}"\nrepository = "mlenv-bench-oci"\n'
                     + (f'registry = "{registry}"\n' if registry else ""))
    measure([MLENV, "lock", "--project", root], env=bench_env(MLENV_HOME=str(root.parent / "lock-home")))
    return root


def expect(word: str):  # noqa: ANN201 - the first line of either builder's output says built or reused
    def check(sample: Sample, _: int = 0) -> None:
        if word not in (sample.stdout.splitlines() or [""])[0]:
            raise CommandFailed(f"expected {word!r}, got {sample.stdout!r}")
    return check


@benchmark
def oci_image(options: Options) -> list[Figure]:
    engine, root, runs = docker_engine(), scratch_dir("oci-image"), options.n(3, quick=1)
    tweaks = [CondaPackage("mlenv-tweak", v, noarch="generic", license="CC0-1.0",
                           files={"share/mlenv-tweak/VERSION": f"{v}\n" * 1000}) for v in ("1.0", "1.1")]
    channels = [image_channel(), build_channel(root / "tweak-channel", tweaks)]
    projects = {(builder, tweak): project(root / f"{builder}-{tweak}", channels, tweak, base)
                for builder, base in (("docker", BASE_IMAGE), ("oci", "oci:base:busybox")) for tweak in ("1.0", "1.1")}
    cold_home, warm_home, out_a, out_b = root / "cold-home", root / "warm-home", root / "out-1.0", root / "out-1.1"
    cold, warm = bench_env(MLENV_HOME=str(cold_home)), bench_env(MLENV_HOME=str(warm_home))

    def docker(tweak: str) -> list[str]:
        return [MLENV, "image", "build", "--project", str(projects["docker", tweak])]

    def oci(tweak: str, out: Path, *extra: str) -> list[str]:
        return [MLENV, "image", "build", "--builder", "oci", "-o", str(out), "--project", str(projects["oci", tweak]),
                *extra]

    measure(docker("1.0"), env=warm)
    measure(oci("1.0", out_a), env=warm)
    empty = root / "prefix"
    got = round_robin(runs, {
        "docker builder: cold": Command(docker("1.0"), cold, before=lambda: (engine.clean(), rmtree(cold_home)()),
                                        check=expect("built")),
        "oci builder: cold": Command(oci("1.0", root / "out-cold"), cold, before=rmtree(cold_home, root / "out-cold"),
                                     check=expect("built")),
        "oci builder, zstd layers: cold": Command(oci("1.0", root / "out-cold-zstd", "--layer-compression", "zstd"),
                                                  cold, before=rmtree(cold_home, root / "out-cold-zstd"),
                                                  check=expect("built")),
        "mlenv install into an empty prefix: cold": Command(
            [MLENV, "install", "--project", str(projects["oci", "1.0"]), "--prefix", str(empty)], cold,
            before=rmtree(cold_home, empty)),
        "docker builder: one-package change": Command(docker("1.1"), warm, before=engine.clean, check=expect("built")),
        "oci builder: one-package change": Command(oci("1.1", out_b), warm, before=rmtree(out_b), check=expect("built")),
    })
    measure(docker("1.0"), env=warm)  # for reuse
    again = round_robin(max(runs, 5), {
        "docker builder: reuse": Command(docker("1.0"), warm, check=expect("reused")),
        "oci builder: reuse (-o layout holds it)": Command(oci("1.0", out_a), warm, check=expect("reused")),
        "mlenv --version": Command([MLENV, "--version"], warm),
    })
    print_samples("builds", {**got, **again}, "oci builder: cold")

    with run_registry(root / "registry", auth=False) as registry:
        sent = []
        for tweak in ("1.0", "1.1"):
            path = project(root / f"push-{tweak}", channels, tweak, "oci:base:busybox", registry.host)
            pushed = measure([MLENV, "image", "build", "--builder", "oci", "--push", "--project", path], env=warm)
            match = PUSHED.search(pushed.stdout)
            if match is None:
                raise CommandFailed(f"no push report in: {pushed.stdout}")
            sent.append([f"mlenv-tweak {tweak}", *(int(n.replace(",", "")) for n in match.groups()), pushed.seconds])
    print_table("push to a registry on loopback (oci builder)", ["image", "bytes sent", "image bytes", "wall s"], sent)
    sizes = {name: sum(p.stat().st_size for p in (root / name / "blobs" / "sha256").iterdir())
             for name in ("out-cold", "out-cold-zstd")}
    return [versus("oci builder cold vs docker builder cold", got["oci builder: cold"], got["docker builder: cold"], 0.5),
            versus("oci builder cold vs `mlenv install` into an empty prefix", got["oci builder: cold"],
                   got["mlenv install into an empty prefix: cold"], 1.3),
            versus("one-package change: oci vs docker builder", got["oci builder: one-package change"],
                   got["docker builder: one-package change"]),
            versus("oci builder cold, zstd layers, vs docker builder cold", got["oci builder, zstd layers: cold"],
                   got["docker builder: cold"]),
            versus("oci builder cold, zstd layers, vs `mlenv install` into an empty prefix",
                   got["oci builder, zstd layers: cold"], got["mlenv install into an empty prefix: cold"], 1.3),
            Figure("image bytes, zstd layers, of the gzip image's", 100 * sizes["out-cold-zstd"] / sizes["out-cold"], "%"),
            Figure("oci builder reuse", median_seconds(again["oci builder: reuse (-o layout holds it)"]), "s", 0.3),
            Figure("bytes pushed after a one-package change, of the image", 100 * sent[1][1] / sent[1][2], "%")]
