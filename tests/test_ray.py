"""Registered environments on a real Ray cluster: runtime_env={"mlenv": REF}.

A two-node cluster on this machine (ray.cluster_utils.Cluster, one CPU each, its own
temp dir, loopback only, stopped at the end), each node with its own fresh
MLENV_HOME and nothing but the test OCI registry to read environments from. The
environments' python is the host interpreter (fixtures/host_python.py); their pip
part locks the cluster's own `ray` 2.x and its requirements, served by a loopback
index from wheels written back from this interpreter's installed files
(fixtures/installed_wheels.py): the very Ray the cluster runs, offline.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import ray

from tests.conftest import write_project

  # the [test] extra installs it: a missing Ray fails these tests, never skips them

PLUGINS = json.dumps([{"class": "hatch_mlenv.ray.MlenvPlugin"}])
SECRET = "node-only-s3cr3t"


@dataclass(frozen=True)
class World:
    registry: str  # oci://127.0.0.1:PORT/NAMESPACE
    credentials: dict[str, str]
    digests: dict[str, str]  # "train:1" -> hex digest


def _mlenv(*args: str, env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "hatch_mlenv", *args], env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, timeout=600)
    assert result.returncode == 0, f"mlenv {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, oci_registry):  # noqa: ANN001 -> Iterator[World]
    """The team's registry: train:1 (mlenv-greeting 1.0, label prod), train:2 (2.0), and environments that
    cannot run Ray work, all registered from a laptop's MLENV_HOME."""
    from fixtures.host_python import host_python_minor, make_host_python_channel
    from fixtures.installed_wheels import installed_closure_wheels
    from fixtures.pip_index import Wheel, build_index, serve
    from hatch_mlenv.lockfile import read_lock

    root = tmp_path_factory.mktemp("ray-world")
    channel = make_host_python_channel(root / "channel")
    wheels = installed_closure_wheels("ray", root / "pypi" / "files")
    index = build_index(root / "pypi", [*wheels, Wheel("ray", "2.9.0")])  # 2.9.0: another Ray, never installed
    registry = oci_registry.url(f"ray{uuid.uuid4().hex[:8]}")
    credentials = {"MLENV_REGISTRY_USERNAME": oci_registry.user, "MLENV_REGISTRY_PASSWORD": oci_registry.password}
    laptop = {**os.environ, **credentials, "MLENV_HOME": str(root / "laptop"), "MLENV_REGISTRY": registry}
    ray_pin = f"ray=={ray.__version__}"
    minor = host_python_minor()
    digests = {}
    with serve(index) as url:
        def register(name: str, body: str, *labels: str) -> None:
            project = write_project(root / "projects" / name, f"""
                channels = ["{channel}"]
                platforms = ["linux-64"]
                pip-index-url = "{url}"
                {body}
            """, name=name)
            _mlenv("lock", "--project", str(project), env=laptop)
            out = _mlenv("register", "--project", str(project), *(f"--label={label}" for label in labels), env=laptop)
            version = re.match(r"\S+:(\d+) ", out.stdout).group(1)
            digests[f"{name}:{version}"] = read_lock(project / "conda-lock.yml").digest()

        variables = 'variables = { GREETING_STAGE = "train", API_TOKEN = { secret = true } }'
        register("train", f'python = "{minor}"\nconda = ["mlenv-greeting ==1.0"]\npip = ["{ray_pin}"]\n{variables}',
                 "prod")
        register("train", f'python = "{minor}"\nconda = ["mlenv-greeting ==2.0"]\npip = ["{ray_pin}"]\n{variables}')
        register("noray", f'python = "{minor}"\nconda = ["mlenv-greeting"]')
        register("nopython", 'conda = ["mlenv-hello"]')
        register("oldray", f'python = "{minor}"\npip = ["ray==2.9.0"]')
        register("gpu", f'python = "{minor}"\npip = ["{ray_pin}"]\n[tool.mlenv.system-requirements]\ncuda = "12.0"')
        yield World(registry, credentials, digests)


@dataclass(frozen=True)
class Node:
    resource: str
    home: Path

    def prefix(self, digest: str) -> Path:
        return self.home / "ray" / digest[:12]


@dataclass(frozen=True)
class RunningCluster:
    address: str
    logs: Path
    nodes: tuple[Node, ...]


@pytest.fixture(scope="module")
def cluster(world: World, tmp_path_factory: pytest.TempPathFactory):  # -> Iterator[RunningCluster]
    """Two nodes, one CPU each: node0 has the secret API_TOKEN in its environment, node1 does not and
    keeps no unused environment in Ray's cache (its size is 0 GB), so Ray's GC calls delete_uri."""
    from ray.cluster_utils import Cluster

    homes = tmp_path_factory.mktemp("ray-nodes")
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # Ray's unix sockets need a short path
    base = {"RAY_RUNTIME_ENV_PLUGINS": PLUGINS, "MLENV_REGISTRY": world.registry, **world.credentials,
            "CONDA_OVERRIDE_CUDA": ""}
    specific = [{"API_TOKEN": SECRET}, {"RAY_RUNTIME_ENV_MLENV_CACHE_SIZE_GB": "0"}]
    nodes = tuple(Node(f"node{i}", homes / f"node{i}") for i in range(2))
    patch = pytest.MonkeyPatch()
    patch.setenv("RAY_TMPDIR", str(temp))  # where Cluster writes its address file, and every node's session
    # Ray's addresses on loopback only, as Ray runs on a laptop (its own switch for macOS and Windows):
    # in the processes the nodes start, and in this driver, which has read the setting already
    patch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    from ray._private import ray_constants

    patch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
    started = None
    try:
        for node, extra in zip(nodes, specific):
            arguments = {"num_cpus": 1, "resources": {node.resource: 100}, "node_ip_address": "127.0.0.1",
                         "object_store_memory": 80 * 1024 * 1024, "include_dashboard": False,
                         "env_vars": {**base, **extra, "MLENV_HOME": str(node.home)}}
            if started is None:
                started = Cluster(initialize_head=True, head_node_args=arguments)
            else:
                started.add_node(**arguments)
        started.wait_for_nodes()
        yield RunningCluster(started.address, temp / "ray" / "session_latest" / "logs", nodes)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if started is not None:
            started.shutdown()
        patch.undo()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def job(cluster: RunningCluster):  # -> Iterator[RunningCluster]
    """A driver connected to the cluster for one test: one Ray job, ended (its workers gone) after it."""
    ray.init(address=cluster.address, _node_ip_address="127.0.0.1", include_dashboard=False)
    try:
        yield cluster
    finally:
        ray.shutdown()


def probe() -> dict:
    import sys

    import mlenv_greeting
    import ray as worker_ray

    return {"prefix": sys.prefix, "greeting": mlenv_greeting.__version__, "ray": worker_ray.__file__,
            "stage": os.environ.get("GREETING_STAGE"), "token": os.environ.get("API_TOKEN"),
            "conda_prefix": os.environ.get("CONDA_PREFIX"), "path0": os.environ["PATH"].split(os.pathsep)[0],
            "marker": os.environ.get("MARKER")}


remote_probe = ray.remote(num_cpus=0.01)(probe)
# Workers run the environment's python, which has no pytest and no tests package: the task functions
# travel by value, not as a reference to this module.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _setup_lines(cluster: RunningCluster, job_id: str) -> list[str]:
    lines = []
    for path in glob.glob(str(cluster.logs / f"runtime_env_setup-{job_id}*.log")):
        lines += Path(path).read_text().splitlines()
    return lines


def _installs(lines: list[str], ref: str, prefix: Path) -> int:
    """How many times the setup log says `ref` was installed into `prefix` (not found installed)."""
    return sum(1 for line in lines if f"mlenv: installed {ref} into {prefix} in " in line)


def test_two_versions_side_by_side_installed_once_per_node(job: RunningCluster, world: World) -> None:
    node0, node1 = job.nodes
    one, two = world.digests["train:1"], world.digests["train:2"]

    # two versions in one job, on one node and across nodes; .options() and @ray.remote
    @ray.remote(num_cpus=0.01, runtime_env={"mlenv": "train:2"}, resources={"node0": 1})
    def in_two() -> dict:
        return probe()

    first = ray.get([
        remote_probe.options(runtime_env={"mlenv": "train:1"}, resources={"node0": 1}).remote(),
        in_two.remote(),
        remote_probe.options(runtime_env={"mlenv": "train@prod"}, resources={"node1": 1}).remote(),
    ])
    assert [(r["greeting"], Path(r["prefix"])) for r in first] == [
        ("1.0", node0.prefix(one)), ("2.0", node0.prefix(two)), ("1.0", node1.prefix(one))]
    for result in first:
        prefix = result["prefix"]
        assert result["ray"].startswith(f"{prefix}/lib/"), result  # the environment's ray, the cluster's version
        assert result["conda_prefix"] == prefix and result["path0"] == f"{prefix}/bin"
        assert result["stage"] == "train"
    assert [r["token"] for r in first] == [SECRET, SECRET, None]  # the node's own secret, never the runtime_env's

    # many tasks of one version at once, as separate runtime_envs of one digest: one install per node
    many = [remote_probe.options(runtime_env={"mlenv": "train:1", "env_vars": {"MARKER": str(i)}},
                                 resources={f"node{i % 2}": 1}).remote() for i in range(8)]
    results = ray.get(many)
    assert [r["marker"] for r in results] == [str(i) for i in range(8)]
    assert {(r["greeting"], r["prefix"]) for r in results} == {("1.0", str(node0.prefix(one))),
                                                               ("1.0", str(node1.prefix(one)))}
    lines = _setup_lines(job, ray.get_runtime_context().get_job_id())
    counted = {(ref, node.resource): _installs(lines, f"{ref} (sha256:{digest[:12]})", node.prefix(digest))
               for ref, digest in (("train:1", one), ("train:2", two)) for node in job.nodes}
    assert counted == {("train:1", "node0"): 1, ("train:1", "node1"): 1, ("train:2", "node0"): 1,
                       ("train:2", "node1"): 0}, "\n".join(line for line in lines if "mlenv:" in line)


def test_later_jobs_reuse_and_ray_gc_deletes(cluster: RunningCluster, world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The previous job is over: node0 keeps its environments for later jobs; node1 (a 0 GB cache) had
    Ray's GC delete them (delete_uri). A job-level runtime_env with a label, pinned on the driver by
    RAY_RUNTIME_ENV_HOOK, runs the version the label named then, on every node."""
    node0, node1 = cluster.nodes
    one = world.digests["train:1"]
    deadline = time.monotonic() + 60
    while node1.prefix(one).exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not node1.prefix(one).exists(), "Ray's GC did not delete node1's environment"
    assert (node0.prefix(one) / "bin" / "python").exists()

    monkeypatch.setenv("RAY_RUNTIME_ENV_HOOK", "hatch_mlenv.ray.pin_runtime_env")
    monkeypatch.setenv("MLENV_REGISTRY", world.registry)
    for name, value in world.credentials.items():
        monkeypatch.setenv(name, value)
    ray.init(address=cluster.address, _node_ip_address="127.0.0.1", include_dashboard=False,
             runtime_env={"mlenv": "train@prod"})
    try:
        job_id = ray.get_runtime_context().get_job_id()
        pinned = ray.get_runtime_context().runtime_env["mlenv"]
        assert pinned == {"ref": "train:1", "registry": world.registry, "digest": f"sha256:{one}"}
        results = ray.get([remote_probe.options(resources={f"node{i}": 1}).remote() for i in range(2)])
        assert [(r["greeting"], r["prefix"]) for r in results] == [("1.0", str(node0.prefix(one))),
                                                                   ("1.0", str(node1.prefix(one)))]
        lines = _setup_lines(cluster, job_id)
        ref = f"train:1 (sha256:{one[:12]})"
        assert (_installs(lines, ref, node0.prefix(one)), _installs(lines, ref, node1.prefix(one))) == (0, 1)
    finally:
        ray.shutdown()


def test_every_failure_names_the_reference(job: RunningCluster, world: World, tmp_path: Path) -> None:
    from fixtures import oci_registry as registries

    with pytest.MonkeyPatch.context() as patch:  # a registry whose password the nodes do not have
        patch.setattr(registries, "PASSWORD", "another-password")
        with registries.run_registry(tmp_path / "other") as other:
            cases = [  # (runtime_env["mlenv"], what the error says)
                ("nosuch:1", ["nosuch:1", "nosuch"]),
                ("train:9", ["train:9"]),
                ("train@nolabel", ["train@nolabel", "nolabel"]),
                ({"ref": "train:1", "registry": "oci://127.0.0.1:9/nowhere"}, ["train:1", "127.0.0.1:9"]),
                ({"ref": "train:1", "registry": other.url("team")}, ["train:1", other.host, "401"]),
                ("oldray:1", [f"environment oldray:1 locks ray 2.9.0; this cluster runs {ray.__version__}"]),
                ("noray:1", ["noray:1", "locks no ray", f"ray=={ray.__version__}"]),
                ("nopython:1", ["nopython:1", "locks no python"]),
                ("gpu:1", ["gpu:1", "needs __cuda >=12.0", "no CUDA driver"]),
                ({"ref": "train:1", "variables": {"API_TOKEN": "x"}},
                 ["unknown key 'variables'", "secrets from each node's own environment"]),
            ]
            refs = [remote_probe.options(runtime_env={"mlenv": field}, resources={"node0": 1}).remote()
                    for field, _ in cases]
            cases.append(("train:1 with pip", ["train:1", "cannot be combined with 'pip'"]))
            refs.append(remote_probe.options(runtime_env={"mlenv": "train:1", "pip": ["six"]},
                                             resources={"node0": 1}).remote())
            for (field, needles), ref in zip(cases, refs):
                with pytest.raises(ray.exceptions.RuntimeEnvSetupError) as raised:
                    ray.get(ref, timeout=300)
                message = str(raised.value)
                for needle in needles:
                    assert needle in message, (field, needle, message[-3000:])


def test_ray_env_prints_the_pinned_field(world: World, tmp_path: Path) -> None:
    env = {**os.environ, **world.credentials, "MLENV_HOME": str(tmp_path / "home"), "MLENV_REGISTRY": world.registry}
    printed = _mlenv("ray-env", "train@prod", env=env, cwd=tmp_path)
    assert json.loads(printed.stdout) == {"mlenv": {"ref": "train:1", "registry": world.registry,
                                                    "digest": f"sha256:{world.digests['train:1']}"}}
    assert "API_TOKEN" not in printed.stdout
    local = {**env, "MLENV_REGISTRY": ""}
    missing = subprocess.run([sys.executable, "-m", "hatch_mlenv", "ray-env", "train:1"], env=local, cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
    assert missing.returncode == 1 and missing.stderr.startswith("error: train:1: no environment named 'train'")


# -- _compat: what the plugin relies on in Ray's developer API --------------------------------

def test_ray_still_loads_plugins_as_the_plugin_expects() -> None:
    import inspect

    from ray._private.runtime_env import plugin as ray_plugin
    from ray._private.runtime_env.constants import RAY_RUNTIME_ENV_PLUGINS_ENV_VAR
    from ray._private.runtime_env.context import RuntimeEnvContext

    from hatch_mlenv import _compat
    from hatch_mlenv.ray import MlenvPlugin

    checked = f"(checked against ray {_compat.CHECKED['ray']}; now {ray.__version__})"
    assert RAY_RUNTIME_ENV_PLUGINS_ENV_VAR == "RAY_RUNTIME_ENV_PLUGINS", checked
    assert issubclass(MlenvPlugin, ray_plugin.RuntimeEnvPlugin), checked
    for method in _compat.RAY_PLUGIN_METHODS:
        assert callable(getattr(ray_plugin.RuntimeEnvPlugin, method, None)), (method, checked)
    assert inspect.iscoroutinefunction(ray_plugin.RuntimeEnvPlugin.create), checked
    assert list(inspect.signature(ray_plugin.RuntimeEnvPlugin.create).parameters) == [
        "self", "uri", "runtime_env", "context", "logger"], checked
    assert list(inspect.signature(ray_plugin.RuntimeEnvPlugin.modify_context).parameters) == [
        "self", "uris", "runtime_env", "context", "logger"], checked
    assert list(inspect.signature(ray_plugin.RuntimeEnvPlugin.delete_uri).parameters) == ["self", "uri", "logger"]
    context = RuntimeEnvContext()
    for field in _compat.RAY_CONTEXT_FIELDS:
        assert hasattr(context, field), (field, checked)
    # the agent's loader: the classes named in the variable, refused unless they subclass the base
    manager = ray_plugin.RuntimeEnvPluginManager()
    manager.load_plugins([{"class": "hatch_mlenv.ray.MlenvPlugin"}])
    assert isinstance(manager.plugins["mlenv"].class_instance, MlenvPlugin)
    # the order of calls for one runtime_env: validate, get_uris, create (URI not cached), modify_context
    source = inspect.getsource(ray_plugin.create_for_plugin_if_needed)
    calls = [source.index(f"plugin.{name}(") for name in ("validate", "get_uris", "create", "modify_context")]
    assert calls == sorted(calls), checked


def test_a_malformed_field_is_refused_before_any_registry_is_read() -> None:
    from hatch_mlenv.errors import RuntimeEnvError
    from hatch_mlenv.ray import parse_field

    assert parse_field("train@prod").ref == "train@prod"
    pinned = parse_field({"ref": "train:1", "digest": "sha256:" + "a" * 64})
    assert pinned.digest == "a" * 64 and pinned.as_field()["digest"] == "sha256:" + "a" * 64
    for bad, said in ((3, "not int"), ({"registry": "oci://x/y"}, "needs 'ref'"), ("a:b:c", "malformed reference"),
                      ({"ref": "t:1", "digest": "md5:1"}, "sha256:<64 hex digits>"), ("./proj", "malformed")):
        with pytest.raises(RuntimeEnvError, match=re.escape(said)):
            parse_field(bad)
