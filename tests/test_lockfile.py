"""Reading lockfiles: the real conda-lock samples, and broken files that must not be overwritten."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml

from hatch_mlenv.errors import LockfileError
from hatch_mlenv.lockfile import read_lock
from tests.conftest import LOCK_SAMPLES, assert_clean_error, mlenv, tree_hashes, write_project


@pytest.mark.parametrize(
    ("sample", "platforms"),
    [
        ("numpy-conda-lock.yml", {"linux-64", "linux-aarch64", "linux-ppc64le", "osx-64", "osx-arm64"}),
        ("robostack-turtlesim-conda-lock.yml", None),
    ],
)
def test_reads_real_conda_lock_output(sample: str, platforms: set[str] | None, shared_data: Path) -> None:
    path = LOCK_SAMPLES / sample
    lock = read_lock(path)
    raw = yaml.safe_load(path.read_text())
    assert len(lock.packages) == len(raw["package"])
    if platforms is not None:
        assert set(lock.platforms) == platforms
    counts = lock.counts()
    assert sum(sum(c.values()) for c in counts.values()) == len(lock.packages)
    assert lock.name is None and lock.spec_hash is None  # not ours: no mlenv metadata
    assert len(lock.digest()) == 64


def test_sample_digest_ignores_order_and_layout(tmp_path: Path, shared_data: Path) -> None:
    raw = yaml.safe_load((LOCK_SAMPLES / "numpy-conda-lock.yml").read_text())
    digest = read_lock(LOCK_SAMPLES / "numpy-conda-lock.yml").digest()
    random.Random(1).shuffle(raw["package"])
    shuffled = tmp_path / "shuffled.yml"
    shuffled.write_text(yaml.safe_dump(raw, default_flow_style=True))
    assert read_lock(shuffled).digest() == digest
    raw["package"][0]["hash"]["sha256"] = "0" * 64
    shuffled.write_text(yaml.safe_dump(raw))
    assert read_lock(shuffled).digest() != digest


def _broken_lockfiles(good: str) -> dict[str, tuple[str, str]]:
    return {
        "truncated": (good[: len(good) // 3], "corrupted lockfile"),
        "not-yaml": ("version: 1\nmetadata: [unclosed\n", "not valid YAML"),
        "not-a-mapping": ("- just\n- a list\n", "expected a mapping"),
        "no-version": (good.replace("version: 1\n", ""), "missing `version`"),
        "unknown-version": (good.replace("version: 1\n", "version: 7\n"), "unsupported lockfile version 7"),
        "bad-package": (good.replace("manager: conda", "manager: brew", 1), "manager` must be conda or pip"),
        "binary": ("\x00\x01\x02\xff", "corrupted lockfile"),
    }


@pytest.mark.tampers_lockfiles
@pytest.mark.parametrize(
    "kind", ["truncated", "not-yaml", "not-a-mapping", "no-version", "unknown-version", "bad-package", "binary"]
)
def test_broken_lockfile_fails_cleanly_and_is_kept(tmp_path: Path, defaults_2018: Path, kind: str) -> None:
    project = write_project(
        tmp_path,
        f'channels = ["{defaults_2018}"]\nplatforms = ["linux-64"]\nconda = ["zlib"]\n'
        '[tool.mlenv.virtual-packages.linux-64]\n__glibc = "2.17"\n',
    )
    mlenv("lock", "--project", str(project), check=True)
    lockfile = project / "conda-lock.yml"
    content, needle = _broken_lockfiles(lockfile.read_text())[kind]
    lockfile.write_text(content, errors="surrogateescape") if kind != "binary" else lockfile.write_bytes(
        content.encode("latin-1")
    )
    before = tree_hashes(project)
    for command in (["lock"], ["lock", "--check"], ["show"], ["lock", "--update", "zlib"]):
        result = mlenv(*command, "--project", str(project))
        assert_clean_error(result, 2, str(lockfile))
        assert needle in result.stderr.splitlines()[0], result.stderr
    assert tree_hashes(project) == before


def test_read_lock_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(LockfileError, match="lockfile not found"):
        read_lock(tmp_path / "missing.yml")
