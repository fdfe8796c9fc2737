"""The README's main job on the bundled example: lock it offline, then `hatch build` it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from hatch_mlenv.lockfile import read_lock
from tests.conftest import mlenv, tree_hashes

QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart"


def test_bundled_channel_is_what_the_fixture_builds(tmp_path: Path) -> None:
    from fixtures.quickstart import build

    rebuilt = build(tmp_path / "channel")
    assert tree_hashes(rebuilt) == tree_hashes(QUICKSTART / "channel")


def test_quickstart_locks_and_builds(tmp_path: Path) -> None:
    project = tmp_path / "quickstart"
    shutil.copytree(QUICKSTART, project, ignore=shutil.ignore_patterns("dist", "conda-lock.yml", "*.egg-info"))

    first = mlenv("lock", "--project", str(project), check=True)
    assert "locked quickstart-train for linux-64" in first.stdout
    lock_bytes = (project / "conda-lock.yml").read_bytes()
    lock = read_lock(project / "conda-lock.yml")
    assert {"python", "numpy", "python-dateutil", "six", "mlenv-hello"} <= {p.name for p in lock.packages}

    (project / "conda-lock.yml").unlink()
    mlenv("lock", "--project", str(project), check=True)
    assert (project / "conda-lock.yml").read_bytes() == lock_bytes  # same spec, same channel: same bytes

    build = subprocess.run(
        [sys.executable, "-m", "hatch", "build"], cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, timeout=600,
    )
    assert build.returncode == 0, build.stderr
    manifest = json.loads((project / "dist" / "quickstart-0.1.0.mlenv.json").read_text())
    assert manifest["digest"] == f"sha256:{lock.digest()}"
    assert manifest["variables"] == {"OMP_NUM_THREADS": "4"} and manifest["secret_variables"] == ["WANDB_API_KEY"]
    with zipfile.ZipFile(next((project / "dist").glob("*.whl"))) as wheel:
        assert wheel.read("quickstart-0.1.0.dist-info/extra_metadata/conda-lock.yml") == lock_bytes

    show = json.loads(mlenv("show", "--json", "--project", str(project), check=True).stdout)
    assert show["image"] == f"quickstart-train:{lock.digest()[:12]}" and show["fresh"] is True
