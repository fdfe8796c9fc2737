"""`mlenv tree` and `mlenv why`: the dependency graph of a lock, read from the lock alone, on
conda-lock's own lockfiles (numpy's, robostack's) and on a lock with pip packages that depend
on conda ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fixtures.conda_channel import CondaPackage, _numpy, _python, _python_module, build_channel
from fixtures.pip_index import Wheel, build_index, real_wheel, serve
from hatch_mlenv.lockfile import read_lock
from tests.conftest import LOCK_SAMPLES, assert_clean_error, mlenv, write_project

NUMPY_SAMPLE = LOCK_SAMPLES / "numpy-conda-lock.yml"
ROBOSTACK_SAMPLE = LOCK_SAMPLES / "robostack-turtlesim-conda-lock.yml"
NODE_KEYS = {"name", "version", "build", "manager", "requested", "constraint", "repeated", "truncated"}


def walk(nodes: list[dict], kind: str = "dependencies"):  # -> Iterator[tuple[dict | None, dict]]
    stack = [(None, node) for node in nodes]
    while stack:
        parent, node = stack.pop()
        yield parent, node
        stack.extend((node, child) for child in node[kind])


def edges(lockfile: Path, platform: str) -> dict[str, dict[str, str]]:
    return {p.name: p.dependencies for p in read_lock(lockfile).for_platform(platform)}


def test_tree_of_a_conda_lock_sample(shared_data: Path) -> None:
    report = json.loads(mlenv("tree", str(NUMPY_SAMPLE), "--platform", "linux-64", "--json", check=True).stdout)
    assert set(report) == {"name", "digest", "platform", "packages", "requested", "unmatched", "depth", "invert", "roots"}
    assert report["platform"] == "linux-64" and report["packages"] == 254
    assert report["requested"] == [] and report["unmatched"] == []  # a lockfile carries no definition
    locked = edges(NUMPY_SAMPLE, "linux-64")
    depended_on = {name for deps in locked.values() for name in deps}
    # without a definition the roots are the packages nothing depends on
    roots = [node["name"] for node in report["roots"]]
    assert roots == sorted(set(locked) - depended_on) and "pandas" in roots and "python" not in roots
    seen = set()
    for parent, node in walk(report["roots"]):
        assert set(node) == NODE_KEYS | {"dependencies"}
        if parent is not None:
            assert locked[parent["name"]][node["name"]] == node["constraint"]  # each edge is the lock's
        if node["dependencies"]:
            assert node["name"] not in seen  # expanded once; `repeated` afterwards
            seen.add(node["name"])
        assert not (node["repeated"] and node["dependencies"])
    assert {node["name"] for _, node in walk(report["roots"])} == set(locked)  # every package is in the tree

    text = mlenv("tree", str(NUMPY_SAMPLE), "--platform", "linux-64", check=True).stdout.splitlines()
    assert text[0] == "breathe 4.34.0"
    assert "├── docutils 0.19 [>=0.12]" in text
    assert any(line.endswith("libgcc-ng 12.2.0 [>=12] (*)") for line in text)


def test_depth_and_invert(shared_data: Path) -> None:
    shallow = json.loads(mlenv("tree", str(NUMPY_SAMPLE), "--platform", "linux-64", "--depth", "1", "--json",
                               check=True).stdout)
    for _, node in walk(shallow["roots"]):
        assert not any(child["dependencies"] for child in node["dependencies"])
    assert any(child["truncated"] for root in shallow["roots"] for child in root["dependencies"])

    inverted = json.loads(mlenv("tree", str(NUMPY_SAMPLE), "--platform", "linux-64", "--invert", "libgomp", "--json",
                                check=True).stdout)
    assert [n["name"] for n in inverted["roots"]] == ["libgomp"]
    locked = edges(NUMPY_SAMPLE, "linux-64")
    for parent, node in walk(inverted["roots"], "dependents"):
        assert "dependencies" not in node
        if parent is not None:
            assert parent["name"] in locked[node["name"]]  # node depends on the one below it
    text = mlenv("tree", str(NUMPY_SAMPLE), "--platform", "linux-64", "--invert", "libgomp", "--depth", "2",
                 check=True).stdout.splitlines()
    assert text[:4] == ["libgomp 12.2.0", "├── _openmp_mutex 4.5 (requires libgomp >=7.5.0)",
                        "│   └── libgcc-ng 12.2.0 (requires _openmp_mutex >=4.5) (...)",
                        "└── gcc_impl_linux-64 11.3.0 (requires libgomp >=11.3.0)"]


def test_why_lists_paths_from_the_roots(shared_data: Path) -> None:
    report = json.loads(mlenv("why", "libgomp", str(NUMPY_SAMPLE), "--platform", "linux-64", "--limit", "5",
                              "--json", check=True).stdout)
    assert set(report) == {"name", "digest", "platform", "package", "matches", "paths", "total", "complete"}
    assert [m["name"] for m in report["matches"]] == ["libgomp"]
    assert len(report["paths"]) == 5 and report["complete"] is False and report["total"] > 5
    locked = edges(NUMPY_SAMPLE, "linux-64")
    depended_on = {name for deps in locked.values() for name in deps}
    lengths = [len(path) for path in report["paths"]]
    assert lengths == sorted(lengths)
    for path in report["paths"]:
        assert path[0]["name"] not in depended_on and path[0]["constraint"] is None
        assert path[-1]["name"] == "libgomp"
        for above, below in zip(path, path[1:]):
            assert locked[above["name"]][below["name"]] == below["constraint"]
    everything = json.loads(mlenv("why", "libgomp", str(NUMPY_SAMPLE), "--platform", "linux-64", "--limit", "100000",
                                  "--json", check=True).stdout)
    assert everything["complete"] is True and len(everything["paths"]) == everything["total"] == report["total"]
    assert len({tuple(n["name"] for n in p) for p in everything["paths"]}) == everything["total"]  # all distinct

    text = mlenv("why", "libgomp", str(NUMPY_SAMPLE), "--platform", "linux-64", "--limit", "2", check=True).stdout
    lines = text.splitlines()
    assert lines[0].startswith(f"libgomp 12.2.0 (conda) is in conda-lock-samples for linux-64 through {report['total']} paths")
    assert len(lines) == 3 and all(" → " in line and "(nothing depends on it)" in line for line in lines[1:])


def test_robostack_sample(shared_data: Path) -> None:
    report = json.loads(mlenv("tree", str(ROBOSTACK_SAMPLE), "--platform", "linux-64", "--json", check=True).stdout)
    assert report["packages"] == 593
    assert [n["name"] for n in report["roots"]] == ["ros-humble-desktop"]
    assert {node["name"] for _, node in walk(report["roots"])} == set(edges(ROBOSTACK_SAMPLE, "linux-64"))
    why = json.loads(mlenv("why", "python", str(ROBOSTACK_SAMPLE), "--platform", "linux-64", "--limit", "3", "--json",
                           check=True).stdout)
    # far more paths than anyone reads: counted up to a bound, the shortest listed
    assert why["total"] is None and why["complete"] is False
    assert [[n["name"] for n in p] for p in why["paths"]][0] == ["ros-humble-desktop", "python"]
    win = json.loads(mlenv("tree", str(ROBOSTACK_SAMPLE), "--platform", "win-64", "--json", check=True).stdout)
    assert win["platform"] == "win-64" and win["packages"] == 517


def test_errors(shared_data: Path) -> None:
    assert_clean_error(mlenv("why", "nympy", str(NUMPY_SAMPLE), "--platform", "linux-64"), 1,
                       "nympy is not in the lock for linux-64; did you mean numpy?")
    assert_clean_error(mlenv("tree", str(NUMPY_SAMPLE), "--platform", "win-64"), 2,
                       "the lock has no platform 'win-64'", "linux-64, linux-aarch64")
    assert_clean_error(mlenv("tree", str(NUMPY_SAMPLE), "--invert", "nosuch", "--platform", "osx-64"), 1,
                       "nosuch is not in the lock for osx-64")


# -- a lock with pip packages -------------------------------------------------------------------

def _py(name: str, version: str, module: str) -> CondaPackage:
    return CondaPackage(name, version, noarch="python", depends=("python",),
                        files=_python_module(module, version, module, noarch=True))


@pytest.fixture(scope="module")
def pip_project(tmp_path_factory: pytest.TempPathFactory):  # -> Iterator[Path]
    """python, numpy and msgpack-python (PyPI msgpack) from conda; msgpack-numpy (a real wheel,
    needing msgpack and numpy) and mlenv-util (needing mlenv-tiny) from pip."""
    channel = build_channel(tmp_path_factory.mktemp("graph-channel"), [
        *_python("3.11.7", "linux-64"), _numpy("1.26.4", "3.11", "linux-64"), _py("msgpack-python", "0.5.6", "msgpack"),
    ])
    index = build_index(tmp_path_factory.mktemp("graph-index"), [
        real_wheel("msgpack_numpy-0.4.7.1-py2.py3-none-any.whl"),
        Wheel("mlenv-util", "1.0.0", requires=("mlenv-tiny>=0.2",)), Wheel("mlenv-tiny", "0.2.0"),
        Wheel("msgpack", "0.5.6"), Wheel("numpy", "1.26.4"),  # decoys: conda provides them
    ])
    with serve(index) as url:
        project = write_project(tmp_path_factory.mktemp("graph-project"), f"""
            channels = ["{channel}"]
            platforms = ["linux-64"]
            python = "3.11"
            conda = ["numpy", "msgpack-python"]
            pip = ["msgpack-numpy==0.4.7.1", "mlenv-util"]
            pip-index-url = "{url}"
        """)
        mlenv("lock", "--project", str(project), check=True)
        yield project


def test_pip_packages_depend_on_conda_ones(pip_project: Path) -> None:
    report = json.loads(mlenv("tree", "--project", str(pip_project), "--json", check=True).stdout)
    assert [(n["name"], n["manager"]) for n in report["requested"]] == [
        ("python", "conda"), ("numpy", "conda"), ("msgpack-python", "conda"), ("msgpack-numpy", "pip"),
        ("mlenv-util", "pip")]
    assert [n["name"] for n in report["roots"]] == ["python", "numpy", "msgpack-python", "msgpack-numpy", "mlenv-util"]
    by_name = {n["name"]: n for n in report["roots"]}
    # the wheel's Requires-Dist names PyPI msgpack and numpy: conda's msgpack-python and numpy
    assert {(c["name"], c["manager"], c["constraint"]) for c in by_name["msgpack-numpy"]["dependencies"]} == {
        ("msgpack-python", "conda", ">=0.5.2"), ("numpy", "conda", ">=1.9.0")}
    assert [(c["name"], c["manager"]) for c in by_name["mlenv-util"]["dependencies"]] == [("mlenv-tiny", "pip")]

    text = mlenv("tree", "--project", str(pip_project), check=True).stdout
    assert ("msgpack-numpy 0.4.7.1 (pip) (requested)\n├── msgpack-python 0.5.6 [>=0.5.2] (requested) (*)\n"
            "└── numpy 1.26.4 [>=1.9.0] (requested) (*)\n") in text
    assert "mlenv-util 1.0.0 (pip) (requested)\n└── mlenv-tiny 0.2.0 (pip) [>=0.2]\n" in text

    why = json.loads(mlenv("why", "msgpack-python", "--project", str(pip_project), "--json", check=True).stdout)
    assert [[(n["name"], n["manager"]) for n in p] for p in why["paths"]] == [
        [("msgpack-python", "conda")], [("msgpack-numpy", "pip"), ("msgpack-python", "conda")]]
    assert why["paths"][0][0]["requested"] is True
    tiny = mlenv("why", "pip:mlenv-tiny", "--project", str(pip_project), check=True).stdout.splitlines()
    assert tiny == ["mlenv-tiny 0.2.0 (pip) is in demo for linux-64 through 1 path:",
                    "mlenv-util 1.0.0 (requested) → mlenv-tiny 0.2.0 [>=0.2]"]
    assert_clean_error(mlenv("why", "conda:mlenv-tiny", "--project", str(pip_project)), 1, "conda:mlenv-tiny is not in the lock")


def test_a_stale_lock_is_read_as_it_is_and_a_registered_version_by_its_definition(pip_project: Path) -> None:
    lockfile = pip_project / "conda-lock.yml"
    before = lockfile.read_bytes()
    pyproject = pip_project / "pyproject.toml"
    spec = pyproject.read_text()
    try:
        pyproject.write_text(spec.replace('conda = ["numpy", "msgpack-python"]', 'conda = ["numpy"]'))
        stale = mlenv("tree", "--project", str(pip_project), "--json")
        assert stale.returncode == 0, stale.stderr
        assert "conda-lock.yml is stale" in stale.stderr and "showing it as it is" in stale.stderr
        assert lockfile.read_bytes() == before  # nothing solved, nothing written
        # what the definition asks for now: msgpack-python is no longer a root
        assert "msgpack-python" not in [n["name"] for n in json.loads(stale.stdout)["requested"]]
        assert_clean_error(mlenv("tree", "--project", str(pip_project), "--locked"), 1, "stale")
    finally:
        pyproject.write_text(spec)
    mlenv("register", "--project", str(pip_project), check=True)
    registered = json.loads(mlenv("tree", "demo:1", "--json", check=True).stdout)
    assert [n["name"] for n in registered["requested"]] == ["python", "numpy", "msgpack-python", "msgpack-numpy",
                                                          "mlenv-util"]
