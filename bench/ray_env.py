"""Ray: the first task on a fresh node with {"mlenv": ref} vs Ray's own {"uv": ...} and {"pip": ...}, and
the per-task overhead on a warm node.

Targets (issue 25): first use <= 0.5x Ray's `uv` field; warm overhead <= 20 ms a task.

One environment, offline: python (the host interpreter, fixtures/host_python.py) and a conda
package, and on the pip side the cluster's own `ray` with its requirements (as installed here,
written back into wheels: fixtures/installed_wheels.py) plus BENCH_WHEELS synthetic wheels of
pure-Python modules (~WHEEL_KIB KiB each), all served by a loopback index; registered in a
local registry file. Ray's `uv` and `pip` fields get the very same pins (`ray==...` and its
requirements are already satisfied there: Ray builds their virtualenv from the cluster's own
environment), and the index through their install options (`--index-url`), so nothing leaves
the machine.

Each first-task sample starts a fresh one-node cluster (one CPU, its own temp dir, loopback,
fresh MLENV_HOME, uv cache and pip cache) and times, in the driver, `ray.get` of one task with
that runtime_env (creation of the environment, a worker started in it, the task). A sample with
no runtime_env is the floor. Variants run round-robin. This benchmark measures inside a Ray
driver rather than as a command through `_harness.measure`: the thing timed is a Ray task.

Warm: on one cluster (two CPUs, so that an idle worker of each runtime_env is kept), after a
first task of each, 60 tasks one after another with the `mlenv` field and with none
(alternating), each `ray.get` timed; the overhead is the difference of the medians (Ray reuses a
started worker per runtime_env, so a task pays the field only when a new worker starts: also
reported, as the first task on a second worker).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import ray
from ray._private import ray_constants
from ray.cluster_utils import Cluster

from bench._harness import PYTHON, Figure, Options, benchmark, print_table, progress, scratch_dir
from fixtures.host_python import host_python_minor, make_host_python_channel
from fixtures.installed_wheels import installed_closure_wheels
from fixtures.pip_index import Wheel, build_index, serve
from hatch_mlenv.lockfile import read_lock

FIRST_LIMIT = 0.5
WARM_LIMIT_MS = 20.0
BENCH_WHEELS = 12
WHEEL_KIB = 1500


def _wheels(root: Path) -> list:
    wheels = []
    for index in range(BENCH_WHEELS):
        name = f"bench-pkg-{index:02d}"
        stem = name.replace("-", "_")
        body = "".join(f"def f{n}(x):\n    return x * {n} + {index}\n\n" for n in range(WHEEL_KIB * 1024 // 40 // 8))
        modules = {f"{stem}/__init__.py": '__version__ = "1.0"\n', **{f"{stem}/m{k}.py": body for k in range(8)}}
        wheels.append(Wheel(name, "1.0", modules=modules))
    return wheels


def _prepare(root: Path):  # -> (registry, field, pins, index_url, stop)
    channel = make_host_python_channel(root / "channel")
    real = installed_closure_wheels("ray", root / "pypi" / "files")
    index = build_index(root / "pypi", [*real, *_wheels(root)])
    server = serve(index)
    url = server.__enter__()
    registry = f"sqlite:///{root / 'registry.sqlite3'}"
    project = root / "project"
    project.mkdir(exist_ok=True)
    pins_in = [f"ray=={ray.__version__}", *(f"bench-pkg-{i:02d}==1.0" for i in range(BENCH_WHEELS))]
    (project / "pyproject.toml").write_text(
        f'[project]\nname = "bench"\nversion = "0.1"\n[tool.mlenv]\nchannels = ["{channel}"]\n'
        f'platforms = ["linux-64"]\npython = "{host_python_minor()}"\nconda = ["mlenv-greeting"]\n'
        f"pip = {json.dumps(pins_in)}\npip-index-url = \"{url}\"\n")
    env = {**os.environ, "MLENV_HOME": str(root / "laptop"), "MLENV_REGISTRY": registry}
    for args in (["lock", "--project", str(project)], ["register", "--project", str(project)]):
        subprocess.run([PYTHON, "-m", "hatch_mlenv", *args], env=env, check=True, stdout=subprocess.DEVNULL)
    lock = read_lock(project / "conda-lock.yml")
    pins = sorted(f"{p.name}=={p.version}" for p in lock.packages if p.manager == "pip")
    field = {"ref": "bench:1", "registry": registry, "digest": f"sha256:{lock.digest()}"}
    return field, pins, url, lambda: server.__exit__(None, None, None)


class _Cluster:
    """A one-node cluster with its own temp dir and homes, on loopback."""

    def __init__(self, root: Path, cpus: int = 1) -> None:
        self.temp = Path(tempfile.mkdtemp(prefix="rayb", dir="/tmp"))
        os.environ["RAY_TMPDIR"] = str(self.temp)
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        ray_constants.ENABLE_RAY_CLUSTER = False
        home = root / f"node-{time.monotonic_ns()}"
        variables = {"RAY_RUNTIME_ENV_PLUGINS": json.dumps([{"class": "hatch_mlenv.ray.MlenvPlugin"}]),
                     "MLENV_HOME": str(home), "UV_CACHE_DIR": str(home / "uv-cache"),
                     "PIP_CACHE_DIR": str(home / "pip-cache"), "PIP_NO_INPUT": "1"}
        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": cpus, "node_ip_address": "127.0.0.1", "include_dashboard": False,
            "object_store_memory": 80 * 1024 * 1024, "env_vars": variables})
        ray.init(address=self.cluster.address, _node_ip_address="127.0.0.1", include_dashboard=False,
                 log_to_driver=False)

    def close(self) -> None:
        ray.shutdown()
        self.cluster.shutdown()
        shutil.rmtree(self.temp, ignore_errors=True)


def _task():
    @ray.remote(num_cpus=0.01)
    def task() -> str:
        import sys

        return sys.prefix

    return task


def _first(root: Path, runtime_env: dict | None) -> float:
    cluster = _Cluster(root)
    try:
        task = _task()
        start = time.perf_counter()
        ray.get(task.options(runtime_env=runtime_env).remote() if runtime_env else task.remote(), timeout=1800)
        return time.perf_counter() - start
    finally:
        cluster.close()


@benchmark
def ray_env(options: Options) -> list[Figure]:
    runs, tasks = options.n(3, quick=1), options.n(60, quick=20)
    root = scratch_dir("ray")
    # bytecode cached as on a user's machine (see _harness.bench_env): the nodes inherit this environment
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    field, pins, url, stop = _prepare(root)
    try:
        variants = {
            "no runtime_env": None,
            '{"mlenv": ref}': {"mlenv": field},
            '{"uv": pins}': {"uv": {"packages": pins, "uv_pip_install_options": ["--index-url", url]}},
            '{"pip": pins}': {"pip": {"packages": pins, "pip_install_options": ["--index-url", url]}},
        }
        samples: dict[str, list[float]] = {name: [] for name in variants}
        for run in range(runs):
            for name, runtime_env in variants.items():
                progress(f"ray_env: first task, {name}, run {run + 1} of {runs}")
                samples[name].append(_first(root, runtime_env))
        first = {name: statistics.median(values) for name, values in samples.items()}
        print_table(f"first task on a fresh node, median of {runs} (ray {ray.__version__}, {len(pins)} pins)",
                    ("runtime_env", "seconds", "runs", "x uv"),
                    [(name, first[name], " ".join(f"{v:.1f}" for v in samples[name]),
                      first[name] / first['{"uv": pins}']) for name in variants])

        # two CPUs: Ray keeps an idle worker per CPU, so the worker of each runtime_env stays (on one
        # CPU, alternating runtime_envs would replace the worker at every task)
        cluster = _Cluster(root, cpus=2)
        try:
            task = _task()
            mlenv = task.options(runtime_env={"mlenv": field})
            ray.get([mlenv.remote(), task.remote()], timeout=1800)  # installed, a worker started for each
            times: dict[str, list[float]] = {"none": [], "mlenv": []}
            for _ in range(tasks):
                for name, handle in (("none", task), ("mlenv", mlenv)):
                    start = time.perf_counter()
                    ray.get(handle.remote())
                    times[name].append(time.perf_counter() - start)
            warm = {name: statistics.median(values) * 1000 for name, values in times.items()}
            # a second worker in the environment: what a task pays when Ray starts a new worker for it
            start = time.perf_counter()
            ray.get(task.options(runtime_env={"mlenv": field, "env_vars": {"SECOND": "1"}}).remote())
            second = time.perf_counter() - start
        finally:
            cluster.close()
        overhead = warm["mlenv"] - warm["none"]
        print_table(f"warm node, {tasks} tasks each, alternating", ("runtime_env", "median ms"),
                    [("no runtime_env", warm["none"]), ('{"mlenv": ref}', warm["mlenv"]), ("overhead", overhead)])
        print(f"  a new worker in the installed environment (another runtime_env of the same digest): {second:.2f} s")
    finally:
        stop()
    return [Figure('first task on a fresh node: {"mlenv": ref} vs Ray\'s {"uv": pins}',
                   first['{"mlenv": ref}'] / first['{"uv": pins}'], "x", FIRST_LIMIT, first['{"mlenv": ref}'],
                   first['{"uv": pins}']),
            Figure("warm task: overhead of the mlenv field", overhead, "ms", WARM_LIMIT_MS)]
