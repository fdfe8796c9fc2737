"""Conda platforms and what a host provides: this machine's platform, and the virtual packages
(`__glibc`, `__cuda`, ...) a solve assumes for a platform or that system requirements set.

These are values about hosts, not about one definition: the spec reads them to validate and
default `[tool.mlenv]`, and the stages after the lock (system checks, install, verify, Spark,
Ray, the dependency graph) read them about the machine they run on. Standard library only.
"""

from __future__ import annotations

import platform as _platform
from typing import Mapping

KNOWN_PLATFORMS = (
    "linux-32",
    "linux-64",
    "linux-aarch64",
    "linux-armv6l",
    "linux-armv7l",
    "linux-ppc64le",
    "linux-s390x",
    "linux-riscv64",
    "osx-64",
    "osx-arm64",
    "win-32",
    "win-64",
    "win-arm64",
    "emscripten-wasm32",
    "wasi-wasm32",
    "zos-z",
)

# The virtual packages a solve assumes when the spec declares nothing: the
# lowest host that current channels' packages need (anaconda main and
# conda-forge build Linux packages against glibc 2.28, as pixi assumes; pixi's
# kernel 4.18 and macOS 13.0), and no CUDA at all: a CPU environment must not
# lock a CUDA build by accident (conda-lock assumes a CUDA 11.4 driver).
# `[tool.mlenv.system-requirements]` raises them; `virtual-packages` overrides any.
_DEFAULT_VIRTUAL_PACKAGES: dict[str, dict[str, tuple[str, str]]] = {
    "linux": {
        "__unix": ("0", "0"),
        "__linux": ("4.18", "0"),
        "__glibc": ("2.28", "0"),
    },
    "osx": {"__unix": ("0", "0"), "__osx": ("13.0", "0")},
    "win": {"__win": ("0", "0")},
}
_ARCHSPEC = {
    "64": "x86_64",
    "aarch64": "aarch64",
    "arm64": "arm64",
    "ppc64le": "ppc64le",
}
# `[tool.mlenv.system-requirements]` key -> the virtual package it sets, on the systems it applies to
# (`archspec` applies to the platforms whose architecture family starts the value: x86_64_v3 -> x86_64).
SYSTEM_REQUIREMENTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "cuda": ("__cuda", ("linux", "win")),
    "glibc": ("__glibc", ("linux",)),
    "linux": ("__linux", ("linux",)),
    "macos": ("__osx", ("osx",)),
    "archspec": ("__archspec", ("linux", "osx", "win")),
}
# The way back: `__cuda` -> `cuda` (the word of image labels and of the needs' `by`).
REQUIREMENT_KEYS = {name: key for key, (name, _) in SYSTEM_REQUIREMENTS.items()}


def current_platform() -> str:
    """The conda platform of this machine, without importing rattler."""
    system = {"Linux": "linux", "Darwin": "osx", "Windows": "win"}.get(_platform.system(), "linux")
    machine = _platform.machine().lower()
    arch = {
        "x86_64": "64",
        "amd64": "64",
        "aarch64": "aarch64",
        "arm64": "arm64" if system == "osx" else "aarch64",
        "ppc64le": "ppc64le",
        "s390x": "s390x",
    }.get(machine, "64")
    return f"{system}-{arch}"


def default_virtual_packages(platform: str) -> dict[str, tuple[str, str]]:
    """The virtual packages a solve assumes for `platform` when nothing is declared: name -> (version, build)."""
    system, _, arch = platform.partition("-")
    packages = dict(_DEFAULT_VIRTUAL_PACKAGES.get(system, {}))
    if arch in _ARCHSPEC:
        packages["__archspec"] = ("1", _ARCHSPEC[arch])
    return packages


def system_virtual_packages(platform: str, requirements: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """The virtual packages that `[tool.mlenv.system-requirements]` sets for `platform`."""
    system, _, arch = platform.partition("-")
    packages = {}
    for key, value in requirements.items():
        name, systems = SYSTEM_REQUIREMENTS[key]
        if system not in systems:
            continue
        if key == "archspec":
            family = _ARCHSPEC.get(arch)
            if family is None or not value.startswith(family):
                continue
            packages[name] = ("1", value)
        elif key == "cuda" and platform == "win-32":
            continue
        else:
            packages[name] = (value, "0")
    return packages
