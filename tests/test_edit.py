"""Issue 27, items 1–3: `mlenv init`, `mlenv add`, `mlenv remove` edit `[tool.mlenv]` as a user
would by hand (tomlkit: comments, order and formatting kept), lock, and leave everything as it
was when the result cannot be locked; `mlenv show --packages` lists what is locked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tomllib

from hatch_mlenv.lockfile import read_lock
from tests.conftest import assert_clean_error, mlenv, tree_hashes

PYPROJECT = """\
# a user's own comment, kept
[project]
name = "trainer"
version = "0.1.0"

[tool.mlenv]
name = "trainer-env"
channels = ["{channel}"]   # the team channel
platforms = ["linux-64"]
python = "3.11"
conda = [
    "numpy >=1.26",  # pinned by the team
]

[tool.other]
keep = "me"
"""


def project(tmp_path: Path, channel: Path, extra: str = "") -> Path:
    root = tmp_path / "proj"
    root.mkdir()
    (root / "pyproject.toml").write_text(PYPROJECT.format(channel=channel) + extra)
    return root


def locked(root: Path) -> dict[str, str]:
    return {(p.name): p.version for p in read_lock(root / "conda-lock.yml").packages}


def test_add_edits_in_place_and_locks(tmp_path: Path, channel: Path) -> None:
    root = project(tmp_path, channel)
    before = (root / "pyproject.toml").read_text()
    result = mlenv("add", "mlenv-hello ==1.0.0", "--project", str(root), check=True)
    assert result.stdout.splitlines()[0] == "added mlenv-hello ==1.0.0 to tool.mlenv.conda in " + str(
        (root / "pyproject.toml").resolve()).replace(str(Path.cwd()) + "/", "")
    after = (root / "pyproject.toml").read_text()
    # one line more, every other byte (comments, spacing, the other tables) as it was
    assert after == before.replace('    "numpy >=1.26",  # pinned by the team\n',
                                   '    "numpy >=1.26",  # pinned by the team\n    "mlenv-hello ==1.0.0",\n')
    assert locked(root)["mlenv-hello"] == "1.0.0"
    assert "locked trainer-env for linux-64" in result.stdout
    # the lock is fresh for the edited definition
    assert mlenv("lock", "--check", "--project", str(root)).returncode == 0

    # a package already listed gets the new spec, in its place
    mlenv("add", "numpy ==1.25.2", "--project", str(root), check=True)
    conda = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["mlenv"]["conda"]
    assert conda == ["numpy ==1.25.2", "mlenv-hello ==1.0.0"]
    assert locked(root)["numpy"] == "1.25.2"


def test_unsolvable_add_changes_nothing(tmp_path: Path, channel: Path) -> None:
    root = project(tmp_path, channel)
    mlenv("lock", "--project", str(root), check=True)
    files = tree_hashes(root)
    result = mlenv("add", "no-such-package", "--project", str(root))
    assert_clean_error(result, 1, "cannot solve", "no-such-package")
    assert tree_hashes(root) == files

    result = mlenv("add", "numpy ==9.9", "--project", str(root))
    assert_clean_error(result, 1, "cannot solve")
    assert tree_hashes(root) == files


def test_add_no_lock_and_pip_and_named_env(tmp_path: Path, channel: Path) -> None:
    root = project(tmp_path, channel, '\n[tool.mlenv.envs.gpu]\nconda = ["mlenv-hello"]\n')
    result = mlenv("add", "--pip", "requests>=2", "--no-lock", "--project", str(root), check=True)
    assert "to tool.mlenv.pip" in result.stdout
    assert not (root / "conda-lock.yml").exists()
    data = tomllib.loads((root / "pyproject.toml").read_text())
    assert data["tool"]["mlenv"]["pip"] == ["requests>=2"]
    assert data["tool"]["other"] == {"keep": "me"}

    result = mlenv("add", "numpy", "--env", "gpu", "--no-lock", "--json", "--project", str(root), check=True)
    report = json.loads(result.stdout)
    assert report["key"] == "tool.mlenv.envs.gpu.conda" and report["added"] == ["numpy"] and report["lock"] is None
    data = tomllib.loads((root / "pyproject.toml").read_text())
    assert data["tool"]["mlenv"]["envs"]["gpu"]["conda"] == ["mlenv-hello", "numpy"]

    files = tree_hashes(root)
    assert_clean_error(mlenv("add", "numpy", "--env", "cpu", "--project", str(root)), 2,
                       "pyproject.toml", "tool.mlenv.envs.cpu")
    assert tree_hashes(root) == files


def test_remove(tmp_path: Path, channel: Path) -> None:
    root = project(tmp_path, channel)
    mlenv("add", "mlenv-hello", "--project", str(root), check=True)
    assert "mlenv-hello" in locked(root)
    result = mlenv("remove", "mlenv-hello", "--project", str(root), check=True)
    assert result.stdout.startswith("removed mlenv-hello from tool.mlenv.conda in ")
    assert "mlenv-hello" not in locked(root)
    assert (root / "pyproject.toml").read_text() == PYPROJECT.format(channel=channel)

    files = tree_hashes(root)
    assert_clean_error(mlenv("remove", "scipy", "--project", str(root)), 2,
                       "pyproject.toml", "tool.mlenv.conda or tool.mlenv.pip", "'scipy' is not listed")
    assert tree_hashes(root) == files


def test_init(tmp_path: Path, channel: Path) -> None:
    root = tmp_path / "new-project"
    root.mkdir()
    result = mlenv("init", "--channel", str(channel), "--platform", "linux-64", "--python", "3.11",
                   "--project", str(root), check=True)
    assert "wrote [tool.mlenv] into" in result.stdout
    data = tomllib.loads((root / "pyproject.toml").read_text())
    assert data["project"] == {"name": "new-project", "version": "0.1.0"}
    assert data["tool"]["mlenv"] == {"channels": [str(channel)], "platforms": ["linux-64"], "python": "3.11"}
    mlenv("add", "mlenv-hello", "--project", str(root), check=True)
    assert locked(root)["python"] == "3.11.7"

    # an existing pyproject.toml keeps every byte; a second init is refused
    other = tmp_path / "existing"
    other.mkdir()
    text = '[project]\nname = "x"  # mine\nversion = "1"\n\n[tool.black]\nline-length = 100\n'
    (other / "pyproject.toml").write_text(text)
    mlenv("init", "--project", str(other), "--platform", "linux-64", check=True)
    written = (other / "pyproject.toml").read_text()
    assert written.startswith(text)
    assert tomllib.loads(written)["tool"]["mlenv"] == {"channels": ["conda-forge"], "platforms": ["linux-64"]}
    files = tree_hashes(other)
    assert_clean_error(mlenv("init", "--project", str(other)), 2, "pyproject.toml", "tool.mlenv", "already defined")
    assert tree_hashes(other) == files


def test_init_from_files(tmp_path: Path) -> None:
    root = tmp_path / "p"
    root.mkdir()
    (root / "environment.yml").write_text(
        "name: legacy\nchannels: [pytorch, defaults]\ndependencies:\n  - python=3.6\n  - numpy=1.15\n"
        "  - pip:\n    - tqdm==4.26\n")
    result = mlenv("init", "--from", str(root / "environment.yml"), "--platform", "linux-64", "--project", str(root),
                   check=True)
    assert "not mapped: channels: defaults" in result.stderr
    table = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["mlenv"]
    assert table["channels"] == ["pytorch"] and table["python"] == "3.6" and table["platforms"] == ["linux-64"]
    assert table["conda"] == ["numpy=1.15"] and table["pip"] == ["tqdm==4.26"]

    curated = tmp_path / "c"
    curated.mkdir()
    mlenv("init", "--from", "curated:pytorch-cpu", "--project", str(curated), check=True)
    assert tomllib.loads((curated / "pyproject.toml").read_text())["tool"]["mlenv"] == {"extends": "curated:pytorch-cpu"}

    missing = tmp_path / "m"
    missing.mkdir()
    assert_clean_error(mlenv("init", "--from", str(missing / "environment.yml"), "--project", str(missing)), 2,
                       "environment.yml", "file not found")
    assert not (missing / "pyproject.toml").exists()
    assert_clean_error(mlenv("init", "--from", "curated:no-such-thing", "--project", str(missing)), 2)
    assert not (missing / "pyproject.toml").exists()


def test_show_packages(tmp_path: Path, channel: Path) -> None:
    root = project(tmp_path, channel)
    mlenv("add", "mlenv-hello ==1.0.0", "--project", str(root), check=True)
    rows = json.loads(mlenv("show", "--packages", "--json", "--project", str(root), check=True).stdout)
    hello = next(r for r in rows if r["name"] == "mlenv-hello")
    assert hello == {"platform": "linux-64", "manager": "conda", "name": "mlenv-hello", "version": "1.0.0",
                     "build": hello["build"], "source": channel.resolve().as_uri()}
    assert [r["name"] for r in rows] == sorted(r["name"] for r in rows)
    text = mlenv("show", "--packages", "--project", str(root), check=True).stdout.splitlines()
    assert text[0].split("\t") == ["platform", "manager", "name", "version", "build", "source"]
    assert len(text) == len(rows) + 1
    assert_clean_error(mlenv("show", "--packages", "--platform", "osx-arm64", "--project", str(root)), 1,
                       "not locked for osx-arm64")


def test_outdated(tmp_path: Path, channel: Path, pip_index: str) -> None:
    root = project(tmp_path, channel)
    pyproject = root / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"numpy >=1.26",', '"numpy <1.26", "mlenv-hello ==1.0.0",'))
    mlenv("add", "--pip", "mlenv-tiny<0.2", "--no-lock", "--project", str(root), check=True)
    text = pyproject.read_text().replace('python = "3.11"', f'python = "3.11"\npip-index-url = "{pip_index}"')
    pyproject.write_text(text)
    mlenv("lock", "--project", str(root), check=True)
    rows = json.loads(mlenv("outdated", "--json", "--project", str(root), check=True).stdout)
    by_name = {r["name"]: r for r in rows}
    assert by_name["numpy"] == {"platform": "linux-64", "manager": "conda", "name": "numpy", "locked": "1.25.2",
                                "within_spec": None, "latest": "1.26.4"}
    assert by_name["mlenv-hello"]["locked"] == "1.0.0" and by_name["mlenv-hello"]["latest"] == "1.1.0"
    assert by_name["mlenv-hello"]["within_spec"] is None
    assert by_name["mlenv-tiny"] == {"platform": "linux-64", "manager": "pip", "name": "mlenv-tiny",
                                     "locked": "0.1.0", "within_spec": None, "latest": "0.2.0"}
    assert "python" not in by_name  # the newest python in the channel is the locked one

    # bounds widened in the definition: the newer releases are now within it (the lock is not
    # rewritten by outdated: it reads, and says the lock is stale)
    files = tree_hashes(root)
    pyproject.write_text(pyproject.read_text().replace('"numpy <1.26"', '"numpy"').replace("mlenv-tiny<0.2", "mlenv-tiny"))
    result = mlenv("outdated", "--json", "--project", str(root), check=True)
    by_name = {r["name"]: r for r in json.loads(result.stdout)}
    assert by_name["numpy"]["within_spec"] == "1.26.4" and by_name["mlenv-tiny"]["within_spec"] == "0.2.0"
    assert "stale" in result.stderr
    assert {k: v for k, v in tree_hashes(root).items() if k != "pyproject.toml"} == {
        k: v for k, v in files.items() if k != "pyproject.toml"}

    text = mlenv("outdated", "--project", str(root), check=True).stdout.splitlines()
    assert text[0].split("\t") == ["platform", "manager", "name", "locked", "within spec", "latest"]


def test_outdated_unreachable_index(tmp_path: Path, channel: Path) -> None:
    root = project(tmp_path, channel)
    mlenv("lock", "--project", str(root), check=True)
    pyproject = root / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace(f'"{channel}"', '"http://127.0.0.1:9/nothing"'))
    assert_clean_error(mlenv("outdated", "--project", str(root)), 1, "cannot read the channels for linux-64")


def test_lock_all(tmp_path: Path, channel: Path) -> None:
    root = project(tmp_path, channel, '\n[tool.mlenv.envs.hello]\nconda = ["mlenv-hello ==1.1.0"]\n'
                                      '\n[tool.mlenv.envs.old]\nconda = ["numpy ==1.25.2"]\n')
    result = mlenv("lock", "--all", "--project", str(root), check=True)
    assert [line.split(" for ")[0] for line in result.stdout.splitlines() if line.startswith("locked")] == [
        "locked trainer-env", "locked trainer-env-hello", "locked trainer-env-old"]
    assert locked(root)["numpy"] == "1.26.4"
    assert read_lock(root / "conda-lock.hello.yml").packages and locked_file(root / "conda-lock.hello.yml")[
        "mlenv-hello"] == "1.1.0"
    assert locked_file(root / "conda-lock.old.yml")["numpy"] == "1.25.2"
    assert mlenv("lock", "--check", "--all", "--project", str(root)).returncode == 0

    # one environment stale: --check --all names it and fails; the others are fresh
    pyproject = root / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"numpy ==1.25.2"', '"numpy ==9.9"'))
    result = mlenv("lock", "--check", "--all", "--project", str(root))
    assert result.returncode == 1
    assert "conda-lock.old.yml (old) is stale" in result.stderr
    assert "conda-lock.yml (default) is fresh" in result.stdout

    # one environment unsolvable: the others still lock, its lockfile is untouched, the exit is its error's
    before = (root / "conda-lock.old.yml").read_bytes()
    pyproject.write_text(pyproject.read_text().replace('"mlenv-hello ==1.1.0"', '"mlenv-hello ==1.0.0"'))
    result = mlenv("lock", "--all", "--project", str(root))
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].endswith("conda-lock.old.yml (old): cannot solve the environment for "
                                                   "linux-64: no numpy ==9.9 in " + channel.resolve().as_uri()
                                                   + ", newest is 1.26.4"), errors
    assert "Traceback" not in result.stderr
    assert locked_file(root / "conda-lock.hello.yml")["mlenv-hello"] == "1.0.0"
    assert (root / "conda-lock.old.yml").read_bytes() == before

    assert_clean_error(mlenv("lock", "--all", "--env", "old", "--project", str(root)), 2, "--all")


def locked_file(path: Path) -> dict[str, str]:
    return {p.name: p.version for p in read_lock(path).packages}


def test_outdated_skips_releases_for_another_python(tmp_path: Path, channel: Path) -> None:
    from fixtures.pip_index import Wheel, build_index, serve

    index_root = build_index(tmp_path / "index", [
        Wheel("mlenv-tiny", "0.1.0"), Wheel("mlenv-tiny", "0.2.0"),
        Wheel("mlenv-tiny", "0.3.0", requires_python=">=3.12"),  # the environment's python is 3.11
    ])
    with serve(index_root) as url:
        root = project(tmp_path, channel)
        pyproject = root / "pyproject.toml"
        pyproject.write_text(pyproject.read_text().replace('python = "3.11"', f'python = "3.11"\npip-index-url = "{url}"'))
        mlenv("add", "--pip", "mlenv-tiny<0.2", "--project", str(root), check=True)
        rows = json.loads(mlenv("outdated", "--json", "--project", str(root), check=True).stdout)
    tiny = next(r for r in rows if r["name"] == "mlenv-tiny")
    assert tiny["locked"] == "0.1.0" and tiny["latest"] == "0.2.0" and tiny["within_spec"] is None


def test_review_findings_on_edits(tmp_path: Path, channel: Path) -> None:
    """What a review of these commands found: remove reaches the per-platform lists, a channel
    prefix names the same package, an edit keeps every environment of the file valid, literal
    index credentials are not imported, and a `tool` that is not a table is said so."""
    root = project(tmp_path, channel, '\n[tool.mlenv.target.linux-64]\nconda = ["mlenv-hello ==1.0.0"]\n')
    pyproject = root / "pyproject.toml"
    removed = mlenv("remove", "mlenv-hello", "--no-lock", "--project", str(root), check=True)
    assert removed.stdout.startswith("removed mlenv-hello ==1.0.0 from tool.mlenv.target.linux-64.conda in ")
    assert "mlenv-hello" not in pyproject.read_text()
    assert_clean_error(mlenv("remove", "numpy", "--platform", "linux-64", "--project", str(root)), 2,
                       "tool.mlenv.target.linux-64", "'numpy' is not listed")

    mlenv("add", "pkgs/main::numpy >=1.25", "--no-lock", "--project", str(root), check=True)
    conda = tomllib.loads(pyproject.read_text())["tool"]["mlenv"]["conda"]
    assert conda == ["pkgs/main::numpy >=1.25"]  # the channel-qualified spec replaced the plain one

    # an edit that would break another environment of the file is refused, nothing written
    pyproject.write_text(pyproject.read_text().replace('platforms = ["linux-64"]', 'platforms = ["linux-64", "osx-arm64"]')
                         + '\n[tool.mlenv.envs.mac]\nplatforms = ["osx-arm64"]\n')
    mlenv("add", "six", "--platform", "linux-64", "--no-lock", "--project", str(root), check=True)  # mac inherits nothing for it
    # the mac environment still reads (its own lock is missing, which is all `show` says of it)
    assert_clean_error(mlenv("show", "--env", "mac", "--project", str(root)), 1, "lockfile not found")
    files = tree_hashes(root)
    assert_clean_error(mlenv("add", "six", "--platform", "linux-64", "--env", "mac", "--no-lock", "--project",
                             str(root)), 2, "tool.mlenv.target.linux-64", "not one of the environment's platforms")
    assert tree_hashes(root) == files

    other = tmp_path / "creds"
    other.mkdir()
    (other / "requirements.txt").write_text("--index-url https://alice:s3cret@pypi.example/simple\nsix\n")
    result = mlenv("init", "--from", str(other / "requirements.txt"), "--project", str(other), check=True)
    assert "s3cret" not in (other / "pyproject.toml").read_text()
    assert "credentials in the index URL" in result.stderr

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "pyproject.toml").write_text('tool = "x"\n')
    assert_clean_error(mlenv("init", "--project", str(broken)), 2, "pyproject.toml", "tool", "must be a table")


def test_lock_all_refuses_a_shared_lockfile(tmp_path: Path, channel: Path) -> None:
    root = project(tmp_path, channel, '\n[tool.mlenv.envs.same]\nlockfile = "conda-lock.yml"\n')
    assert_clean_error(mlenv("lock", "--all", "--project", str(root)), 2, "tool.mlenv.envs.same.lockfile",
                       "also the lockfile of the default environment")
    assert not (root / "conda-lock.yml").exists()


def test_outdated_reads_an_index_that_needs_credentials(tmp_path: Path, channel: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from fixtures.pip_index import make_default_index, serve

    monkeypatch.setenv("INDEX_PASSWORD", "s3cret-index-pw")
    with serve(make_default_index(tmp_path / "index"), auth=("mlenv-bot", "s3cret-index-pw")) as url:
        root = project(tmp_path, channel)
        pyproject = root / "pyproject.toml"
        with_credentials = url.replace("http://", "http://mlenv-bot:${INDEX_PASSWORD}@")
        pyproject.write_text(pyproject.read_text().replace(
            'python = "3.11"', f'python = "3.11"\npip-index-url = "{with_credentials}"'))
        mlenv("add", "--pip", "mlenv-tiny<0.2", "--project", str(root), check=True)
        result = mlenv("outdated", "--json", "--project", str(root), check=True)
    tiny = next(r for r in json.loads(result.stdout) if r["name"] == "mlenv-tiny")
    assert tiny["locked"] == "0.1.0" and tiny["latest"] == "0.2.0"
    assert "s3cret-index-pw" not in result.stdout + result.stderr
