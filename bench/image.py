"""`mlenv image build` (docker builder): a first build and a reuse, against a plain COPY build of
the same prefix.

The environment (bench/_fixtures.image_channel): python 3.11, python_abi, libopenblas, numpy,
pytorch-cpu and a data package, generated: 403 files, 134 MiB installed (68 MiB of .tar.bz2),
with prefix-placeholder files rewritten for /opt/env. Every image is built on the bench's own
base (mlenv-bench-base:busybox, imported, no pulls) and tagged mlenv-bench-*; every build that
must not find an earlier one starts with all of them removed, and one that prints
`Using cache` aborts the benchmark. Measured, fresh processes, round-robin:
- first build, cold cache (a fresh MLENV_HOME) and warm cache (the cache holds every package);
- the install alone: `mlenv image context -o DIR`, cold and warm;
- the limit: docker-py's `api.build` (what mlenv calls) of `FROM base` + `COPY env/ /opt/env/`
  over a pre-staged copy of the same prefix; for reference the same with the `docker build`
  CLI, and mlenv's own Dockerfile with its labels through the SDK;
- reuse (the image exists) vs `python -c pass`; "our own time" is its wall minus python
  start-up minus its imports (-X importtime).
Targets: first build <= 1.5x (plain COPY build + install); reuse under 1 s of our own time.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
from typing import Callable

from bench._fixtures import BASE_IMAGE, docker_engine, image_channel
from bench._harness import (MLENV, PYTHON, Command, CommandFailed, Figure, Options, Sample, bench_env, benchmark,
                            measure, median_seconds, print_samples, round_robin, rmtree, scratch_dir,
                            top_level_imports, write_project)

REPOSITORY = "mlenv-bench-image"
TAGS = {"sdk": "mlenv-bench-plain:sdk", "cli": "mlenv-bench-plain:cli", "mlenv": "mlenv-bench-mlenvfile:sdk"}
PREFIX = "/opt/env"
SPECS = ["numpy", "pytorch-cpu", "mlenv-data"]
# The limit, in a fresh process: the SDK call mlenv makes (client from the environment, ping,
# api.build of a directory, the decoded stream printed).
SDK_BUILD = """\
import json, sys
import docker
context, tag, labels = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
client = docker.from_env(timeout=300)
client.ping()
for chunk in client.api.build(path=context, tag=tag, rm=True, forcerm=True, pull=False, decode=True,
                              labels=labels or None):
    print(chunk.get("stream", ""), end="")
    if "error" in chunk:
        sys.exit("build failed: " + chunk["error"])
"""


def expect(word: str) -> Callable[[Sample, int], None]:
    def check(sample: Sample, _: int = 0) -> None:
        if not sample.stdout.strip().endswith(word):
            raise CommandFailed(f"expected {word!r}, got {sample.stdout.strip()[-200:]!r}")
        if "Using cache" in sample.stdout + sample.stderr:
            raise CommandFailed("a build was served by Docker's layer cache: the measurement would mean nothing")
    return check


@benchmark
def image(options: Options) -> list[Figure]:
    engine = docker_engine()
    engine.tags.extend(TAGS.values())
    root, channel = scratch_dir("image"), image_channel()
    project = write_project(root / "project", channel, SPECS, python="3.11")
    with (project / "pyproject.toml").open("a") as handle:
        handle.write(f'\n[tool.mlenv.docker]\nbase-image = "{BASE_IMAGE}"\nrepository = "{REPOSITORY}"\n')
    P, warm_home, cold_home = str(project), root / "home-warm", root / "home-cold"
    warm, cold = bench_env(MLENV_HOME=str(warm_home)), bench_env(MLENV_HOME=str(cold_home))
    measure([MLENV, "lock", "--project", P], env=warm)
    engine.tags.append(measure([MLENV, "image", "tag", "--project", P], env=warm).stdout.split()[0])
    staged, plain, out = root / "staged", root / "plain", root / "context-out"
    measure([MLENV, "image", "context", "-o", staged, "--project", P], env=warm)  # also fills the warm cache
    shutil.copytree(staged / "env", plain / "env", symlinks=True, copy_function=os.link)
    (plain / "Dockerfile").write_text(f"FROM {BASE_IMAGE}\nCOPY env/ {PREFIX}/\n")
    (plain / ".dockerignore").write_text("")
    build = [MLENV, "image", "build", "--project", P]
    context = [MLENV, "image", "context", "-o", str(out), "--project", P]
    labels = json.dumps({"io.mlenv.base-image-digest": engine.base_id})
    got = round_robin(options.n(5, quick=1), {
        "first build, cold cache": Command(build, cold, before=lambda: (engine.clean(), rmtree(cold_home)()),
                                           check=expect("built")),
        "first build, warm cache": Command(build, warm, before=engine.clean, check=expect("built")),
        "install alone (image context), cold cache": Command(context, cold, before=rmtree(cold_home, out)),
        "install alone (image context), warm cache": Command(context, warm, before=rmtree(out)),
        "limit: plain COPY, SDK api.build": Command([PYTHON, "-c", SDK_BUILD, str(plain), TAGS["sdk"], "{}"], warm,
                                                    before=engine.clean, check=expect("")),
        "ref: plain COPY, docker build CLI": Command(["docker", "build", "-t", TAGS["cli"], str(plain)],
                                                     bench_env(DOCKER_BUILDKIT="0"), before=engine.clean,
                                                     check=expect("")),
        "ref: mlenv's Dockerfile + labels, SDK": Command([PYTHON, "-c", SDK_BUILD, str(staged), TAGS["mlenv"], labels],
                                                         warm, before=engine.clean, check=expect("")),
    }, warmup=0)
    print_samples("image builds", got, "limit: plain COPY, SDK api.build")
    engine.clean()
    expect("built")(measure(build, env=warm))
    again = round_robin(options.n(10, quick=3), {
        "mlenv image build (reuse)": Command(build, warm, check=expect("reused")),
        "mlenv --version": Command([MLENV, "--version"], warm),
        "python -c pass": Command([PYTHON, "-c", "pass"], warm),
        "importtime: reuse": Command([PYTHON, "-X", "importtime", *build], warm, check=expect("reused")),
        "importtime: pass": Command([PYTHON, "-X", "importtime", "-c", "pass"], warm),
    })
    print_samples("reuse", {k: v for k, v in again.items() if not k.startswith("importtime")}, "python -c pass")
    reference = engine.tags[-1]
    shown = engine.client.containers.run(reference, ["cat", f"{PREFIX}/bin/python3.11-config"], remove=True)
    print(f"  image {reference}: a container sees the rewritten prefix: {f'prefix={PREFIX}' in shown.decode()}")

    limit = median_seconds(got["limit: plain COPY, SDK api.build"])
    imports = statistics.median(sum(top_level_imports(s.stderr).values()) for s in again["importtime: reuse"]) - \
        statistics.median(sum(top_level_imports(s.stderr).values()) for s in again["importtime: pass"])
    reuse = median_seconds(again["mlenv image build (reuse)"])
    own = reuse - median_seconds(again["python -c pass"]) - imports
    print(f"  reuse: our own time = wall {reuse:.3f} - python start-up - imports {imports:.3f} = {own:.3f} s")
    return [*(Figure(f"first `mlenv image build`, {k} cache, vs plain COPY build + install alone",
                     median_seconds(got[f"first build, {k} cache"]) / (limit + median_seconds(
                         got[f"install alone (image context), {k} cache"])), "x", 1.5,
                     median_seconds(got[f"first build, {k} cache"]),
                     limit + median_seconds(got[f"install alone (image context), {k} cache"])) for k in ("cold", "warm")),
            Figure("`mlenv image build` reuse: our own time", own, "s", 1.0)]
