"""What a user sees (issue 23): text printed as it was written, whole table rows in a pipe,
progress on stderr for every long step on every path (and quiet where nobody asked), `-q`, `-v`,
`NO_COLOR`, `--json`, `lock --update` with several names, shell completion."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from tests.conftest import assert_clean_error, mlenv, tree_hashes, write_project
from tests.test_hatch_env import hatch, hatch_home, host_channel, make_project, ok  # noqa: F401 - fixtures
from tests.test_oci_image import oci_project  # noqa: F401 - the fixture

CHECKOUT = Path(__file__).resolve().parents[1]


def project(root: Path, channel: Path, body: str = 'conda = ["mlenv-hello"]\n', **kwargs: str) -> Path:
    return write_project(root, f'channels = ["{channel}"]\nplatforms = ["linux-64"]\n' + body, **kwargs)


def on_terminal(*args: str, env: dict[str, str] | None = None, columns: int = 60,
                stdout: str = "terminal") -> tuple[int, str, str]:
    """Run `mlenv` with stderr (and, unless `stdout="pipe"`, stdout) on a pseudo-terminal of
    `columns` columns; returns the exit code, what the terminal showed and what went to the pipe."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    environment = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "COLUMNS")}
    process = subprocess.Popen(
        [sys.executable, "-m", "hatch_mlenv", *args], stdin=subprocess.DEVNULL,
        stdout=slave if stdout == "terminal" else subprocess.PIPE, stderr=slave,
        env=environment | {"TERM": "xterm-256color"} | (env or {}), close_fds=True,
    )
    os.close(slave)
    shown = b""
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the other side closed
            break
        if not data:
            break
        shown += data
    os.close(master)
    piped = process.stdout.read().decode() if process.stdout else ""
    return process.wait(timeout=120), shown.decode(), piped


def plain(text: str) -> str:
    """Terminal output without its escape sequences and carriage returns."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text).replace("\r", "")


# -- Why: output eats text in square brackets -------------------------------------------------
def test_a_stale_reason_keeps_its_brackets_piped_and_on_a_terminal(tmp_path: Path, channel: Path) -> None:
    root = project(tmp_path / "p", channel)
    mlenv("lock", "--project", str(root), check=True)
    pyproject = root / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + '[tool.mlenv.variables]\nOMP_NUM_THREADS = "4"\n')
    before = tree_hashes(tmp_path)
    expected = (f"lockfile  {root / 'conda-lock.yml'} (stale: [tool.mlenv] in pyproject.toml changed since "
                "conda-lock.yml was written)")

    shown = mlenv("show", "--project", str(root), check=True)
    assert expected in shown.stdout.splitlines(), shown.stdout
    code, terminal, _ = on_terminal("show", "--project", str(root), columns=300)
    assert code == 0 and expected in plain(terminal).splitlines(), terminal
    assert tree_hashes(tmp_path) == before  # show reports; it relocks nothing


def test_diff_prints_extras_as_written(tmp_path: Path, channel: Path, pip_index: str) -> None:
    def locked(name: str, requirement: str) -> Path:
        root = project(tmp_path / name, channel, f'python = "3.11"\npip = ["{requirement}"]\n'
                       f'pip-index-url = "{pip_index}"\n')
        mlenv("lock", "--project", str(root), check=True)
        return root

    old, new = locked("old", "mlenv-util[telegram]<2"), locked("new", "mlenv-util[telegram]<1.5")
    before = tree_hashes(tmp_path)
    lines = ['definition pip: - "mlenv-util[telegram]<2"', 'definition pip: + "mlenv-util[telegram]<1.5"']
    shown = mlenv("diff", str(old), str(new), check=True).stdout.splitlines()
    assert shown[-2:] == lines, shown
    code, terminal, _ = on_terminal("diff", str(old), str(new), columns=300)
    assert code == 0 and plain(terminal).splitlines()[-2:] == lines, terminal
    assert tree_hashes(tmp_path) == before


def test_tables_print_whole_rows_when_piped_and_fold_on_a_terminal(tmp_path: Path, channel: Path) -> None:
    root = project(tmp_path / "p", channel)
    mlenv("lock", "--project", str(root), check=True)
    mlenv("register", "--project", str(root), "--label", "production-candidate", check=True)
    version = json.loads(mlenv("history", "demo", "--json", check=True).stdout)[0]

    piped = mlenv("history", "demo", check=True).stdout
    assert piped.splitlines() == [
        "version\tcreated (UTC)\tcommit\tdigest\tlabels",
        f"1\t{version['created']}\t-\t{version['digest'][7:19]}\tlatest, production-candidate",
    ]
    assert mlenv("list", check=True).stdout.splitlines()[1] == "demo\t1\t1\tlatest→1, production-candidate→1"

    code, terminal, _ = on_terminal("history", "demo", columns=40)  # far too narrow for the row
    assert code == 0 and "…" not in terminal
    body = plain(terminal).split("┡", 1)[1].splitlines()[1:]
    columns = [""] * 5
    for row in (line.split("│")[1:-1] for line in body if line.startswith("│")):
        columns = [so_far + cell.strip() for so_far, cell in zip(columns, row)]
    assert columns[1] == version["created"]  # folded over several lines, every character kept
    assert columns[4] == "latest,production-candidate"


# -- Why: long steps are silent ---------------------------------------------------------------
def test_long_steps_say_so_when_asked_and_nothing_otherwise(tmp_path: Path, channel: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLENV_PROGRESS")  # what a user in CI gets: stderr is a pipe
    root = project(tmp_path / "p", channel)
    solving = "mlenv: fetching channel metadata and solving the conda packages for linux-64"

    quiet = mlenv("lock", "--project", str(root), check=True)
    assert quiet.stderr == ""
    asked = mlenv("-v", "lock", "--force", "--project", str(root), check=True)
    assert asked.stderr.splitlines() == [solving]
    assert mlenv("lock", "--force", "-v", "--project", str(root), check=True).stderr.splitlines() == [solving]

    ran = mlenv("run", "--prefix", str(tmp_path / "one"), "--project", str(root), "--", "true", check=True)
    assert ran.stderr == "" and (tmp_path / "one" / "conda-meta").is_dir()
    ran = mlenv("-v", "run", "--prefix", str(tmp_path / "two"), "--project", str(root), "--", "true", check=True)
    assert ran.stderr.splitlines() == [f"mlenv: installing the conda packages of demo for linux-64 into {tmp_path / 'two'}"]

    library = subprocess.run(
        [sys.executable, "-c", "import sys; from hatch_mlenv import Environment; "
         "Environment.load(sys.argv[1]).install(sys.argv[2])", str(root), str(tmp_path / "three")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300,
        env=os.environ | {"MLENV_PROGRESS": "1"}, check=True,
    )
    assert library.stdout == ""
    assert library.stderr.splitlines() == [
        f"mlenv: installing the conda packages of demo for linux-64 into {tmp_path / 'three'}"]

    # -q wins over MLENV_PROGRESS, and also silences notes
    monkeypatch.setenv("MLENV_PROGRESS", "1")
    pyproject = root / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + '[tool.mlenv.variables]\nX = "1"\n')  # stale: relocked
    silent = mlenv("install", "-q", "--prefix", str(tmp_path / "four"), "--project", str(root), check=True)
    assert silent.stderr == "" and (tmp_path / "four" / "conda-meta").is_dir()
    monkeypatch.setenv("MLENV_QUIET", "1")
    assert mlenv("-v", "lock", "--force", "--project", str(root), check=True).stderr == solving + "\n"  # the flag wins
    assert mlenv("lock", "--force", "--project", str(root), check=True).stderr == ""
    assert_clean_error(mlenv("list", "-q", "-v"), 2, "-q/--quiet and -v/--verbose exclude each other")


def test_a_terminal_gets_a_spinner_on_stderr_and_stdout_keeps_the_result(tmp_path: Path, channel: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLENV_PROGRESS")
    root = project(tmp_path / "p", channel)
    code, terminal, piped = on_terminal("lock", "--project", str(root), stdout="pipe", columns=200)
    assert code == 0 and piped.startswith("locked demo for linux-64: ")
    assert "fetching channel metadata and solving the conda packages for linux-64" in terminal
    assert "\x1b[2K" in terminal  # a transient status: erased when the step ends
    code, terminal, piped = on_terminal("run", "--project", str(root), "--", "echo", "ran", stdout="pipe", columns=200)
    assert code == 0 and piped == "ran\n"
    assert "installing the conda packages of demo for linux-64" in terminal
    code, terminal, piped = on_terminal("-q", "lock", "--force", "--project", str(root), stdout="pipe")
    assert code == 0 and terminal == "" and piped.startswith("re-solved, unchanged: demo")


def test_the_hatch_environment_reports_its_install(tmp_path: Path, host_channel: Path) -> None:  # noqa: F811
    root = make_project(tmp_path / "demo", host_channel)
    mlenv("lock", "--project", str(root), check=True)
    first = hatch("run", "train:python", "-c", "print('ok')", cwd=root)  # MLENV_PROGRESS=1: see conftest
    assert ok(first).strip() == "ok"
    prefix = root / ".mlenv" / "envs" / "demo"
    assert f"mlenv: installing the conda packages of demo for linux-64 into {prefix}" in first.stderr


def test_no_color_is_honoured_on_a_terminal(tmp_path: Path, channel: Path) -> None:
    root = write_project(tmp_path / "p", f'channels = ["{channel}"]\nplatforms = ["osx-arm64"]\nconda = ["mlenv-hello"]\n')
    mlenv("lock", "--project", str(root), check=True)
    code, coloured, _ = on_terminal("doctor", "--project", str(root))
    assert code == 1 and "\x1b[31m" in coloured and "the lock has no packages for linux-64" in plain(coloured)
    code, uncoloured, _ = on_terminal("doctor", "--project", str(root), env={"NO_COLOR": "1"})
    assert code == 1 and not re.search(r"\x1b\[[0-9;]*3[0-9]m", uncoloured)
    assert "the lock has no packages for linux-64" in plain(uncoloured)


# -- --json where a script wants the result ---------------------------------------------------
def test_json_of_lock_install_label_and_archive(tmp_path: Path, channel: Path) -> None:
    root = project(tmp_path / "p", channel)
    locked = json.loads(mlenv("lock", "--project", str(root), "--json", check=True).stdout)
    digest = locked["digest"]
    assert locked == {"name": "demo", "lockfile": str(root / "conda-lock.yml"), "status": "locked",
                      "digest": digest, "platforms": ["linux-64"], "reason": None}
    assert digest.startswith("sha256:") and len(digest) == 71
    again = json.loads(mlenv("lock", "--project", str(root), "--json", check=True).stdout)
    assert again["status"] == "fresh" and again["digest"] == digest
    assert json.loads(mlenv("lock", "--check", "--project", str(root), "--json", check=True).stdout)["status"] == "fresh"
    pyproject = root / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + '[tool.mlenv.variables]\nX = "1"\n')
    stale = mlenv("lock", "--check", "--project", str(root), "--json")
    assert stale.returncode == 1
    assert json.loads(stale.stdout)["status"] == "stale" and "[tool.mlenv]" in json.loads(stale.stdout)["reason"]
    pyproject.write_text(pyproject.read_text().replace('[tool.mlenv.variables]\nX = "1"\n', ""))

    prefix = tmp_path / "env"
    installed = json.loads(mlenv("install", "--project", str(root), "--prefix", str(prefix), "--json", check=True).stdout)
    assert installed == {"name": "demo", "digest": digest, "prefix": str(prefix), "status": "installed",
                         "changed": installed["changed"]}
    assert "mlenv-hello" in installed["changed"]
    unchanged = json.loads(mlenv("install", "--project", str(root), "--prefix", str(prefix), "--json", check=True).stdout)
    assert unchanged["status"] == "unchanged" and unchanged["changed"] == []

    mlenv("register", "--project", str(root), check=True)
    labelled = json.loads(mlenv("label", "demo:1", "prod", "--json", check=True).stdout)
    assert labelled["label"] == "prod" and labelled["version"] == 1 and labelled["digest"] == digest
    assert sorted(labelled["labels"]) == ["latest", "prod"]
    archived = json.loads(mlenv("archive", "demo:1", "--json", check=True).stdout)
    assert archived["archived"] is True and archived["name"] == "demo" and archived["version"] == 1
    assert json.loads(mlenv("restore", "demo:1", "--json", check=True).stdout)["archived"] is False


def test_json_of_image_build(oci_project: Path, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "layout"
    args = ("image", "build", "--builder", "oci", "--project", str(oci_project), "-o", str(out), "--json")
    built = json.loads(mlenv(*args, check=True).stdout)
    reference = mlenv("image", "tag", "--project", str(oci_project), check=True).stdout.split()[0]
    assert built["builder"] == "oci" and built["reference"] == reference and built["status"] == "built"
    index = json.loads((out / "index.json").read_text())
    assert built["digest"] == index["manifests"][0]["digest"]
    assert built["lines"] == [f"{reference} built ({built['digest']})", f"{reference} written to {out}"]
    reused = json.loads(mlenv(*args, check=True).stdout)
    assert reused["status"] == "reused" and reused["digest"] == built["digest"]


# -- README facts: lock --update with several names, shell completion, no test count ----------
def test_lock_update_takes_several_names(tmp_path: Path, channel: Path) -> None:
    root = project(tmp_path / "p", channel, 'python = "3.11"\nconda = ["mlenv-hello", "numpy"]\n')
    mlenv("lock", "--project", str(root), check=True)
    for args in (["--update", "numpy", "--update", "mlenv-hello"], ["--update", "numpy,mlenv-hello"]):
        result = mlenv("lock", "--project", str(root), *args, "--json", check=True)
        assert json.loads(result.stdout)["status"] in ("locked", "unchanged")
    before = tree_hashes(tmp_path)
    assert_clean_error(mlenv("lock", "--project", str(root), "--update", "numpy,nope"), 2,
                       "cannot --update 'nope': it is not in the lock")
    assert tree_hashes(tmp_path) == before


def test_shell_completion_as_the_readme_says() -> None:
    readme = (CHECKOUT / "README.md").read_text()
    assert 'eval "$(_MLENV_COMPLETE=bash_source mlenv)"' in readme
    source = subprocess.run([sys.executable, "-m", "hatch_mlenv"], env=os.environ | {"_MLENV_COMPLETE": "bash_source"},
                            stdout=subprocess.PIPE, text=True, check=True).stdout
    assert "complete " in source and "_mlenv_completion" in source
    completed = subprocess.run(
        [sys.executable, "-m", "hatch_mlenv"], stdout=subprocess.PIPE, text=True, check=True,
        env=os.environ | {"_MLENV_COMPLETE": "bash_complete", "COMP_WORDS": "mlenv image bu", "COMP_CWORD": "2"},
    ).stdout
    assert completed.split() == ["plain,build"]


def test_the_readme_holds_no_test_count_and_documents_update_and_exit_codes() -> None:
    readme = (CHECKOUT / "README.md").read_text()
    assert not re.search(r"\b\d+ tests\b", readme)
    assert "`--update numpy --update pandas`" in readme and "`--update numpy,pandas`" in readme
    assert "| code | meaning | for example |" in readme
