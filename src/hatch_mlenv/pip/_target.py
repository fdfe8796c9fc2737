"""The target of a pip resolution: a conda platform and its locked python as PEP 508 marker
values, uv's `--python-platform`, and the wheel tags an installer there accepts, best first."""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

from packaging import tags

from hatch_mlenv.errors import ConfigError

if TYPE_CHECKING:
    from hatch_mlenv.spec import Spec

_MARKER_PLATFORM = {
    "linux": ("linux", "Linux", "posix"),
    "osx": ("darwin", "Darwin", "posix"),
    "win": ("win32", "Windows", "nt"),
}
_MARKER_MACHINE = {"64": "x86_64", "aarch64": "aarch64", "arm64": "arm64", "ppc64le": "ppc64le", "s390x": "s390x"}

# uv 0.13's --python-platform targets per conda platform. Linux targets carry the
# manylinux level, chosen from the platform's __glibc; uv knows these levels.
_UV_LINUX_CPU = {"linux-64": "x86_64", "linux-aarch64": "aarch64"}
_UV_MANYLINUX_MINORS = (17, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40)
_UV_OTHER = {
    "osx-64": "x86_64-apple-darwin",
    "osx-arm64": "aarch64-apple-darwin",
    "win-64": "x86_64-pc-windows-msvc",
    "win-arm64": "aarch64-pc-windows-msvc",
    "win-32": "i686-pc-windows-msvc",
}


def marker_environment(platform: str, python_version: str) -> dict[str, str]:
    """The PEP 508 marker environment of a target platform and python, not of this machine."""
    system, _, arch = platform.partition("-")
    sys_platform, platform_system, os_name = _MARKER_PLATFORM.get(system, ("linux", "Linux", "posix"))
    machine = _MARKER_MACHINE.get(arch, arch)
    if system == "win" and arch == "64":
        machine = "AMD64"
    return {
        "python_version": ".".join(python_version.split(".")[:2]),
        "python_full_version": python_version,
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "sys_platform": sys_platform,
        "platform_system": platform_system,
        "os_name": os_name,
        "platform_machine": machine,
        "platform_release": "",
        "platform_version": "",
        "implementation_version": python_version,
        "extra": "",
    }


def uv_platform(spec: Spec, platform: str) -> tuple[str, dict[str, str]]:
    """uv's `--python-platform` for a conda platform, and the variables it needs (macOS target)."""
    virtual = spec.virtual_packages.get(platform, {})
    if platform in _UV_LINUX_CPU:
        glibc = virtual.get("__glibc", ("2.17", "0"))[0]
        major, minor = _glibc(virtual)
        usable = [m for m in _UV_MANYLINUX_MINORS if major > 2 or m <= minor]
        if not usable:
            raise ConfigError(
                spec.pyproject, f"tool.mlenv.virtual-packages.{platform}.__glibc",
                f"glibc {glibc} is older than the oldest manylinux level uv resolves for (2.17)",
            )
        return f"{_UV_LINUX_CPU[platform]}-manylinux_2_{usable[-1]}", {}
    if platform in _UV_OTHER:
        variables = {}
        if platform.startswith("osx") and "__osx" in virtual:
            variables["MACOSX_DEPLOYMENT_TARGET"] = virtual["__osx"][0]
        return _UV_OTHER[platform], variables
    raise ConfigError(
        spec.pyproject, "tool.mlenv.pip",
        f"pip packages cannot be locked for {platform}: uv resolves for "
        f"{', '.join(sorted([*_UV_LINUX_CPU, *_UV_OTHER]))}",
    )


def _glibc(virtual: Mapping[str, tuple[str, str]]) -> tuple[int, int]:
    """(major, minor) of a platform's `__glibc` virtual package; 2.17 when absent or unreadable."""
    try:
        major, minor = (int(x) for x in virtual.get("__glibc", ("2.17", "0"))[0].split(".")[:2])
    except ValueError:
        return 2, 17
    return major, minor


# manylinux_2_X levels that also have a legacy name
_LEGACY_MANYLINUX = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
_WINDOWS = {"win-64": "win_amd64", "win-arm64": "win_arm64", "win-32": "win32"}


def target_tags(spec: Spec, platform: str, python_version: str) -> dict[str, int]:
    """The wheel tags an installer accepts on the target, best first, as {tag: rank}."""
    version = tuple(int(x) for x in python_version.split(".")[:2])
    virtual = spec.virtual_packages.get(platform, {})
    system, _, arch = platform.partition("-")
    if system == "linux":
        cpu = _UV_LINUX_CPU.get(platform, arch)
        major, level = _glibc(virtual)
        platforms = []
        for minor in range(level if major == 2 else 40, 4, -1):
            platforms.append(f"manylinux_2_{minor}_{cpu}")
            if minor in _LEGACY_MANYLINUX:
                platforms.append(f"{_LEGACY_MANYLINUX[minor]}_{cpu}")
    elif system == "osx":
        macos = tuple(int(x) for x in virtual.get("__osx", ("11.0", "0"))[0].split(".")[:2])
        platforms = list(tags.mac_platforms(macos, "arm64" if arch == "arm64" else "x86_64"))
    else:
        platforms = [_WINDOWS.get(platform, platform)]
    ordered = [*tags.cpython_tags(version, platforms=platforms),
               *tags.compatible_tags(version, f"cp{version[0]}{version[1]}", platforms)]
    ranking: dict[str, int] = {}
    for tag in ordered:
        ranking.setdefault(str(tag), len(ranking))
    return ranking
