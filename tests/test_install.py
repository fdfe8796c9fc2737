"""`mlenv install`, `mlenv run` and `mlenv export` against the fixture channel and pip index."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hatch_mlenv.lockfile import read_lock
from tests.conftest import assert_clean_error, mlenv, tree_hashes, write_project


@pytest.fixture
def project(tmp_path: Path, channel: Path, pip_index: str) -> Path:
    root = write_project(
        tmp_path / "proj",
        f"""
        channels = ["{channel}"]
        platforms = ["linux-64", "osx-arm64"]
        python = "3.11"
        conda = ["mlenv-hello ==1.0.0", "numpy"]
        pip = ["mlenv-tiny==0.1.0"]
        pip-index-url = "{pip_index}"
        variables = {{ OMP_NUM_THREADS = "2", API_TOKEN = {{ secret = true }} }}
        """,
    )
    mlenv("lock", "--project", str(root), check=True)
    return root


def site(prefix: Path) -> Path:
    return prefix / "lib" / "python3.11" / "site-packages"


def test_install_noop_and_incremental(project: Path) -> None:
    prefix = project / ".mlenv" / "envs" / "demo"
    first = mlenv("install", "--project", str(project), check=True)
    assert first.stdout.startswith("installed demo sha256:")
    assert (prefix / "bin" / "mlenv-hello").read_text().strip().endswith(f'"hello from {prefix}"')
    assert (site(prefix) / "mlenv_tiny-0.1.0.dist-info").is_dir()
    assert not (prefix / "CACHEDIR.TAG").exists()

    again = mlenv("install", "--project", str(project), check=True)
    assert "is up to date" in again.stdout and "nothing to do" in again.stdout

    numpy_file = site(prefix) / "numpy" / "__init__.py"
    inode = numpy_file.stat().st_ino
    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("==1.0.0", "==1.1.0").replace("==0.1.0", "==0.2.0"))
    mlenv("lock", "--project", str(project), check=True)
    updated = mlenv("install", "--project", str(project), check=True)
    assert updated.stdout.startswith("updated demo") and "(2 packages changed)" in updated.stdout
    assert numpy_file.stat().st_ino == inode  # an unchanged package is not touched
    assert (prefix / "bin" / "mlenv-hello").read_text().strip().endswith(f'"hello again from {prefix}"')
    assert (site(prefix) / "mlenv_tiny-0.2.0.dist-info").is_dir()
    assert not (site(prefix) / "mlenv_tiny-0.1.0.dist-info").exists()
    assert [p.name for p in prefix.parent.iterdir()] == ["demo"]  # no staging or retired copies left


def test_run_activates_and_returns_the_exit_code(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = project / ".mlenv" / "envs" / "demo"
    result = mlenv("run", "--project", str(project), "--", "mlenv-hello")
    assert result.returncode == 0 and result.stdout.strip() == f"hello from {prefix}"  # installed first
    assert "secret variable API_TOKEN is not set" in result.stderr
    monkeypatch.setenv("API_TOKEN", "from-the-caller")
    shell = mlenv("run", "--project", str(project), "--", "sh", "-c",
                  'echo "$OMP_NUM_THREADS $CONDA_PREFIX $API_TOKEN"; exit 7')
    assert shell.returncode == 7
    assert shell.stdout.split() == ["2", str(prefix), "from-the-caller"]
    assert "warning" not in shell.stderr
    missing = mlenv("run", "--project", str(project), "--", "no-such-command-xyz")
    assert_clean_error(missing, 1, "cannot run 'no-such-command-xyz'")


def test_run_runs_the_packages_activation_scripts(tmp_path: Path, channel: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    project = write_project(
        tmp_path / "proj",
        f"""
        channels = ["{channel}"]
        platforms = ["linux-64"]
        conda = ["mlenv-hello ==1.0.0", "mlenv-activate"]
        variables = {{ OMP_NUM_THREADS = "2" }}
        """,
    )
    mlenv("lock", "--project", str(project), check=True)
    prefix = project / ".mlenv" / "envs" / "demo"
    probe = 'echo "$MLENV_ACTIVATED"; echo "$PATH"; echo "$OMP_NUM_THREADS $CONDA_SHLVL"; mlenv-hello; exit 5'
    result = mlenv("run", "--project", str(project), "--", "sh", "-c", probe)
    assert result.returncode == 5, result.stderr
    activated, path, numbers, hello = result.stdout.splitlines()
    assert activated == f"activated in {prefix}"
    # the script's PATH entry is there, behind the environment's bin
    assert path.startswith(f"{prefix}/bin:{prefix}/share/mlenv-activate/bin:")
    assert numbers == "2 1" and hello == f"hello from {prefix}"
    assert "mlenv-activate: activated" in result.stderr  # a script's own output, kept off the command's stdout

    # the spec's value wins over a package's script: it is what the user asked for
    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('OMP_NUM_THREADS = "2"', 'MLENV_ACTIVATED = "by the spec"'))
    mlenv("lock", "--project", str(project), check=True)
    spec = mlenv("run", "--project", str(project), "--", "sh", "-c", 'echo "$MLENV_ACTIVATED"', check=True)
    assert spec.stdout == "by the spec\n"

    monkeypatch.setenv("MLENV_ACTIVATE_EXIT", "3")
    broken = mlenv("run", "--project", str(project), "--", "sh", "-c", "echo ran")
    assert broken.returncode == 1 and broken.stdout == "" and "Traceback" not in broken.stderr
    # the script's own words, then ours
    assert broken.stderr.splitlines() == [
        "mlenv-activate: activated",
        f"error: activating {prefix} failed: a script in etc/conda/activate.d exited with status 3",
    ]


def test_run_never_falls_through_to_the_callers_python(project: Path) -> None:
    # The fixture channel's python is a demo: it installs bin/python3-fixture, no bin/python.
    prefix = project / ".mlenv" / "envs" / "demo"
    for name in ("python", "python3", "pip"):
        result = mlenv("run", "--project", str(project), "--", name, "-c", "import sys; print(sys.executable)")
        assert_clean_error(result, 1, "environment demo locks python but provides no", repr(name), str(prefix / "bin"))
        assert result.stdout == ""  # the caller's interpreter never ran
    assert mlenv("run", "--project", str(project), "--", "python3-fixture", check=True).stdout == "fixture python 3.11.7\n"


def test_install_into_a_chosen_prefix_and_bad_prefixes(project: Path, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "env"
    mlenv("install", "--project", str(project), "--prefix", str(target), check=True)
    assert (target / "bin" / "mlenv-hello").is_file()

    not_conda = tmp_path / "not-conda"
    not_conda.mkdir()
    (not_conda / "important.txt").write_text("keep me")
    assert_clean_error(mlenv("install", "--project", str(project), "--prefix", str(not_conda)), 1,
                       "not a conda prefix")
    assert [p.name for p in not_conda.iterdir()] == ["important.txt"]

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert_clean_error(mlenv("install", "--project", str(project), "--prefix", str(blocker / "env")), 1,
                       "cannot create the prefix")


def test_wheel_hash_mismatch_installs_nothing(project: Path, tmp_path: Path, isolated_registry: Path) -> None:
    mlenv("install", "--project", str(project), check=True)
    prefix = project / ".mlenv" / "envs" / "demo"
    before = tree_hashes(prefix)
    lockfile = project / "conda-lock.yml"
    document = yaml.safe_load(lockfile.read_text())
    for package in document["package"]:
        if package["manager"] == "conda" and package["name"] == "mlenv-hello":
            package["version"], package["url"] = "1.1.0", package["url"].replace("1.0.0", "1.1.0")
        if package["manager"] == "pip":
            package["version"] = "0.2.0"
            package["url"] = package["url"].replace("0.1.0", "0.2.0")
            package["hash"]["sha256"] = "0" * 64
    lockfile.write_text(yaml.safe_dump(document))
    assert_clean_error(mlenv("install", "--project", str(project)), 1, "the lock was edited by hand")
    forget_recorded_digest(lockfile)  # as a lock another tool wrote: the downloads' own checks refuse it
    result = mlenv("install", "--project", str(project))
    assert_clean_error(result, 1, "sha256 mismatch")
    assert tree_hashes(prefix) == before  # the old prefix is intact, nothing half-installed
    assert [p.name for p in prefix.parent.iterdir()] == ["demo"]


def test_lock_for_another_platform_only(tmp_path: Path, channel: Path) -> None:
    root = write_project(tmp_path, f'channels = ["{channel}"]\nplatforms = ["osx-arm64"]\nconda = ["mlenv-hello"]\n')
    mlenv("lock", "--project", str(root), check=True)
    result = mlenv("install", "--project", str(root))
    assert_clean_error(result, 1, "no packages locked for linux-64")
    assert not (root / ".mlenv").exists()


def test_export_formats(project: Path, tmp_path: Path) -> None:
    lock = read_lock(project / "conda-lock.yml")
    env_yml = mlenv("export", "--format", "environment-yml", "--project", str(project), check=True).stdout
    document = yaml.safe_load(env_yml)
    conda = {p.name: p for p in lock.for_platform("linux-64") if p.manager == "conda"}
    assert document["name"] == "demo"
    assert sorted(d for d in document["dependencies"] if isinstance(d, str)) == sorted(
        f"{p.name}={p.version}={p.build}" for p in conda.values())
    assert document["dependencies"][-1] == {"pip": ["mlenv-tiny==0.1.0"]}
    assert document["variables"] == {"OMP_NUM_THREADS": "2"}

    out = tmp_path / "explicit.txt"
    mlenv("export", "--format", "explicit", "--platform", "osx-arm64", "-o", str(out), "--project", str(project),
          check=True)
    lines = out.read_text().splitlines()
    assert "@EXPLICIT" in lines
    urls = [line for line in lines if "://" in line]
    osx = [p for p in lock.for_platform("osx-arm64") if p.manager == "conda"]
    assert sorted(urls) == sorted(f"{p.url}#{p.md5}" for p in osx)

    requirements = mlenv("export", "--format", "requirements", "--project", str(project), check=True).stdout
    pip = next(p for p in lock.for_platform("linux-64") if p.manager == "pip")
    assert f"mlenv-tiny==0.1.0 --hash=sha256:{pip.sha256}" in requirements.splitlines()
    # pip itself accepts it, offline, with hashes required
    wheels = tmp_path / "wheels"
    req = tmp_path / "req.txt"
    req.write_text(requirements)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")} | {"PIP_CONFIG_FILE": os.devnull}
    download = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes", "-r", str(req),
         "-d", str(wheels), "--index-url", pip.url.split("/files/")[0] + "/simple/"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, timeout=300,
    )
    assert download.returncode == 0, download.stderr
    bad = mlenv("export", "--format", "explicit", "--platform", "win-64", "--project", str(project))
    assert_clean_error(bad, 2, "no packages locked for win-64")


def forget_recorded_digest(lockfile: Path) -> None:
    document = yaml.safe_load(lockfile.read_text())
    del document["metadata"]["custom_metadata"]["mlenv.digest"]
    lockfile.write_text(yaml.safe_dump(document))


def _edit_conda_hash(lockfile: Path, name: str, kind: str, value: str) -> None:
    document = yaml.safe_load(lockfile.read_text())
    for package in document["package"]:
        if package["manager"] == "conda" and package["name"] == name and package["platform"] == "linux-64":
            package["hash"][kind] = value
    lockfile.write_text(yaml.safe_dump(document))


def _locked_on_own_channel(tmp_path: Path, channel: Path) -> tuple[Path, Path]:
    """A project locking mlenv-hello 1.0.0 from a copy of the test channel that a test may tamper
    with: (the project, the channel copy)."""
    import shutil

    own = tmp_path / "channel"
    shutil.copytree(channel, own)
    root = write_project(tmp_path / "proj", f"""
        channels = ["{own}"]
        platforms = ["linux-64"]
        python = "3.11"
        conda = ["mlenv-hello ==1.0.0"]
        """)
    mlenv("lock", "--project", str(root), check=True)
    return root, own


@pytest.mark.tampers_lockfiles
@pytest.mark.parametrize("tampering", ["sha256-in-lock", "md5-in-lock", "archive-replaced"])
def test_a_local_channel_archive_that_does_not_match_the_lock_is_refused(
    tmp_path: Path, channel: Path, tampering: str
) -> None:
    """file:// channels are not checked by rattler: hatch-mlenv checks sha256 and md5 itself."""
    import shutil

    root, own = _locked_on_own_channel(tmp_path, channel)
    lockfile = root / "conda-lock.yml"
    hello = next(p for p in read_lock(lockfile).packages if p.name == "mlenv-hello")
    archive = own / "linux-64" / "mlenv-hello-1.0.0-0.tar.bz2"
    if tampering == "sha256-in-lock":
        _edit_conda_hash(lockfile, "mlenv-hello", "sha256", "0" * 64)
        needles = ("mlenv-hello 1.0.0", "sha256 mismatch", "0" * 64, hello.sha256)
    elif tampering == "md5-in-lock":
        _edit_conda_hash(lockfile, "mlenv-hello", "md5", "f" * 32)
        needles = ("mlenv-hello 1.0.0", "md5 mismatch", "f" * 32, hello.md5)
    else:
        shutil.copyfile(own / "linux-64" / "mlenv-hello-1.1.0-0.tar.bz2", archive)
        needles = ("mlenv-hello 1.0.0", "sha256 mismatch", hello.sha256)
    if tampering != "archive-replaced":
        edited = mlenv("install", "--project", str(root), "--prefix", str(tmp_path / "env"))
        assert_clean_error(edited, 1, "the lock was edited by hand")
        check = mlenv("lock", "--check", "--project", str(root))
        assert check.returncode == 1 and "edited by hand" in check.stderr, check.stderr
        forget_recorded_digest(lockfile)  # as a lock another tool wrote: the archive check still refuses it
    result = mlenv("install", "--project", str(root), "--prefix", str(tmp_path / "env"))
    assert_clean_error(result, 1, *needles)
    assert not (tmp_path / "env").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".env")] == []


def test_an_archive_changed_after_an_install_is_refused_even_with_its_size_and_mtime_kept(
    tmp_path: Path, channel: Path
) -> None:
    """An archive is hashed once and then known by its identity (inode, size, mtime, ctime):
    rewriting it in place with the same size and mtime still changes its ctime, so the next
    install hashes it again and refuses it."""
    root, own = _locked_on_own_channel(tmp_path, channel)
    mlenv("install", "--project", str(root), "--prefix", str(tmp_path / "first"), check=True)
    hello = next(p for p in read_lock(root / "conda-lock.yml").packages if p.name == "mlenv-hello")
    archive = own / "linux-64" / "mlenv-hello-1.0.0-0.tar.bz2"
    before = archive.stat()
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    with open(archive, "r+b") as handle:  # the same inode, the same size
        handle.write(data)
    os.utime(archive, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (archive.stat().st_size, archive.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    result = mlenv("install", "--project", str(root), "--prefix", str(tmp_path / "second"))
    assert_clean_error(result, 1, "mlenv-hello 1.0.0", "sha256 mismatch", hello.sha256)
    assert not (tmp_path / "second").exists()


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_leftovers_of_killed_processes_are_removed_by_the_next_run(project: Path) -> None:
    """What a SIGKILLed lock or install leaves (temp lockfile, staging and retired prefixes) goes
    with the next run; a live process's files stay."""
    mlenv("install", "--project", str(project), check=True)
    envs = project / ".mlenv" / "envs"
    dead, alive = _dead_pid(), os.getpid()
    leftovers = [project / f".conda-lock.yml.{dead}.k1l3d.tmp", envs / f".demo.staging-{dead}", envs / f".demo.old-{dead}"]
    kept = [project / f".conda-lock.yml.{alive}.w0rk.tmp", envs / f".demo.staging-{alive}"]
    for path in leftovers + kept:
        if path.suffix == ".tmp":
            path.write_text("partial")
        else:
            (path / "conda-meta").mkdir(parents=True)
    (project / "pyproject.toml").write_text((project / "pyproject.toml").read_text().replace('"2"', '"3"'))
    mlenv("lock", "--project", str(project), check=True)
    mlenv("install", "--project", str(project), check=True)
    assert [p for p in leftovers if p.exists()] == []
    assert all(p.exists() for p in kept)
    assert sorted(p.name for p in envs.iterdir()) == sorted(["demo", kept[1].name])


def test_the_prefix_swap_is_one_exchange(tmp_path: Path) -> None:
    from hatch_mlenv.lockfile import exchange

    old, new = tmp_path / "prefix", tmp_path / ".prefix.staging"
    (old / "conda-meta").mkdir(parents=True)
    (old / "marker").write_text("old")
    new.mkdir()
    (new / "marker").write_text("new")
    assert exchange(new, old) is True  # Linux: renameat2(RENAME_EXCHANGE), no moment without a prefix
    assert (old / "marker").read_text() == "new" and (new / "marker").read_text() == "old"


@pytest.mark.parametrize("damage", ["file-edited", "file-deleted", "evil-pth", "same-size-edit"])
def test_install_repairs_a_damaged_prefix(project: Path, damage: str) -> None:
    mlenv("install", "--project", str(project), check=True)
    prefix = project / ".mlenv" / "envs" / "demo"
    hello = prefix / "bin" / "mlenv-hello"
    original = hello.read_text()
    if damage == "file-edited":
        hello.write_text("#!/bin/sh\necho tampered\n")
    elif damage == "file-deleted":
        hello.unlink()
    elif damage == "evil-pth":
        (site(prefix) / "evil.pth").write_text("import os\n")
    else:  # same size, same mtime: only a full hash check sees it
        stat = hello.stat()
        hello.write_text(original.replace("hello", "HELLO"))
        os.utime(hello, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    if damage == "same-size-edit":
        quick = mlenv("install", "--project", str(project), check=True)
        assert "nothing to do" in quick.stdout  # sizes and times match: the cheap check cannot know
        result = mlenv("install", "--verify", "--project", str(project), check=True)
    else:
        result = mlenv("install", "--project", str(project), check=True)
    assert result.stdout.startswith("repaired demo"), result.stdout
    assert hello.read_text() == original
    assert not (site(prefix) / "evil.pth").exists()
    assert mlenv("verify", "--project", str(project)).returncode == 0
    assert "nothing to do" in mlenv("install", "--project", str(project), check=True).stdout


def test_install_force_reinstalls_and_a_touched_file_is_not_damage(project: Path) -> None:
    mlenv("install", "--project", str(project), check=True)
    prefix = project / ".mlenv" / "envs" / "demo"
    os.utime(prefix / "bin" / "mlenv-hello")  # touched, not changed
    (prefix / "share").mkdir(exist_ok=True)
    assert "nothing to do" in mlenv("install", "--project", str(project), check=True).stdout
    forced = mlenv("install", "--force", "--project", str(project), check=True)
    assert forced.stdout.startswith("reinstalled demo"), forced.stdout
    assert mlenv("verify", "--project", str(project)).returncode == 0
