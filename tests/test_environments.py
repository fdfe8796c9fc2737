"""Kinds of environments: named, curated (extends), imported, user-managed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from hatch_mlenv import curated
from hatch_mlenv.lockfile import read_lock
from hatch_mlenv.spec import load_spec
from tests.conftest import assert_clean_error, mlenv, tree_hashes, write_project


def test_named_environments_have_their_own_lock_digest_and_history(tmp_path: Path, channel: Path) -> None:
    project = write_project(
        tmp_path,
        f"""
        name = "fraud"
        channels = ["{channel}"]
        platforms = ["linux-64"]
        python = "3.11"
        conda = ["numpy ==1.25.2"]
        variables = {{ OMP_NUM_THREADS = "4" }}
        [tool.mlenv.envs.gpu]
        conda = ["cuda-thing", "numpy ==1.26.4"]
        variables = {{ CUDA_VISIBLE_DEVICES = "0" }}
        [tool.mlenv.envs.gpu.virtual-packages.linux-64]
        __cuda = "12.2"
        """,
    )
    gpu = load_spec(project, "gpu")
    assert gpu.name == "fraud-gpu" and gpu.lockfile == project / "conda-lock.gpu.yml"
    assert gpu.conda == ("numpy ==1.26.4", "cuda-thing")  # replaced in place, then extended
    assert {v.name for v in gpu.variables} == {"OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES"}
    assert gpu.virtual_packages["linux-64"]["__cuda"] == ("12.2", "0")
    assert gpu.virtual_packages["linux-64"]["__glibc"] == ("2.28", "0")  # inherited defaults

    mlenv("lock", "--project", str(project), check=True)
    mlenv("lock", "--env", "gpu", "--project", str(project), check=True)
    default = read_lock(project / "conda-lock.yml")
    named = read_lock(project / "conda-lock.gpu.yml")
    assert default.digest() != named.digest()
    assert {p.name: p.version for p in named.packages}["numpy"] == "1.26.4"
    assert "cuda-thing" not in {p.name for p in default.packages}
    shown = json.loads(mlenv("show", "--env", "gpu", "--json", "--project", str(project), check=True).stdout)
    assert shown["name"] == "fraud-gpu" and shown["image"].startswith("fraud-gpu:")

    mlenv("register", "--project", str(project), check=True)
    assert mlenv("register", "--env", "gpu", "--project", str(project), check=True).stdout.startswith("fraud-gpu:1 ")
    assert [e["name"] for e in json.loads(mlenv("list", "--json", check=True).stdout)] == ["fraud", "fraud-gpu"]
    assert mlenv("lock", "--check", "--env", "gpu", "--project", str(project)).returncode == 0

    unknown = mlenv("lock", "--env", "gpo", "--project", str(project))
    assert_clean_error(unknown, 2, "tool.mlenv.envs.gpo", "unknown environment (known: gpu)", "Did you mean gpu?")


@pytest.mark.parametrize("name", curated.names())
def test_curated_environments_are_valid_specs(tmp_path: Path, name: str) -> None:
    project = write_project(tmp_path, f'extends = "curated:{name}"\n')
    spec = load_spec(project)
    spec.check_match_specs()
    assert spec.python and spec.conda and spec.channels


def test_extends_curated_merge_rule(tmp_path: Path, channel: Path) -> None:
    project = write_project(
        tmp_path,
        f"""
        extends = "curated:sklearn"
        channels = ["{channel}"]
        platforms = ["linux-64"]
        conda = ["numpy ==1.26.4", "mlenv-hello"]
        variables = {{ EXTRA = "1" }}
        """,
    )
    spec = load_spec(project)
    base = curated.read("sklearn")
    assert [c.raw for c in spec.channels] == [str(channel)]  # replaced
    assert spec.platforms == ("linux-64",)
    assert spec.conda[0] == "numpy ==1.26.4"  # the project's numpy replaces the curated one in place
    assert spec.conda[1:-1] == tuple(base["conda"][1:]) and spec.conda[-1] == "mlenv-hello"
    assert {v.name: v.value for v in spec.variables} == {"OMP_NUM_THREADS": "1", "EXTRA": "1"}
    assert spec.python == base["python"]


def test_extends_a_file_and_cycles(tmp_path: Path) -> None:
    (tmp_path / "team.toml").write_text('[tool.mlenv]\nextends = "curated:minimal"\nconda = ["numpy"]\n')
    project = write_project(tmp_path / "proj", 'extends = "../team.toml"\nconda = ["pandas"]\n')
    assert load_spec(project).conda == ("pip", "numpy", "pandas")

    (tmp_path / "a.toml").write_text('[tool.mlenv]\nextends = "b.toml"\n')
    (tmp_path / "b.toml").write_text('[tool.mlenv]\nextends = "a.toml"\n')
    cyclic = write_project(tmp_path / "cyc", 'extends = "../a.toml"\n')
    assert_clean_error(mlenv("lock", "--project", str(cyclic)), 2, "tool.mlenv.extends", "extends cycle")
    unknown = write_project(tmp_path / "unk", 'extends = "curated:sklaern"\n')
    assert_clean_error(mlenv("show", "--project", str(unknown)), 2, "unknown curated environment 'sklaern'",
                       "did you mean sklearn?")


def test_curated_commands() -> None:
    listing = json.loads(mlenv("curated", "list", "--json", check=True).stdout)
    assert {"minimal", "sklearn", "pytorch-cpu", "tensorflow-cpu", "spark"} <= {e["name"] for e in listing}
    shown = mlenv("curated", "show", "pytorch-cpu", check=True).stdout
    assert 'extends = "curated:pytorch-cpu"' in shown and "pytorch" in shown
    assert_clean_error(mlenv("curated", "show", "nope"), 2, "unknown curated environment 'nope'")


def test_curated_pytorch_cuda_declares_cuda(tmp_path: Path) -> None:
    from hatch_mlenv.spec import load_spec

    write_project(tmp_path, 'extends = "curated:pytorch-cuda"\n[tool.mlenv.envs.cpu.system-requirements]\ncuda = false\n'
                  '[tool.mlenv.envs.cpu]\nconda = ["pytorch >=2.1 *cpu*"]\n')
    spec = load_spec(tmp_path)
    assert spec.system_requirements == {"cuda": "12.0"}
    assert spec.virtual_packages["linux-64"]["__cuda"] == ("12.0", "0")
    assert "pytorch >=2.1 *cuda*" in spec.conda
    cpu = load_spec(tmp_path, "cpu")
    assert cpu.system_requirements == {} and "__cuda" not in cpu.virtual_packages["linux-64"]
    assert "pytorch >=2.1 *cpu*" in cpu.conda and "pytorch >=2.1 *cuda*" not in cpu.conda
    assert "cuda = \"12.0\"" in mlenv("curated", "show", "pytorch-cuda", check=True).stdout


PYPROJECT = """\
# Our training project.
[project]
name = "imp"   # the distribution name
version = "1.0"

[tool.black]
line-length = 100
"""


def test_import_environment_yml_keeps_the_rest_of_pyproject(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    (tmp_path / "environment.yml").write_text(
        "name: fraud\nchannels: [conda-forge, defaults]\nprefix: /home/me/envs/fraud\n"
        "dependencies:\n  - python=3.11\n  - numpy=1.26\n  - pip:\n    - mlenv-tiny==0.2\n"
        "variables:\n  OMP_NUM_THREADS: 4\n"
    )
    result = mlenv("import", str(tmp_path / "environment.yml"), "--project", str(tmp_path), check=True)
    assert "imported 2 conda, 1 pip packages and 1 variables" in result.stdout
    assert "not mapped: channels: defaults" in result.stderr and "not mapped: prefix:" in result.stderr
    text = (tmp_path / "pyproject.toml").read_text()
    assert text.startswith(PYPROJECT)  # byte for byte, comments included
    spec = load_spec(tmp_path)
    assert spec.python == "3.11" and spec.conda == ("numpy=1.26",) and spec.pip == ("mlenv-tiny==0.2",)
    assert [c.raw for c in spec.channels] == ["conda-forge"]

    (tmp_path / "requirements.txt").write_text("# extra\nmlenv-util>=1\nmlenv-tiny==0.2.0\n--index-url http://127.0.0.1:1/simple\n")
    mlenv("import", str(tmp_path / "requirements.txt"), "--project", str(tmp_path), check=True)
    spec = load_spec(tmp_path)
    assert spec.pip == ("mlenv-tiny==0.2.0", "mlenv-util>=1") and spec.pip_index_url == "http://127.0.0.1:1/simple"
    assert (tmp_path / "pyproject.toml").read_text().startswith(PYPROJECT)


def test_import_into_a_named_environment_and_from_a_prefix(tmp_path: Path, channel: Path) -> None:
    source = write_project(tmp_path / "src", f'channels = ["{channel}"]\nplatforms = ["linux-64"]\n'
                           'python = "3.11"\nconda = ["mlenv-hello ==1.0.0", "numpy"]\n')
    mlenv("lock", "--project", str(source), check=True)
    mlenv("install", "--project", str(source), check=True)
    prefix = source / ".mlenv" / "envs" / "demo"
    target = tmp_path / "target"
    target.mkdir()
    (target / "pyproject.toml").write_text(PYPROJECT)
    mlenv("import", "--from-prefix", str(prefix), "--env", "copy", "--project", str(target), check=True)
    spec = load_spec(target, "copy")
    assert "mlenv-hello ==1.0.0" in spec.conda and spec.python == "3.11.7"
    assert [c.url for c in spec.channels] == [channel.as_uri()]
    mlenv("lock", "--env", "copy", "--project", str(target), check=True)
    assert {p.name: p.version for p in read_lock(target / "conda-lock.copy.yml").packages}["mlenv-hello"] == "1.0.0"


@pytest.mark.parametrize(
    ("file", "content", "needle"),
    [
        ("environment.yml", "name: x\nchanels: []\ndependencies: []\n", "chanels: unknown environment.yml section; did you mean channels?"),
        ("requirements.txt", "numpy\n-e ./mylib\n", "line 2: editable or VCS requirement"),
        ("requirements.txt", "git+https://example.invalid/x.git\n", "line 1: editable or VCS requirement"),
        ("requirements.txt", "numpy >>> 1\n", "line 1: invalid requirement"),
    ],
)
def test_import_bad_input_changes_nothing(tmp_path: Path, file: str, content: str, needle: str) -> None:
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    (tmp_path / file).write_text(content)
    before = tree_hashes(tmp_path)
    assert_clean_error(mlenv("import", str(tmp_path / file), "--project", str(tmp_path)), 2, file, needle)
    assert tree_hashes(tmp_path) == before


def test_import_from_a_directory_that_is_not_a_prefix(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    result = mlenv("import", "--from-prefix", str(tmp_path), "--project", str(tmp_path))
    assert_clean_error(result, 2, "not a conda prefix (no conda-meta directory)")


def test_user_managed_environment_is_versioned_not_solved(tmp_path: Path) -> None:
    project = write_project(tmp_path, f'managed = false\ninterpreter = "{sys.executable}"\n'
                            '[tool.mlenv.docker]\nbase-image = "python:3.11-slim"\n')
    result = mlenv("lock", "--project", str(project), check=True)
    assert "locked demo" in result.stdout
    lock = read_lock(project / "conda-lock.yml")
    names = {p.name: p.version for p in lock.packages}
    import importlib.metadata

    assert names["pyyaml"] == importlib.metadata.version("pyyaml")
    assert all(p.manager == "pip" for p in lock.packages)
    assert mlenv("lock", "--check", "--project", str(project)).returncode == 0
    installed = mlenv("install", "--project", str(project), check=True)
    assert "user-managed" in installed.stdout and not (project / ".mlenv").exists()
    # run activates the interpreter's own prefix, whose python comes first
    interpreter_prefix = Path(sys.executable).parent.parent
    ran = mlenv("run", "--project", str(project), "--", "python", "-c",
                "import os, sys; print(os.environ['CONDA_PREFIX'], sys.executable)", check=True)
    assert ran.stdout.split() == [str(interpreter_prefix), sys.executable]
    assert mlenv("register", "--project", str(project), check=True).stdout.startswith("demo:1 ")
    out = tmp_path / "ctx"
    mlenv("image", "context", "-o", str(out), "--project", str(project), check=True)
    dockerfile = (out / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in dockerfile and "COPY" not in dockerfile and not (out / "env").exists()

    missing = write_project(tmp_path / "m", "managed = false\n")
    assert_clean_error(mlenv("lock", "--project", str(missing)), 2, "tool.mlenv.interpreter", "missing")
    broken = write_project(tmp_path / "b", 'managed = false\ninterpreter = "/no/such/python"\n')
    assert_clean_error(mlenv("lock", "--project", str(broken)), 2, "tool.mlenv.interpreter", "cannot run")
