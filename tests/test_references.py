"""Issue 14: any registered version used anywhere, without the project: `NAME`, `NAME:VERSION`,
`NAME@LABEL` or a lockfile path for install, run, verify, export, sbom, pack, spark-conf, show,
image tag; the Python API; `mlenv gc`; retrieve-and-modify (`mlenv import REF`, `diff`); bad
references; and the team path through the real OCI registry on loopback."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from hatch_mlenv.lockfile import read_lock
from tests.conftest import assert_clean_error, mlenv, write_project

REPO = Path(__file__).resolve().parents[1]


def run_process(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """subprocess.Popen, not subprocess.run: a test that imports conda-lock's parser gets its
    vendored poetry, which replaces subprocess.run in-process (see tests/conftest.py)."""
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
    out, err = process.communicate(timeout=300)
    return subprocess.CompletedProcess(argv, process.returncode, out, err)


def make_project(root: Path, channel: Path, pip_index: str, *, numpy: str = "numpy", threads: str = "2") -> Path:
    return write_project(
        root,
        f"""
        channels = ["{channel}"]
        platforms = ["linux-64"]
        python = "3.11"
        conda = ["mlenv-hello ==1.0.0", "{numpy}"]
        pip = ["mlenv-tiny==0.1.0"]
        pip-index-url = "{pip_index}"
        variables = {{ OMP_NUM_THREADS = "{threads}", API_TOKEN = {{ secret = true }} }}
        """,
        name="fraud",
    )


@pytest.fixture
def registered(tmp_path: Path, channel: Path, pip_index: str) -> Path:
    """fraud:1 (labelled production) in the test's local registry; returns the project."""
    project = make_project(tmp_path / "proj", channel, pip_index)
    mlenv("lock", "--project", str(project), check=True)
    mlenv("register", "--project", str(project), "--label", "production", check=True)
    return project


def test_every_command_takes_a_registered_version_from_an_empty_directory(
    registered: Path, tmp_path: Path, isolated_registry: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    digest = read_lock(registered / "conda-lock.yml").digest()
    prefix = isolated_registry / "envs" / f"fraud-{digest[:12]}"

    first = mlenv("install", "fraud@production", cwd=empty, check=True)
    assert first.stdout.strip() == f"installed fraud sha256:{digest[:12]} into {prefix}"
    assert (prefix / "bin" / "mlenv-hello").is_file()
    # the same digest by number: the same prefix, a no-op
    again = mlenv("install", "fraud:1", cwd=empty, check=True)
    assert again.stdout.strip() == f"{prefix} is up to date with sha256:{digest[:12]}; nothing to do"

    run = mlenv("run", "fraud:1", "--", "sh", "-c", 'mlenv-hello; echo "$OMP_NUM_THREADS $CONDA_PREFIX"', cwd=empty)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [f"hello from {prefix}", f"2 {prefix}"]
    assert "secret variable API_TOKEN is not set" in run.stderr

    verify = mlenv("verify", "fraud@latest", cwd=empty, check=True)
    assert verify.stdout.startswith(f"{prefix} matches conda-lock.yml (sha256:{digest[:12]})")

    explicit = mlenv("export", "fraud:1", "--format", "explicit", cwd=empty, check=True).stdout
    assert "@EXPLICIT" in explicit and "mlenv-hello-1.0.0" in explicit
    sbom = json.loads(mlenv("sbom", "fraud:1", cwd=empty, check=True).stdout)
    assert {c["name"] for c in sbom["components"]} >= {"mlenv-hello", "numpy", "mlenv-tiny"}

    pack = mlenv("pack", "fraud:1", cwd=empty, check=True)
    archive = isolated_registry / "packs" / f"fraud-{digest[:12]}.tar.gz"
    assert pack.stdout.strip().startswith(f"packed fraud sha256:{digest[:12]} -> {archive} (archive sha256:")
    assert archive.is_file()
    conf = mlenv("spark-conf", "fraud:1", cwd=empty, check=True).stdout
    assert f"spark.archives {archive}#environment" in conf and "spark.executorEnv.OMP_NUM_THREADS 2" in conf

    shown = json.loads(mlenv("show", "fraud@production", "--json", cwd=empty, check=True).stdout)
    assert (shown["version"], shown["digest"], shown["fresh"]) == (1, f"sha256:{digest}", None)
    assert shown["definition"]["conda"] == ["mlenv-hello ==1.0.0", "numpy"]
    assert shown["definition"]["variables"]["API_TOKEN"] == {"secret": True}
    tags = mlenv("image", "tag", "fraud:1", cwd=empty, check=True).stdout.split()
    assert tags == [f"fraud:{digest[:12]}", "fraud:v1"]

    assert list(empty.iterdir()) == []  # nothing written where the command ran


def test_a_lockfile_path_is_an_environment_too(registered: Path, tmp_path: Path, isolated_registry: Path) -> None:
    lockfile = registered / "conda-lock.yml"
    digest = read_lock(lockfile).digest()
    result = mlenv("install", str(lockfile), cwd=tmp_path, check=True)
    assert str(isolated_registry / "envs" / f"fraud-{digest[:12]}") in result.stdout
    env_error = mlenv("install", str(lockfile), "--env", "gpu", cwd=tmp_path)
    assert_clean_error(env_error, 2, "--env names an environment of a project", str(lockfile))


def test_the_python_api_loads_installs_and_runs_a_registered_version(
    registered: Path, tmp_path: Path, isolated_registry: Path
) -> None:
    script = (
        "import json, subprocess, sys\n"
        "from hatch_mlenv import Environment\n"
        "env = Environment.load('fraud@production')\n"
        "prefix = env.install()\n"
        "out = subprocess.run(['mlenv-hello'], env=env.activated(prefix), capture_output=True, text=True).stdout\n"
        "print(json.dumps({'name': env.name, 'version': env.version, 'digest': env.digest, 'image': env.image,\n"
        "                  'variables': env.variables, 'prefix': str(prefix), 'out': out.strip()}))\n"
    )
    process = run_process([sys.executable, "-c", script], cwd=tmp_path)
    assert process.returncode == 0, process.stderr
    data = json.loads(process.stdout)
    digest = read_lock(registered / "conda-lock.yml").digest()
    prefix = isolated_registry / "envs" / f"fraud-{digest[:12]}"
    assert data == {"name": "fraud", "version": 1, "digest": digest, "image": f"fraud:{digest[:12]}",
                    "variables": {"API_TOKEN": None, "OMP_NUM_THREADS": "2"}, "prefix": str(prefix),
                    "out": f"hello from {prefix}"}


@pytest.mark.parametrize(
    ("reference", "code", "needles"),
    [
        ("a:b:c", 2, ["malformed reference 'a:b:c'"]),
        ("fraud@", 2, ["malformed reference 'fraud@'"]),
        (":3", 2, ["malformed reference ':3'"]),
        ("fraud:0", 2, ["the version must be an integer"]),
        ("../fraud:3", 2, ["malformed reference '../fraud:3'", "must exist"]),
        ("no/such/dir", 2, ["no/such/dir: no such project directory or lockfile"]),
        ("nope:1", 1, ["nope:1: ", "no environment named 'nope'", "sqlite://"]),
        ("fraud:7", 1, ["fraud:7: fraud has no version 7", "sqlite://"]),
        ("fraud@canary", 1, ["fraud@canary: fraud has no label 'canary'", "sqlite://"]),
    ],
)
def test_bad_references_fail_cleanly_and_create_nothing(
    registered: Path, tmp_path: Path, isolated_registry: Path, reference: str, code: int, needles: list[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for command in (["install", reference], ["run", reference, "--", "true"], ["verify", reference],
                    ["export", reference, "--format", "explicit"]):
        assert_clean_error(mlenv(*command, cwd=empty), code, *needles)
    assert not (isolated_registry / "envs").exists() and list(empty.iterdir()) == []


def test_unreachable_registry_and_corrupted_entry(registered: Path, tmp_path: Path, isolated_registry: Path) -> None:
    unreachable = mlenv("install", "fraud:1", "--registry", "oci://127.0.0.1:9/team", cwd=tmp_path)
    assert_clean_error(unreachable, 1, "127.0.0.1:9")
    database = isolated_registry / "registry.sqlite3"
    with sqlite3.connect(database) as db:
        db.execute("UPDATE versions SET lockfile = replace(lockfile, 'mlenv-hello', 'mlenv-hellx')")
    corrupted = mlenv("install", "fraud:1", cwd=tmp_path)
    assert_clean_error(corrupted, 1, "fraud:1: ", "corrupted")
    assert not (isolated_registry / "envs").exists()


def test_an_archived_version_is_used_by_number_with_a_note_and_not_by_label(
    registered: Path, tmp_path: Path
) -> None:
    mlenv("archive", "fraud:1", check=True)
    by_number = mlenv("export", "fraud:1", "--format", "explicit", cwd=tmp_path)
    assert by_number.returncode == 0 and "mlenv: note: fraud:1 is archived" in by_number.stderr
    by_label = mlenv("export", "fraud@production", "--format", "explicit", cwd=tmp_path)
    assert_clean_error(by_label, 1, "fraud@production points at fraud:1, which is archived", "mlenv restore fraud:1")


def test_gc_frees_what_no_live_version_or_project_uses(
    registered: Path, tmp_path: Path, channel: Path, pip_index: str, isolated_registry: Path
) -> None:
    mlenv("install", "fraud:1", cwd=tmp_path, check=True)
    other = make_project(tmp_path / "other", channel, pip_index, numpy="numpy ==1.26.4", threads="4")
    pyproject = other / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("mlenv-hello ==1.0.0", "mlenv-hello ==1.1.0"))
    mlenv("lock", "--project", str(other), check=True)
    mlenv("install", "--project", str(other), check=True)  # a project install: its packages stay in use
    digest = read_lock(registered / "conda-lock.yml").digest()
    prefix = isolated_registry / "envs" / f"fraud-{digest[:12]}"
    packages = isolated_registry / "cache" / "pkgs"
    hello_1_0 = next(packages.glob("mlenv-hello-1.0.0-*[!k]"))
    hello_1_1 = next(packages.glob("mlenv-hello-1.1.0-*[!k]"))

    assert "freed 0 B (0 removed" in mlenv("gc", check=True).stdout  # everything is in use
    mlenv("archive", "fraud:1", check=True)
    dry = json.loads(mlenv("gc", "--dry-run", "--json", check=True).stdout)
    removed = {Path(entry["path"]) for entry in dry["removed"]}
    assert {prefix, isolated_registry / "versions" / prefix.name, hello_1_0} <= removed
    assert hello_1_1 not in removed and dry["freed_bytes"] > 0
    assert prefix.is_dir() and hello_1_0.is_dir()  # a dry run removes nothing
    assert "freed 0 B" in mlenv("gc", "--older-than", "1", check=True).stdout  # all of it is recent
    result = mlenv("gc", check=True)
    assert f"removed {prefix}" in result.stdout
    assert not prefix.exists() and not hello_1_0.exists() and hello_1_1.is_dir()
    assert "nothing to do" in mlenv("install", "--project", str(other), check=True).stdout

    mlenv("restore", "fraud:1", check=True)  # usable again: reinstalled from the channel
    assert mlenv("install", "fraud:1", cwd=tmp_path, check=True).stdout.startswith("installed fraud")


def test_import_a_registered_definition_and_diff_shows_definition_changes(
    registered: Path, tmp_path: Path, channel: Path, pip_index: str
) -> None:
    new = tmp_path / "new"
    new.mkdir()
    header = '[project]\nname = "fraud"  # keep this comment\nversion = "0.2.0"\n\n[tool.other]\nx = 1\n'
    (new / "pyproject.toml").write_text(header)
    result = mlenv("import", "fraud@production", "--project", str(new), check=True)
    assert "imported 3 conda, 1 pip packages and 2 variables from fraud@production" in result.stdout
    text = (new / "pyproject.toml").read_text()
    assert text.startswith(header)  # the rest kept byte for byte
    assert "API_TOKEN = {secret = true}" in text.replace('{ secret = true }', '{secret = true}')
    mlenv("lock", "--project", str(new), check=True)
    # the same definition locks the same environment
    assert read_lock(new / "conda-lock.yml").digest() == read_lock(registered / "conda-lock.yml").digest()

    pyproject = registered / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('OMP_NUM_THREADS = "2"', 'OMP_NUM_THREADS = "8"'))
    mlenv("lock", "--project", str(registered), check=True)
    mlenv("register", "--project", str(registered), check=True)
    diff = json.loads(mlenv("diff", "fraud:1", "fraud:2", "--json", check=True).stdout)
    assert diff["definition"]["changed"] == {"variables.OMP_NUM_THREADS": ["2", "8"]}
    text_diff = mlenv("diff", "fraud:1", str(registered), check=True).stdout
    assert 'variable OMP_NUM_THREADS: "2" → "8"' in text_diff.splitlines()
    assert text_diff.count("OMP_NUM_THREADS") == 1  # said once, in the one format for variables

    no_definition = mlenv("register", "--lockfile", str(new / "conda-lock.yml"), "--name", "bare", check=True)
    assert no_definition.returncode == 0
    refused = mlenv("import", "bare:1", "--project", str(new))
    assert_clean_error(refused, 2, "bare:1", "registered without its definition")


def test_hatch_environment_and_pytest_plugin_take_a_registered_version(tmp_path: Path) -> None:
    from fixtures.host_python import host_python_minor, make_host_python_channel

    channel = make_host_python_channel(tmp_path / "channel")
    team = write_project(tmp_path / "team", f'channels = ["{channel}"]\nplatforms = ["linux-64"]\n'
                         f'python = "{host_python_minor()}"\nconda = ["mlenv-hello ==1.0.0"]\n', name="base-env")
    mlenv("lock", "--project", str(team), check=True)
    mlenv("register", "--project", str(team), "--label", "production", check=True)
    digest = read_lock(team / "conda-lock.yml").digest()

    project = write_project(tmp_path / "app", f'channels = ["{channel}"]\n', name="app", extra="""
        [tool.hatch.envs.prod]
        type = "mlenv"
        env = "base-env@production"
        skip-install = true
        """)
    (project / "test_sample.py").write_text("def test_runs():\n    assert True\n")
    hatch = [sys.executable, "-m", "hatch"]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HATCH_ENV")}
    environ |= {"HATCH_DATA_DIR": str(tmp_path / "hatch-data"), "HATCH_CACHE_DIR": str(tmp_path / "hatch-cache")}
    run = run_process([*hatch, "run", "prod:sh", "-c", "mlenv-hello"], cwd=project, env=environ)
    prefix = project / ".mlenv" / "envs" / "base-env@production"
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"hello from {prefix}"
    assert json.loads((prefix / ".mlenv-state.json").read_text())["digest"] == digest
    assert not (project / "conda-lock.yml").exists()  # the project's own lock is not involved

    host_site = [p for p in sys.path if p.endswith("site-packages")]
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), *host_site])}

    def pytest_in_prefix(option: str) -> subprocess.CompletedProcess[str]:
        return run_process([str(prefix / "bin" / "python"), "-m", "pytest", "-p", "no:cacheprovider", option],
                           cwd=project, env=environ)

    ok = pytest_in_prefix("--mlenv-verify=base-env:1")
    assert ok.returncode == 0 and f"matches the lock (sha256:{digest[:12]})" in ok.stdout, ok.stdout + ok.stderr
    unknown = pytest_in_prefix("--mlenv-verify=base-env:9")
    assert unknown.returncode == 4 and "base-env has no version 9" in unknown.stderr


@pytest.fixture
def team_registry(oci_registry, monkeypatch: pytest.MonkeyPatch) -> str:  # noqa: ANN001
    monkeypatch.setenv("MLENV_REGISTRY_USERNAME", oci_registry.user)
    monkeypatch.setenv("MLENV_REGISTRY_PASSWORD", oci_registry.password)
    return oci_registry.url(f"team{uuid.uuid4().hex[:8]}")


def test_the_team_path_through_the_oci_registry(
    tmp_path: Path, channel: Path, pip_index: str, team_registry: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a first machine registers two versions into the team's registry
    monkeypatch.setenv("MLENV_HOME", str(tmp_path / "first-home"))
    project = make_project(tmp_path / "proj", channel, pip_index)
    mlenv("lock", "--project", str(project), check=True)
    mlenv("register", "--project", str(project), "--registry", team_registry, "--label", "production", check=True)
    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('OMP_NUM_THREADS = "2"', 'OMP_NUM_THREADS = "6"'))
    mlenv("lock", "--project", str(project), check=True)
    mlenv("register", "--project", str(project), "--registry", team_registry, check=True)
    digest = read_lock(project / "conda-lock.yml").digest()

    # a second machine: no project, only the registry's URL
    second = tmp_path / "second-home"
    monkeypatch.setenv("MLENV_HOME", str(second))
    monkeypatch.setenv("MLENV_REGISTRY", team_registry)
    empty = tmp_path / "empty"
    empty.mkdir()
    listing = json.loads(mlenv("list", "--json", cwd=empty, check=True).stdout)
    assert [(e["name"], e["latest"], e["labels"]) for e in listing] == [("fraud", 2, {"latest": 2, "production": 1})]
    installed = mlenv("install", "fraud@latest", cwd=empty, check=True)
    prefix = second / "envs" / f"fraud-{digest[:12]}"
    assert str(prefix) in installed.stdout
    run = mlenv("run", "fraud:2", "--", "sh", "-c", 'mlenv-hello; echo "$OMP_NUM_THREADS"', cwd=empty, check=True)
    assert run.stdout.splitlines() == [f"hello from {prefix}", "6"]
    assert mlenv("verify", "fraud:2", cwd=empty, check=True).returncode == 0
    packed = mlenv("pack", "fraud:2", cwd=empty, check=True)
    assert (second / "packs" / f"fraud-{digest[:12]}.tar.gz").is_file(), packed.stdout
    production = json.loads(mlenv("show", "fraud@production", "--json", cwd=empty, check=True).stdout)
    assert production["version"] == 1 and production["registry"] == team_registry
    assert production["definition"]["variables"]["OMP_NUM_THREADS"] == "2"

    # the local copy is checked against the stored digest before use
    materialized = second / "versions" / prefix.name / "conda-lock.yml"
    materialized.write_text(materialized.read_text().replace("mlenv-hello", "mlenv-hellx"))
    assert "up to date" in mlenv("install", "fraud:2", cwd=empty, check=True).stdout
    assert "mlenv-hellx" not in materialized.read_text()  # rewritten from the verified registry copy
    definition = materialized.parent / "pyproject.toml"
    definition.write_text(definition.read_text().replace('OMP_NUM_THREADS = "6"', 'OMP_NUM_THREADS = "9"'))
    rerun = mlenv("run", "fraud:2", "--", "sh", "-c", 'echo "$OMP_NUM_THREADS"', cwd=empty, check=True)
    assert rerun.stdout.strip() == "6" and 'OMP_NUM_THREADS = "6"' in definition.read_text()
    assert list(empty.iterdir()) == []


def test_run_parses_ref_options_and_commands_that_contain_double_dashes(registered: Path, tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return mlenv("run", *args, cwd=tmp_path)

    options_after_ref = run("fraud:1", "--ignore-system-requirements", "--prefix", str(tmp_path / "p"), "--",
                            "mlenv-hello")
    assert options_after_ref.stdout.strip() == f"hello from {tmp_path / 'p'}", options_after_ref.stderr
    # two arguments before `--`: no REF, everything is the command (with its own `--`)
    own = run("--project", str(registered), "sh", "-c", 'echo "$@"', "sh", "a", "--", "b")
    assert own.returncode == 0 and own.stdout.strip() == "a -- b", own.stderr
    inner = run("--project", str(registered), "--", "sh", "-c", 'echo "$@"', "sh", "--", "x")
    assert inner.stdout.strip() == "-- x"
    bare = run("pytest", "--", "-k", "x")
    assert_clean_error(bare, 1, "no environment named 'pytest'", "write `mlenv run -- pytest ...`")


def test_gc_keeps_what_other_registries_and_lockfile_installs_use(
    registered: Path, tmp_path: Path, isolated_registry: Path
) -> None:
    team = f"sqlite://{tmp_path / 'team.sqlite3'}"
    mlenv("register", "--project", str(registered), "--registry", team, check=True)
    mlenv("install", "fraud:1", "--registry", team, cwd=tmp_path, check=True)
    copy = tmp_path / "copy" / "conda-lock.yml"
    copy.parent.mkdir()
    copy.write_text((registered / "conda-lock.yml").read_text())
    mlenv("install", str(copy), cwd=tmp_path, check=True)
    mlenv("archive", "fraud:1", check=True)  # archived in the local registry only
    digest = read_lock(copy).digest()
    dry = json.loads(mlenv("gc", "--dry-run", "--json", check=True).stdout)
    assert not any(f"fraud-{digest[:12]}" in entry["path"] for entry in dry["removed"]), dry["removed"]
    copy.unlink()
    mlenv("archive", "fraud:1", "--registry", team, check=True)
    removed = {Path(e["path"]).name for e in json.loads(mlenv("gc", "--json", check=True).stdout)["removed"]}
    assert f"fraud-{digest[:12]}" in removed
    (tmp_path / "team.sqlite3").unlink()
    (tmp_path / "team.sqlite3").mkdir()  # the team registry can no longer be read: gc removes nothing
    assert_clean_error(mlenv("gc"), 1, "cannot tell what", "nothing was removed")


def test_import_a_dotted_label_and_definitions_keep_no_literal_credentials(
    registered: Path, tmp_path: Path, channel: Path
) -> None:
    mlenv("label", "fraud:1", "v1.2", check=True)
    new = write_project(tmp_path / "new", "", name="new")
    assert mlenv("import", "fraud@v1.2", "--project", str(new), check=True).returncode == 0
    assert "mlenv-hello ==1.0.0" in (new / "pyproject.toml").read_text()
    project = write_project(tmp_path / "spark", f"""
        channels = ["{channel}"]
        platforms = ["linux-64"]
        conda = ["mlenv-hello ==1.0.0"]
        [tool.mlenv.spark]
        repositories = ["https://dave:tok3n@maven.example.com/repo", "https://${{MAVEN_USER}}:${{MAVEN_TOKEN}}@m.example.com/r"]
        """)
    from hatch_mlenv.spec import load_spec

    stored = json.dumps(load_spec(project).definition())
    assert "tok3n" not in stored and "dave" not in stored and "${MAVEN_TOKEN}" in stored


def test_a_reference_on_a_machine_with_no_registry_creates_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "fresh-home"
    monkeypatch.setenv("MLENV_HOME", str(home))
    assert_clean_error(mlenv("install", "fraud:1", cwd=tmp_path), 1, "fraud:1: no environment named 'fraud'")
    assert_clean_error(mlenv("show", "fraud", "--registry", f"sqlite://{tmp_path / 'nodir' / 'r.sqlite3'}",
                             cwd=tmp_path), 1, "does not exist")
    assert not home.exists() and not (tmp_path / "nodir").exists()


def test_a_directory_named_like_a_reference_is_said_so(registered: Path, tmp_path: Path) -> None:
    (tmp_path / "fraud").mkdir()
    result = mlenv("install", "fraud", cwd=tmp_path)
    assert_clean_error(result, 2, "fraud: a directory here without pyproject.toml", "write fraud@latest")
    assert mlenv("install", "fraud@latest", cwd=tmp_path, check=True).stdout.startswith("installed fraud")
