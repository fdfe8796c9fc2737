"""The README's table of exit codes, command by command: 0 done; 1 the thing failed, is not there
or drifted; 2 the request or the configuration is wrong. Each failing case also shows one first
line (`error: ...`, where the command reports an error rather than a result) and leaves every
file of the projects, the prefixes and the registry as it was."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import assert_clean_error, mlenv, tree_hashes, write_project


@dataclass(frozen=True)
class World:
    root: Path
    home: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, channel: Path) -> World:
    """Projects for every case, locked, installed and registered once: `locked` (installed in its
    default prefix, registered as demo:1), `unlocked`, `stale` (its spec changed since its lock),
    `broken` (an unknown key), `unsolvable`, `osx` (no linux-64 packages), `drifted` (a prefix with a
    file changed), and `empty`, a directory that holds no environment."""
    root = tmp_path_factory.mktemp("world")
    home = root / "home"

    def project(name: str, body: str = 'conda = ["mlenv-hello"]\n', platforms: str = "linux-64") -> Path:
        return write_project(root / name, f'channels = ["{channel}"]\nplatforms = ["{platforms}"]\n{body}')

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLENV_HOME", str(home))
        locked, stale, osx = project("locked"), project("stale"), project("osx", platforms="osx-arm64")
        for target in (locked, stale, osx):
            mlenv("lock", "--project", str(target), check=True)
        (stale / "pyproject.toml").write_text((stale / "pyproject.toml").read_text() + '[tool.mlenv.variables]\nX = "1"\n')
        project("unlocked")
        project("broken", 'conda = ["mlenv-hello"]\nchanels = []\n')
        project("unsolvable", 'conda = ["no-such-package"]\n')
        mlenv("install", "--project", str(locked), check=True)
        mlenv("install", "--project", str(locked), "--prefix", str(root / "drifted"), check=True)
        (root / "drifted" / "bin" / "mlenv-hello").write_text("#!/bin/sh\necho changed\n")
        mlenv("register", "--project", str(locked), check=True)
        (root / "empty").mkdir()
    return World(root, home)


# (arguments, with {root} for the world's directory; exit code; what the first error line names,
# or None where the command reports a result, not an error)
CASES = [
    # 0: done
    (["lock", "--project", "{root}/locked"], 0, None),
    (["lock", "--check", "--project", "{root}/locked"], 0, None),
    (["show", "{root}/locked"], 0, None),
    (["doctor", "{root}/locked"], 0, None),
    (["install", "{root}/locked"], 0, None),
    (["run", "{root}/locked", "--", "true"], 0, None),
    (["verify", "{root}/locked"], 0, None),
    (["export", "{root}/locked", "--format", "explicit"], 0, None),
    (["sbom", "{root}/locked"], 0, None),
    (["spark-conf", "{root}/locked"], 0, None),
    (["register", "--project", "{root}/locked"], 0, None),
    (["list"], 0, None),
    (["history", "demo"], 0, None),
    (["label", "demo:1", "prod"], 0, None),
    (["restore", "demo:1"], 0, None),
    (["diff", "demo:1", "{root}/locked"], 0, None),
    (["gc", "--dry-run"], 0, None),
    (["image", "tag", "{root}/locked"], 0, None),
    (["curated", "list"], 0, None),
    # 1: the thing failed, is not there, or drifted
    (["lock", "--project", "{root}/unsolvable"], 1, "cannot solve the environment for linux-64"),
    (["lock", "--check", "--project", "{root}/stale"], 1, None),
    (["show", "{root}/unlocked"], 1, "lockfile not found"),
    (["run", "{root}/unlocked", "--frozen", "--", "true"], 1, "lockfile not found"),
    (["run", "{root}/stale", "--locked", "--", "true"], 1, "is stale"),
    (["export", "{root}/unlocked", "--frozen", "--format", "explicit"], 1, "lockfile not found"),
    (["doctor", "{root}/osx"], 1, None),
    (["install", "{root}/osx"], 1, "no packages locked for linux-64"),
    (["image", "build", "{root}/osx"], 1, "no linux-64 packages"),
    (["verify", "{root}/locked", "--prefix", "{root}/empty"], 1, "not installed"),
    (["pack", "{root}/locked", "--prefix", "{root}/empty"], 1, "not installed"),
    (["verify", "{root}/locked", "--prefix", "{root}/drifted"], 1, None),
    (["run", "{root}/locked", "--", "no-such-command-anywhere"], 1, "no-such-command-anywhere"),
    (["history", "nope"], 1, "no environment named 'nope'"),
    (["get", "demo:9", "-o", "{root}/got"], 1, "no version 9"),
    (["label", "demo:9", "prod"], 1, "no version 9"),
    (["archive", "demo:9"], 1, "no version 9"),
    (["diff", "demo:1", "demo:9"], 1, "no version 9"),
    (["show", "demo:9"], 1, "no version 9"),
    # 2: the request or the configuration is wrong
    (["lock", "--project", "{root}/broken"], 2, "tool.mlenv.chanels"),
    (["show", "{root}/broken"], 2, "tool.mlenv.chanels"),
    (["lock", "--check", "--force", "--project", "{root}/locked"], 2, "--check cannot be combined"),
    (["lock", "--project", "{root}/locked", "--update", "nope"], 2, "cannot --update 'nope'"),
    (["install", "{root}/locked", "--env", "nope"], 2, "tool.mlenv.envs.nope"),
    (["doctor", "{root}/locked", "--env", "nope"], 2, "tool.mlenv.envs.nope"),
    (["run", "--project", "{root}/locked"], 2, "missing the command"),
    (["verify", "a:b:c"], 2, "malformed reference"),
    (["pack", "a:b:c"], 2, "malformed reference"),
    (["show", "{root}/nowhere.yml"], 2, "lockfile not found"),
    (["export", "{root}/locked", "--format", "nope"], 2, "--format"),
    (["export", "{root}/locked", "--format", "explicit", "--platform", "win-64"], 2, "no packages locked for win-64"),
    (["spark-conf", "{root}/locked", "--format", "nope"], 2, "--format"),
    (["register", "--lockfile", "{root}/nowhere.yml", "--name", "x"], 2, "--lockfile"),
    (["register", "--lockfile", "{root}/locked/conda-lock.yml"], 2, "--lockfile needs --name"),
    (["label", "demo:1", "latest"], 2, "latest"),
    (["label", "demo", "prod"], 2, "demo"),
    (["archive", "a:b:c"], 2, "malformed reference"),
    (["get", "a:b:c"], 2, "malformed reference"),
    (["diff", "a:b:c", "demo:1"], 2, "malformed reference"),
    (["list", "--registry", "ftp://x"], 2, "unknown registry"),
    (["gc", "--older-than", "-1"], 2, "--older-than"),
    (["curated", "show", "nope"], 2, "unknown curated environment 'nope'"),
    (["import", "{root}/nowhere.yml", "--project", "{root}/unlocked"], 2, "nowhere.yml"),
    (["image", "push", "{root}/locked"], 2, "no registry to push to"),
    (["image", "build", "{root}/locked", "--push"], 2, "no registry to push to"),
    (["image", "build", "{root}/locked", "--builder", "oci"], 2, "needs somewhere to put the image"),
    (["list", "-q", "-v"], 2, "exclude each other"),
    (["no-such-command"], 2, None),
    # the day-two commands (issue 27)
    (["add", "no-such-package", "--project", "{root}/locked"], 1, "cannot solve the environment for linux-64"),
    (["add", "mlenv-hello", "--project", "{root}/broken"], 2, "tool.mlenv.chanels"),
    (["add", "mlenv-hello", "--project", "{root}/empty"], 2, "pyproject.toml"),
    (["add", "--project", "{root}/locked"], 2, "SPEC"),
    (["remove", "nope", "--project", "{root}/locked"], 2, "'nope' is not listed"),
    (["init", "--project", "{root}/locked"], 2, "already defined"),
    (["init", "--from", "{root}/nowhere.yml", "--project", "{root}/empty"], 2, "nowhere.yml"),
    (["outdated", "{root}/unlocked", "--frozen"], 1, "lockfile not found"),
    (["outdated", "{root}/broken"], 2, "tool.mlenv.chanels"),
    (["lock", "--all", "--check", "--project", "{root}/stale"], 1, None),
    (["lock", "--all", "--env", "x", "--project", "{root}/locked"], 2, "--all"),
    (["show", "{root}/locked", "--packages", "--platform", "win-64"], 1, "not locked for win-64"),
    (["copy", "demo:9", "sqlite:///{root}/other.sqlite3"], 1, "no version 9"),
    (["copy", "demo:1", "nowhere"], 2, "unknown registry 'nowhere'"),
    (["copy", "demo:1", "local"], 2, "already in"),
    (["label", "--delete", "demo@nope"], 1, "no label 'nope'"),
    (["label", "--delete", "demo@latest"], 2, "latest"),
    (["registry", "remove", "nope"], 2, "no registry named 'nope'"),
    (["registry", "add", "team", "oci://u:p@127.0.0.1:9/ns"], 2, "holds no credentials"),
    (["show", "nope:demo@prod"], 2, "unknown registry 'nope'"),
    (["show", "oci://127.0.0.1:9/demo:1"], 2, "malformed reference"),
    (["show", "sqlite:///{root}/nowhere.sqlite3#demo:1"], 1, "does not exist"),
    (["outdated", "{root}/locked"], 0, None),
    (["show", "{root}/locked", "--packages"], 0, None),
    (["registry", "list"], 0, None),
]


def _watched(world: World) -> dict[str, str]:
    """Every file the cases could touch: the projects, the prefixes, the registry."""
    return {k: v for k, v in tree_hashes(world.root).items() if not k.startswith(("home/cache/", "got/"))}


@pytest.mark.parametrize(("args", "code", "needle"), CASES, ids=[" ".join(c[0]).replace("{root}/", "") for c in CASES])
def test_exit_code(world: World, args: list[str], code: int, needle: str | None,
                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLENV_HOME", str(world.home))
    before = _watched(world) if code else None
    result = mlenv(*(a.replace("{root}", str(world.root)) for a in args), cwd=world.root)
    try:
        if needle is not None:
            assert_clean_error(result, code, needle)
        else:
            assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
            assert "Traceback" not in result.stderr
        if before is not None:
            assert _watched(world) == before  # a refused or failed command leaves every file as it was
    finally:
        shutil.rmtree(world.root / "got", ignore_errors=True)
