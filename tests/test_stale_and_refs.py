"""Issue 23, items 1, 2, 6 and 7: one stale-lock policy for every command that uses a lock
(relock by default and say so, `--locked` refuses, `--frozen` takes it as it is; the same words
in `[tool.mlenv] lock` and `MLENV_LOCKED`/`MLENV_FROZEN`), a lockfile path is a reference
everywhere (`show` included), the hatch environment's own project is known to `verify` and kept
by `install`, and image contexts and builds check the lock and the base before contacting anything.

Each test is one "Why" bullet of the issue, asserting on what the user sees: the first line,
the exit code, and the files left untouched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hatch_mlenv.lockfile import read_lock
from tests.conftest import LOCK_SAMPLES, assert_clean_error, mlenv, tree_hashes, write_project
from tests.test_hatch_env import hatch, hatch_home, host_channel, make_project, ok, site_packages  # noqa: F401

ECHO = ["--", "sh", "-c", 'echo "$OMP_NUM_THREADS"']


def project_with_threads(root: Path, channel: Path, threads: str = "4", extra: str = "") -> Path:
    return write_project(root, f"""
        channels = ["{channel}"]
        platforms = ["linux-64"]
        conda = ["mlenv-hello ==1.0.0"]
        {extra}
        [tool.mlenv.variables]
        OMP_NUM_THREADS = "{threads}"
        """)


def set_threads(project: Path, old: str, new: str) -> None:
    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace(f'OMP_NUM_THREADS = "{old}"', f'OMP_NUM_THREADS = "{new}"'))


def notes(result) -> list[str]:  # noqa: ANN001
    """What the command said it did with the lock (progress lines aside)."""
    return [line for line in result.stderr.splitlines() if line.startswith("mlenv: note: ")]


@pytest.fixture
def stale(tmp_path: Path, channel: Path) -> Path:
    """A project locked and installed with OMP_NUM_THREADS = 4, then edited to 6 and not relocked."""
    project = project_with_threads(tmp_path / "proj", channel)
    mlenv("lock", "--project", str(project), check=True)
    mlenv("install", "--project", str(project), check=True)
    set_threads(project, "4", "6")
    return project


# -- Why 1: `mlenv run` and `mlenv install` used a stale lock silently ---------------------------

RELOCKING = "mlenv: note: conda-lock.yml is stale (tool.mlenv.variables changed); relocking"


def test_run_relocks_a_stale_lock_and_says_so_in_one_line(stale: Path) -> None:
    old_digest = read_lock(stale / "conda-lock.yml").digest()
    result = mlenv("run", "--project", str(stale), *ECHO)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "6\n"
    assert notes(result) == [RELOCKING]
    assert read_lock(stale / "conda-lock.yml").variables == {"OMP_NUM_THREADS": "6"}
    assert read_lock(stale / "conda-lock.yml").digest() != old_digest
    again = mlenv("run", "--project", str(stale), *ECHO)
    assert again.stdout == "6\n" and notes(again) == []  # fresh now: nothing to say
    assert "is fresh" in mlenv("lock", "--check", "--project", str(stale), check=True).stdout


def test_locked_refuses_a_stale_lock_and_touches_nothing(stale: Path) -> None:
    before = tree_hashes(stale)
    for command in (["run", *ECHO], ["install"], ["image", "tag"], ["export", "--format", "explicit"], ["sbom"],
                    ["spark-conf"], ["pack"], ["register"], ["verify"]):
        result = mlenv(*command, "--locked", "--project", str(stale)) if command[0] != "run" \
            else mlenv("run", "--locked", "--project", str(stale), *ECHO)
        assert_clean_error(result, 1, "conda-lock.yml is stale: [tool.mlenv] in pyproject.toml changed",
                           "(--locked)", "run `mlenv lock`")
        assert result.stdout == "", command
        assert tree_hashes(stale) == before, command
    assert mlenv("list", "--json", check=True).stdout.strip() == "[]"  # nothing registered


def test_frozen_uses_the_lock_as_it_is(stale: Path) -> None:
    before = tree_hashes(stale)
    result = mlenv("run", "--frozen", "--project", str(stale), *ECHO)
    assert result.returncode == 0 and result.stdout == "4\n" and notes(result) == []
    installed = mlenv("install", "--frozen", "--project", str(stale), check=True)
    assert "is up to date" in installed.stdout and "nothing to do" in installed.stdout
    old_tag = mlenv("image", "tag", "--frozen", "--project", str(stale), check=True).stdout
    assert old_tag.strip().endswith(read_lock(stale / "conda-lock.yml").digest()[:12])
    assert tree_hashes(stale) == before
    assert_clean_error(mlenv("run", "--locked", "--frozen", "--project", str(stale), *ECHO), 2,
                       "--locked and --frozen exclude each other")


def test_install_and_image_tag_follow_the_spec_by_default(stale: Path) -> None:
    old_tag = mlenv("image", "tag", "--frozen", "--project", str(stale), check=True).stdout.strip()
    installed = mlenv("install", "--project", str(stale))
    assert installed.returncode == 0, installed.stderr
    assert notes(installed) == [RELOCKING]
    assert installed.stdout.startswith("updated demo sha256:")  # not "up to date; nothing to do"
    new_tag = mlenv("image", "tag", "--project", str(stale), check=True).stdout.strip()
    assert new_tag != old_tag and new_tag.endswith(read_lock(stale / "conda-lock.yml").digest()[:12])


def test_stdout_of_exporting_commands_is_only_their_output(stale: Path) -> None:
    exported = mlenv("export", "--format", "explicit", "--project", str(stale), check=True)
    assert exported.stdout.startswith("# demo for linux-64") and notes(exported) == [RELOCKING]
    sbom = mlenv("sbom", "--project", str(stale), check=True)
    assert json.loads(sbom.stdout)["bomFormat"] == "CycloneDX"


def test_register_relocks_by_default(stale: Path) -> None:
    registered = mlenv("register", "--project", str(stale), check=True)
    assert notes(registered) == [RELOCKING]
    assert registered.stdout.strip() == f"demo:1 sha256:{read_lock(stale / 'conda-lock.yml').digest()} (new)"


def test_the_same_words_in_the_spec_and_in_the_environment(stale: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pyproject = stale / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("[tool.mlenv.variables]", 'lock = "locked"\n[tool.mlenv.variables]'))
    before, before_lock = tree_hashes(stale), (stale / "conda-lock.yml").read_bytes()
    assert_clean_error(mlenv("run", "--project", str(stale), *ECHO), 1, "is stale",
                       '(tool.mlenv.lock = "locked")')
    assert tree_hashes(stale) == before
    frozen = mlenv("run", "--frozen", "--project", str(stale), *ECHO, check=True)  # a flag wins over the spec
    assert frozen.stdout == "4\n"
    monkeypatch.setenv("MLENV_FROZEN", "1")
    assert mlenv("run", "--project", str(stale), *ECHO, check=True).stdout == "4\n"  # the variable wins
    monkeypatch.setenv("MLENV_LOCKED", "1")
    assert_clean_error(mlenv("run", "--project", str(stale), *ECHO), 2, "MLENV_LOCKED and MLENV_FROZEN")
    monkeypatch.delenv("MLENV_FROZEN")
    assert_clean_error(mlenv("run", "--project", str(stale), *ECHO), 1, "is stale", "(MLENV_LOCKED=1)")
    assert tree_hashes(stale) == before
    monkeypatch.delenv("MLENV_LOCKED")
    pyproject.write_text(pyproject.read_text().replace('lock = "locked"', 'lock = "sometimes"'))
    assert_clean_error(mlenv("run", "--project", str(stale), *ECHO), 2, "pyproject.toml: tool.mlenv.lock",
                       "must be one of 'relock', 'locked', 'frozen'")
    assert (stale / "conda-lock.yml").read_bytes() == before_lock


def test_what_only_describes_a_lock_says_it_is_stale_and_writes_nothing(stale: Path) -> None:
    before = tree_hashes(stale)
    for command in (["verify"], ["doctor"], ["diff", str(stale / "conda-lock.yml"), str(stale)]):
        result = mlenv(*command, "--project", str(stale)) if command[0] != "diff" else mlenv(*command)
        assert result.returncode == 0, (command, result.stdout, result.stderr)
        assert notes(result) == ["mlenv: note: conda-lock.yml is stale (tool.mlenv.variables changed); using it "
                                 "as it is (`mlenv lock` locks it again)"], command
    assert tree_hashes(stale) == before
    shown = json.loads(mlenv("show", "--json", "--project", str(stale), check=True).stdout)
    assert shown["fresh"] is False and "changed since" in shown["stale_reason"]
    assert_clean_error(mlenv("show", "--locked", "--project", str(stale)), 1, "is stale", "(--locked)")
    assert tree_hashes(stale) == before


def test_a_relock_that_fails_fails_the_command_and_keeps_the_old_lock(stale: Path) -> None:
    pyproject = stale / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("mlenv-hello ==1.0.0", "mlenv-hello ==9.9"))
    lock_before = (stale / "conda-lock.yml").read_bytes()
    result = mlenv("run", "--project", str(stale), *ECHO)
    assert_clean_error(result, 1, "cannot solve the environment for linux-64", "mlenv-hello ==9.9")
    assert result.stdout == ""
    assert (stale / "conda-lock.yml").read_bytes() == lock_before


def test_a_missing_lock_is_locked_unless_locked(tmp_path: Path, channel: Path) -> None:
    project = project_with_threads(tmp_path / "proj", channel)
    before = tree_hashes(project)
    assert_clean_error(mlenv("run", "--locked", "--project", str(project), *ECHO), 1,
                       "conda-lock.yml is stale: conda-lock.yml does not exist")
    assert_clean_error(mlenv("run", "--frozen", "--project", str(project), *ECHO), 1, "lockfile not found")
    assert tree_hashes(project) == before
    result = mlenv("run", "--project", str(project), *ECHO, check=True)
    assert result.stdout == "4\n" and notes(result) == ["mlenv: note: conda-lock.yml does not exist; locking demo"]


def test_a_lockfile_or_a_registered_version_is_what_it_is(stale: Path, tmp_path: Path) -> None:
    lockfile = stale / "conda-lock.yml"
    for flag in ("--locked", "--frozen"):  # nothing to be stale against: the flags change nothing
        result = mlenv("run", str(lockfile), flag, *ECHO, cwd=tmp_path)
        assert result.returncode == 0 and result.stdout == "4\n" and notes(result) == [], result.stderr


# -- Why 2: `mlenv show PATH/conda-lock.yml` failed for every lockfile ---------------------------

@pytest.mark.parametrize("which", ["ours", "numpy-conda-lock.yml", "robostack-turtlesim-conda-lock.yml"])
def test_show_takes_a_lockfile_path_and_writes_nothing(which: str, tmp_path: Path, channel: Path,
                                                     isolated_registry: Path, shared_data: Path) -> None:
    if which == "ours":
        project = project_with_threads(tmp_path / "proj", channel)
        mlenv("lock", "--project", str(project), check=True)
        lockfile = project / "conda-lock.yml"
    else:
        lockfile = LOCK_SAMPLES / which
    def written() -> dict[str, str]:  # the user data directory; caches aside
        return {k: v for k, v in tree_hashes(isolated_registry).items() if not k.startswith("cache")}

    home = written()
    shown = mlenv("show", str(lockfile), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    digest = read_lock(lockfile).digest()
    assert f"sha256:{digest}" in shown.stdout.split("image")[0]  # the first line (rich may wrap it)
    data = json.loads(mlenv("show", str(lockfile), "--json", cwd=tmp_path, check=True).stdout)
    assert data["digest"] == f"sha256:{digest}" and data["lockfile"] == str(lockfile) and data["fresh"] is None
    assert written() == home and not (isolated_registry / "versions").exists()
    assert list(tmp_path.iterdir()) == ([tmp_path / "proj"] if which == "ours" else [])


def test_every_reading_command_takes_a_lockfile_path(tmp_path: Path, channel: Path, shared_data: Path) -> None:
    project = project_with_threads(tmp_path / "proj", channel)
    mlenv("lock", "--project", str(project), check=True)
    ours, theirs = str(project / "conda-lock.yml"), str(LOCK_SAMPLES / "numpy-conda-lock.yml")
    for lockfile in (ours, theirs):
        for command in (["show"], ["image", "tag"], ["export", "--format", "explicit", "--platform", "linux-64"],
                        ["sbom"], ["doctor", "--json"], ["spark-conf"]):
            result = mlenv(*command[:2], lockfile, *command[2:], cwd=tmp_path) if command[0] == "image" \
                else mlenv(command[0], lockfile, *command[1:], cwd=tmp_path)
            assert result.returncode in (0, 1) and "error:" not in result.stderr, (command, result.stderr)
    same = mlenv("diff", ours, str(project), cwd=tmp_path, check=True).stdout
    assert " ".join(same.split()).endswith("are the same environment")
    assert mlenv("run", ours, *ECHO, cwd=tmp_path, check=True).stdout == "4\n"
    # `import` takes a definition (an environment.yml, a registered version): a lock has none to give
    target = tmp_path / "target"
    for lockfile in (ours, theirs):
        assert_clean_error(mlenv("import", lockfile, "--project", str(target)), 2,
                           "a conda-lock.yml, not an environment.yml", "use it as a REF")
    assert not target.exists()


# -- Why 3: `verify` failed after `hatch run`; a repairing `install` removed the project --------

def test_verify_knows_the_hatch_environments_project_and_install_keeps_it(tmp_path: Path,
                                                                         host_channel: Path) -> None:  # noqa: F811
    project = make_project(tmp_path / "demo", host_channel)
    mlenv("lock", "--project", str(project), check=True)
    prefix = project / ".mlenv" / "envs" / "demo"
    ok(hatch("run", "train:python", "-c", "import demo", cwd=project))
    pth = [p.name for p in site_packages(prefix).glob("*.pth")]
    assert pth

    verified = mlenv("verify", "--project", str(project))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.splitlines() == [f"{prefix} matches conda-lock.yml (sha256:"
                                            f"{read_lock(project / 'conda-lock.yml').digest()[:12]})",
                                            "  also pip demo 0.1.0 (added by the hatch environment)"]
    data = json.loads(mlenv("verify", "--json", "--project", str(project), check=True).stdout)
    assert data["identical"] is True and data["extra"] == []
    assert data["added"] == ["pip demo 0.1.0 (added by the hatch environment)"]

    # damage a locked package: the repair rebuilds the prefix and keeps the project's editable install
    (prefix / "bin" / "mlenv-hello").unlink()
    repaired = mlenv("install", "--project", str(project), check=True)
    assert repaired.stdout.startswith("repaired demo") and "mlenv-hello" in repaired.stdout
    assert [p.name for p in site_packages(prefix).glob("*.pth")] == pth
    assert (site_packages(prefix) / "demo-0.1.0.dist-info").is_dir()
    assert mlenv("verify", "--project", str(project), check=True).stdout.endswith("(added by the hatch environment)\n")
    assert "nothing to do" in mlenv("install", "--verify", "--project", str(project), check=True).stdout
    again = hatch("run", "train:python", "-c", "import demo; print(demo.VALUE)", cwd=project)
    assert ok(again).strip() == "1" and "installed" not in again.stderr  # nothing to install again

    # an update (the spec changed) keeps it recorded: the next install is not a repair
    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('OMP_NUM_THREADS = "2"', 'OMP_NUM_THREADS = "3"'))
    updated = mlenv("install", "--project", str(project), check=True)
    assert updated.stdout.startswith("updated demo")
    assert json.loads((prefix / ".mlenv-state.json").read_text())["additions"] == ["demo"]
    assert "nothing to do" in mlenv("install", "--verify", "--project", str(project), check=True).stdout

    # an install of it that was modified is not carried over: said so, and hatch installs it again
    pth_file = site_packages(prefix) / pth[0]
    pth_file.write_text(pth_file.read_text() + "\n")
    repaired = mlenv("install", "--project", str(project), check=True)
    assert repaired.stdout.startswith("repaired demo")
    assert "mlenv: note: demo (installed by the hatch environment) was modified" in repaired.stderr
    assert not (site_packages(prefix) / "demo-0.1.0.dist-info").exists()
    ok(hatch("run", "train:python", "-c", "import demo", cwd=project))
    assert (site_packages(prefix) / "demo-0.1.0.dist-info").is_dir()


def test_a_recorded_name_does_not_hide_a_package_from_an_index(tmp_path: Path, channel: Path) -> None:
    """Only a project installed from its directory by hatch-mlenv is known: naming another
    distribution in the install record does not make it so."""
    project = project_with_threads(tmp_path / "proj", channel, extra='python = "3.11"')
    mlenv("lock", "--project", str(project), check=True)
    mlenv("install", "--project", str(project), check=True)
    prefix = project / ".mlenv" / "envs" / "demo"
    site = prefix / "lib" / "python3.11" / "site-packages"
    dist_info = site / "intruder-1.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: intruder\nVersion: 1.0\n")
    (dist_info / "INSTALLER").write_text("hatch-mlenv\n")
    (dist_info / "RECORD").write_text("intruder-1.0.dist-info/METADATA,,\n")
    state = json.loads((prefix / ".mlenv-state.json").read_text())
    (prefix / ".mlenv-state.json").write_text(json.dumps({**state, "additions": ["intruder"]}))
    result = mlenv("verify", "--json", "--project", str(project))
    assert result.returncode == 1 and json.loads(result.stdout)["extra"] == ["pip intruder 1.0"]


# -- Why 4: image contexts and builds checked the lock and the base after contacting Docker -----

@pytest.fixture
def no_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'no-engine.sock'}")


def test_an_oci_layout_base_is_a_config_error_for_dockerfiles(tmp_path: Path, channel: Path,
                                                              no_engine: None) -> None:
    project = project_with_threads(tmp_path / "proj", channel, extra='[tool.mlenv.docker]\nbase-image = "oci:layout:busybox"')
    mlenv("lock", "--project", str(project), check=True)
    before = tree_hashes(project)
    for command in (["context", "--strategy", "dockerfile", "-o", str(tmp_path / "ctx")],
                    ["context", "--strategy", "host", "-o", str(tmp_path / "ctx")],
                    ["build"], ["push"]):
        result = mlenv("image", *command, "--project", str(project))
        assert_clean_error(result, 2, "pyproject.toml: tool.mlenv.docker.base-image", "'oci:layout:busybox'",
                           "only the oci builder reads")
        assert "cannot reach" not in result.stderr
    assert not (tmp_path / "ctx").exists() and tree_hashes(project) == before


def test_a_lock_without_linux_is_refused_before_the_engine_and_the_registry(tmp_path: Path, channel: Path,
                                                                           no_engine: None) -> None:
    project = write_project(tmp_path / "proj", f"""
        channels = ["{channel}"]
        platforms = ["osx-arm64"]
        conda = ["mlenv-hello"]
        registry = "oci://127.0.0.1:9/unreachable"
        [tool.mlenv.docker]
        registry = "127.0.0.1:9"
        """)
    mlenv("lock", "--project", str(project), check=True)
    for command in (["build"], ["build", "--builder", "oci", "-o", str(tmp_path / "img")], ["push"],
                    ["context", "-o", str(tmp_path / "ctx")], ["context", "--strategy", "dockerfile", "-o",
                                                               str(tmp_path / "ctx")]):
        result = mlenv("image", *command, "--project", str(project))
        assert_clean_error(result, 1, "conda-lock.yml: the lock has no linux-64 packages (platforms: osx-arm64)")
    assert not (tmp_path / "ctx").exists() and not (tmp_path / "img").exists()
