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


def _render_both(tmp_path: Path, packages: list, *, file_name: str = "conda-lock.yml", sources: tuple = ("pyproject.toml",),
                 custom: dict | None = None) -> tuple[str, str]:
    """render_lockfile's text, and what conda-lock's own writer makes of the same models."""
    from conda_lock.lockfile import write_conda_lock_file
    from conda_lock.lockfile.v2prelim.models import Lockfile, LockMeta

    from hatch_mlenv.lockfile import render_lockfile, to_conda_lock

    platforms = sorted({p.platform for p in packages})
    content_hash = {p: "0" * 64 for p in platforms}
    custom = custom or {"mlenv.name": "demo"}
    ours = render_lockfile(packages, platforms=platforms, channels=["https://example.invalid/ch"], content_hash=content_hash,
                           custom=custom, sources=sources, file_name=file_name)
    model = Lockfile(
        package=[to_conda_lock(p) for p in packages],
        metadata=LockMeta(content_hash=content_hash, channels=["https://example.invalid/ch"], platforms=platforms,
                          sources=list(sources), custom_metadata=dict(sorted(custom.items()))),
    )
    target = tmp_path / file_name
    write_conda_lock_file(model, target, metadata_choices=None, include_help_text=True)
    return ours, target.read_text(encoding="utf-8")


@pytest.mark.parametrize("sample", ["numpy-conda-lock.yml", "robostack-turtlesim-conda-lock.yml"])
def test_render_is_byte_identical_to_conda_locks_writer(sample: str, tmp_path: Path, shared_data: Path) -> None:
    packages = list(read_lock(LOCK_SAMPLES / sample).packages)
    random.Random(2).shuffle(packages)  # both sort
    ours, theirs = _render_both(tmp_path, packages)
    assert ours == theirs
    assert read_lock(LOCK_SAMPLES / sample).digest() == _reread(tmp_path, ours).digest()


def test_render_matches_conda_lock_on_categories_pip_virtual_and_odd_text(tmp_path: Path) -> None:
    from hatch_mlenv.lockfile import LockedPackage

    url = "https://example.invalid/ch/linux-64/"
    packages = [
        LockedPackage("linux-64", "conda", "python", "3.11.7", url + "python-3.11.7-h0_0.conda", md5="a" * 32,
                      sha256="b" * 64, build="h0_0", dependencies={"libzlib": ">=1.2.13,<2.0a0", "__glibc": ">=2.17"}),
        LockedPackage("linux-64", "conda", "__glibc", "2.17", url + "glibc", md5="c" * 32),  # virtual: dropped
        LockedPackage("linux-64", "conda", "pytest", "8.0", url + "pytest-8.0-py_0.conda", md5="d" * 32, build="py_0",
                      category="dev"),
        LockedPackage("osx-arm64", "conda", "libzlib", "1.3", url.replace("linux-64", "osx-arm64") + "z.conda",
                      md5="e" * 32, build="0", category="docs"),
        LockedPackage("linux-64", "pip", "msgpack-numpy", "0.4.7.1", "https://files.invalid/msgpack_numpy.whl",
                      sha256="f" * 64, dependencies={"msgpack": ">=0.5.2", "numpy": ">=1.9.0"}),
        LockedPackage("linux-64", "pip", "long-name" * 12, "1.0", "https://files.invalid/" + "x" * 150 + ".whl"),
    ]
    custom = {"mlenv.name": "démo: ü ✓", "mlenv.variables": '{"A": "x: y # z", "B": "multi\\nline"}',
              "mlenv.pypi-names": '{"msgpack-python":["msgpack"]}'}
    for file_name, sources in (("conda-lock.yml", ("pyproject.toml",)), ("envs/gpu.lock.yml", ()),
                               ("my lock.yml", ("a/pyproject.toml", "b.yml"))):
        ours, theirs = _render_both(tmp_path, packages, file_name=Path(file_name).name, sources=sources, custom=custom)
        assert ours == theirs, file_name
    assert "__glibc" not in ours.split("package:")[1].replace("__glibc: '>=2.17'", "")


def _reread(tmp_path: Path, text: str):
    path = tmp_path / "reread.yml"
    path.write_text(text, encoding="utf-8")
    return read_lock(path)


def test_a_parsed_lock_is_kept_as_json_and_a_broken_entry_is_parsed_again(
    tmp_path: Path, isolated_registry: Path
) -> None:
    """The YAML is parsed once per text; the JSON kept in the cache gives the same Lock, and a
    damaged cache entry falls back to the YAML (it is a cache, never the source of truth)."""
    import hashlib
    import json

    from hatch_mlenv import lockfile

    source = LOCK_SAMPLES / "numpy-conda-lock.yml"
    text = source.read_text()
    key = hashlib.sha256(text.encode()).hexdigest()
    lockfile._PARSED.clear()
    first = lockfile.parse_lock(text, source)
    kept = isolated_registry / "cache" / "lock-documents" / f"{key}.json"
    assert kept.is_file()
    lockfile._PARSED.clear()
    assert lockfile.parse_lock(text, source) == first
    assert lockfile.parse_lock(text, source).digest() == first.digest()
    kept.write_text(json.dumps({"version": 1})[:-3])  # truncated: not JSON
    lockfile._PARSED.clear()
    assert lockfile.parse_lock(text, source).digest() == first.digest()
    sealed = json.loads(kept.read_text())  # rewritten whole, sealed for this text's key
    assert sealed["key"] == key and sealed["body"]["version"] == 1
