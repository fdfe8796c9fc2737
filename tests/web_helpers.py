"""Registries for the `mlenv serve` tests, and the real server on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import LOCK_SAMPLES

# What a hostile registry entry carries, in a variable's value, a description, labels and a
# package name: none of it may ever run in a browser or break out of an attribute.
SCRIPT = "<script>alert(1)</script>"
ONERROR = '"onerror=alert(2)'
EVIL_VALUE = f'{SCRIPT}{ONERROR} <img src=x onerror="document.title=1">'
EVIL_DESCRIPTION = '<img src=x onerror="alert(3)">'
EVIL_LABELS = ("<script>alert(4)</script>", 'x"onerror=alert(5)')
EVIL_PACKAGE = '"><svg onload=alert(6)>'


@dataclass(frozen=True)
class Home:
    """An MLENV_HOME holding a registry, and the environment to run mlenv against it."""

    path: Path
    env: dict[str, str]

    @property
    def registry(self) -> Path:
        return self.path / "registry.sqlite3"

    def mlenv(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([sys.executable, "-m", "hatch_mlenv", *args], env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, timeout=600)
        if check and result.returncode != 0:
            raise AssertionError(f"mlenv {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result


def home_at(path: Path, **extra: str) -> Home:
    path.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLENV_REGISTRY", "MLENV_REGISTRY_USERNAME", "MLENV_REGISTRY_PASSWORD", "MLENV_QUIET")}
    return Home(path, env | {"MLENV_HOME": str(path)} | extra)


def _git(project: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=Team Lead", "-c", "user.email=lead@example.com", *args], cwd=project,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


DEMO = """\
[project]
name = "fraud-model"
version = "{version}"

[tool.mlenv]
name = "fraud-train"
description = "Training environment of the fraud model"
channels = ["{channel}"]
platforms = ["linux-64", "osx-arm64"]
python = "3.11"
conda = ["numpy {numpy}", "requests", "mlenv-hello {hello}"{dateutil}]
pip = ["mlenv-util"]
pip-index-url = "{index}"

[tool.mlenv.variables]
OMP_NUM_THREADS = "{threads}"
WANDB_API_KEY = {{ secret = true }}
"""


def register_demo(home: Home, root: Path, channel: Path, index: str) -> None:
    """`fraud-train`: version 1, then version 2 (numpy and mlenv-hello moved, python-dateutil added,
    a variable changed) labelled `prod`, each locked from the fixture channel and index and
    registered from a git commit."""
    project = root / "fraud-model"
    project.mkdir(parents=True)
    _git(project, "init", "-q")
    for version, numpy, hello, dateutil, threads, labels in (
            ("1.3.0", "1.25.*", "1.0.*", "", "4", ()),
            ("1.4.0", "1.26.*", "1.1.*", ', "python-dateutil"', "8", ("--label", "prod"))):
        (project / "pyproject.toml").write_text(DEMO.format(version=version, channel=channel, index=index, numpy=numpy,
                                                            hello=hello, dateutil=dateutil, threads=threads))
        home.mlenv("lock", "--project", str(project))
        _git(project, "add", "-A")
        _git(project, "commit", "-q", "-m", f"fraud-model {version}")
        home.mlenv("register", "--project", str(project), *labels)


def register_hostile(home: Home, root: Path, channel: Path) -> None:
    """`hostile`: a project whose variable and description carry markup, a lockfile whose
    package name does, and labels written into the registry by hand."""
    project = root / "hostile"
    project.mkdir(parents=True)
    (project / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [project]
        name = "hostile"
        version = "0.1"

        [tool.mlenv]
        description = {json.dumps(EVIL_DESCRIPTION)}
        channels = ["{channel}"]
        platforms = ["linux-64"]
        conda = ["six"]

        [tool.mlenv.variables]
        EVIL = {json.dumps(EVIL_VALUE)}
        """))
    home.mlenv("lock", "--project", str(project))
    home.mlenv("register", "--project", str(project))
    lockfile = root / "hostile-lock" / "conda-lock.yml"
    lockfile.parent.mkdir()
    text = (project / "conda-lock.yml").read_text()
    lockfile.write_text(text.replace("name: six", f"name: '{EVIL_PACKAGE}'").replace(
        "six: ", f"'{EVIL_PACKAGE}': "))
    home.mlenv("register", "--lockfile", str(lockfile), "--name", "hostile")
    # labels no command would write (they are checked): a registry edited by hand
    with contextlib.closing(sqlite3.connect(home.registry)) as db, db:
        for label in EVIL_LABELS:
            db.execute("INSERT INTO labels(name, label, version) VALUES ('hostile', ?, 1)", (label,))


def register_samples(home: Home) -> None:
    """conda-lock's own lockfiles: `samples` 1 (numpy's, 5 platforms) and 2 (robostack's, ~590
    packages on linux-64), without a definition."""
    home.mlenv("register", "--lockfile", str(LOCK_SAMPLES / "numpy-conda-lock.yml"), "--name", "samples")
    home.mlenv("register", "--lockfile", str(LOCK_SAMPLES / "robostack-turtlesim-conda-lock.yml"), "--name", "samples")


@dataclass
class Server:
    url: str
    process: subprocess.Popen[str]
    stderr: list[str]


@contextlib.contextmanager
def serving(home: Home, *args: str) -> Iterator[Server]:
    """`mlenv serve --port 0 ARGS` until the block ends, then Ctrl-C (SIGINT): it must stop with 0."""
    process = subprocess.Popen([sys.executable, "-m", "hatch_mlenv", "serve", "--port", "0", *args], env=home.env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.extend(process.stderr), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        line = _first_line(process)
        match = re.search(r"http://\S+/", line)
        assert match, f"no address in {line!r}; stderr: {''.join(stderr)}"
        yield Server(match.group(0).rstrip("/"), process, stderr)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise AssertionError(f"mlenv serve did not stop on Ctrl-C; stderr: {''.join(stderr)}") from None
        reader.join(timeout=5)
    assert process.returncode == 0, f"mlenv serve exited {process.returncode}: {''.join(stderr)}"


def _first_line(process: subprocess.Popen[str]) -> str:
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(process.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout=60)
    if not result or not result[0]:
        process.kill()
        raise AssertionError(f"mlenv serve did not start (exit {process.poll()})")
    return result[0]
