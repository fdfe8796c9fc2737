"""Issue 27, item 4: per-platform conda and pip dependencies, `[tool.mlenv.target.PLATFORM]`
(pixi's shape), locked, checked and diffed like the rest, and added with `mlenv add --platform`."""

from __future__ import annotations

import json
from pathlib import Path

from hatch_mlenv.lockfile import read_lock
from tests.conftest import assert_clean_error, mlenv, tree_hashes, write_project


def project(root: Path, channel: Path, pip_index: str, extra: str = "") -> Path:
    return write_project(root, f"""
        channels = ["{channel}"]
        platforms = ["linux-64", "osx-arm64"]
        python = "3.11"
        conda = ["mlenv-hello"]
        pip-index-url = "{pip_index}"

        [tool.mlenv.target.linux-64]
        conda = ["mlenv-hello ==1.0.0"]
        pip = ["mlenv-tiny"]

        [tool.mlenv.target.osx-arm64]
        conda = ["numpy ==1.25.2"]
        {extra}
        """)


def locked(root: Path, lockfile: str = "conda-lock.yml") -> dict[tuple[str, str, str], str]:
    return {(p.platform, p.manager, p.name): p.version for p in read_lock(root / lockfile).packages}


def test_each_platform_gets_its_own_packages(tmp_path: Path, channel: Path, pip_index: str) -> None:
    root = project(tmp_path / "p", channel, pip_index)
    mlenv("lock", "--project", str(root), check=True)
    packages = locked(root)
    # the target's spec replaces the common one for its platform; the other platform keeps the common one
    assert packages["linux-64", "conda", "mlenv-hello"] == "1.0.0"
    assert packages["osx-arm64", "conda", "mlenv-hello"] == "1.1.0"
    assert packages["osx-arm64", "conda", "numpy"] == "1.25.2"
    assert ("linux-64", "conda", "numpy") not in packages
    assert packages["linux-64", "pip", "mlenv-tiny"] == "0.2.0"
    assert not any(platform == "osx-arm64" and manager == "pip" for platform, manager, _ in packages)
    assert mlenv("lock", "--check", "--project", str(root)).returncode == 0

    # the target is part of the definition: an edit makes the lock stale, and diff says what changed
    before = tmp_path / "before"
    before.mkdir()
    (before / "conda-lock.yml").write_bytes((root / "conda-lock.yml").read_bytes())
    pyproject = root / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('conda = ["numpy ==1.25.2"]', 'conda = ["numpy ==1.26.4"]'))
    stale = mlenv("lock", "--check", "--project", str(root))
    assert stale.returncode == 1 and "is stale" in stale.stderr
    mlenv("lock", "--project", str(root), check=True)
    assert locked(root)["osx-arm64", "conda", "numpy"] == "1.26.4"
    registered = mlenv("register", "--project", str(root), check=True)
    assert registered.returncode == 0
    diff = mlenv("diff", str(before / "conda-lock.yml"), str(root / "conda-lock.yml"), check=True).stdout
    assert diff.splitlines() == ["platform\tmanager\tpackage\tchange",
                                 "osx-arm64\tconda\tnumpy\t1.25.2 py311h0_0 → 1.26.4 py311h0_0"]
    stored = json.loads(mlenv("show", "demo:1", "--json", check=True).stdout)
    assert stored["digest"] == f"sha256:{read_lock(root / 'conda-lock.yml').digest()}"


def test_the_definition_diff_and_import_keep_targets(tmp_path: Path, channel: Path, pip_index: str) -> None:
    root = project(tmp_path / "p", channel, pip_index)
    mlenv("lock", "--project", str(root), check=True)
    mlenv("register", "--project", str(root), check=True)
    pyproject = root / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('pip = ["mlenv-tiny"]', 'pip = ["mlenv-tiny<0.2"]'))
    mlenv("lock", "--project", str(root), check=True)
    assert locked(root)["linux-64", "pip", "mlenv-tiny"] == "0.1.0"
    mlenv("register", "--project", str(root), check=True)
    lines = mlenv("diff", "demo:1", "demo:2", check=True).stdout.splitlines()
    assert 'definition target.linux-64.pip: - "mlenv-tiny"' in lines
    assert 'definition target.linux-64.pip: + "mlenv-tiny<0.2"' in lines

    copy = tmp_path / "copy"
    mlenv("import", "demo:2", "--project", str(copy), check=True)
    mlenv("lock", "--project", str(copy), check=True)
    assert read_lock(copy / "conda-lock.yml").digest() == read_lock(root / "conda-lock.yml").digest()


def test_add_to_one_platform(tmp_path: Path, channel: Path, pip_index: str) -> None:
    root = write_project(tmp_path / "p", f"""
        channels = ["{channel}"]
        platforms = ["linux-64", "osx-arm64"]
        python = "3.11"
        conda = ["mlenv-hello"]
        """)
    result = mlenv("add", "numpy ==1.25.2", "--platform", "osx-arm64", "--project", str(root), check=True)
    assert result.stdout.startswith("added numpy ==1.25.2 to tool.mlenv.target.osx-arm64.conda in ")
    assert (root / "pyproject.toml").read_text().endswith('[tool.mlenv.target.osx-arm64]\nconda = ["numpy ==1.25.2"]\n\n')
    packages = locked(root)
    assert packages["osx-arm64", "conda", "numpy"] == "1.25.2" and ("linux-64", "conda", "numpy") not in packages

    files = tree_hashes(root)
    assert_clean_error(mlenv("add", "numpy", "--platform", "win-64", "--project", str(root)), 2,
                       "pyproject.toml", "tool.mlenv.target.win-64", "not one of the environment's platforms")
    assert_clean_error(mlenv("add", "numpy ==9.9", "--platform", "linux-64", "--project", str(root)), 1,
                       "cannot solve the environment for linux-64")
    assert tree_hashes(root) == files


def test_named_environments_inherit_targets(tmp_path: Path, channel: Path, pip_index: str) -> None:
    root = project(tmp_path / "p", channel, pip_index,
                   '\n[tool.mlenv.envs.small]\nconda = ["python-dateutil"]\n')
    mlenv("lock", "--env", "small", "--project", str(root), check=True)
    packages = locked(root, "conda-lock.small.yml")
    assert packages["osx-arm64", "conda", "numpy"] == "1.25.2" and packages["linux-64", "conda", "mlenv-hello"] == "1.0.0"


def test_bad_targets_name_the_key(tmp_path: Path, channel: Path, pip_index: str) -> None:
    cases = [
        ('[tool.mlenv.target.win-64]\nconda = ["numpy"]\n', "tool.mlenv.target.win-64", "not one of"),
        ('[tool.mlenv.target.linux-64]\ncondas = ["numpy"]\n', "tool.mlenv.target.linux-64.condas", "unknown key"),
        ('[tool.mlenv.target.linux-64]\nconda = ["numpy >>1"]\n', "tool.mlenv.target.linux-64.conda[0]", "invalid match spec"),
        ('[tool.mlenv.target.linux-64]\npip = ["not a requirement!"]\n', "tool.mlenv.target.linux-64.pip[0]", ""),
        ('[tool.mlenv]\ntarget = 3\n', "tool.mlenv.target", "must be a table"),
    ]
    for i, (text, key, message) in enumerate(cases):
        root = write_project(tmp_path / f"bad{i}", f"""
            channels = ["{channel}"]
            platforms = ["linux-64"]
            conda = ["mlenv-hello"]
            """)
        body = (root / "pyproject.toml").read_text()
        if text.startswith("[tool.mlenv]\n"):
            body = body.replace("[tool.mlenv]\n", text)
        else:
            body += text
        (root / "pyproject.toml").write_text(body)
        assert_clean_error(mlenv("lock", "--project", str(root)), 2, "pyproject.toml", key, message)
        assert not (root / "conda-lock.yml").exists()


def test_a_named_environment_extends_and_drops_targets(tmp_path: Path, channel: Path, pip_index: str) -> None:
    from hatch_mlenv.spec import load_spec

    root = project(tmp_path / "p", channel, pip_index,
                   '\n[tool.mlenv.envs.gpu.target.linux-64]\nconda = ["python-dateutil"]\n'
                   '\n[tool.mlenv.envs.mac]\nplatforms = ["osx-arm64"]\n')
    gpu = load_spec(root, "gpu")
    # the environment's target extends the inherited one, as conda and pip lists do
    assert [s for s in gpu.conda_specs_for("linux-64") if not s.startswith("python ")] == [
        "mlenv-hello ==1.0.0", "python-dateutil"]
    assert gpu.pip_for("linux-64") == ("mlenv-tiny",)
    # an inherited target of a platform the environment does not have is not its concern
    mac = load_spec(root, "mac")
    assert mac.platforms == ("osx-arm64",) and set(mac.targets) == {"osx-arm64"}


def test_outdated_reads_each_platform_with_its_own_specs(tmp_path: Path, channel: Path, pip_index: str) -> None:
    root = project(tmp_path / "p", channel, pip_index)
    mlenv("lock", "--project", str(root), check=True)
    rows = {(r["platform"], r["name"]): r for r in json.loads(mlenv("outdated", "--json", "--project", str(root),
                                                                     check=True).stdout)}
    # linux-64 pins mlenv-hello ==1.0.0 in its target, osx-arm64 pins numpy ==1.25.2 in its own
    assert rows["linux-64", "mlenv-hello"] == {"platform": "linux-64", "manager": "conda", "name": "mlenv-hello",
                                                   "locked": "1.0.0", "within_spec": None, "latest": "1.1.0"}
    assert rows["osx-arm64", "numpy"]["locked"] == "1.25.2" and rows["osx-arm64", "numpy"]["within_spec"] is None
    assert rows["osx-arm64", "numpy"]["latest"] == "1.26.4"
    assert ("osx-arm64", "mlenv-hello") not in rows  # 1.1.0, the newest, is what osx-arm64 locked
