"""The local (SQLite) registry through the real `mlenv` commands and the build hook."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hatch_mlenv.lockfile import read_lock
from tests.conftest import LOCK_SAMPLES, assert_clean_error, mlenv, tree_hashes, write_project

NUMPY_SAMPLE = LOCK_SAMPLES / "numpy-conda-lock.yml"
ROBOSTACK_SAMPLE = LOCK_SAMPLES / "robostack-turtlesim-conda-lock.yml"


def git(*args: str, cwd: Path) -> None:
    process = subprocess.Popen(["git", *args], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert process.wait(timeout=60) == 0, args


@pytest.fixture
def project(tmp_path: Path, channel: Path) -> Path:
    root = write_project(
        tmp_path / "proj",
        f'channels = ["{channel}"]\nplatforms = ["linux-64"]\npython = "3.11"\nconda = ["numpy ==1.25.2"]\n'
        'description = "fraud model training"\n',
    )
    git("init", "-q", cwd=root)
    git("add", "pyproject.toml", cwd=root)
    git("-c", "user.email=t@e", "-c", "user.name=t", "commit", "-q", "-m", "init", cwd=root)
    mlenv("lock", "--project", str(root), check=True)
    return root


def bump_numpy(root: Path) -> None:
    pyproject = root / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("numpy ==1.25.2", "numpy ==1.26.4"))
    mlenv("lock", "--project", str(root), check=True)


def test_register_is_idempotent_and_versions_grow(project: Path) -> None:
    digest = read_lock(project / "conda-lock.yml").digest()
    first = mlenv("register", "--project", str(project), check=True)
    assert first.stdout.strip() == f"demo:1 sha256:{digest} (new)"
    again = mlenv("register", "--project", str(project), check=True)
    assert again.stdout.strip() == f"demo:1 sha256:{digest} (existing, nothing created)"

    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("fraud model training", "fraud model, v2 text"))
    # a description is not part of the environment: no new version
    assert "demo:1" in mlenv("register", "--project", str(project), check=True).stdout
    bump_numpy(project)
    second = json.loads(mlenv("register", "--project", str(project), "--label", "staging", "--json", check=True).stdout)
    assert second["version"] == 2 and second["created"] is True
    assert second["labels"] == ["latest", "staging"]

    listing = json.loads(mlenv("list", "--json", check=True).stdout)
    assert listing == [
        {"name": "demo", "latest": 2, "versions": 2, "archived": 0, "labels": {"latest": 2, "staging": 2},
         "dangling_labels": {}, "description": "fraud model, v2 text"}
    ]


def test_history_has_provenance(project: Path) -> None:
    mlenv("register", "--project", str(project), check=True)
    (project / "pyproject.toml").write_text((project / "pyproject.toml").read_text() + "\n# edit\n")
    bump_numpy(project)
    mlenv("register", "--project", str(project), check=True)
    history = json.loads(mlenv("history", "demo", "--json", check=True).stdout)
    assert [h["version"] for h in history] == [1, 2]
    commit = subprocess.Popen(["git", "rev-parse", "HEAD"], cwd=project, stdout=subprocess.PIPE, text=True)
    head = commit.communicate()[0].strip()
    assert history[0]["git_commit"] == head
    assert history[1]["git_dirty"] is True  # pyproject.toml is modified, not committed
    assert history[1]["labels"] == ["latest"] and history[0]["labels"] == []
    for entry in history:
        assert entry["created"].endswith("+00:00")
    table = mlenv("history", "demo", check=True).stdout
    assert head[:10] in table and "+dirty" in table


def test_get_writes_lock_and_manifest(project: Path, tmp_path: Path) -> None:
    mlenv("register", "--project", str(project), check=True)
    out = tmp_path / "out"
    mlenv("get", "demo:1", "--output", str(out), check=True)
    assert (out / "conda-lock.yml").read_bytes() == (project / "conda-lock.yml").read_bytes()
    manifest = json.loads((out / "mlenv.json").read_text())
    assert manifest["version"] == 1 and manifest["registry_ref"] == "demo:1"
    assert manifest["digest"] == f"sha256:{read_lock(project / 'conda-lock.yml').digest()}"
    latest = tmp_path / "latest"
    mlenv("get", "demo", "-o", str(latest), check=True)
    assert (latest / "conda-lock.yml").read_bytes() == (out / "conda-lock.yml").read_bytes()


def test_labels_move_and_archive_hides(project: Path, tmp_path: Path) -> None:
    mlenv("register", "--project", str(project), check=True)
    bump_numpy(project)
    mlenv("register", "--project", str(project), check=True)
    assert mlenv("label", "demo:1", "prod", check=True).stdout.strip() == "demo@prod -> demo:1"
    mlenv("get", "demo@prod", "-o", str(tmp_path / "p1"), check=True)
    assert json.loads((tmp_path / "p1" / "mlenv.json").read_text())["version"] == 1
    mlenv("label", "demo:2", "prod", check=True)
    mlenv("get", "demo@prod", "-o", str(tmp_path / "p2"), check=True)
    assert json.loads((tmp_path / "p2" / "mlenv.json").read_text())["version"] == 2

    mlenv("archive", "demo:1", check=True)
    assert json.loads(mlenv("list", "--json", check=True).stdout)[0]["versions"] == 1
    mlenv("get", "demo:1", "-o", str(tmp_path / "a"), check=True)  # still retrievable by number
    assert [h["archived"] for h in json.loads(mlenv("history", "demo", "--json", check=True).stdout)] == [True, False]
    mlenv("archive", "demo:2", check=True)
    assert json.loads(mlenv("list", "--json", check=True).stdout) == []
    assert len(json.loads(mlenv("list", "--all", "--json", check=True).stdout)) == 1
    mlenv("restore", "demo:1", check=True)
    assert json.loads(mlenv("list", "--json", check=True).stdout)[0]["versions"] == 1


def test_register_real_conda_lock_files(tmp_path: Path, shared_data: Path) -> None:
    one = mlenv("register", "--lockfile", str(NUMPY_SAMPLE), "--name", "numpy-env", check=True)
    assert one.stdout.startswith("numpy-env:1 sha256:")
    two = mlenv("register", "--lockfile", str(ROBOSTACK_SAMPLE), "--name", "numpy-env", check=True)
    assert two.stdout.startswith("numpy-env:2 ")
    assert "existing" in mlenv("register", "--lockfile", str(NUMPY_SAMPLE), "--name", "numpy-env", check=True).stdout
    mlenv("get", "numpy-env:1", "-o", str(tmp_path / "got"), check=True)
    assert (tmp_path / "got" / "conda-lock.yml").read_bytes() == NUMPY_SAMPLE.read_bytes()


def test_diff_between_versions_and_files(project: Path, shared_data: Path) -> None:
    mlenv("register", "--project", str(project), check=True)
    before = (project / "conda-lock.yml").read_text()
    bump_numpy(project)
    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + '[tool.mlenv.variables]\nOMP_NUM_THREADS = "8"\n')
    mlenv("lock", "--project", str(project), check=True)
    mlenv("register", "--project", str(project), check=True)

    result = json.loads(mlenv("diff", "demo:1", "demo@latest", "--json", check=True).stdout)
    assert result["identical"] is False
    assert result["packages"]["linux-64"]["conda"]["changed"] == [
        {"name": "numpy", "old": {"version": "1.25.2", "build": "py311h0_0"}, "new": {"version": "1.26.4", "build": "py311h0_0"}}
    ]
    assert result["variables"]["added"] == {"OMP_NUM_THREADS": "8"}

    old_file = project / "old.yml"
    old_file.write_text(before)
    same = json.loads(mlenv("diff", str(old_file), "demo:1", "--json", check=True).stdout)
    assert same["identical"] is True and same["packages"] == {}
    table = mlenv("diff", "demo:1", "demo:2", check=True).stdout
    assert "numpy" in table and "1.25.2" in table and "1.26.4" in table and "OMP_NUM_THREADS" in table

    samples = json.loads(mlenv("diff", str(NUMPY_SAMPLE), str(ROBOSTACK_SAMPLE), "--json", check=True).stdout)
    assert "win-64" in samples["platforms"]["added"]
    assert samples["packages"]["linux-64"]["conda"]["added"]


def test_bad_references_and_unknown_names(project: Path, shared_data: Path) -> None:
    mlenv("register", "--project", str(project), check=True)
    home = Path(os.environ["MLENV_HOME"])
    before = tree_hashes(home)
    assert_clean_error(mlenv("get", "nope"), 1, "no environment named 'nope'")
    assert_clean_error(mlenv("get", "demo:7"), 1, "demo has no version 7")
    assert_clean_error(mlenv("get", "demo@prod"), 1, "demo has no label 'prod'")
    assert_clean_error(mlenv("get", "demo:one"), 2, "malformed reference 'demo:one'")
    assert_clean_error(mlenv("get", "de mo"), 2, "malformed reference")
    assert_clean_error(mlenv("label", "demo", "prod"), 2, "use NAME:VERSION")
    assert_clean_error(mlenv("label", "demo:1", "no/slash"), 2, "invalid label")
    assert_clean_error(mlenv("archive", "demo:9"), 1, "demo has no version 9")
    assert_clean_error(mlenv("history", "nope"), 1, "no environment named 'nope'")
    assert_clean_error(mlenv("diff", "demo:1", "missing.yml"), 2, "missing.yml", "lockfile not found")
    assert_clean_error(mlenv("register", "--lockfile", str(NUMPY_SAMPLE)), 2)
    assert_clean_error(mlenv("list", "--registry", "ftp://x"), 2, "unknown registry 'ftp://x'")
    assert tree_hashes(home) == before


def test_register_refuses_a_stale_lock(project: Path) -> None:
    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("numpy ==1.25.2", "numpy"))
    assert_clean_error(mlenv("register", "--locked", "--project", str(project)), 1, "is stale", "mlenv lock")
    assert_clean_error(mlenv("register", "--frozen", "--project", str(project)), 1, "is stale", "mlenv lock")
    assert json.loads(mlenv("list", "--json", check=True).stdout) == []


def test_corrupted_entry_is_never_served(project: Path, tmp_path: Path) -> None:
    mlenv("register", "--project", str(project), check=True)
    db = Path(os.environ["MLENV_HOME"]) / "registry.sqlite3"
    with sqlite3.connect(db) as connection:
        connection.execute("UPDATE versions SET lockfile = replace(lockfile, '1.25.2', '1.99.0')")
    result = mlenv("get", "demo:1", "-o", str(tmp_path / "x"))
    assert_clean_error(result, 1, "registry entry demo:1 is corrupted")
    assert not (tmp_path / "x").exists()
    assert_clean_error(mlenv("diff", "demo:1", str(project / "conda-lock.yml")), 1, "corrupted")


@pytest.mark.parametrize(
    ("tampering", "sql"),
    [
        # a dependency is not part of the digest, but it is part of the entry
        ("lock dependencies", "UPDATE versions SET lockfile = replace(lockfile, 'python_abi: 3.11.*', 'python_abi: 9.*')"),
        ("manifest", "UPDATE versions SET manifest = replace(manifest, '\"variables\": {', "
                     "'\"variables\": {\"INJECTED\": \"1\", ')"),
        ("provenance", "UPDATE versions SET provenance = replace(provenance, '\"git_commit\"', '\"git_commit_x\"')"),
        ("number", "PRAGMA foreign_keys = OFF; UPDATE versions SET version = 7; UPDATE labels SET version = 7"),
    ],
)
def test_every_part_of_a_stored_entry_is_checked(project: Path, tmp_path: Path, tampering: str, sql: str) -> None:
    mlenv("register", "--project", str(project), check=True)
    db = Path(os.environ["MLENV_HOME"]) / "registry.sqlite3"
    with sqlite3.connect(db) as connection:
        before = connection.execute("SELECT lockfile, manifest, provenance FROM versions").fetchone()
        connection.executescript(sql)
        assert connection.execute("SELECT lockfile, manifest, provenance FROM versions").fetchone() != before or \
            tampering == "number"
    ref = "demo:7" if tampering == "number" else "demo:1"
    for args in (["get", ref, "-o", str(tmp_path / "x")], ["get", "demo@latest", "-o", str(tmp_path / "y")],
                 ["history", "demo"]):
        assert_clean_error(mlenv(*args), 1, f"registry entry {ref} is corrupted")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_dangling_labels_and_a_damaged_database_are_reported(project: Path, tmp_path: Path) -> None:
    mlenv("register", "--project", str(project), "--label", "prod", check=True)
    db = Path(os.environ["MLENV_HOME"]) / "registry.sqlite3"
    with sqlite3.connect(db) as connection:
        connection.executescript("PRAGMA foreign_keys = OFF; UPDATE labels SET version = 9 WHERE label = 'prod'")
    listing = mlenv("list", "--json", check=True)
    assert json.loads(listing.stdout)[0]["dangling_labels"] == {"prod": 9}
    assert "demo@prod points at version 9, which is not in the registry" in listing.stderr
    assert "demo@prod points at version 9" in mlenv("history", "demo", check=True).stderr
    assert_clean_error(mlenv("get", "demo@prod", "-o", str(tmp_path / "x")), 1,
                       "registry entry demo@prod is damaged: the label points at version 9")

    with sqlite3.connect(db) as connection:
        connection.executescript("PRAGMA foreign_keys = OFF; DELETE FROM environments")
    assert_clean_error(mlenv("history", "demo"), 1, str(db), "is damaged")

    db.write_bytes(b"this is not a database" * 100)
    for args in (["list"], ["history", "demo"], ["get", "demo:1"]):
        assert_clean_error(mlenv(*args), 1, str(db), "damaged")


def test_registry_selection(project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit = tmp_path / "explicit.sqlite3"
    mlenv("register", "--project", str(project), "--registry", f"sqlite://{explicit}", check=True)
    assert explicit.is_file()
    assert json.loads(mlenv("list", "--json", check=True).stdout) == []  # not in the default one

    from_env = tmp_path / "env.sqlite3"
    monkeypatch.setenv("MLENV_REGISTRY", f"sqlite://{from_env}")
    mlenv("register", "--project", str(project), check=True)
    assert from_env.is_file()

    monkeypatch.delenv("MLENV_REGISTRY")
    configured = tmp_path / "configured.sqlite3"
    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("[tool.mlenv]\n", f'[tool.mlenv]\nregistry = "sqlite://{configured}"\n'))
    mlenv("register", "--project", str(project), check=True)
    assert configured.is_file()


def test_build_hook_registers_and_records_the_version(tmp_path: Path, channel: Path) -> None:
    extra = textwrap.dedent(
        """
        [build-system]
        requires = ["hatchling", "hatch-mlenv"]
        build-backend = "hatchling.build"
        [tool.hatch.build.targets.wheel]
        bypass-selection = true
        [tool.hatch.build.hooks.mlenv]
        {hook}
        [tool.hatch.envs.hatch-build]
        type = "system"
        """
    )
    body = f'channels = ["{channel}"]\nplatforms = ["linux-64"]\nconda = ["mlenv-hello"]\n'
    on = write_project(tmp_path / "on", body, extra=extra.format(hook=""))
    off = write_project(tmp_path / "off", body, name="other", extra=extra.format(hook="register = false"))
    for root in (on, off):
        build = subprocess.Popen([sys.executable, "-m", "hatch", "build", "-t", "wheel"], cwd=root,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = build.communicate(timeout=600)
        assert build.returncode == 0, err
    manifest = json.loads((on / "dist" / "demo-0.1.0.mlenv.json").read_text())
    assert manifest["version"] == 1 and manifest["registry_ref"] == "demo:1"
    assert "version" not in json.loads((off / "dist" / "other-0.1.0.mlenv.json").read_text())
    assert [e["name"] for e in json.loads(mlenv("list", "--json", check=True).stdout)] == ["demo"]


WORKER = """
import json, sys
from pathlib import Path
sys.path.insert(0, {root!r})
from hatch_mlenv.registry.local import LocalRegistry
from tests.registry_helpers import small_lock
registry = LocalRegistry(Path({db!r}))
seen = {{}}
for i in range(25):
    tag = str(({worker} * 7 + i * 3) % {distinct})
    result = registry.register("race", small_lock(tag), {{"tag": tag}}, {{"worker": {worker}}})
    seen[tag] = result.version.version
print(json.dumps(seen))
"""


def test_eight_processes_register_concurrently(tmp_path: Path) -> None:
    db = tmp_path / "race.sqlite3"
    root = str(Path(__file__).resolve().parents[1])
    distinct = 40
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER.format(root=root, db=str(db), worker=w, distinct=distinct)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for w in range(8)
    ]
    results = []
    for worker in workers:
        out, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err
        results.append(json.loads(out))
    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT version, digest FROM versions WHERE name = 'race' ORDER BY version").fetchall()
    versions = [r[0] for r in rows]
    tags_registered = set().union(*results)
    assert versions == list(range(1, len(tags_registered) + 1))  # unique, contiguous from 1, nothing lost
    assert len({r[1] for r in rows}) == len(rows)  # one version per digest
    by_tag: dict[str, int] = {}
    for seen in results:
        for tag, version in seen.items():
            assert by_tag.setdefault(tag, version) == version  # identical locks share one version


KILLED_WORKER = """
import sys
from pathlib import Path
sys.path.insert(0, {root!r})
from hatch_mlenv.registry.local import LocalRegistry
from tests.registry_helpers import small_lock
registry = LocalRegistry(Path({db!r}))
i = 0
while True:
    registry.register("killed", small_lock("k" + str(i) + "-" + "x" * 20000), {{"i": i}}, {{"pad": "p" * 50000}},
                      labels=("rolling",))
    i += 1
"""


@pytest.mark.parametrize("delay", [round(0.3 + 0.03 * trial, 2) for trial in range(20)])
def test_sigkill_mid_registration_leaves_whole_versions(tmp_path: Path, delay: float) -> None:
    db = tmp_path / "killed.sqlite3"
    root = str(Path(__file__).resolve().parents[1])
    worker = subprocess.Popen([sys.executable, "-c", KILLED_WORKER.format(root=root, db=str(db))],
                              stderr=subprocess.PIPE)
    time.sleep(delay)
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=60)
    assert worker.returncode == -signal.SIGKILL

    if not db.exists():  # killed before its first registration: the file is made whole or not at all
        assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("killed.sqlite3")]
        return
    with sqlite3.connect(f"file:{db}?mode=rw", uri=True) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        versions = [r[0] for r in connection.execute("SELECT version FROM versions ORDER BY version")]
        labels = dict(connection.execute("SELECT label, version FROM labels WHERE name = 'killed'"))
    assert versions == list(range(1, len(versions) + 1))
    if versions:
        # the labels moved in the same transaction as the last version was written
        assert labels == {"latest": versions[-1], "rolling": versions[-1]}
        from hatch_mlenv.registry import Reference
        from hatch_mlenv.registry.local import LocalRegistry

        registry = LocalRegistry(db)
        for number in versions:
            assert registry.get(Reference("killed", number)).version == number  # every version whole: digest verifies


def test_show_and_manifest_carry_provenance(project: Path) -> None:
    before = json.loads(mlenv("show", "--json", "--project", str(project), check=True).stdout)
    assert before["version"] is None and before["registry"].startswith("sqlite://")
    mlenv("register", "--project", str(project), check=True)
    data = json.loads(mlenv("show", "--json", "--project", str(project), check=True).stdout)
    commit = subprocess.Popen(["git", "rev-parse", "HEAD"], cwd=project, stdout=subprocess.PIPE, text=True)
    head = commit.communicate()[0].strip()
    assert data["version"] == 1
    assert data["provenance"]["git_commit"] == head and data["provenance"]["git_dirty"] is False
    import hashlib

    assert data["provenance"]["lockfile_sha256"] == hashlib.sha256((project / "conda-lock.yml").read_bytes()).hexdigest()
    human = mlenv("show", "--project", str(project), check=True).stdout
    assert "demo:1" in human and head[:12] in human


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["get", "x:99999999999999999999999"], 2, "the version must be an integer from 1 to 2147483647"),
        (["get", "x:0"], 2, "the version must be an integer from 1"),
        (["get", "n" * 300], 2, "at most 100 characters"),
        (["history", "n" * 300], 2, "invalid environment name"),
        (["label", "demo:1", "bad label!"], 2, "invalid label"),
        (["get", "demo:1", "-o", "/proc/mlenv-x"], 1, "/proc/mlenv-x"),
    ],
)
def test_bad_registry_input_is_one_clean_line(project: Path, args: list[str], code: int, needle: str) -> None:
    mlenv("register", "--project", str(project), check=True)
    result = mlenv(*args)
    assert_clean_error(result, code, needle)
    assert "internal error" not in result.stderr
