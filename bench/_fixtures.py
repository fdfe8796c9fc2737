"""Fixtures the cases share, built once and reused: the generated conda channels (their
content is deterministic, so a channel on disk is reused while its version stamp holds), the
channels derived from the defaults-2018 snapshot, and the Docker engine with the bench's base.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import docker

from bench._harness import DEFAULTS_2018, RESULTS_DIR, binary, dist_info, progress, rng, text
from fixtures.conda_channel import PREFIX_PLACEHOLDER, CondaPackage, build_channel, build_package, index_channel
from fixtures.docker_base import busybox_rootfs_tar
from fixtures.pip_index import Wheel


# -- install-realistic: 36 packages shaped like a small scientific stack (bench/install.py) ---

INSTALL_CHANNEL_VERSION = 1  # bump when the generated packages change
PY = "3.11"
SP = f"lib/python{PY}/site-packages"

def placeholder(kind: str, size: int, *seed: object) -> bytes:
    """A text file that holds the conda prefix placeholder (rewritten at install)."""
    P = PREFIX_PLACEHOLDER
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
    files = _files(recipe.name, recipe.version)
    package = CondaPackage(recipe.name, recipe.version, build=recipe.build, depends=recipe.depends, files=files,
                           noarch=recipe.noarch, constrains=recipe.constrains, license="BSD-3-Clause")
    archive = build_package(package, channel)
    return {"files": len(files), "bytes": sum(len(v) for v in files.values()),
            "placeholders": sum(PREFIX_PLACEHOLDER.encode() in v for v in files.values()),
            "archive": archive.stat().st_size}


def install_channel() -> tuple[Path, dict]:
    """The generated channel; built once (one archive per core), then reused."""
    channel = RESULTS_DIR / "channels" / "install-realistic"
    stamp = channel / "stamp.json"
    if stamp.is_file():
        info = json.loads(stamp.read_text())
        if info.get("version") == INSTALL_CHANNEL_VERSION:
            return channel, info
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
    info = {"version": INSTALL_CHANNEL_VERSION,
            "packages": {f"{n}-{v}": r for (n, v), r in sorted(results.items())},
            "build_seconds": round(time.perf_counter() - start, 1)}
    stamp.write_text(json.dumps(info, indent=1))
    progress(f"built {channel}: {len(RECIPES)} packages in {info['build_seconds']} s")
    return channel, info


def install_wheels() -> list[Wheel]:
    def modules(stem: str, count: int, avg: int) -> dict[str, str]:
        return {f"{stem}/mod_{i:03d}.py" if i else f"{stem}/__init__.py": text(avg // 2 + i * 131 % avg, stem, i).decode()
                for i in range(count)}

    return [
        Wheel("mlenv-bench-viz", "1.0.0", requires=("mlenv-bench-core>=0.3",), modules=modules("mlenv_bench_viz", 150, 12 << 10)),
        Wheel("mlenv-bench-core", "0.3.0", modules=modules("mlenv_bench_core", 60, 10 << 10)),
    ]



# -- image-big: python, numpy, pytorch-cpu, openblas, data: ~130 MB in ~400 files (image, oci) ---

IMAGE_CHANNEL_VERSION = 2  # bump when the generated packages change (2: the harness's content)


def big_packages() -> list[CondaPackage]:
    sp = "lib/python3.11/site-packages"
    python: dict[str, bytes | str] = {
        "bin/python3.11": binary(5 << 20, "python", "exe"),
        "lib/libpython3.11.so.1.0": binary(7 << 20, "python", "lib"),
        # prefix-placeholder text files: copied and rewritten for /opt/env, never hardlinked
        "bin/python3.11-config": f"#!/bin/sh\nprefix={PREFIX_PLACEHOLDER}\necho \"-I$prefix/include/python3.11\"\n",
        "lib/pkgconfig/python-3.11.pc": f"prefix={PREFIX_PLACEHOLDER}\nlibdir=${{prefix}}/lib\nName: Python\n",
        "lib/python3.11/_sysconfigdata__linux_x86_64-linux-gnu.py":
            f"build_time_vars = {{'prefix': '{PREFIX_PLACEHOLDER}', 'LIBDIR': '{PREFIX_PLACEHOLDER}/lib'}}\n"
            + text(200_000, "python", "sysconfig").decode(),
        f"{sp}/README.txt": "site-packages\n",
    }
    for i in range(180):
        python[f"lib/python3.11/stdmod_{i:03d}.py"] = text(20_000 + 500 * i, "python", "py", i)
    for i in range(40):
        python[f"lib/python3.11/lib-dynload/_ext{i:02d}.cpython-311-x86_64-linux-gnu.so"] = binary(150_000, "dyn", i)

    openblas: dict[str, bytes | str] = {
        "lib/libopenblas.so.0": binary(30 << 20, "openblas"),
        "lib/pkgconfig/openblas.pc": f"prefix={PREFIX_PLACEHOLDER}\nlibdir=${{prefix}}/lib\nName: openblas\n",
    }
    for i in range(10):
        openblas[f"include/openblas_{i}.h"] = text(30_000, "openblas", "h", i)

    numpy: dict[str, bytes | str] = {
        f"{sp}/numpy/core/_multiarray_umath.cpython-311-x86_64-linux-gnu.so": binary(12 << 20, "numpy", "umath"),
        **dist_info(sp, "numpy", "1.26.4"),
    }
    for i in range(8):
        numpy[f"{sp}/numpy/_ext{i}.cpython-311-x86_64-linux-gnu.so"] = binary(1 << 20, "numpy", "so", i)
    for i in range(60):
        numpy[f"{sp}/numpy/mod_{i:02d}.py"] = text(20_000, "numpy", "py", i)

    torch: dict[str, bytes | str] = {
        f"{sp}/torch/lib/libtorch_cpu.so": binary(40 << 20, "torch", "cpu"),
        f"{sp}/torch/lib/libc10.so": binary(2 << 20, "torch", "c10"),
        **dist_info(sp, "pytorch-cpu", "2.1.0"),
    }
    for i in range(80):
        torch[f"{sp}/torch/mod_{i:02d}.py"] = text(25_000, "torch", "py", i)

    data = {f"share/mlenv-data/part-{i}.csv": text(1 << 20, "data", i) for i in range(10)}

    return [
        CondaPackage("python", "3.11.7", build="h0_0", depends=("python_abi 3.11.* *_cp311",), files=python,
                     license="Python-2.0"),
        CondaPackage("python_abi", "3.11", build="2_cp311", constrains=("python 3.11.*",), license="BSD-3-Clause"),
        CondaPackage("libopenblas", "0.3.25", build="h0_0", files=openblas, license="BSD-3-Clause"),
        CondaPackage("numpy", "1.26.4", build="py311h0_0",
                     depends=("libopenblas >=0.3.25", "python >=3.11,<3.12", "python_abi 3.11.* *_cp311"),
                     files=numpy, license="BSD-3-Clause"),
        CondaPackage("pytorch-cpu", "2.1.0", build="py311h0_0",
                     depends=("numpy >=1.23", "python >=3.11,<3.12", "python_abi 3.11.* *_cp311"),
                     files=torch, license="BSD-3-Clause"),
        CondaPackage("mlenv-data", "0.1", noarch="generic", files=data, license="CC0-1.0"),
    ]


def image_channel() -> Path:
    """The generated channel; built once (bz2 of ~130 MB takes a while), then reused."""
    channel = RESULTS_DIR / "channels" / "image-big"
    stamp = channel / "stamp.json"
    if stamp.is_file() and json.loads(stamp.read_text()).get("version") == IMAGE_CHANNEL_VERSION:
        return channel
    shutil.rmtree(channel, ignore_errors=True)
    start = time.perf_counter()
    packages = big_packages()
    build_channel(channel, packages)
    files = sum(len(p.files) for p in packages)
    installed = sum(len(c) for p in packages for c in p.files.values())
    archives = sum(f.stat().st_size for f in channel.glob("*/*.tar.bz2"))
    stamp.write_text(json.dumps({"version": IMAGE_CHANNEL_VERSION, "files": files, "bytes": installed, "archives": archives}))
    progress(f"built {channel.name}: {len(packages)} packages, {files} files, {installed / 2**20:.0f} MiB "
          f"({archives / 2**20:.0f} MiB of .tar.bz2) in {time.perf_counter() - start:.1f}s")
    return channel



# -- the Docker engine ---------------------------------------------------------------------------

BASE_IMAGE = "mlenv-bench-base:busybox"


@functools.cache
def docker_engine() -> Engine:
    """The engine with the bench's own base image, imported once per run, cleaned at exit."""
    engine = Engine()
    atexit.register(engine.close)
    return engine


class Engine:
    """The bench's own images: its base (imported here) and everything built on it."""

    def __init__(self) -> None:
        self.errors = docker.errors
        self.client = docker.from_env(timeout=300)
        self.client.ping()
        self.tags: list[str] = []  # the cases add theirs: removed by clean()
        self.base_id = self._import_base()

    def _import_base(self) -> str:
        self._remove(BASE_IMAGE)  # a left-over base may have children cached on it
        repository, tag = BASE_IMAGE.split(":")
        self.client.api.import_image_from_data(busybox_rootfs_tar(), repository=repository, tag=tag)
        return self.client.images.get(BASE_IMAGE).id

    def _remove(self, reference: str) -> None:
        try:
            self.client.images.remove(reference, force=True)
        except self.errors.ImageNotFound:
            pass

    def clean(self) -> None:
        """Remove every image built here, and any image left on the bench base (a failed
        build's intermediates), so that no build can be served from Docker's layer cache."""
        for tag in self.tags:
            self._remove(tag)
        parents = {i["Id"]: i.get("ParentId") or None for i in self.client.api.images(all=True)}

        def depth(image_id: str | None) -> int | None:  # steps down to the bench base, None if not on it
            steps = 0
            while image_id is not None and image_id != self.base_id:
                image_id, steps = parents.get(image_id), steps + 1
            return steps if image_id == self.base_id else None

        left = [(d, i) for i in parents if i != self.base_id and (d := depth(i)) is not None]
        for _, image_id in sorted(left, reverse=True):  # children first: a child pins its parent
            self._remove(image_id)

    def close(self) -> None:
        self.clean()
        self._remove(BASE_IMAGE)

    def version(self) -> str:
        info = self.client.info()
        return f"Docker {self.client.version()['Version']}, {info['Driver']}, classic builder"




# -- channels derived from the defaults-2018 snapshot (metadata only: they serve locking) -------

SUBDIRS = ("linux-64", "noarch")


def _renamed(records: dict[str, Any], suffix: str) -> dict[str, Any]:
    """The records with every package and dependency name suffixed; `__virtual` names kept."""

    def rename(dep: str) -> str:
        name, sep, rest = dep.partition(" ")
        return dep if name.startswith("__") else f"{name}{suffix}{sep}{rest}"

    out = {}
    for record in records.values():
        new = dict(record, name=record["name"] + suffix)
        new["depends"] = [rename(d) for d in record.get("depends", ())]
        if "constrains" in record:
            new["constrains"] = [rename(d) for d in record["constrains"]]
        out[f"{new['name']}-{record['version']}-{record['build']}.tar.bz2"] = new
    return out


def scaled_channel(copies: int) -> Path:
    """The snapshot plus `copies - 1` renamed copies of it (copy k: every name `<name>-c<k>`),
    so the dependency structure stays real; cached."""
    channel = RESULTS_DIR / "channels" / f"defaults-2018-x{copies}"
    stamp = channel / "stamp.json"
    if stamp.is_file():
        return channel
    start = time.perf_counter()
    for subdir in SUBDIRS:
        source = json.loads((DEFAULTS_2018 / subdir / "repodata.json").read_text())
        packages = dict(source["packages"])
        for k in range(1, copies):
            packages.update(_renamed(source["packages"], f"-c{k}"))
        repodata = {"info": {"subdir": subdir}, "packages": packages, "packages.conda": {}, "repodata_version": 1}
        (channel / subdir).mkdir(parents=True, exist_ok=True)
        (channel / subdir / "repodata.json").write_text(json.dumps(repodata))
    counts = {s: len(json.loads((channel / s / "repodata.json").read_text())["packages"]) for s in SUBDIRS}
    stamp.write_text(json.dumps({"copies": copies, "records": counts}))
    progress(f"built {channel.name}: {counts} in {time.perf_counter() - start:.1f}s")
    return channel


def records(channel: Path) -> dict[str, int]:
    return json.loads((channel / "stamp.json").read_text())["records"]


LINUX_PLATFORMS = ("linux-64", "linux-aarch64", "linux-ppc64le")


def platforms_channel() -> Path:
    """The snapshot's linux-64 records also as linux-aarch64 and linux-ppc64le (subdir fields
    rewritten), with its noarch: three platforms of the same real metadata to lock; cached."""
    channel = RESULTS_DIR / "channels" / "defaults-2018-3-platforms"
    stamp = channel / "stamp.json"
    if stamp.is_file():
        return channel
    source = json.loads((DEFAULTS_2018 / "linux-64" / "repodata.json").read_text())
    for platform in LINUX_PLATFORMS:
        arch = {"linux-64": "x86_64"}.get(platform, platform.partition("-")[2])
        packages = {k: dict(r, subdir=platform, arch=arch) for k, r in source["packages"].items()}
        (channel / platform).mkdir(parents=True, exist_ok=True)
        (channel / platform / "repodata.json").write_text(json.dumps(
            {"info": {"subdir": platform}, "packages": packages, "packages.conda": {}, "repodata_version": 1}))
    (channel / "noarch").mkdir(exist_ok=True)
    shutil.copy(DEFAULTS_2018 / "noarch" / "repodata.json", channel / "noarch" / "repodata.json")
    stamp.write_text(json.dumps({"platforms": LINUX_PLATFORMS}))
    return channel
