"""`mlenv pack` is byte-reproducible (conda-pack's issue #345), and `mlenv verify --pack` checks an archive."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

from tests.conftest import assert_clean_error, write_project


def _mlenv(*args: str, home: Path, cwd: Path, registry: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MLENV_HOME": str(home), "MLENV_REGISTRY": registry}
    return subprocess.run([sys.executable, "-m", "hatch_mlenv", *args], env=env, cwd=cwd, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=600)


def _ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_two_machines_pack_one_version_to_the_same_bytes_and_verify_checks_a_pack(
    tmp_path: Path, pip_index: str
) -> None:
    from fixtures.host_python import host_python_minor, make_host_python_channel

    channel = make_host_python_channel(tmp_path / "channel")
    # conda packages with an activation script, and wheels (one with a console script, whose
    # installed shebang and RECORD name the prefix)
    project = write_project(tmp_path / "proj", f"""
        channels = ["{channel}"]
        platforms = ["linux-64"]
        python = "{host_python_minor()}"
        conda = ["mlenv-greeting", "mlenv-activate", "mlenv-hello"]
        pip = ["mlenv-util"]
        pip-index-url = "{pip_index}"
    """)
    registry = f"sqlite:///{tmp_path / 'team.sqlite3'}"
    _ok(_mlenv("lock", "--project", str(project), home=tmp_path / "laptop", cwd=tmp_path, registry=registry))
    _ok(_mlenv("register", "--project", str(project), home=tmp_path / "laptop", cwd=tmp_path, registry=registry))

    archives = {}
    for machine in ("first", "second"):  # two user data and cache directories: two prefixes, two caches
        home = tmp_path / machine
        _ok(_mlenv("install", "demo:1", home=home, cwd=tmp_path, registry=registry))
        prefix = next((home / "envs").iterdir())
        # what running something in the prefix leaves behind is not the environment's
        (prefix / "lib" / f"python{host_python_minor()}" / "site-packages" / "__pycache__").mkdir(exist_ok=True)
        (prefix / "lib" / f"python{host_python_minor()}" / "site-packages" / "__pycache__" / "x.cpython.pyc").write_bytes(
            machine.encode())
        archive = tmp_path / f"{machine}.tar.gz"
        packed = _ok(_mlenv("pack", "demo:1", "-o", str(archive), home=home, cwd=tmp_path, registry=registry))
        sha256 = hashlib.sha256(archive.read_bytes()).hexdigest()
        assert packed.stdout.strip().endswith(f"(archive sha256:{sha256})")
        assert Path(f"{archive}.sha256").read_text() == f"{sha256}  {archive.name}\n"  # sha256sum -c reads it
        archives[machine] = archive
    first, second = (archives[m].read_bytes() for m in ("first", "second"))
    assert hashlib.sha256(first).hexdigest() == hashlib.sha256(second).hexdigest()

    # what makes it so: sorted members, no owners, fixed times and modes, gzip without name or time
    assert first[3] & 0x08 == 0 and first[4:8] == b"\0\0\0\0"  # no FNAME flag, MTIME 0
    with tarfile.open(archives["first"]) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names) and ".mlenv-state.json" not in names
    assert not any("__pycache__/x.cpython.pyc" in name for name in names)
    assert {(m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, "", "")}
    assert {m.mode for m in members if m.isfile()} <= {0o644, 0o755}
    # written at install time: SOURCE_DATE_EPOCH, else 0; a conda package's files keep the package's times
    assert {m.mtime for m in members if m.name.startswith("conda-meta/") or "/mlenv_util" in m.name} == {0}
    assert {m.mtime for m in members if "/mlenv_greeting/" in m.name} == {1700000000}

    # the archive unpacks and runs anywhere (conda-unpack), its wheels' RECORD as packed
    target = tmp_path / "executor" / "environment"
    target.mkdir(parents=True)
    with tarfile.open(archives["first"]) as tar:
        tar.extractall(target)
    _ok(subprocess.run([str(target / "bin" / "conda-unpack")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, timeout=120))
    ran = _ok(subprocess.run([str(target / "bin" / "python"), "-c", "import sys, mlenv_util, mlenv_greeting; "
                              "print(sys.prefix, mlenv_greeting.__version__)"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120))
    assert ran.stdout.split() == [str(target), "2.0"]

    # verify: the pack of the version, from a third machine that never packed it
    third = tmp_path / "third"
    checked = _ok(_mlenv("verify", "demo:1", "--pack", str(archives["first"]), home=third, cwd=tmp_path,
                         registry=registry))
    assert "is the pack of demo sha256:" in checked.stdout and hashlib.sha256(first).hexdigest() in checked.stdout
    report = json.loads(_ok(_mlenv("verify", "demo:1", "--pack", str(archives["second"]), "--json", home=third,
                                   cwd=tmp_path, registry=registry)).stdout)
    assert report["ok"] and report["sha256"] == report["expected"] and not report["same_content"]

    # a tampered pack: one file changed inside, recompressed the same way
    tampered = tmp_path / "tampered.tar.gz"
    tampered.write_bytes(_retarred(first, "lib/python", b"import os; os.system('curl evil')\n"))
    failed = _mlenv("verify", "demo:1", "--pack", str(tampered), home=third, cwd=tmp_path, registry=registry)
    assert_clean_error(failed, 1, "tampered.tar.gz is not the pack of demo sha256:",
                       hashlib.sha256(tampered.read_bytes()).hexdigest(), hashlib.sha256(first).hexdigest())

    # the same tar compressed by another zlib (here: another level) is still that pack, and says so
    recompressed = tmp_path / "recompressed.tar.gz"
    recompressed.write_bytes(gzip.compress(gzip.decompress(first), compresslevel=9, mtime=0))
    again = _ok(_mlenv("verify", "demo:1", "--pack", str(recompressed), home=third, cwd=tmp_path, registry=registry))
    assert "the same tar, compressed by another zlib" in again.stdout


def _retarred(archive: bytes, prefix: str, content: bytes) -> bytes:
    """The archive with the first .py file under `prefix` replaced, members otherwise as they were."""
    source = tarfile.open(fileobj=io.BytesIO(archive))
    out = io.BytesIO()
    done = False
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for member in source.getmembers():
            data = source.extractfile(member).read() if member.isfile() else None
            if not done and member.isfile() and member.name.startswith(prefix) and member.name.endswith(".py"):
                data, done = content, True
                member.size = len(content)
            tar.addfile(member, io.BytesIO(data) if data is not None else None)
    assert done
    return gzip.compress(out.getvalue(), compresslevel=4, mtime=0)
