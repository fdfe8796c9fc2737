"""The `mlenv` hatch environment plugin under the real `hatch`: run, shell, env find/remove, relock.

The prefix's python is the host interpreter dressed as a venv
(`fixtures/host_python.py`), so code really runs inside the installed prefix
and imports the project from its source directory (dev mode).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pexpect  # a dependency of hatch, which drives `hatch shell` with it
import pytest

from hatch_mlenv.lockfile import read_lock
from tests.conftest import mlenv, write_project

SHOW = "import demo, mlenv_greeting, sys; print(sys.prefix, demo.__file__, demo.VALUE, mlenv_greeting.__version__)"


@pytest.fixture(scope="session")
def host_channel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fixtures.host_python import make_host_python_channel

    return make_host_python_channel(tmp_path_factory.mktemp("host-python-channel"))


@pytest.fixture(autouse=True)
def hatch_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """hatch keeps environment metadata and caches in user directories: give every test its own."""
    home = tmp_path_factory.mktemp("hatch-home")
    (home / "config.toml").write_text("")
    monkeypatch.setenv("HATCH_DATA_DIR", str(home / "data"))
    monkeypatch.setenv("HATCH_CACHE_DIR", str(home / "cache"))
    monkeypatch.setenv("HATCH_CONFIG", str(home / "config.toml"))
    for name in ("HATCH_ENV", "HATCH_ENV_ACTIVE", "API_TOKEN", "HATCH_ENV_TYPE_MLENV_ENV", "HATCH_ENV_TYPE_MLENV_PATH"):
        monkeypatch.delenv(name, raising=False)
    return home


def make_project(root: Path, channel: Path, *, mlenv_extra: str = "", hatch_envs: str = "") -> Path:
    from fixtures.host_python import host_python_minor

    write_project(
        root,
        f"""
        channels = ["{channel}"]
        platforms = ["linux-64"]
        python = "{host_python_minor()}"
        conda = ["mlenv-hello ==1.0.0", "mlenv-greeting ==1.0"]
        variables = {{ OMP_NUM_THREADS = "2", API_TOKEN = {{ secret = true }} }}
        {textwrap.dedent(mlenv_extra)}
        """,
        extra="""
        [build-system]
        requires = ["hatchling"]
        build-backend = "hatchling.build"

        [tool.hatch.build.targets.wheel]
        packages = ["src/demo"]

        [tool.hatch.envs.train]
        type = "mlenv"
        """ + textwrap.dedent(hatch_envs),
    )
    (root / "src" / "demo").mkdir(parents=True)
    (root / "src" / "demo" / "__init__.py").write_text("VALUE = 1\n")
    return root


def hatch(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """The real `hatch` command (Popen: a test that imports conda-lock's parser gets its
    vendored poetry, which patches subprocess.run in-process)."""
    command = [sys.executable, "-m", "hatch", *args]
    process = subprocess.Popen(
        command, cwd=cwd, text=True, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        out, err = process.communicate(stdin, timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise AssertionError(f"hatch {' '.join(args)} timed out:\n{out}\n{err}") from None
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.args, result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    return result.stdout


def clean_error(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    """hatch aborts with one `mlenv: error: ...` line naming the problem, no traceback."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    line = next((x for x in result.stderr.splitlines() if x.startswith("mlenv: error: ")), None)
    assert line is not None, result.stderr
    for needle in needles:
        assert needle in line, (needle, line)
    return line


def site_packages(prefix: Path) -> Path:
    from fixtures.host_python import host_python_minor

    return prefix / "lib" / f"python{host_python_minor()}" / "site-packages"


def test_host_python_channel_makes_a_working_interpreter(tmp_path: Path, host_channel: Path) -> None:
    project = make_project(tmp_path / "demo", host_channel)
    mlenv("lock", "--project", str(project), check=True)
    mlenv("install", "--project", str(project), check=True)
    prefix = project / ".mlenv" / "envs" / "demo"
    process = subprocess.Popen([str(prefix / "bin" / "python"), "-c", "import sys, mlenv_greeting; print(sys.prefix)"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert out.strip() == str(prefix)


def test_hatch_run_inside_the_locked_prefix_with_the_project_in_dev_mode(
    tmp_path: Path, host_channel: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = make_project(tmp_path / "demo", host_channel)
    mlenv("lock", "--project", str(project), check=True)
    prefix = project / ".mlenv" / "envs" / "demo"

    first = hatch("run", "train:python", "-c", SHOW, cwd=project)
    assert ok(first).split() == [str(prefix), str(project / "src" / "demo" / "__init__.py"), "1", "1.0"]
    assert "mlenv: installed demo sha256:" in first.stderr
    assert "secret variable API_TOKEN is not set" in first.stderr
    # dev mode: a .pth pointing at src/, recorded as an editable install (PEP 610)
    site = site_packages(prefix)
    assert [p.read_text().strip() for p in site.glob("*.pth")] == [str(project / "src")]
    direct_url = json.loads((site / "demo-0.1.0.dist-info" / "direct_url.json").read_text())
    assert direct_url == {"url": project.as_uri(), "dir_info": {"editable": True}}

    (project / "src" / "demo" / "__init__.py").write_text("VALUE = 2\n")
    monkeypatch.setenv("API_TOKEN", "from-the-caller")
    again = hatch("run", "train:sh", "-c", 'python -c "import demo; print(demo.VALUE)"; '
                  'echo "$OMP_NUM_THREADS $CONDA_PREFIX $CONDA_DEFAULT_ENV $API_TOKEN $HATCH_ENV_ACTIVE"; '
                  "mlenv-hello", cwd=project)
    assert ok(again).splitlines() == ["2", f"2 {prefix} demo from-the-caller train", f"hello from {prefix}"]
    assert "installed" not in again.stderr and "warning" not in again.stderr  # nothing to install the second time
    # the same prefix from the CLI: the project installed by hatch is not damage to repair
    for flags in ([], ["--verify"]):
        assert "nothing to do" in mlenv("install", *flags, "--project", str(project), check=True).stdout
    assert [p.read_text().strip() for p in site.glob("*.pth")] == [str(project / "src")]

    failing = hatch("run", "train:python", "-c", "raise SystemExit(7)", cwd=project)
    assert failing.returncode == 7

    assert ok(hatch("env", "find", "train", cwd=project)).strip() == str(prefix)
    ok(hatch("env", "remove", "train", cwd=project))
    assert not prefix.exists()
    assert list(prefix.parent.iterdir()) == []


def test_hatch_refuses_a_host_without_the_declared_cuda_driver(
    tmp_path: Path, host_channel: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = make_project(tmp_path / "demo", host_channel,
                           mlenv_extra='[tool.mlenv.system-requirements]\ncuda = "12.2"\n')
    mlenv("lock", "--project", str(project), check=True)
    prefix = project / ".mlenv" / "envs" / "demo"
    monkeypatch.setenv("CONDA_OVERRIDE_CUDA", "")
    monkeypatch.delenv("MLENV_IGNORE_SYSTEM_REQUIREMENTS", raising=False)
    clean_error(hatch("run", "train:python", "-c", "pass", cwd=project), 1,
                "demo needs __cuda >=12.2 (tool.mlenv.system-requirements.cuda); this machine has no CUDA driver "
                "(set CONDA_OVERRIDE_CUDA to override, or MLENV_IGNORE_SYSTEM_REQUIREMENTS=1)")
    assert not prefix.exists()

    monkeypatch.setenv("MLENV_IGNORE_SYSTEM_REQUIREMENTS", "1")
    bypassed = hatch("run", "train:python", "-c", "print('ran')", cwd=project)
    assert ok(bypassed).strip() == "ran"
    assert "mlenv: warning: ignoring system requirements: demo needs __cuda >=12.2" in bypassed.stderr

    monkeypatch.delenv("MLENV_IGNORE_SYSTEM_REQUIREMENTS")
    clean_error(hatch("run", "train:python", "-c", "pass", cwd=project), 1, "needs __cuda >=12.2")  # installed or not
    monkeypatch.setenv("CONDA_OVERRIDE_CUDA", "12.4")
    accepted = hatch("run", "train:python", "-c", "print('ran')", cwd=project)
    assert ok(accepted).strip() == "ran" and "warning: ignoring" not in accepted.stderr


def test_a_relock_resyncs_the_prefix_and_a_stale_lock_is_refused(tmp_path: Path, host_channel: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    project = make_project(tmp_path / "demo", host_channel)
    mlenv("lock", "--project", str(project), check=True)
    prefix = project / ".mlenv" / "envs" / "demo"
    mlenv("install", "--project", str(project), check=True)  # the prefix `mlenv run` uses: hatch reuses it
    first = hatch("run", "train:python", "-c", SHOW, cwd=project)
    assert ok(first).split() == [str(prefix), str(project / "src" / "demo" / "__init__.py"), "1", "1.0"]
    assert "mlenv: installed" not in first.stderr

    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("mlenv-greeting ==1.0", "mlenv-greeting ==2.0"))
    locked = (project / "conda-lock.yml").read_bytes()
    monkeypatch.setenv("MLENV_LOCKED", "1")  # CI: a stale lock is refused, nothing touched
    stale = hatch("run", "train:python", "-c", SHOW, cwd=project)
    clean_error(stale, 1, "conda-lock.yml is stale", "pyproject.toml changed", "(MLENV_LOCKED=1)", "run `mlenv lock`")
    assert (site_packages(prefix) / "mlenv_greeting-1.0.dist-info").is_dir()  # untouched
    assert (project / "conda-lock.yml").read_bytes() == locked
    monkeypatch.delenv("MLENV_LOCKED")

    # by default the stale lock is locked again, said in one line, and the prefix follows it
    synced = hatch("run", "train:python", "-c", SHOW, cwd=project)
    assert ok(synced).split() == [str(prefix), str(project / "src" / "demo" / "__init__.py"), "1", "2.0"]
    assert "mlenv: conda-lock.yml is stale ([tool.mlenv] in pyproject.toml changed" in synced.stderr
    assert "); relocking" in synced.stderr
    assert "mlenv: updated demo sha256:" in synced.stderr and "(1 packages changed)" in synced.stderr
    state = json.loads((prefix / ".mlenv-state.json").read_text())
    assert state["digest"] == read_lock(project / "conda-lock.yml").digest()
    assert not (site_packages(prefix) / "mlenv_greeting-1.0.dist-info").exists()

    unchanged = hatch("run", "train:python", "-c", "print('ok')", cwd=project)
    assert ok(unchanged).strip() == "ok" and "mlenv: updated" not in unchanged.stderr


def test_option_env_picks_a_named_environment_and_its_lock(tmp_path: Path, host_channel: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    project = make_project(
        tmp_path / "demo",
        host_channel,
        mlenv_extra="""
        [tool.mlenv.envs.gpu]
        conda = ["mlenv-hello ==1.1.0"]
        variables = { OMP_NUM_THREADS = "8" }
        """,
        hatch_envs="""
        [tool.hatch.envs.gpu]
        type = "mlenv"
        env = "gpu"

        [tool.hatch.envs.typo]
        type = "mlenv"
        env = "gpux"
        """,
    )
    mlenv("lock", "--project", str(project), "--env", "gpu", check=True)
    assert (project / "conda-lock.gpu.yml").is_file() and not (project / "conda-lock.yml").exists()
    prefix = project / ".mlenv" / "envs" / "demo-gpu"
    out = ok(hatch("run", "gpu:sh", "-c", 'mlenv-hello; echo "$OMP_NUM_THREADS"; python -c "import demo, sys; '
                   'print(sys.prefix)"', cwd=project))
    assert out.splitlines() == [f"hello again from {prefix}", "8", str(prefix)]
    state = json.loads((prefix / ".mlenv-state.json").read_text())
    assert state["digest"] == read_lock(project / "conda-lock.gpu.yml").digest()

    # the top-level environment has no lock yet: under MLENV_LOCKED=1 said plainly, nothing created
    monkeypatch.setenv("MLENV_LOCKED", "1")
    clean_error(hatch("run", "train:python", "-V", cwd=project), 1, "conda-lock.yml does not exist", "mlenv lock")
    assert not (project / ".mlenv" / "envs" / "demo").exists() and not (project / "conda-lock.yml").exists()
    monkeypatch.delenv("MLENV_LOCKED")
    clean_error(hatch("run", "typo:python", "-V", cwd=project), 2, "tool.mlenv.envs.gpux", "unknown environment",
                "Did you mean gpu?")


def test_unlocked_dependencies_and_missing_build_requirements_are_refused(tmp_path: Path, host_channel: Path) -> None:
    # hatch's own dependencies would be unlocked packages in a locked environment, also when
    # inherited from the default environment (the usual template)
    project = make_project(tmp_path / "demo", host_channel,
                           hatch_envs='[tool.hatch.envs.default]\ndependencies = ["pytest"]\n')
    mlenv("lock", "--project", str(project), check=True)
    clean_error(hatch("run", "train:python", "-V", cwd=project), 2, "tool.hatch.envs.train.dependencies",
                'not supported by type = "mlenv"', "[tool.mlenv] conda or pip", 'template = "train"')
    assert not (project / ".mlenv").exists()
    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('type = "mlenv"', 'type = "mlenv"\ntemplate = "train"'))
    ok(hatch("run", "train:python", "-V", cwd=project))

    # the project is built by its own backend in hatch's interpreter: what it lacks there is named
    other = make_project(tmp_path / "other", host_channel)
    pyproject = other / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('requires = ["hatchling"]',
                                                       'requires = ["hatchling", "no-such-build-helper>=1"]'))
    mlenv("lock", "--project", str(other), check=True)
    clean_error(hatch("run", "train:python", "-V", cwd=other), 1, "cannot build an editable wheel of the project",
                "needs no-such-build-helper>=1", "not installed next to hatch")


def test_hatch_shell(tmp_path: Path, host_channel: Path) -> None:
    project = make_project(tmp_path / "demo", host_channel)
    mlenv("lock", "--project", str(project), check=True)
    prefix = project / ".mlenv" / "envs" / "demo"
    probe = 'echo "MARK:$CONDA_PREFIX:$(command -v python):$HATCH_ENV_ACTIVE:$OMP_NUM_THREADS"'

    # Piped input (no terminal): the shell is exec'd inside the activated environment.
    piped = hatch("shell", "train", "--name", "sh", "--path", "/bin/sh", cwd=project, stdin=f"{probe}\nexit 3\n")
    assert piped.returncode == 3, piped.stderr
    assert f"MARK:{prefix}:{prefix}/bin/python:train:2" in piped.stdout.splitlines()

    # A terminal: hatch drives an interactive bash through a pty (as for its own venvs) and sources
    # our activate script after the shell's startup files, which may reorder PATH (pyenv init does).
    child = pexpect.spawn(sys.executable, ["-m", "hatch", "shell", "train", "--name", "bash", "--path", "/bin/bash"],
                          cwd=str(project), encoding="utf-8", timeout=60, env=dict(os.environ))
    try:
        child.expect('hatch-mlenv/activate"')
        child.expect(r"[#$] ")  # the prompt after sourcing; typing earlier is flushed by hatch's raw mode
        child.sendline(probe)
        child.expect(r"MARK:(/\S*):(\S*):(\S*):(\S*)\r\n")
        assert child.match.groups() == (str(prefix), f"{prefix}/bin/python", "train", "2")
        child.sendline("exit 4")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 4
    activate = (prefix / "etc" / "hatch-mlenv" / "activate").read_text()
    assert f"export CONDA_PREFIX={prefix}" in activate and "API_TOKEN" not in activate


def test_hatch_run_and_shell_run_the_packages_activation_scripts(tmp_path: Path, host_channel: Path) -> None:
    project = make_project(tmp_path / "demo", host_channel)
    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"mlenv-greeting ==1.0"]',
                                                       '"mlenv-greeting ==1.0", "mlenv-activate"]'))
    mlenv("lock", "--project", str(project), check=True)
    prefix = project / ".mlenv" / "envs" / "demo"
    probe = 'echo "MARK:$MLENV_ACTIVATED:$(command -v python):$OMP_NUM_THREADS:$PATH"'
    expected = f"MARK:activated in {prefix}:{prefix}/bin/python:2:{prefix}/bin:{prefix}/share/mlenv-activate/bin:"

    ran = hatch("run", "train:sh", "-c", probe, cwd=project)
    assert [x for x in ok(ran).splitlines() if x.startswith(expected)], (expected, ran.stdout)
    assert "mlenv-activate: activated" in ran.stderr  # the script's own output, on stderr

    piped = hatch("shell", "train", "--name", "sh", "--path", "/bin/sh", cwd=project, stdin=f"{probe}\nexit 3\n")
    assert piped.returncode == 3, piped.stderr
    assert [x for x in piped.stdout.splitlines() if x.startswith(expected)], (expected, piped.stdout)

    # In a terminal the shell's startup files run after activation; the activate script hatch
    # sources then replays what the packages' scripts set, without running them a second time.
    child = pexpect.spawn(sys.executable, ["-m", "hatch", "shell", "train", "--name", "bash", "--path", "/bin/bash"],
                          cwd=str(project), encoding="utf-8", timeout=60, env=dict(os.environ))
    try:
        child.expect('hatch-mlenv/activate"')
        child.expect(r"[#$] ")
        child.sendline(probe)
        child.expect(r"MARK:(activated in [^\r\n]*)\r\n")  # not the echo of the typed line
        assert ("MARK:" + child.match.group(1)).startswith(expected)
        child.sendline("exit 4")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 4
    activate = (prefix / "etc" / "hatch-mlenv" / "activate").read_text()
    assert f"export PATH={prefix}/bin:{prefix}/share/mlenv-activate/bin:\"$PATH\"" in activate
    assert f"export MLENV_ACTIVATED='activated in {prefix}'" in activate
