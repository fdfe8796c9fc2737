"""Install of a realistic environment: cold cache, warm cache, no-op and a one-package change,
against a plain copy of the same files (`cp -a`, `cp -al`) as the limit.

The environment is generated here, deterministically, with fixtures.conda_channel:
36 conda packages (35 in each lock) shaped like a small scientific stack (python,
its C libraries, openblas, numpy, scipy, pandas, pytz, pip, setuptools, ...):
4,856 files and 165 MB of payload (74 MB of .tar.bz2), 38 of them text files
with the prefix placeholder (rewritten by the installer, so copied rather than
hard-linked), plus two wheels (210 modules) from fixtures.pip_index, served on
127.0.0.1. The installed prefix holds ~5,100 files, 168 MB. The channel is
built once into bench/results/channels/install-realistic/ (~15 s on 2 cores,
one archive per core) and reused.

Measured, each a fresh process (bench/_harness.py), round-robin after one unmeasured
warm-up round, medians (every run writes a new directory; nothing is deleted
until the end, see main):
  - cold:        `mlenv install --project A --prefix NEW` with a new, empty
                 MLENV_HOME (package cache and wheel cache);
  - warm:        the same with a MLENV_HOME whose cache already holds everything;
  - no-op:       the same prefix again, unchanged lock;
  - incremental: one package changed (pandas 2.1.4 <-> 2.1.3, 13.9 MB, 342 files):
                 project A and project B (identical but for pandas) installed in
                 turn into the same prefix, warm cache; every run is a change;
  - the limit:   `cp -a` and `cp -al` of an installed prefix into a new directory;
  - `mlenv --version` (what a no-op is compared to);
  - reference: `tar -xjf` of every archive, one tar per core (what a cold
    cache must at least do: the archives are .tar.bz2).
Then, in fresh processes that run the CLI with timers around hatch_mlenv.install's
steps and a rattler InstallerReporter (rattler's wall spans and CPU time):
  - the warm install with rattler's cache validation `full` (what install.py
    uses), `fast` and `skip`, round-robin: the process makes ValidationMode.full()
    return the other mode before the CLI runs (src/ untouched), and checks that
    install_conda asked rattler for that mode;
  - a phase breakdown of cold, warm, incremental and no-op. Timers that cannot
    be attached (hatch_mlenv.install changed) are reported as such.

No targets are set for this benchmark: it prints ratios; a command that fails aborts.

Usage: python bench/install.py [--runs N] [--phase-runs N] [--validation-runs N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import textwrap
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Mapping, Sequence

from _harness import (
    PYTHON,
    RESULTS_DIR,
    Command,
    Sample,
    bench_env,
    binary,
    console_script,
    dist_info,
    footer,
    header,
    measure,
    median_rss,
    median_seconds,
    print_table,
    rng,
    round_robin,
    run,
    scratch_dir,
    text,
)


CHANNEL_VERSION = 1  # bump when the generated packages change
PY = "3.11"
SP = f"lib/python{PY}/site-packages"
SPECS_A = ["numpy", "scipy", "pandas ==2.1.4", "pyyaml", "jinja2", "requests", "tqdm", "packaging", "pip"]
SPECS_B = [s.replace("2.1.4", "2.1.3") for s in SPECS_A]
PIP = ["mlenv-bench-viz==1.0.0"]


# -- content ----------------------------------------------------------------------------------

def placeholder(kind: str, size: int, *seed: object) -> bytes:
    """A text file that holds the conda prefix placeholder (rewritten at install)."""
    from fixtures.conda_channel import PREFIX_PLACEHOLDER as P

    heads = {
        "sh": f"#!/bin/sh\nprefix={P}\nexec_prefix=$prefix\nlibdir=$prefix/lib\n",
        "py": f"#!{P}/bin/python{PY}\n# -*- coding: utf-8 -*-\nimport sys\nsys.prefix = '{P}'\n",
        "pc": f"prefix={P}\nexec_prefix=${{prefix}}\nlibdir=${{prefix}}/lib\nincludedir=${{prefix}}/include\n",
        "cmake": f'set(_IMPORT_PREFIX "{P}")\nset(PACKAGE_PREFIX_DIR "{P}")\n',
    }
    head = heads[kind].encode()
    return head + text(max(size - len(head), 0), "placeholder", *seed)


def _py_files(root: str, count: int, avg: int, *seed: object) -> dict[str, bytes]:
    """`count` modules under `root`, in nested packages, sizes spread around `avg`."""
    files = {}
    for i in range(count):
        sub = f"{root}/sub{i % 12:02d}" if i >= 24 else root
        size = max(400, avg // 4 + (i * 7919 % (avg * 3 // 2)))
        files[f"{sub}/mod_{i:03d}.py"] = text(size, *seed, i)
    return files


def _sos(root: str, count: int, size: int, *seed: object) -> dict[str, bytes]:
    return {f"{root}/_ext{i:02d}.cpython-311-x86_64-linux-gnu.so": binary(size, *seed, i) for i in range(count)}


def _headers(root: str, count: int, size: int, *seed: object) -> dict[str, bytes]:
    return {f"{root}/h{i:03d}.h": text(size, *seed, "h", i) for i in range(count)}


def _pc(name: str, *seed: object) -> dict[str, bytes]:
    return {f"lib/pkgconfig/{name}.pc": placeholder("pc", 400, name, *seed)}


def _files(name: str, version: str) -> dict[str, bytes]:
    """The payload of one package (sizes in bytes)."""
    K, M = 1 << 10, 1 << 20
    s = (name, version)
    if name == "python":
        files = {
            f"bin/python{PY}": binary(4 * M, *s, "exe"),
            f"lib/libpython{PY}.so.1.0": binary(6 * M, *s, "lib"),
            f"bin/python{PY}-config": placeholder("sh", 3 * K, *s, "config"),
            f"lib/python{PY}/_sysconfigdata__linux_x86_64-linux-gnu.py": placeholder("py", 200 * K, *s, "sysconfig"),
            f"lib/python{PY}/config-{PY}-x86_64-linux-gnu/Makefile": placeholder("sh", 300 * K, *s, "make"),
            **{f"bin/{tool}": placeholder("py", 300, *s, tool) for tool in ("2to3-3.11", "idle3.11", "pydoc3.11")},
            **_pc(f"python-{PY}", *s), **_pc(f"python-{PY}-embed", *s),
            **_py_files(f"lib/python{PY}", 650, 24 * K, *s),
            **_sos(f"lib/python{PY}/lib-dynload", 50, 120 * K, *s),
            **_headers(f"include/python{PY}", 100, 10 * K, *s),
            f"{SP}/README.txt": b"site-packages\n",
        }
        return files
    if name == "python_abi":
        return {}
    if name == "libgcc-ng":
        return {"lib/libgcc_s.so.1": binary(500 * K, *s, 1), "lib/libgomp.so.1.0.0": binary(1200 * K, *s, 2),
                "lib/libatomic.so.1.2.0": binary(100 * K, *s, 3)}
    if name == "libstdcxx-ng":
        return {"lib/libstdc++.so.6.0.32": binary(12 * M, *s),
                **_py_files("share/gcc-13.2.0/python/libstdcxx", 20, 20 * K, *s)}
    if name in ("libzlib", "bzip2", "xz", "libffi", "libuuid", "readline"):
        lib = {"libzlib": "libz", "bzip2": "libbz2", "xz": "liblzma", "libffi": "libffi", "libuuid": "libuuid",
               "readline": "libreadline"}[name]
        files = {f"lib/{lib}.so.{version}": binary(250 * K, *s), **_headers(f"include/{name}", 8, 12 * K, *s),
                 **_pc(lib.removeprefix("lib"), *s)}
        if name in ("bzip2", "xz"):
            files[f"bin/{name}"] = binary(80 * K, *s, "bin")
        return files
    if name == "ncurses":
        files = {f"lib/lib{lib}.so.6.4": binary(300 * K, *s, lib) for lib in ("ncursesw", "formw", "menuw", "panelw",
                                                                              "tinfow", "ncurses++w")}
        files.update({f"bin/{tool}": binary(80 * K, *s, tool) for tool in ("tic", "toe", "tput", "tset", "infocmp")})
        files["bin/ncursesw6-config"] = placeholder("sh", 8 * K, *s)
        files.update(_headers("include/ncursesw", 15, 20 * K, *s))
        for lib in ("ncursesw", "formw", "menuw", "panelw", "tinfow", "ncurses++w"):
            files.update(_pc(lib, *s))
        rnd = rng(*s, "terminfo")
        for i in range(500):
            files[f"share/terminfo/{chr(97 + i % 26)}/term-{i:03d}"] = binary(1000 + rnd.randrange(3000), *s, "ti", i)
        return files
    if name == "openssl":
        return {"lib/libcrypto.so.3": binary(5 * M, *s, 1), "lib/libssl.so.3": binary(1 * M, *s, 2),
                "bin/openssl": binary(1 * M, *s, 3), "bin/c_rehash": placeholder("sh", 7 * K, *s, "rehash"),
                "ssl/openssl.cnf": placeholder("sh", 12 * K, *s, "cnf"),
                **{f"ssl/misc/{t}.pl": placeholder("sh", 6 * K, *s, t) for t in ("CA", "tsget", "c_hash")},
                "lib/cmake/OpenSSL/OpenSSLConfig.cmake": placeholder("cmake", 5 * K, *s),
                **_pc("openssl", *s), **_pc("libssl", *s), **_pc("libcrypto", *s),
                **_headers("include/openssl", 120, 20 * K, *s)}
    if name == "sqlite":
        return {"lib/libsqlite3.so.0.8.6": binary(1500 * K, *s, 1), "bin/sqlite3": binary(1500 * K, *s, 2),
                "include/sqlite3.h": text(600 * K, *s, "h"), "include/sqlite3ext.h": text(40 * K, *s, "ext"),
                **_pc("sqlite3", *s)}
    if name == "tk":
        return {"lib/libtk8.6.so": binary(1500 * K, *s, 1), "lib/libtcl8.6.so": binary(1800 * K, *s, 2),
                "bin/tclsh8.6": binary(20 * K, *s, 3), "bin/wish8.6": binary(20 * K, *s, 4),
                "lib/tclConfig.sh": placeholder("sh", 8 * K, *s, "tcl"), "lib/tkConfig.sh": placeholder("sh", 5 * K, *s, "tk"),
                **{f"lib/tcl8.6/lib{i:03d}.tcl": text(10 * K, *s, "tcl", i) for i in range(250)},
                **{f"lib/tk8.6/lib{i:03d}.tcl": text(8 * K, *s, "tk", i) for i in range(100)},
                **_pc("tcl", *s), **_pc("tk", *s)}
    if name == "libopenblas":
        return {"lib/libopenblasp-r0.3.25.so": binary(22 * M, *s), **_headers("include/openblas", 8, 30 * K, *s),
                **_pc("openblas", *s), "lib/cmake/openblas/OpenBLASConfig.cmake": placeholder("cmake", 3 * K, *s)}
    if name == "libblas":
        return {"lib/libblas.so.3": binary(100 * K, *s)}
    if name == "numpy":
        return {f"{SP}/numpy/core/_multiarray_umath.cpython-311-x86_64-linux-gnu.so": binary(9 * M, *s, "umath"),
                **_sos(f"{SP}/numpy/linalg", 12, 600 * K, *s), **_py_files(f"{SP}/numpy", 380, 12 * K, *s),
                "bin/f2py": placeholder("py", 400, *s, "f2py"), **dist_info(SP, name, version)}
    if name == "scipy":
        return {**_sos(f"{SP}/scipy/_lib", 18, 700 * K, *s), **_py_files(f"{SP}/scipy", 550, 10 * K, *s),
                **dist_info(SP, name, version)}
    if name == "pandas":
        return {**_sos(f"{SP}/pandas/_libs", 10, 900 * K, *s), **_py_files(f"{SP}/pandas", 330, 14 * K, *s),
                **dist_info(SP, name, version)}
    if name == "pyyaml":
        return {f"{SP}/yaml/_yaml.cpython-311-x86_64-linux-gnu.so": binary(800 * K, *s),
                **_py_files(f"{SP}/yaml", 17, 15 * K, *s), **dist_info(SP, "PyYAML", version)}
    if name == "markupsafe":
        return {f"{SP}/markupsafe/_speedups.cpython-311-x86_64-linux-gnu.so": binary(50 * K, *s),
                **_py_files(f"{SP}/markupsafe", 3, 6 * K, *s), **dist_info(SP, "MarkupSafe", version)}
    # noarch: python, payload under site-packages/
    module, count, avg = NOARCH[name]
    files = {**_py_files(f"site-packages/{module}", count, avg, *s), **dist_info("site-packages", name, version)}
    if name == "pytz":
        rnd = rng(*s, "zoneinfo")
        files.update({f"site-packages/pytz/zoneinfo/Zone{i:03d}": binary(600 + rnd.randrange(2500), *s, "tz", i)
                      for i in range(550)})
    if name == "certifi":
        files["site-packages/certifi/cacert.pem"] = text(290 * K, *s, "pem")
    return files


# name -> (module, modules, average module size)
NOARCH = {
    "six": ("six_", 1, 34 << 10), "python-dateutil": ("dateutil", 25, 16 << 10), "pytz": ("pytz", 6, 12 << 10),
    "requests": ("requests", 18, 12 << 10), "urllib3": ("urllib3", 40, 10 << 10), "certifi": ("certifi", 3, 2 << 10),
    "idna": ("idna", 8, 30 << 10), "charset-normalizer": ("charset_normalizer", 20, 12 << 10),
    "packaging": ("packaging", 20, 10 << 10), "setuptools": ("setuptools", 350, 8 << 10),
    "pip": ("pip", 420, 9 << 10), "wheel": ("wheel", 30, 6 << 10), "jinja2": ("jinja2", 25, 30 << 10),
    "tqdm": ("tqdm", 40, 8 << 10),
}


@dataclass(frozen=True)
class Recipe:
    name: str
    version: str
    build: str = "h0_0"
    depends: tuple[str, ...] = ()
    noarch: str | None = None
    constrains: tuple[str, ...] = ()


_PYDEP = (f"python >={PY},<3.12", "python_abi 3.11.* *_cp311")
_NOARCH_PY = ("python >=3.8",)

RECIPES = [
    Recipe("python", "3.11.7", depends=("python_abi 3.11.* *_cp311", "libgcc-ng >=12", "libzlib >=1.2.13", "bzip2",
                                        "xz", "libffi", "libuuid", "ncurses", "readline", "openssl >=3", "sqlite", "tk")),
    Recipe("python_abi", "3.11", build="4_cp311", constrains=("python 3.11.*",)),
    Recipe("libgcc-ng", "13.2.0"),
    Recipe("libstdcxx-ng", "13.2.0", depends=("libgcc-ng",)),
    Recipe("libzlib", "1.2.13", depends=("libgcc-ng",)),
    Recipe("bzip2", "1.0.8", depends=("libgcc-ng",)),
    Recipe("xz", "5.4.5", depends=("libgcc-ng",)),
    Recipe("libffi", "3.4.4", depends=("libgcc-ng",)),
    Recipe("libuuid", "2.38.1", depends=("libgcc-ng",)),
    Recipe("ncurses", "6.4", depends=("libgcc-ng", "libstdcxx-ng")),
    Recipe("readline", "8.2", depends=("ncurses",)),
    Recipe("openssl", "3.2.0", depends=("libgcc-ng",)),
    Recipe("sqlite", "3.44.2", depends=("libzlib", "readline", "ncurses")),
    Recipe("tk", "8.6.13", depends=("libzlib",)),
    Recipe("libopenblas", "0.3.25", depends=("libgcc-ng", "libstdcxx-ng")),
    Recipe("libblas", "3.9.0", build="20_openblas", depends=("libopenblas >=0.3.25",)),
    Recipe("numpy", "1.26.4", build="py311h0_0", depends=("libblas >=3.9", *_PYDEP)),
    Recipe("scipy", "1.11.4", build="py311h0_0", depends=("numpy >=1.23", "libblas", *_PYDEP)),
    Recipe("pandas", "2.1.4", build="py311h0_0", depends=("numpy >=1.23", "python-dateutil >=2.8", "pytz", *_PYDEP)),
    Recipe("pandas", "2.1.3", build="py311h0_0", depends=("numpy >=1.23", "python-dateutil >=2.8", "pytz", *_PYDEP)),
    Recipe("pyyaml", "6.0.1", build="py311h0_0", depends=_PYDEP),
    Recipe("markupsafe", "2.1.3", build="py311h0_0", depends=_PYDEP),
    Recipe("six", "1.16.0", build="pyhd8ed1ab_0", noarch="python", depends=_NOARCH_PY),
    Recipe("python-dateutil", "2.8.2", build="pyhd8ed1ab_0", noarch="python", depends=(*_NOARCH_PY, "six >=1.5")),
    Recipe("pytz", "2023.3", build="pyhd8ed1ab_0", noarch="python", depends=_NOARCH_PY),
    Recipe("requests", "2.31.0", build="pyhd8ed1ab_0", noarch="python",
           depends=(*_NOARCH_PY, "urllib3 >=1.21", "idna >=2.5", "certifi", "charset-normalizer >=2")),
    Recipe("urllib3", "2.1.0", build="pyhd8ed1ab_0", noarch="python", depends=_NOARCH_PY),
    Recipe("certifi", "2023.11.17", build="pyhd8ed1ab_0", noarch="python", depends=_NOARCH_PY),
    Recipe("idna", "3.6", build="pyhd8ed1ab_0", noarch="python", depends=_NOARCH_PY),
    Recipe("charset-normalizer", "3.3.2", build="pyhd8ed1ab_0", noarch="python", depends=_NOARCH_PY),
    Recipe("packaging", "23.2", build="pyhd8ed1ab_0", noarch="python", depends=_NOARCH_PY),
    Recipe("setuptools", "68.2.2", build="pyhd8ed1ab_0", noarch="python", depends=_NOARCH_PY),
    Recipe("wheel", "0.42.0", build="pyhd8ed1ab_0", noarch="python", depends=_NOARCH_PY),
    Recipe("pip", "23.3.1", build="pyhd8ed1ab_0", noarch="python", depends=(*_NOARCH_PY, "setuptools", "wheel")),
    Recipe("jinja2", "3.1.2", build="pyhd8ed1ab_0", noarch="python", depends=(*_NOARCH_PY, "markupsafe >=2.0")),
    Recipe("tqdm", "4.66.1", build="pyhd8ed1ab_0", noarch="python", depends=_NOARCH_PY),
]


def _build_one(recipe: Recipe, channel: str) -> dict[str, int]:
    """Build one archive (in a worker process); its file count, bytes and placeholder files."""
    from fixtures.conda_channel import PREFIX_PLACEHOLDER, CondaPackage, build_package

    files = _files(recipe.name, recipe.version)
    package = CondaPackage(recipe.name, recipe.version, build=recipe.build, depends=recipe.depends, files=files,
                           noarch=recipe.noarch, constrains=recipe.constrains, license="BSD-3-Clause")
    archive = build_package(package, channel)
    return {"files": len(files), "bytes": sum(len(v) for v in files.values()),
            "placeholders": sum(PREFIX_PLACEHOLDER.encode() in v for v in files.values()),
            "archive": archive.stat().st_size}


def build_realistic_channel() -> tuple[Path, dict]:
    """The generated channel; built once (one archive per core), then reused."""
    channel = RESULTS_DIR / "channels" / "install-realistic"
    stamp = channel / "stamp.json"
    if stamp.is_file():
        info = json.loads(stamp.read_text())
        if info.get("version") == CHANNEL_VERSION:
            return channel, info
    from fixtures.conda_channel import index_channel

    shutil.rmtree(channel, ignore_errors=True)
    channel.mkdir(parents=True)
    start = time.perf_counter()
    # Biggest first, so the last archives to finish are small ones.
    order = sorted(RECIPES, key=lambda r: r.name not in ("python", "libopenblas", "numpy", "scipy", "pandas",
                                                         "libstdcxx-ng", "openssl"))
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 2, mp_context=get_context("spawn")) as pool:
        results = dict(zip([(r.name, r.version) for r in order],
                           pool.map(_build_one, order, [str(channel)] * len(order))))
    index_channel(channel)
    info = {"version": CHANNEL_VERSION,
            "packages": {f"{n}-{v}": r for (n, v), r in sorted(results.items())},
            "build_seconds": round(time.perf_counter() - start, 1)}
    stamp.write_text(json.dumps(info, indent=1))
    print(f"  built {channel}: {len(RECIPES)} packages in {info['build_seconds']} s")
    return channel, info


def wheels() -> list:  # -> list[fixtures.pip_index.Wheel]
    from fixtures.pip_index import Wheel

    def modules(stem: str, count: int, avg: int) -> dict[str, str]:
        return {f"{stem}/mod_{i:03d}.py" if i else f"{stem}/__init__.py": text(avg // 2 + i * 131 % avg, stem, i).decode()
                for i in range(count)}

    return [
        Wheel("mlenv-bench-viz", "1.0.0", requires=("mlenv-bench-core>=0.3",), modules=modules("mlenv_bench_viz", 150, 12 << 10)),
        Wheel("mlenv-bench-core", "0.3.0", modules=modules("mlenv_bench_core", 60, 10 << 10)),
    ]


# -- projects, prefixes -------------------------------------------------------------------------

def write_project(root: Path, channel: Path, conda: Sequence[str], index_url: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    specs = ", ".join(f'"{s}"' for s in conda)
    pip = ", ".join(f'"{s}"' for s in PIP)
    (root / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [project]
        name = "bench-install"
        version = "0.1"

        [tool.mlenv]
        channels = ["{channel}"]
        platforms = ["linux-64"]
        python = "{PY}"
        conda = [{specs}]
        pip = [{pip}]
        pip-index-url = "{index_url}"

        [tool.mlenv.virtual-packages.linux-64]
        __glibc = "2.17"
        """), encoding="utf-8")
    return root


def tree_stats(root: Path) -> dict[str, int]:
    """Files, bytes, directories, and how many files are hard links (nlink > 1)."""
    stats = {"files": 0, "bytes": 0, "dirs": 0, "linked": 0, "symlinks": 0}
    for dirpath, dirnames, filenames in os.walk(root):
        stats["dirs"] += len(dirnames)
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if os.path.islink(os.path.join(dirpath, name)):
                stats["symlinks"] += 1
                continue
            stats["files"] += 1
            stats["bytes"] += st.st_size
            stats["linked"] += st.st_nlink > 1
    return stats


def rm(*paths: Path) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)
        if path.exists():
            raise SystemExit(f"could not remove {path}")


def _state(prefix: Path) -> dict:
    return json.loads((prefix / ".mlenv-state.json").read_text())


# One `mlenv install` with timers around hatch_mlenv.install's steps and a rattler
# InstallerReporter; writes {"phases": {...}, "spans": {...}, "missing": [...], "validation": [...]}
# to OUT. HOW is "lazy" (rattler not imported up front: the no-op), "eager", or "eager:MODE":
# ValidationMode.full (what install_conda asks for) then returns MODE (fast, skip) instead.
PHASES = """\
import atexit, json, os, sys, time
t0 = time.perf_counter()
out, how, args = sys.argv[1], sys.argv[2], sys.argv[3:]
eager, mode = how.startswith("eager"), how.partition(":")[2]
phases, spans, missing, validation = {}, {}, [], []
def add(name, seconds):
    phases[name] = phases.get(name, 0.0) + seconds
def timed(owner, attr, name):
    fn = getattr(owner, attr, None)
    if fn is None:
        missing.append(name); return
    depth = [0]  # shutil.copytree calls itself per subdirectory: time the outer call only
    def wrapper(*a, **k):
        depth[0] += 1
        s = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            depth[0] -= 1
            if not depth[0]:
                add(name, time.perf_counter() - s)
    setattr(owner, attr, wrapper)
import hatch_mlenv.cli as cli
import hatch_mlenv.install as inst
add("import hatch_mlenv.cli, .install", time.perf_counter() - t0)
if eager:  # an install imports rattler anyway (first in _prefix_records); the no-op case runs "lazy"
    s = time.perf_counter()
    import rattler
    from rattler.package_cache import PackageCacheLayer, ValidationMode
    add("import rattler", time.perf_counter() - s)
    if mode:
        ValidationMode.full = getattr(ValidationMode, mode)
    _with_mode = PackageCacheLayer.with_validation_mode
    def with_validation_mode(self, m):
        validation.append(repr(m))
        return _with_mode(self, m)
    PackageCacheLayer.with_validation_mode = with_validation_mode
import shutil
timed(cli, "_environment", "load spec + read lock")
timed(inst, "install_environment", "install_environment (all)")
timed(shutil, "copytree", "staging: hard-link copy of the old prefix")
timed(inst, "_prefix_records", "read conda-meta records (2x)")
timed(inst, "conda_records", "rattler reads the lockfile")
timed(inst, "install_conda", "install_conda (all)")
timed(inst, "_sync_wheels", "wheels: fetch + install (all)")
timed(inst, "fetch_wheel", "wheels: fetch (download or sha256 of the cached wheel)")
timed(inst, "_swap", "swap in (rename, rm -r the old prefix)")
events = []
class Reporter:
    def __init__(self):
        self.open, self.n = {}, 0
    def _start(self, kind):
        self.n += 1; self.open[self.n] = (kind, time.perf_counter()); return self.n
    def _end(self, token):
        kind, s = self.open.pop(token, (None, 0))
        if kind: events.append((kind, s, time.perf_counter()))
    def on_populate_cache_start(self, operation, package_name): return self._start("populate cache (fetch+extract+validate)")
    def on_populate_cache_complete(self, token): self._end(token)
    def on_validate_start(self, entry): return self._start("validate cache entry")
    def on_validate_complete(self, token): self._end(token)
    def on_download_start(self, entry): return self._start("fetch archive")
    def on_download_completed(self, token): self._end(token)
    def on_link_start(self, operation, package_name): return self._start("link into the prefix")
    def on_link_complete(self, token): self._end(token)
    def on_unlink_start(self, operation, package_name): return self._start("unlink (removed package)")
    def on_unlink_complete(self, token): self._end(token)
    def __getattr__(self, name):  # every other callback: a no-op
        if name.startswith("on_"):
            return lambda *a, **k: 0
        raise AttributeError(name)
async def install(*a, **k):
    k.setdefault("reporter", Reporter())
    cpu0 = os.times()
    s = time.perf_counter()
    try:
        return await _install(*a, **k)
    finally:
        e = time.perf_counter()
        add("rattler.install (all)", e - s)
        def union(items):
            total, end = 0.0, None
            for a_, b_ in sorted(items):
                if end is None or a_ > end:
                    total += b_ - a_; end = b_
                elif b_ > end:
                    total += b_ - end; end = b_
            return total
        for kind in sorted({k_ for k_, _, _ in events}):
            spans[kind + " (wall covered)"] = union([(a_, b_) for k_, a_, b_ in events if k_ == kind])
        spans["any of these (wall covered)"] = union([(a_, b_) for _, a_, b_ in events])
        cpu1 = os.times()
        spans["CPU time, all threads (user + sys)"] = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
if eager:
    _install, rattler.install = rattler.install, install
def dump():  # runs after every atexit handler registered later (rattler's settle pause)
    phases["script total"] = time.perf_counter() - t0
    phases["exit handlers (rattler settle pause)"] = phases["script total"] - phases.get("main", 0.0)
    open(out, "w").write(json.dumps({"phases": phases, "spans": spans, "missing": missing, "validation": validation}))
atexit.register(dump)
try:
    cli.main(args=args, prog_name="mlenv")
finally:
    phases["main"] = time.perf_counter() - t0
"""

# The cold-cache reference: extract every archive with GNU tar, one tar per core.
TAR = """\
import os, subprocess, sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
dest, archives = Path(sys.argv[1]), sys.argv[2:]
def extract(archive):
    target = dest / Path(archive).name
    target.mkdir(parents=True)
    subprocess.run(["tar", "-xjf", archive, "-C", str(target)], check=True)
with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
    list(pool.map(extract, sorted(archives, key=os.path.getsize, reverse=True)))
"""


def _phase_rows(result: dict) -> dict[str, float]:
    """One PHASES run as rows that add up to its wall time (indented rows are parts of the one above)."""
    p, wall = result["phases"], result["wall"]
    get = lambda key: p.get(key, 0.0)  # noqa: E731
    ie = ("staging: hard-link copy of the old prefix", "read conda-meta records (2x)", "install_conda (all)",
          "wheels: fetch + install (all)", "swap in (rename, rm -r the old prefix)")
    return {
        "interpreter start-up + finalization": wall - get("script total"),
        "import hatch_mlenv.cli, .install": get("import hatch_mlenv.cli, .install"),
        "import rattler": get("import rattler"),
        "load spec + read lock": get("load spec + read lock"),
        "staging: hard-link copy of the old prefix": get(ie[0]),
        "read conda-meta records (2x)": get(ie[1]),
        "install_conda": get(ie[2]),
        "  install_conda: rattler reads the lockfile": get("rattler reads the lockfile"),
        "  install_conda: rattler.install": get("rattler.install (all)"),
        "  install_conda: the rest": get(ie[2]) - get("rattler reads the lockfile") - get("rattler.install (all)"),
        "wheels: fetch + install": get(ie[3]),
        "  wheels: fetch (download, or sha256 of the cached wheel)":
            get("wheels: fetch (download or sha256 of the cached wheel)"),
        "swap in (rename, rm -r the old prefix)": get(ie[4]),
        "install_environment: the rest": get("install_environment (all)") - sum(get(k) for k in ie),
        "cli: the rest (click, output)": get("main") - get("import hatch_mlenv.cli, .install") - get("import rattler")
        - get("load spec + read lock") - get("install_environment (all)"),
        "exit handlers (rattler settle pause)": get("exit handlers (rattler settle pause)"),
        "wall (fresh process)": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--phase-runs", type=int, default=3)
    parser.add_argument("--validation-runs", type=int, default=7)
    args = parser.parse_args()
    header("install: mlenv install (cold, warm, no-op, one package changed) vs a plain copy of the same files")

    from fixtures.pip_index import build_index, serve

    channel, info = build_realistic_channel()
    root = scratch_dir("install")
    index = build_index(root / "index", wheels())
    script = str(console_script("mlenv"))
    env = bench_env()

    with serve(index) as index_url:
        projects = {}
        for key, specs in (("A", SPECS_A), ("B", SPECS_B)):
            projects[key] = write_project(root / f"project-{key}", channel, specs, index_url)
            start = time.perf_counter()
            measure([script, "lock", "--project", str(projects[key])], env=env)
            print(f"  locked project {key} in {time.perf_counter() - start:.1f} s")
        a, b = (str(projects[k]) for k in "AB")

        warm_home = root / "home-warm"
        warm_env = bench_env(MLENV_HOME=str(warm_home))
        runs_dir = root / "runs"  # one new directory per run; everything is removed at the very end
        prefixes = {name: root / name / "env" for name in ("noop", "incremental", "reference")}

        def install(project: str, prefix: Path) -> list[str]:
            return [script, "install", "--project", project, "--prefix", str(prefix)]

        def run_dir(name: str, n: int) -> Path:
            return runs_dir / f"{name}-{n}"

        def cold_env(n: int) -> dict[str, str]:
            return bench_env(MLENV_HOME=str(run_dir("home-cold", n)))

        # Fill the warm cache with both locks, and lay out the prefixes that are reused.
        start = time.perf_counter()
        measure(install(b, prefixes["incremental"]), env=warm_env)
        measure(install(a, prefixes["reference"]), env=warm_env)
        measure(install(a, prefixes["noop"]), env=warm_env)
        measure(install(a, prefixes["incremental"]), env=warm_env)
        print(f"  filled the warm cache and laid out the prefixes in {time.perf_counter() - start:.1f} s")

        digest_a = _state(prefixes["reference"])["digest"]
        reference = prefixes["reference"]
        installed = tree_stats(reference)
        cache = tree_stats(warm_home / "cache" / "pkgs")
        archives = sorted(str(p) for p in channel.glob("*/*.tar.bz2") if "pandas-2.1.3" not in p.name)
        lock_text = (projects["A"] / "conda-lock.yml").read_text()
        conda_count = lock_text.count("manager: conda")
        pip_count = lock_text.count("manager: pip")

        noop_state = prefixes["noop"] / ".mlenv-state.json"
        noop_mtime = noop_state.stat().st_mtime_ns

        def noop_check(n: int) -> None:
            if noop_state.stat().st_mtime_ns != noop_mtime:
                raise SystemExit("the no-op install rewrote the prefix")

        def incremental_check(project: str) -> Callable[[int], None]:
            want = "2.1.4" if project == a else "2.1.3"

            def check(n: int) -> None:
                if not list((prefixes["incremental"] / "conda-meta").glob(f"pandas-{want}-*.json")):
                    raise SystemExit(f"incremental: pandas {want} is not installed")
            return check

        def installed_check(name: str) -> Callable[[int], None]:
            def check(n: int) -> None:
                prefix = run_dir(name, n)
                if _state(prefix)["digest"] != digest_a or not (prefix / SP / "mlenv_bench_viz-1.0.0.dist-info").is_dir():
                    raise SystemExit(f"{prefix}: not the lock of project A")
            return check

        def each(check: Callable[[int], None]) -> Callable[[Sample, int], None]:
            return lambda _sample, n: check(n)

        steps = {
            "mlenv install, cold cache": Command(lambda n: install(a, run_dir("cold", n)), cold_env,
                                                 check=each(installed_check("cold"))),
            "mlenv install, warm cache": Command(lambda n: install(a, run_dir("warm", n)), warm_env,
                                              check=each(installed_check("warm"))),
            "cp -a (limit)": Command(lambda n: ["cp", "-a", str(reference), str(run_dir("cp-a", n))], env),
            "cp -al (limit)": Command(lambda n: ["cp", "-al", str(reference), str(run_dir("cp-al", n))], env),
            "mlenv install, 1 package changed (A->B)": Command(lambda n: install(b, prefixes["incremental"]),
                                                           warm_env, check=each(incremental_check(b))),
            "mlenv install, 1 package changed (B->A)": Command(lambda n: install(a, prefixes["incremental"]),
                                                           warm_env, check=each(incremental_check(a))),
            "mlenv install, no-op": Command(lambda n: install(a, prefixes["noop"]), warm_env, check=each(noop_check)),
            "mlenv --version": Command(lambda n: [script, "--version"], env),
        }
        steps["reference: tar -xjf every archive"] = Command(
            lambda n: [PYTHON, "-c", TAR, str(run_dir("tar", n)), *archives], env)

        # Nothing is deleted while measuring: every run writes a new directory (all removed at the
        # end). This machine's ext4 has no journal, and then every inode allocation skips the free
        # inodes deleted in the last 60 s (360 s while their inode-table block is dirty), one buffer
        # lookup each (`recently_deleted` in perf): right after `rm -r` of the previous copy, `cp -a`
        # of this prefix took 1.4-3.3 s instead of 0.2 s. Deletions by other processes on the same
        # file system still slow whatever creates files (`cp -a`, a cold install): hence their spread.
        # Dirty pages are flushed (`sync`) before every run, so no run pays for an earlier one's writeback.
        start = time.perf_counter()
        samples = round_robin(args.runs, steps, sync=True)
        measured_in = time.perf_counter() - start

        def timed_run(argv: Sequence[str], case_env: Mapping[str, str], how: str) -> dict:
            """One PHASES process: the CLI with timers (see PHASES); its result plus the wall time."""
            os.sync()
            out = root / "phases.json"
            out.unlink(missing_ok=True)
            sample = measure([PYTHON, "-c", PHASES, str(out), how, *argv[1:]], env=case_env)
            result = json.loads(out.read_text())
            result["wall"] = sample.seconds
            return result

        # Cache validation: the same warm install with ValidationMode full (what install.py
        # uses), fast and skip, round-robin in fresh processes; rattler's wall and CPU time.
        validation: dict[str, list[dict]] = {m: [] for m in ("full", "fast", "skip")}
        for index in range(1 + args.validation_runs):
            for mode in validation:
                n = 2000 + index
                result = timed_run(install(a, run_dir(f"valid-{mode}", n)), warm_env, f"eager:{mode}")
                installed_check(f"valid-{mode}")(n)
                if not result["validation"] or any(mode not in v.lower() for v in result["validation"]):
                    raise SystemExit(f"validation {mode}: install_conda asked rattler for {result['validation']}")
                if index:
                    validation[mode].append(result)

        # Phases: one process per case, the same command with timers.
        phase_cases = ("cold", "warm", "1 changed", "no-op")
        phase_results: dict[str, list[dict]] = {case: [] for case in phase_cases}
        for index in range(args.phase_runs):
            for case in phase_cases:
                n = 1000 + index
                case_env = cold_env(n) if case == "cold" else warm_env
                if case == "1 changed":  # alternate A/B, like the measured runs
                    installed_now = list((prefixes["incremental"] / "conda-meta").glob("pandas-2.1.4-*.json"))
                    argv = install(b if installed_now else a, prefixes["incremental"])
                elif case == "no-op":
                    argv = install(a, prefixes["noop"])
                else:
                    argv = install(a, run_dir(case, n))
                phase_results[case].append(timed_run(argv, case_env, "lazy" if case == "no-op" else "eager"))
    start = time.perf_counter()
    rm(root)  # all of it: the next run then starts with nothing to delete (see main)
    cleaned_in = time.perf_counter() - start

    # -- report ------------------------------------------------------------------------------------
    packages = info["packages"]
    in_lock = {k: v for k, v in packages.items() if k != "pandas-2.1.3"}
    print(f"\nchannel {channel}: {len(packages)} packages (.tar.bz2), {len(in_lock)} in each lock; lock A: "
          f"{conda_count} conda + {pip_count} pip packages")
    print(f"  lock A's conda payload: {sum(p['files'] for p in in_lock.values())} files, "
          f"{sum(p['bytes'] for p in in_lock.values()) / 1e6:.0f} MB, "
          f"{sum(p['placeholders'] for p in in_lock.values())} with the prefix placeholder; archives "
          f"{sum(p['archive'] for p in in_lock.values()) / 1e6:.0f} MB")
    print(f"  pandas (the changed package): {packages['pandas-2.1.4']['files']} files, "
          f"{packages['pandas-2.1.4']['bytes'] / 1e6:.1f} MB")
    print(f"  installed prefix: {installed['files']} files ({installed['linked']} hard-linked from the cache), "
          f"{installed['dirs']} dirs, {installed['bytes'] / 1e6:.0f} MB; warm cache: {cache['files']} files, "
          f"{cache['bytes'] / 1e6:.0f} MB")

    copy_a = median_seconds(samples["cp -a (limit)"])
    copy_al = median_seconds(samples["cp -al (limit)"])
    version = median_seconds(samples["mlenv --version"])
    rows = []
    for label, s in samples.items():
        t = median_seconds(s)
        rows.append([label, t, f"{min(x.seconds for x in s):.3f}", f"{max(x.seconds for x in s):.3f}",
                     f"{median_rss(s):.0f}", f"{t / copy_a:.2f}", f"{t / copy_al:.2f}"])
    print_table(f"{args.runs} runs each, interleaved after a warm-up round, medians ({measured_in:.0f} s)",
                ["fresh process", "wall s", "min", "max", "peak RSS MiB", "x cp -a", "x cp -al"], rows)

    cold = median_seconds(samples["mlenv install, cold cache"])
    warm = median_seconds(samples["mlenv install, warm cache"])
    incremental = statistics.median(
        x.seconds for label in ("mlenv install, 1 package changed (A->B)", "mlenv install, 1 package changed (B->A)")
        for x in samples[label])
    noop = median_seconds(samples["mlenv install, no-op"])
    tar = median_seconds(samples["reference: tar -xjf every archive"])
    print(f"\n  cold install / cp -a:          {cold / copy_a:6.2f}x   (cold / tar -xjf reference: {cold / tar:.2f}x)")
    print(f"  warm install / cp -a:          {warm / copy_a:6.2f}x")
    print(f"  warm install / cp -al:         {warm / copy_al:6.2f}x")
    print(f"  1 package changed / cp -al:    {incremental / copy_al:6.2f}x   (both directions, median {incremental:.3f} s)")
    print(f"  no-op install / mlenv --version: {noop / version:4.2f}x   (+{(noop - version) * 1000:.0f} ms)")

    def med(results: list[dict], pick: Callable[[dict], float]) -> float:
        return statistics.median(pick(r) for r in results)

    rows = []
    for mode, results in validation.items():
        rows.append([f"warm install, validation {mode}" + (" (install.py)" if mode == "full" else ""),
                     med(results, lambda r: r["wall"]),
                     med(results, lambda r: r["phases"].get("rattler.install (all)", 0.0)),
                     med(results, lambda r: r["spans"].get("populate cache (fetch+extract+validate) (wall covered)", 0.0)),
                     med(results, lambda r: r["spans"].get("CPU time, all threads (user + sys)", 0.0))])
    print_table(f"cache validation: {args.validation_runs} runs each, interleaved after a warm-up round, medians "
                "(fresh processes with timers; the mode swapped in-process, src/ untouched)",
                ["fresh process", "wall s", "rattler.install s", "populate cache s", "rattler CPU s"], rows)
    full, fast = (med(validation[m], lambda r: r["wall"]) for m in ("full", "fast"))
    full_r, fast_r = (med(validation[m], lambda r: r["phases"].get("rattler.install (all)", 0.0)) for m in ("full", "fast"))
    full_c, fast_c = (med(validation[m], lambda r: r["spans"].get("CPU time, all threads (user + sys)", 0.0))
                      for m in ("full", "fast"))
    print(f"  full - fast: {(full - fast) * 1000:+.0f} ms wall ({full / fast:.2f}x), {(full_r - fast_r) * 1000:+.0f} ms in "
          f"rattler.install, {(full_c - fast_c) * 1000:+.0f} ms CPU (hashing {cache['bytes'] / 1e6:.0f} MB of cached files)")

    cases = list(phase_cases)
    derived = {case: [_phase_rows(r) for r in results] for case, results in phase_results.items()}
    rows = []
    for name in derived[cases[0]][0]:
        rows.append([name, *(f"{statistics.median(d[name] for d in derived[c]):.3f}" for c in cases)])
        if name == "  install_conda: rattler.install":
            kinds = sorted({k for rs in phase_results.values() for r in rs for k in r["spans"]},
                           key=lambda k: (k.startswith("CPU"), k.startswith("any of these"), k))
            for kind in kinds:
                rows.append([f"      rattler: {kind}",
                             *(f"{statistics.median(r['spans'].get(kind, 0.0) for r in phase_results[c]):.3f}"
                               for c in cases)])
    print_table(f"phases, seconds (median of {args.phase_runs} run(s) each, one fresh process per run; indented rows "
                "are parts of the row above; rattler's spans overlap one another)", ["phase", *cases], rows)
    missing = sorted({m for results in phase_results.values() for r in results for m in r["missing"]})
    if missing:
        print(f"  could not attach timers to: {', '.join(missing)} (hatch_mlenv.install changed?)")
    print(f"\n  removed {root} (projects, prefixes, caches, per-run copies) in {cleaned_in:.1f} s")
    footer()


if __name__ == "__main__":
    run(main)
