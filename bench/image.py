"""Image build: first `mlenv image build` vs reuse vs a plain COPY build of the same prefix.

A first build is compared with a rebuild of the same lock (reuse), with a plain
`COPY` build of the same pre-staged prefix (the limit) and with the install alone.

The environment is realistic in size: a channel generated here (deterministically,
with fixtures.conda_channel) holds python, python_abi, libopenblas, numpy,
pytorch-cpu and a data package, ~130 MB installed in ~400 files, with
prefix-placeholder text files that the installer rewrites for /opt/env. It is
built once into bench/results/channels/image-big/ (~10 s) and reused.

Measured, each a fresh process (bench/_harness.py), round-robin, medians:
  - `mlenv image build` of a lock whose image does not exist, with a cold
    package cache (fresh MLENV_HOME) and with a warm one (MLENV_HOME whose cache
    holds every package); the image is removed before each run;
  - `mlenv image build` again (reuse), against `python -c pass` and `mlenv --version`;
  - the limit: the Docker SDK's `client.api.build` (what mlenv calls) of a plain
    `FROM base` + `COPY env/ /opt/env/` Dockerfile over a pre-staged copy of
    the same prefix (the `env/` of `mlenv image context`), in a fresh process;
  - the install alone: `mlenv image context -o DIR`, cold and warm cache;
  - for reference: the same plain build with the `docker build` CLI; mlenv's own
    generated Dockerfile (COPY + ENV + LABEL + the build's label) over the
    pre-staged context through the SDK; the warm install done with rattler's
    cache validation `full` (what mlenv uses), `fast` and `skip`.
Targets: reuse under 1 s of our own time (wall minus interpreter start-up and
imports); first build <= 1.5x (plain COPY build + install).

Every image it builds is tagged mlenv-bench-*, built on its own base image
(mlenv-bench-base:busybox, imported here, no pulls) so no other build's layer
cache can serve it, and removed before each run that must not find it and at
the end. Nothing is asserted: figures are printed; a command that fails aborts.

Usage: python bench/image.py [--runs N] [--reuse-runs N]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import time
from pathlib import Path
from typing import Callable, Sequence

from _harness import (
    FAILED,
    PYTHON,
    RESULTS_DIR,
    Command,
    CommandFailed,
    Sample,
    bench_env,
    binary,
    console_script,
    dist_info,
    footer,
    header,
    measure,
    median_rss,
    median_seconds,
    medians,
    print_table,
    round_robin,
    run,
    scratch_dir,
    text,
    top_level_imports,
    verdict,
    write_project,
)


BASE_IMAGE = "mlenv-bench-base:busybox"
REPOSITORY = "mlenv-bench-image"  # mlenv's tag: mlenv-bench-image:<digest12>
PLAIN_SDK_TAG = "mlenv-bench-plain:sdk"
PLAIN_CLI_TAG = "mlenv-bench-plain:cli"
MLENV_FILE_TAG = "mlenv-bench-mlenvfile:sdk"
PREFIX = "/opt/env"
SPECS = ["numpy", "pytorch-cpu", "mlenv-data"]
CHANNEL_VERSION = 2  # bump when the generated packages change (2: the harness's content)

# The limit, in a fresh process: the SDK call mlenv's _stream_build makes (client
# from the environment, ping, api.build of a directory, decoded stream), with the
# time at which each output line arrived, printed as JSON.
SDK_BUILD = """\
import json, sys, time
import docker
context, tag, labels = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
client = docker.from_env(timeout=300)
client.ping()
start, lines, image_id = time.perf_counter(), [], None
for chunk in client.api.build(path=context, tag=tag, rm=True, forcerm=True, pull=False, decode=True,
                              labels=labels or None):
    for line in chunk.get("stream", "").splitlines():
        if line.strip():
            lines.append((time.perf_counter() - start, line))
    if "aux" in chunk and "ID" in chunk["aux"]:
        image_id = chunk["aux"]["ID"]
    if "error" in chunk:
        sys.exit("build failed: " + chunk["error"])
if image_id is None:
    sys.exit("build failed: no image")
print(json.dumps({"lines": lines, "end": time.perf_counter() - start}))
"""

# A first build (warm cache), phase by phase in one fresh process: the calls
# hatch_mlenv.image.build() makes, in its order, with the build output timestamped.
FIRST_PHASES = """\
import json, sys, tempfile, time
from pathlib import Path
phases, mark = {}, time.perf_counter()
def lap(name):
    global mark
    now = time.perf_counter()
    phases[name] = now - mark
    mark = now
import hatch_mlenv.cli as cli
from hatch_mlenv import image as images
import docker
from hatch_mlenv.environment import Environment
from hatch_mlenv.lockfile import read_lock
from hatch_mlenv.registry import open_registry, select_url
from hatch_mlenv.spec import load_spec
from rich.console import Console
lap("imports: hatch_mlenv.cli, .image, docker, rich")
spec = load_spec(Path(sys.argv[1]))
env = Environment(spec, read_lock(spec.lockfile))
version = open_registry(select_url(None, spec.registry)).find_digest(env.name, env.digest)
console = Console(stderr=True, highlight=False, soft_wrap=True)
lap("spec, lock, registry lookup")
client = images.docker_client()
plan = images.plan_for(env, version)
assert not images.image_exists(client, plan.reference), plan.reference
base = images.base_image_digest(client, plan.base_image)
lap("docker client + ping, image_exists, base digest")
scratch = tempfile.TemporaryDirectory(prefix="mlenv-image-")
context = Path(scratch.name) / "context"
images.write_context(env, context, strategy="host", version=version, base_digest=base)
lap("write_context: install the lock into env/")
start, lines = time.perf_counter(), []
def echo(line):
    lines.append((time.perf_counter() - start, line))
    console.print(line, markup=False)
image_id = images._stream_build(client, context, plan.reference, echo)
end = time.perf_counter() - start
lap("docker build (SDK)")
scratch.cleanup()
lap("remove the build context")
images._tag_all(client.images.get(image_id), plan)
lap("get + tag")
print(json.dumps({"phases": phases, "lines": lines, "end": end}))
"""

# The warm install with a chosen cache validation mode: install_conda() of
# hatch_mlenv.install, with only the ValidationMode changed.
INSTALL_MODE = """\
import asyncio, sys
from pathlib import Path
import rattler
from rattler.package_cache import PackageCacheLayer, ValidationMode
from hatch_mlenv._compat import settle_rattler_at_exit
from hatch_mlenv.install.conda import conda_records
settle_rattler_at_exit()
mode, lockfile, packages, prefix = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
records = conda_records(lockfile, "linux-64")
cache = rattler.PackageCache.from_layers([PackageCacheLayer(packages).with_validation_mode(getattr(ValidationMode, mode)())])
asyncio.run(rattler.install(records, target_prefix=prefix, package_cache=cache, platform=rattler.Subdir("linux-64"),
                            alternative_target_prefix="/opt/env", show_progress=False, execute_link_scripts=False))
"""

# The reuse path of `mlenv image build`, phase by phase in one fresh process: the
# library calls the command makes, in the same order (imports first). These two
# phase scripts use library internals; when those change, the phases are
# reported as unavailable and the rest of the benchmark still runs.
REUSE_PHASES = """\
import json, sys, time
from pathlib import Path
phases, mark = {}, time.perf_counter()
def lap(name):
    global mark
    now = time.perf_counter()
    phases[name] = now - mark
    mark = now
import hatch_mlenv.cli
lap("import hatch_mlenv.cli (click)")
from hatch_mlenv import image as images
from hatch_mlenv.environment import Environment
from hatch_mlenv.lockfile import read_lock
from hatch_mlenv.registry import open_registry, select_url
from hatch_mlenv.spec import load_spec
lap("import hatch_mlenv.image, .environment, .lockfile, .registry, .spec")
spec = load_spec(Path(sys.argv[1]))
env = Environment(spec, read_lock(spec.lockfile))
lap("load spec + read lock")
version = open_registry(select_url(None, spec.registry)).find_digest(env.name, env.digest)
lap("registered version (local sqlite registry)")
from rich.console import Console
console = Console(stderr=True, highlight=False, soft_wrap=True)
echo = lambda line: console.print(line, markup=False)
lap("step echo (import rich)")
import docker
lap("import docker (requests, urllib3)")
client = images.docker_client()
lap("docker client + ping")
plan = images.plan_for(env, version)
exists = images.image_exists(client, plan.reference)
lap("image_exists: GET /images/<ref>/json")
image = client.images.get(plan.reference)
images._tag_all(image, plan)
lap("images.get + tag (GET + POST per tag)")
result = images.build(env, version=version, echo=echo)
lap("whole images.build() again, imports done")
assert exists and result.status == "reused", result
print(json.dumps({"phases": phases}))
"""


# -- the channel ------------------------------------------------------------------------------


def big_packages() -> list:  # -> list[CondaPackage]
    from fixtures.conda_channel import PREFIX_PLACEHOLDER, CondaPackage

    sp = "lib/python3.11/site-packages"
    python: dict[str, bytes | str] = {
        "bin/python3.11": binary(5 << 20, "python", "exe"),
        "lib/libpython3.11.so.1.0": binary(7 << 20, "python", "lib"),
        # prefix-placeholder text files: copied and rewritten for /opt/env, never hardlinked
        "bin/python3.11-config": f"#!/bin/sh\nprefix={PREFIX_PLACEHOLDER}\necho \"-I$prefix/include/python3.11\"\n",
        "lib/pkgconfig/python-3.11.pc": f"prefix={PREFIX_PLACEHOLDER}\nlibdir=${{prefix}}/lib\nName: Python\n",
        "lib/python3.11/_sysconfigdata__linux_x86_64-linux-gnu.py":
            f"build_time_vars = {{'prefix': '{PREFIX_PLACEHOLDER}', 'LIBDIR': '{PREFIX_PLACEHOLDER}/lib'}}\n"
            + text(200_000, "python", "sysconfig").decode(),
        f"{sp}/README.txt": "site-packages\n",
    }
    for i in range(180):
        python[f"lib/python3.11/stdmod_{i:03d}.py"] = text(20_000 + 500 * i, "python", "py", i)
    for i in range(40):
        python[f"lib/python3.11/lib-dynload/_ext{i:02d}.cpython-311-x86_64-linux-gnu.so"] = binary(150_000, "dyn", i)

    openblas: dict[str, bytes | str] = {
        "lib/libopenblas.so.0": binary(30 << 20, "openblas"),
        "lib/pkgconfig/openblas.pc": f"prefix={PREFIX_PLACEHOLDER}\nlibdir=${{prefix}}/lib\nName: openblas\n",
    }
    for i in range(10):
        openblas[f"include/openblas_{i}.h"] = text(30_000, "openblas", "h", i)

    numpy: dict[str, bytes | str] = {
        f"{sp}/numpy/core/_multiarray_umath.cpython-311-x86_64-linux-gnu.so": binary(12 << 20, "numpy", "umath"),
        **dist_info(sp, "numpy", "1.26.4"),
    }
    for i in range(8):
        numpy[f"{sp}/numpy/_ext{i}.cpython-311-x86_64-linux-gnu.so"] = binary(1 << 20, "numpy", "so", i)
    for i in range(60):
        numpy[f"{sp}/numpy/mod_{i:02d}.py"] = text(20_000, "numpy", "py", i)

    torch: dict[str, bytes | str] = {
        f"{sp}/torch/lib/libtorch_cpu.so": binary(40 << 20, "torch", "cpu"),
        f"{sp}/torch/lib/libc10.so": binary(2 << 20, "torch", "c10"),
        **dist_info(sp, "pytorch-cpu", "2.1.0"),
    }
    for i in range(80):
        torch[f"{sp}/torch/mod_{i:02d}.py"] = text(25_000, "torch", "py", i)

    data = {f"share/mlenv-data/part-{i}.csv": text(1 << 20, "data", i) for i in range(10)}

    return [
        CondaPackage("python", "3.11.7", build="h0_0", depends=("python_abi 3.11.* *_cp311",), files=python,
                     license="Python-2.0"),
        CondaPackage("python_abi", "3.11", build="2_cp311", constrains=("python 3.11.*",), license="BSD-3-Clause"),
        CondaPackage("libopenblas", "0.3.25", build="h0_0", files=openblas, license="BSD-3-Clause"),
        CondaPackage("numpy", "1.26.4", build="py311h0_0",
                     depends=("libopenblas >=0.3.25", "python >=3.11,<3.12", "python_abi 3.11.* *_cp311"),
                     files=numpy, license="BSD-3-Clause"),
        CondaPackage("pytorch-cpu", "2.1.0", build="py311h0_0",
                     depends=("numpy >=1.23", "python >=3.11,<3.12", "python_abi 3.11.* *_cp311"),
                     files=torch, license="BSD-3-Clause"),
        CondaPackage("mlenv-data", "0.1", noarch="generic", files=data, license="CC0-1.0"),
    ]


def build_big_channel() -> Path:
    """The generated channel; built once (bz2 of ~130 MB takes a while), then reused."""
    channel = RESULTS_DIR / "channels" / "image-big"
    stamp = channel / "stamp.json"
    if stamp.is_file() and json.loads(stamp.read_text()).get("version") == CHANNEL_VERSION:
        return channel
    from fixtures.conda_channel import build_channel

    shutil.rmtree(channel, ignore_errors=True)
    start = time.perf_counter()
    packages = big_packages()
    build_channel(channel, packages)
    files = sum(len(p.files) for p in packages)
    installed = sum(len(c) for p in packages for c in p.files.values())
    archives = sum(f.stat().st_size for f in channel.glob("*/*.tar.bz2"))
    stamp.write_text(json.dumps({"version": CHANNEL_VERSION, "files": files, "bytes": installed, "archives": archives}))
    print(f"  built {channel.name}: {len(packages)} packages, {files} files, {installed / 2**20:.0f} MiB "
          f"({archives / 2**20:.0f} MiB of .tar.bz2) in {time.perf_counter() - start:.1f}s")
    return channel


# -- measuring ----------------------------------------------------------------------------------


def step_times(lines: Sequence[Sequence], end: float) -> dict[str, float]:
    """From timestamped build output: the context (call start to the first step) and each step."""
    starts = [(t, line) for t, line in lines if line.startswith("Step ")]
    times = {"context: tar, upload, engine unpacks": starts[0][0] if starts else end}
    for (t, line), following in zip(starts, [s[0] for s in starts[1:]] + [end]):
        instruction = re.sub(r"^Step \d+/\d+ : ", "", line).split()[0]
        if instruction == "LABEL" and "base-image-digest" in line:
            instruction = "LABEL (build API labels=)"
        times[instruction] = times.get(instruction, 0.0) + following - t
    return times


def build_steps(outcomes: Sequence[Sample]) -> dict[str, float]:
    return medians([step_times(o.json()["lines"], o.json()["end"]) for o in outcomes])


def expect(word: str) -> Callable[[Sample, int], None]:
    def check(outcome: Sample, n: int = 0) -> None:
        if not outcome.stdout.strip().endswith(word):
            raise CommandFailed(f"expected {word!r}, got {outcome.stdout.strip()[-200:]!r}")
        if "Using cache" in outcome.stderr + outcome.stdout:
            raise CommandFailed("a first build was served by Docker's layer cache: the measurement would mean nothing")
    return check


def no_cache(outcome: Sample, n: int = 0) -> None:
    if "Using cache" in outcome.stdout + outcome.stderr:
        raise CommandFailed("a build was served by Docker's layer cache: the measurement would mean nothing")


# -- the engine -----------------------------------------------------------------------------------


class Engine:
    """The bench's own images: its base (imported here) and everything built on it."""

    def __init__(self) -> None:
        import docker

        self.errors = docker.errors
        self.client = docker.from_env(timeout=300)
        self.client.ping()
        self.tags: list[str] = [PLAIN_SDK_TAG, PLAIN_CLI_TAG, MLENV_FILE_TAG]
        self.base_id = self._import_base()

    def _import_base(self) -> str:
        from fixtures.docker_base import busybox_rootfs_tar

        self._remove(BASE_IMAGE)  # a left-over base may have children cached on it
        repository, tag = BASE_IMAGE.split(":")
        self.client.api.import_image_from_data(busybox_rootfs_tar(), repository=repository, tag=tag)
        return self.client.images.get(BASE_IMAGE).id

    def _remove(self, reference: str) -> None:
        try:
            self.client.images.remove(reference, force=True)
        except self.errors.ImageNotFound:
            pass

    def clean(self) -> None:
        """Remove every image built here, and any image left on the bench base (a failed
        build's intermediates), so that no build can be served from Docker's layer cache."""
        for tag in self.tags:
            self._remove(tag)
        parents = {i["Id"]: i.get("ParentId") or None for i in self.client.api.images(all=True)}

        def depth(image_id: str | None) -> int | None:  # steps down to the bench base, None if not on it
            steps = 0
            while image_id is not None and image_id != self.base_id:
                image_id, steps = parents.get(image_id), steps + 1
            return steps if image_id == self.base_id else None

        left = [(d, i) for i in parents if i != self.base_id and (d := depth(i)) is not None]
        for _, image_id in sorted(left, reverse=True):  # children first: a child pins its parent
            self._remove(image_id)

    def close(self) -> None:
        self.clean()
        self._remove(BASE_IMAGE)

    def version(self) -> str:
        info = self.client.info()
        return f"Docker {self.client.version()['Version']}, {info['Driver']}, classic builder"


def context_stats(env_dir: Path) -> dict[str, int]:
    files = links = size = 0
    inodes: set[int] = set()
    for path in env_dir.rglob("*"):
        st = path.lstat()
        if path.is_symlink() or not path.is_file():
            continue
        files += 1
        links += st.st_nlink > 1
        if st.st_ino not in inodes:
            inodes.add(st.st_ino)
            size += st.st_size
    return {"files": files, "hardlinked": links, "bytes": size}


def rmtree(*paths: Path) -> Callable[[], None]:
    def remove() -> None:
        for path in paths:
            shutil.rmtree(path, ignore_errors=True)
    return remove


# -- main -----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each build/install command (default 5)")
    parser.add_argument("--reuse-runs", type=int, default=10, help="runs of the reuse commands (default 10)")
    args = parser.parse_args()
    header("image: first `mlenv image build` vs reuse vs a plain COPY build of the same prefix")
    started = time.perf_counter()
    engine = Engine()
    try:
        measure_all(engine, args.runs, args.reuse_runs)
    finally:
        engine.close()
    print(f"\n  total {time.perf_counter() - started:.0f} s; images removed")
    footer()


def measure_all(engine: Engine, runs: int, reuse_runs: int) -> None:
    print(f"  {engine.version()}; base image {BASE_IMAGE} ({engine.base_id[:19]}), imported here")
    channel = build_big_channel()
    stamp = json.loads((channel / "stamp.json").read_text())
    root = scratch_dir("image")
    project = write_project(root / "project", channel, SPECS, python="3.11")
    with (project / "pyproject.toml").open("a") as handle:
        handle.write(f'\n[tool.mlenv.docker]\nbase-image = "{BASE_IMAGE}"\nrepository = "{REPOSITORY}"\n')
    mlenv, P = str(console_script("mlenv")), str(project)
    warm_home, cold_home = root / "home-warm", root / "home-cold"
    warm, cold = bench_env(MLENV_HOME=str(warm_home)), bench_env(MLENV_HOME=str(cold_home))
    measure([mlenv, "lock", "--project", P], env=warm)
    reference = measure([mlenv, "image", "tag", "--project", P], env=warm).stdout.split()[0]
    engine.tags.append(reference)
    lockfile = project / "conda-lock.yml"

    # Pre-stage the prefix (this also fills the warm cache and warms the page cache).
    staged, plain = root / "staged", root / "plain"
    measure([mlenv, "image", "context", "-o", str(staged), "--project", P], env=warm)
    stats = context_stats(staged / "env")
    shutil.copytree(staged / "env", plain / "env", symlinks=True, copy_function=os.link)
    (plain / "Dockerfile").write_text(f"FROM {BASE_IMAGE}\nCOPY env/ {PREFIX}/\n")
    (plain / ".dockerignore").write_text("")
    rewritten = (staged / "env" / "bin" / "python3.11-config").read_text()
    print(f"\nchannel {channel.name}: 6 packages, {stamp['files']} payload files, {stamp['bytes'] / 2**20:.0f} MiB "
          f"installed, {stamp['archives'] / 2**20:.0f} MiB of .tar.bz2 (built once, reused)")
    print(f"lock {lockfile} -> {reference}")
    print(f"prefix (env/ of `mlenv image context`): {stats['files']} files, {stats['bytes'] / 2**20:.0f} MiB; "
          f"{stats['hardlinked']} hardlinked from the package cache (same filesystem); placeholders rewritten: "
          f"{'yes' if f'prefix={PREFIX}' in rewritten else 'NO'}")

    out_ctx, mode_out = root / "context-out", root / "install-out"
    packages = warm_home / "cache" / "pkgs"
    build = [mlenv, "image", "build", "--project", P]
    context = [mlenv, "image", "context", "-o", str(out_ctx), "--project", P]
    labels = json.dumps({"io.mlenv.base-image-digest": engine.base_id})
    heavy = {
        "first: mlenv image build, cold cache": Command(build, cold, before=lambda: (engine.clean(), rmtree(cold_home)()),
                                                     check=expect("built")),
        "first: mlenv image build, warm cache": Command(build, warm, before=engine.clean, check=expect("built")),
        "install: mlenv image context, cold cache": Command(context, cold, before=rmtree(cold_home, out_ctx)),
        "install: mlenv image context, warm cache": Command(context, warm, before=rmtree(out_ctx)),
        "limit: plain COPY, SDK api.build": Command([PYTHON, "-c", SDK_BUILD, str(plain), PLAIN_SDK_TAG, "{}"], warm,
                                                 before=engine.clean, check=no_cache),
        "ref: plain COPY, docker build CLI": Command(["docker", "build", "-t", PLAIN_CLI_TAG, str(plain)],
                                                  bench_env(DOCKER_BUILDKIT="0"), before=engine.clean, check=no_cache),
        "ref: mlenv's Dockerfile + labels=, SDK": Command([PYTHON, "-c", SDK_BUILD, str(staged), MLENV_FILE_TAG, labels],
                                                       warm, before=engine.clean, check=no_cache),
        "ref: first build phases, warm cache": Command([PYTHON, "-c", FIRST_PHASES, P], warm, before=engine.clean,
                                                    check=no_cache, optional=True),
        **{
            f"ref: warm install, rattler validation {mode}": Command(
                [PYTHON, "-c", INSTALL_MODE, mode, str(lockfile), str(packages), str(mode_out)], warm,
                before=rmtree(mode_out))
            for mode in ("full", "fast", "skip")
        },
    }
    print(f"\nmeasuring {len(heavy)} commands x {runs} runs, round-robin ...", flush=True)
    got = round_robin(runs, heavy, warmup=0)
    engine.clean()

    # In-process, for the breakdown: docker-py tars the context into a temp file before uploading.
    import docker.utils

    tar_times, tar_size = [], 0
    for _ in range(3):
        start = time.perf_counter()
        with docker.utils.tar(str(plain), exclude=[], dockerfile=(None, None)) as archive:
            tar_times.append(time.perf_counter() - start)
            tar_size = archive.seek(0, 2)

    # Reuse: the image exists.
    expect("built")(measure(build, env=warm))
    reuse = {
        "mlenv image build (reuse)": Command(build, warm, check=expect("reused")),
        "mlenv --version": Command([mlenv, "--version"], warm),
        "python -c pass": Command([PYTHON, "-c", "pass"], warm),
        "phases": Command([PYTHON, "-c", REUSE_PHASES, P], warm, optional=True),
        "importtime: reuse": Command([PYTHON, "-X", "importtime", mlenv, *build[1:]], warm, check=expect("reused")),
        "importtime: pass": Command([PYTHON, "-X", "importtime", "-c", "pass"], warm),
    }
    print(f"measuring reuse: {len(reuse)} commands x {reuse_runs} runs, round-robin, 1 warm-up round ...", flush=True)
    again = round_robin(reuse_runs, reuse, warmup=1)
    image = engine.client.images.get(reference)
    layers = len(image.attrs["RootFS"]["Layers"])
    try:
        shown = engine.client.containers.run(reference, ["cat", f"{PREFIX}/bin/python3.11-config"], remove=True)
        runs_ok = f"prefix={PREFIX}" in shown.decode()
    except Exception as exc:  # noqa: BLE001 - informational only
        runs_ok = f"could not run a container: {str(exc).splitlines()[0]}"

    report(got, again, runs, reuse_runs, tar_times, tar_size, image.attrs["Size"], layers, runs_ok)


def report(got: dict[str, list[Sample]], again: dict[str, list[Sample]], runs: int, reuse_runs: int,
           tar_times: list[float], tar_size: int, image_size: int, layers: int, runs_ok: object) -> None:
    limit = median_seconds(got["limit: plain COPY, SDK api.build"])
    install = {k: median_seconds(got[f"install: mlenv image context, {k} cache"]) for k in ("cold", "warm")}
    first = {k: median_seconds(got[f"first: mlenv image build, {k} cache"]) for k in ("cold", "warm")}
    rows = []
    for label, outcomes in got.items():
        if label.startswith("ref: first build phases"):
            continue
        seconds = [o.seconds for o in outcomes]
        rows.append([label, median_seconds(outcomes), f"{min(seconds):.2f}-{max(seconds):.2f}", f"{median_rss(outcomes):.0f}",
                     f"{median_seconds(outcomes) / limit:.2f}"])
    print_table(f"builds and installs: {runs} runs each, round-robin, medians (fresh processes)",
                ["command", "wall s", "min-max s", "peak RSS MiB", "x limit"], rows)
    print("  cold cache: a fresh MLENV_HOME (empty package cache, the channel's archives in the page cache);\n"
          "  warm cache: MLENV_HOME whose cache holds every package. Each first build starts with the image\n"
          "  and everything else built on the bench base removed (no 'Using cache' seen).")
    print_table(
        "targets",
        ["", "value", "verdict"],
        [[f"first build / (plain COPY + install), {k} cache",
          f"{first[k]:.2f} / ({limit:.2f} + {install[k]:.2f}) = {first[k] / (limit + install[k]):.2f}x",
          verdict(first[k] / (limit + install[k]), 1.5)] for k in ("cold", "warm")],
    )
    print("  (the baseline is two fresh processes, so it counts python start-up and imports twice: ~0.1 s)")

    phase_runs = got["ref: first build phases, warm cache"]
    steps = {
        "mlenv Dockerfile, SDK": build_steps(got["ref: mlenv's Dockerfile + labels=, SDK"]),
        "plain COPY, SDK": build_steps(got["limit: plain COPY, SDK api.build"]),
    }
    if phase_runs:
        phases = medians([o.json()["phases"] for o in phase_runs])
        steps = {"mlenv build (phases run)": build_steps(phase_runs), **steps}
        print_table("a warm first build, phase by phase in one fresh process (the calls image.build() makes), "
                    "medians", ["phase", "s"], [[k, v] for k, v in phases.items()] + [["sum", sum(phases.values())]])
    else:
        print(f"\n  first-build phases unavailable (library internals changed?): {FAILED.get('ref: first build phases, warm cache')}")
    names = list(dict.fromkeys(n for s in steps.values() for n in s))
    print_table("inside the docker build: from the build call to the first step, and each step, medians",
                ["part", *steps], [[n, *(f"{s[n]:.3f}" if n in s else "-" for s in steps.values())] for n in names]
                + [["total", *(f"{sum(s.values()):.3f}" for s in steps.values())]])
    print(f"  docker-py's context tar alone (in-process, temp file): {statistics.median(tar_times):.3f} s "
          f"for {tar_size / 2**20:.0f} MiB; the engine then unpacks it and hashes every file for the cache key")
    print(f"  built image: {image_size / 2**20:.0f} MiB, {layers} layers; a container sees the rewritten prefix: {runs_ok}")

    wall = median_seconds(again["mlenv image build (reuse)"])
    bare = median_seconds(again["python -c pass"])
    imports = (statistics.median(sum(top_level_imports(o.stderr).values()) for o in again["importtime: reuse"])
               - statistics.median(sum(top_level_imports(o.stderr).values()) for o in again["importtime: pass"]))
    own = wall - bare - imports
    print_table(f"reuse: {reuse_runs} runs each, round-robin after a warm-up round, medians (fresh processes)",
                ["command", "wall s", "peak RSS MiB"],
                [[k, median_seconds(v), f"{median_rss(v):.0f}"] for k, v in again.items() if k in
                 ("mlenv image build (reuse)", "mlenv --version", "python -c pass")])
    if again["phases"]:
        reuse_phases = medians([o.json()["phases"] for o in again["phases"]])
        print_table("reuse, phase by phase in one fresh process (the calls `mlenv image build` makes), medians",
                    ["phase", "s"], [[k, v] for k, v in reuse_phases.items()])
    else:
        print(f"\n  reuse phases unavailable (library internals changed?): {FAILED.get('phases')}")
    print(f"  imports beyond `python -c pass` (-X importtime, top-level cumulative): {imports:.3f} s")
    print(f"  our own time = reuse wall {wall:.3f} - python start-up {bare:.3f} - imports {imports:.3f} = {own:.3f} s")
    print(f"  target reuse < 1 s of our own time: {own:.3f} s  {'met' if own < 1 else 'MISSED'} "
          f"(wall {wall:.3f} s: {'also' if wall < 1 else 'but not'} under 1 s)")


if __name__ == "__main__":
    run(main)
