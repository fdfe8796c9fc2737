"""Locked pip distributions as files: fetched by sha256, read, and built when they are sources.

Both the lock (an sdist's `Requires-Dist`) and the install (the file itself,
and the wheel built from it) use these, so this module sits below both and
imports neither. uv is the one tool behind the pip side: `uv pip compile` in
the lock, `uv build` here; `uv_binary` and `uv_environment` are how either
calls it.
"""

from __future__ import annotations

import email.parser
import os
import shutil
import subprocess
import tempfile
import threading
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

from hatch_mlenv.credentials import redact
from hatch_mlenv.errors import InstallError, missing_tool
from hatch_mlenv.hashes import file_sha256
from hatch_mlenv.httpclient import download
from hatch_mlenv.paths import cache_dir
from hatch_mlenv.progress import step

SDIST_SUFFIXES = (".tar.gz", ".zip", ".tar.bz2", ".tgz", ".tar.xz", ".tar")

# Variables that would change what uv resolves or builds behind the spec's back; the spec
# alone decides (credentials, cache, TLS and timeouts still come from the user).
_UV_RESOLUTION_VARIABLES = (
    "UV_INDEX_URL", "UV_EXTRA_INDEX_URL", "UV_INDEX", "UV_DEFAULT_INDEX", "UV_FIND_LINKS", "UV_NO_INDEX",
    "UV_CONSTRAINT", "UV_OVERRIDE", "UV_BUILD_CONSTRAINT", "UV_PRERELEASE", "UV_RESOLUTION", "UV_EXCLUDE_NEWER",
    "UV_INDEX_STRATEGY", "UV_NO_BINARY", "UV_ONLY_BINARY", "UV_NO_BUILD", "UV_NO_BUILD_ISOLATION",
    "UV_TORCH_BACKEND", "UV_PYTHON", "UV_CONFIG_FILE",
    "UV_NO_CONFIG", "UV_SYSTEM_PYTHON", "UV_UPGRADE", "UV_UPGRADE_PACKAGE", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL",
    "MACOSX_DEPLOYMENT_TARGET",
)


def uv_binary() -> str:
    """The `uv` executable of the `uv` package (a dependency), or one line saying how to get it."""
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        raise missing_tool("uv", "for pip packages (to lock them and to build source releases)") from None


def uv_environment(indexes: Sequence[str]) -> dict[str, str]:
    """This process's environment for a uv run: the spec's indexes (credentials in the
    environment, never argv, where `ps` shows them) and none of the user's resolution settings."""
    environ = {k: v for k, v in os.environ.items() if k not in _UV_RESOLUTION_VARIABLES}
    if indexes:
        environ["UV_INDEX_URL"] = indexes[0]
        if indexes[1:]:
            environ["UV_EXTRA_INDEX_URL"] = " ".join(indexes[1:])
    return environ


def uv_cache() -> str:
    return os.environ.get("UV_CACHE_DIR") or str(cache_dir() / "uv")


def is_sdist(url: str) -> bool:
    """Whether a locked pip URL is a source release (anything that is not a wheel)."""
    path = urllib.parse.urlsplit(url).path.lower()
    return not path.endswith(".whl") and path.endswith(SDIST_SUFFIXES)


def filename(url: str) -> str:
    """The file name a locked URL ends in, decoded, and refused unless it is one plain name: a
    registered lock is not trusted to choose where its download is written (`..%2F..%2Fx`)."""
    name = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])
    if (not name or name in (".", "..") or any(c in name for c in "/\\\x00") or name.startswith(".")
            or any(ord(c) < 32 for c in name) or len(name) > 255):
        raise InstallError(f"{url}: the lock names no plain file to download ({name!r}); the lock was edited "
                           "or written by a tool that cannot be trusted")
    return name


def fetch(url: str, sha256: str | None, what: str, indexes: Sequence[str] = ()) -> Path:
    """The locked file in the host cache, downloaded if needed and checked against its sha256.

    The lock's URLs carry no credentials: those come from `indexes` (the spec's
    index URLs, `${VAR}` expanded) for the same host, else from netrc."""
    if not sha256:
        raise InstallError(f"{what}: the lock has no sha256 for {url}")
    import re

    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise InstallError(f"{what}: the lock's sha256 for {url} is not 64 hexadecimal digits")
    name = filename(url)
    target = cache_dir() / "wheels" / sha256 / name
    if target.is_file() and file_sha256(target) == sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # one partial file per process and thread: two installs in one process (Ray's agent installing two
    # environments at once) may fetch the same wheel
    partial = target.with_suffix(f".{os.getpid()}.{threading.get_ident()}.part")
    try:
        with open(partial, "wb") as out:
            download(url, out, indexes)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise InstallError(f"cannot download {url}: {exc}") from None
    actual = file_sha256(partial)
    if actual != sha256:
        partial.unlink(missing_ok=True)
        raise InstallError(f"{name}: sha256 mismatch (lock says {sha256}, downloaded {actual})")
    os.replace(partial, target)
    return target


# -- what a source release declares -------------------------------------------------------------

def sdist_metadata(path: Path) -> str | None:
    """An sdist's core metadata as uv reads it without building: PKG-INFO when it is reliable
    (Metadata-Version 2.2 or later and `Requires-Dist` not dynamic), else what setuptools wrote
    into `*.egg-info/requires.txt` beside it (the sdists of 2018 and before), turned into
    `Requires-Dist` lines with their markers and extras; None when neither says anything.
    The archive is read once, and no further than what it needs (pyspark's is 200 MB)."""
    found = _metadata_members(path)
    text = found.get("PKG-INFO")
    if text is None:
        return None
    message = email.parser.HeaderParser().parsestr(text)
    if _reliable(message):
        return text
    requires = found.get("requires.txt")
    if requires is not None:
        lines = [f"Requires-Dist: {r}" for r in _requires_txt(requires)]
        return "\n".join(["Metadata-Version: 2.1", f"Name: {message.get('Name', '')}",
                          f"Version: {message.get('Version', '')}", *lines]) + "\n"
    if "egg-info" in found or message.get_all("Requires-Dist"):
        return text  # an egg-info without requires.txt: setuptools found nothing to require
    return None


def _reliable(message) -> bool:  # noqa: ANN001 - an email.message.Message
    version = tuple(int(x) for x in (message.get("Metadata-Version") or "1.0").split(".")[:2] if x.isdigit())
    dynamic = {d.strip().lower() for d in message.get_all("Dynamic") or []}
    return version >= (2, 2) and "requires-dist" not in dynamic


def _metadata_members(path: Path) -> dict[str, str]:
    """{"PKG-INFO": text, "requires.txt": text, "egg-info": ""} as far as the archive has them,
    read in one pass that stops as soon as what is found settles the answer."""
    found: dict[str, str] = {}

    def take(name: str, read) -> bool:  # noqa: ANN001 - returns whether to stop
        depth = name.strip("/").count("/")
        if depth == 1 and name.endswith("/PKG-INFO"):
            found["PKG-INFO"] = read()
            if _reliable(email.parser.HeaderParser().parsestr(found["PKG-INFO"])):
                return True
        elif depth == 2 and ".egg-info/" in name:
            found["egg-info"] = ""
            if name.endswith(".egg-info/requires.txt"):
                found["requires.txt"] = read()
        return "PKG-INFO" in found and "requires.txt" in found

    if path.name.lower().endswith(".zip"):
        import zipfile

        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if take(name, lambda n=name: archive.read(n).decode("utf-8", "replace")):
                    break
        return found
    import tarfile

    with tarfile.open(path, "r|*") as archive:  # a stream: one pass, no index of 10,000 members first
        for member in archive:
            if member.isfile() and take(member.name, lambda m=member: _text(archive.extractfile(m))):
                break
    return found


def _text(handle) -> str:  # noqa: ANN001 - a file object from tarfile, or None
    return handle.read().decode("utf-8", "replace") if handle is not None else ""


def _requires_txt(text: str) -> list[str]:
    """setuptools' requires.txt (`[extra]`, `[:marker]`, `[extra:marker]` sections) as PEP 508."""
    out, extra, marker = [], "", ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            extra, _, marker = line[1:-1].partition(":")
            continue
        conditions = [f"({marker})" if marker else "", f'extra == "{extra}"' if extra else ""]
        joined = " and ".join(c for c in conditions if c)
        out.append(f"{line}; {joined}" if joined else line)
    return out


# -- building a source release for an environment ------------------------------------------------

def build_wheel(
    sdist: Path, sha256: str, python: Path, python_version: str, platform: str,
    indexes: Sequence[str], find_links: Sequence[str] = (), build_constraints: Sequence[str] = (),
) -> Path:
    """The wheel built from a locked sdist for the environment's own `python`.

    An isolated build by uv (build requirements from the spec's indexes, within
    `build_constraints`), kept in the user cache by the sdist's sha256, the target
    python and platform and the constraints, so an sdist is built once per machine
    and target, whichever prefix or image needs it."""
    short = ".".join(python_version.split(".")[:2])
    target = f"python{short}-{platform}"
    if build_constraints:  # another build environment, maybe another wheel
        import hashlib

        target += "-" + hashlib.sha256("\n".join(sorted(build_constraints)).encode()).hexdigest()[:12]
    cached_dir = cache_dir() / "built-wheels" / sha256 / target
    found = sorted(cached_dir.glob("*.whl")) if cached_dir.is_dir() else []
    if found:
        return found[0]
    if not python.is_file():
        raise InstallError(f"{sdist.name}: the environment has no python at {python} to build it with")
    cached_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".build-", dir=cached_dir.parent) as scratch:
        out = Path(scratch) / "out"
        constraints = Path(scratch) / "build-constraints.txt"
        constraints.write_text("".join(f"{c}\n" for c in build_constraints), encoding="utf-8")
        command = [
            uv_binary(), "build", "--wheel", "--no-config", "--out-dir", str(out), "--python", str(python),
            *[arg for location in find_links for arg in ("--find-links", location)],
            "--build-constraints", str(constraints),
            "--cache-dir", uv_cache(), "--color", "never", "--no-progress", "--quiet", str(sdist),
        ]
        with step(f"building {sdist.name} from source for python {python_version}"):
            # not capture_output: conda-lock's vendored poetry, once imported in this process, replaces
            # subprocess.run with a version that lacks it
            result = subprocess.run(command, env=uv_environment(indexes), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
        wheels = sorted(out.glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise InstallError(_build_failure(sdist.name, result.stderr, indexes))
        staged = Path(scratch) / "done"
        staged.mkdir()
        shutil.move(str(wheels[0]), staged / wheels[0].name)
        try:
            os.replace(staged, cached_dir)
        except OSError:  # built meanwhile by a concurrent install: theirs is as good
            pass
    return sorted(cached_dir.glob("*.whl"))[0]


def _build_failure(name: str, stderr: str, indexes: Sequence[str]) -> str:
    """First line: which sdist failed and the build's own last word; the build's output below."""
    lines = [line for line in redact(stderr, indexes).rstrip().splitlines() if line.strip()]
    cause = next((line.strip() for line in reversed(lines)
                  if line.strip() and not line.lstrip().startswith(("hint:", "[stderr]", "^"))), "no wheel was produced")
    head = (f"cannot build {name} from source: {cause} (constrain its build with "
            f"tool.mlenv.pip-build-constraints, or refuse sources with tool.mlenv.pip-only-binary and relock)")
    return "\n".join([head, *("  " + line for line in lines)])
