"""The README's "Try it", run verbatim in a fresh virtualenv made in a copy of the checkout.

This is the one test that needs PyPI: the README's own commands install
hatch-mlenv's dependencies and hatch into the new virtualenv, and hatch fills
its isolated build environment from the index plus the wheel `pip wheel` put
in `examples/quickstart/wheels/` (the mechanism the README documents).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from fixtures.readme import command_blocks
from hatch_mlenv.lockfile import read_lock
from tests.conftest import tree_hashes

CHECKOUT = Path(__file__).resolve().parents[1]
QUICKSTART = CHECKOUT / "examples" / "quickstart"
# What a fresh clone does not have: anything ignored or built.
NOT_IN_A_CLONE = shutil.ignore_patterns(
    ".git", ".venv", "dist", "wheels", ".mlenv", "conda-lock.yml", "__pycache__", "*.egg-info", "results"
)


def test_bundled_channel_is_what_the_fixture_builds(tmp_path: Path) -> None:
    from fixtures.quickstart import build

    rebuilt = build(tmp_path / "channel")
    assert tree_hashes(rebuilt) == tree_hashes(QUICKSTART / "channel")


def a_new_users_environment(**extra: str) -> dict[str, str]:
    """The caller's environment without this test run's virtualenv on PATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    ours = os.path.dirname(sys.executable)
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p and p != ours)
    env.update(extra)
    return env


def sh(script: str, *, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=900)


def test_try_it_in_a_fresh_virtualenv_and_with_a_pipx_style_hatch(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    shutil.copytree(CHECKOUT, clone, ignore=NOT_IN_A_CLONE)
    project = clone / "examples" / "quickstart"
    env = a_new_users_environment(MLENV_HOME=str(tmp_path / "home"), HATCH_DATA_DIR=str(tmp_path / "hatch"))

    tried = sh(command_blocks()["try-it"], cwd=clone, env=env)
    assert tried.returncode == 0, tried.stdout[-6000:]
    prefix = project / ".mlenv" / "envs" / "quickstart-train"
    assert tried.stdout.rstrip().endswith(f"hello from {prefix}")

    lock = read_lock(project / "conda-lock.yml")
    assert {"python", "numpy", "python-dateutil", "six", "mlenv-hello"} <= {p.name for p in lock.packages}
    manifest = json.loads((project / "dist" / "quickstart-0.1.0.mlenv.json").read_text())
    assert manifest["digest"] == f"sha256:{lock.digest()}" and manifest["version"] == 1
    assert manifest["variables"] == {"OMP_NUM_THREADS": "4"} and manifest["secret_variables"] == ["WANDB_API_KEY"]
    lock_bytes = (project / "conda-lock.yml").read_bytes()
    with zipfile.ZipFile(project / "dist" / "quickstart-0.1.0-py3-none-any.whl") as wheel:
        assert wheel.read("quickstart-0.1.0.dist-info/extra_metadata/conda-lock.yml") == lock_bytes
    assert f"quickstart-train:{lock.digest()[:12]}" in tried.stdout  # `mlenv show`: the image reference

    mlenv = str(clone / ".venv" / "bin" / "mlenv")
    (project / "conda-lock.yml").unlink()
    subprocess.run([mlenv, "lock", "--project", str(project)], env=env, check=True, stdout=subprocess.PIPE)
    assert (project / "conda-lock.yml").read_bytes() == lock_bytes  # same spec, same channel: same bytes

    # The demo python has no bin/python: an error naming the environment, never the caller's interpreter.
    python = subprocess.run([mlenv, "run", "--project", str(project), "--", "python", "-c", "print('ran')"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert python.returncode == 1 and python.stdout == ""
    assert python.stderr.startswith("error: environment quickstart-train locks python but provides no 'python'")

    # hatch from its own virtualenv (as `pipx install hatch` / `uv tool install hatch` make it), nothing
    # activated: the build environment still gets hatch-mlenv from the example's wheels/ directory.
    tool = tmp_path / "hatch-tool"
    made = sh(f"python3 -m venv {tool} && {tool}/bin/pip install hatch", cwd=tmp_path, env=env)
    assert made.returncode == 0, made.stdout[-4000:]
    shutil.rmtree(project / "dist")
    pipx_env = dict(env, HATCH_DATA_DIR=str(tmp_path / "hatch-pipx"))
    built = sh(f"{tool}/bin/hatch build", cwd=project, env=pipx_env)
    assert built.returncode == 0, built.stdout[-6000:]
    with zipfile.ZipFile(project / "dist" / "quickstart-0.1.0-py3-none-any.whl") as wheel:
        assert wheel.read("quickstart-0.1.0.dist-info/extra_metadata/conda-lock.yml") == lock_bytes
        assert json.loads(wheel.read("quickstart-0.1.0.dist-info/extra_metadata/mlenv.json"))["version"] == 1
