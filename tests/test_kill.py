"""SIGKILL at random points of `mlenv lock` and `mlenv install`: the old state or the new one,
never a mix, and the next run leaves nothing of the killed one behind.

Bounded: 20 trials each, killed at a random moment within the command's usual duration
(seeded, so a failure replays). Registration has its own kill test in test_registry_local.py.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from hatch_mlenv.lockfile import read_lock
from hatch_mlenv.verify import verify_prefix
from tests.conftest import mlenv, write_project

TRIALS = 20


def _spec(channel: Path, hello: str) -> str:
    return (f'channels = ["{channel}"]\nplatforms = ["linux-64"]\npython = "3.11"\n'
            f'conda = ["mlenv-hello =={hello}", "six", "numpy"]\n')


def _timed_run(*args: str) -> float:
    start = time.monotonic()
    mlenv(*args, check=True)
    return time.monotonic() - start


def _kill_after(delay: float, *args: str) -> None:
    process = subprocess.Popen([sys.executable, "-m", "hatch_mlenv", *args],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)


def _leftovers(directory: Path, prefix: str) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(prefix))


def test_sigkill_during_lock(tmp_path: Path, channel: Path) -> None:
    project = write_project(tmp_path / "proj", _spec(channel, "1.0.0"))
    mlenv("lock", "--project", str(project), check=True)
    lockfile = project / "conda-lock.yml"
    old_text, old_digest = lockfile.read_text(), read_lock(lockfile).digest()
    (project / "pyproject.toml").write_text((project / "pyproject.toml").read_text().replace("1.0.0", "1.1.0"))
    duration = _timed_run("lock", "--project", str(project))
    new_digest = read_lock(lockfile).digest()
    assert new_digest != old_digest

    rng = random.Random(20261201)
    for _ in range(TRIALS):
        lockfile.write_text(old_text)
        _kill_after(rng.uniform(0, duration * 1.2), "lock", "--project", str(project))
        digest = read_lock(lockfile).digest()  # always a whole, readable lock
        assert digest in (old_digest, new_digest)
    lockfile.write_text(old_text)
    mlenv("lock", "--project", str(project), check=True)
    assert read_lock(lockfile).digest() == new_digest
    assert _leftovers(project, ".conda-lock.yml.") == []


def test_sigkill_during_install(tmp_path: Path, channel: Path) -> None:
    project = write_project(tmp_path / "proj", _spec(channel, "1.0.0"))
    mlenv("lock", "--project", str(project), check=True)
    texts = {"old": ((project / "pyproject.toml").read_text(), (project / "conda-lock.yml").read_text())}
    (project / "pyproject.toml").write_text(texts["old"][0].replace("1.0.0", "1.1.0"))
    mlenv("lock", "--project", str(project), check=True)
    texts["new"] = ((project / "pyproject.toml").read_text(), (project / "conda-lock.yml").read_text())
    locks = {}
    for name, (_, text) in texts.items():
        (tmp_path / f"{name}.yml").write_text(text)
        locks[name] = read_lock(tmp_path / f"{name}.yml")
    envs = project / ".mlenv" / "envs"
    prefix = envs / "demo"
    duration = _timed_run("install", "--project", str(project))

    rng = random.Random(20261202)
    for trial in range(TRIALS):
        pyproject, text = texts["old" if trial % 2 else "new"]
        (project / "pyproject.toml").write_text(pyproject)
        (project / "conda-lock.yml").write_text(text)
        _kill_after(rng.uniform(0, duration * 1.2), "install", "--project", str(project))
        assert prefix.is_dir(), "the prefix path disappeared"
        clean = [name for name, lock in locks.items() if verify_prefix(lock, prefix, "linux-64").clean]
        assert clean, f"trial {trial}: the prefix matches neither lock"
    mlenv("install", "--project", str(project), check=True)
    assert _leftovers(envs, ".demo.") == []
    assert mlenv("verify", "--project", str(project)).returncode == 0
    assert os.listdir(envs) == ["demo"]
