"""conda-lock.yml on disk: a light reader, the digest, and an atomic writer.

Reading uses PyYAML's C loader into small frozen values, because `mlenv show`
and the no-op `mlenv lock` must not pay for importing conda-lock's models.
Writing always goes through conda-lock's own models, and the text is byte for
byte what conda-lock's writer makes of them (tests/test_lockfile.py compares).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlsplit

from hatch_mlenv._compat import import_conda_lock_models
from hatch_mlenv.errors import LockfileError, MissingLockError
from hatch_mlenv.paths import cache_dir
from hatch_mlenv.sealed import LOCK_DOCUMENT, read_sealed, write_sealed

# Keys of conda-lock's `metadata.custom_metadata` (a str -> str mapping).
META_NAME = "mlenv.name"
META_SPEC_HASH = "mlenv.spec-hash"
META_VARIABLES = "mlenv.variables"
META_BASE_IMAGE = "mlenv.base-image"
# sha256 (hex) of `[tool.mlenv.docker] base-dockerfile`'s content: the base image the docker builder builds.
META_BASE_DOCKERFILE = "mlenv.base-dockerfile-sha256"
META_TOOL = "mlenv.tool"
# conda name -> PyPI names, where they differ (JSON); see pypi_names.renamed.
META_PYPI_NAMES = "mlenv.pypi-names"
# The digest of the packages as locked: a hand edit of a URL or hash no longer matches it.
META_DIGEST = "mlenv.digest"
# `[tool.mlenv.system-requirements]` as declared (JSON), and what each platform needs
# from the host (JSON, see hatch_mlenv.system.host_needs).
META_SYSTEM_REQUIREMENTS = "mlenv.system-requirements"
# The pip names locked as source releases (built into wheels at install time), a JSON list.
META_SDISTS = "mlenv.sdists"
META_NEEDS = "mlenv.needs"

# 1 is conda-lock's format; 3 is the same shape as rattler-lock (early pixi) wrote it,
# with dependencies as a list of match specs.
SUPPORTED_VERSIONS = (1, 3)


@dataclass(frozen=True)
class LockedPackage:
    """One conda or pip package pinned for one platform."""

    platform: str
    manager: str
    name: str
    version: str
    url: str
    md5: str | None = None
    sha256: str | None = None
    build: str | None = None
    dependencies: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    category: str = "main"
    # Package URLs from the channel's repodata (`pkg:pypi/msgpack@0.5.6`): known
    # right after a solve, not stored in the lockfile (format v1 has no field).
    purls: tuple[str, ...] = field(default=(), hash=False, compare=False)

    def key(self) -> tuple[str, str, str]:
        return (self.platform, self.manager, self.name)

    def canonical(self) -> list[Any]:
        return [self.platform, self.manager, self.name, self.version, self.build, self.url, self.md5, self.sha256]


@dataclass(frozen=True)
class Lock:
    """The content of one conda-lock.yml, as far as hatch-mlenv needs it."""

    packages: tuple[LockedPackage, ...]
    platforms: tuple[str, ...]
    channels: tuple[str, ...]
    custom: dict[str, str] = field(default_factory=dict, hash=False)
    content_hash: dict[str, str] = field(default_factory=dict, hash=False)

    @property
    def name(self) -> str | None:
        return self.custom.get(META_NAME)

    @property
    def spec_hash(self) -> str | None:
        return self.custom.get(META_SPEC_HASH)

    @property
    def recorded_digest(self) -> str | None:
        """The digest written at lock time (None in locks written before hatch-mlenv recorded it)."""
        return self.custom.get(META_DIGEST)

    @property
    def variables(self) -> dict[str, str | None]:
        raw = self.custom.get(META_VARIABLES)
        return json.loads(raw) if raw else {}

    @property
    def base_image(self) -> str | None:
        return self.custom.get(META_BASE_IMAGE) or None

    @property
    def base_dockerfile(self) -> str | None:
        """sha256 (hex) of the base Dockerfile the image is built on (None when there is none)."""
        return self.custom.get(META_BASE_DOCKERFILE) or None

    @property
    def pypi_names(self) -> dict[str, list[str]]:
        """conda name -> the PyPI names it provides, where they differ (recorded at lock time)."""
        return _json_table(self.custom.get(META_PYPI_NAMES))

    @property
    def system_requirements(self) -> dict[str, str]:
        """`[tool.mlenv.system-requirements]` as declared when locked (empty when nothing was)."""
        return _json_table(self.custom.get(META_SYSTEM_REQUIREMENTS))

    @property
    def recorded_needs(self) -> dict[str, dict[str, Any]]:
        """What each platform needs from the host, as recorded at lock time (empty in older locks)."""
        return _json_table(self.custom.get(META_NEEDS))

    def for_platform(self, platform: str) -> list[LockedPackage]:
        return [p for p in self.packages if p.platform == platform]

    def listing(self, platform: str | None = None) -> list[dict[str, Any]]:
        """Every locked package (of `platform`, else of all), sorted by platform, manager and name:
        what `mlenv show --packages` prints."""
        return [
            {"platform": p.platform, "manager": p.manager, "name": p.name, "version": p.version,
             "build": p.build, "source": source_of(p.url, p.manager)}
            for p in sorted(self.packages, key=lambda p: (p.platform, p.manager, p.name))
            if platform is None or p.platform == platform
        ]

    def counts(self) -> dict[str, dict[str, int]]:
        """Package counts per platform and manager: {"linux-64": {"conda": 12, "pip": 2}}."""
        counter = Counter((p.platform, p.manager) for p in self.packages)
        return {
            plat: {mgr: counter[(plat, mgr)] for mgr in ("conda", "pip")} for plat in sorted(self.platforms)
        }

    def digest(self) -> str:
        """sha256 of the canonical content; see `lock_digest`. Computed once per Lock."""
        cached = self.__dict__.get("_digest")
        if cached is None:
            cached = lock_digest(self.packages, self.variables, self.base_image, self.system_requirements,
                                 self.base_dockerfile)
            object.__setattr__(self, "_digest", cached)  # a frozen value's cache, not a change
        return cached


def _json_table(raw: str | None) -> dict[str, Any]:
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def lock_digest(
    packages: Iterable[LockedPackage],
    variables: dict[str, str | None],
    base_image: str | None,
    system_requirements: dict[str, str] | None = None,
    base_dockerfile: str | None = None,
) -> str:
    """The environment's identity: same digest, same environment.

    Sorted packages (platform, manager, name, version, build, url, hashes), the
    variables' names and non-secret values, the base image, and the declared
    system requirements and the base Dockerfile's sha256 (each only when there is one, so
    that older digests stay).
    Formatting, ordering and comments of the file play no part.
    """
    payload: dict[str, Any] = {
        "packages": sorted(p.canonical() for p in packages),
        "variables": sorted(variables.items()),
        "base-image": base_image,
    }
    if system_requirements:  # a machine that the same packages need is another environment
        payload["system-requirements"] = sorted(system_requirements.items())
    if base_dockerfile:  # the system libraries it installs are part of the environment
        payload["base-dockerfile"] = base_dockerfile
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def lockfile_name(lock: Lock, path: Path) -> str:
    """The name of an environment loaded from a lockfile: the one it records, else its directory's."""
    if lock.name:
        return lock.name
    import re

    name = re.sub(r"[^A-Za-z0-9._-]+", "-", path.resolve().parent.name).strip(".-_") or "environment"
    return name[:100]


def read_lock(path: Path) -> Lock:
    """Read a conda-lock.yml (format v1, as conda-lock writes it) or raise LockfileError."""
    return parse_lock(read_lock_text(path), path)


def read_lock_text(path: Path) -> str:
    """A lockfile's text, or LockfileError (MissingLockError when there is none)."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MissingLockError(path, "lockfile not found; run `mlenv lock` to create it") from None
    except UnicodeDecodeError:
        raise LockfileError(path, "corrupted lockfile: not UTF-8 text") from None
    except OSError as exc:
        raise LockfileError(path, f"cannot read lockfile: {exc.strerror or exc}") from None


# The last few lock texts parsed, by their sha256: the build hook reads the lock for the
# manifest and the registry parses the same text again for the digest it stores; that is
# one parse. A `Lock` is a frozen value, so sharing it is safe.
_PARSED: dict[str, Lock] = {}
_PARSED_KEEP = 4


def parse_lock(text: str, source: object) -> Lock:
    """Parse lockfile text; `source` (a path or a registry reference) names it in errors."""
    key = text_key(text)
    parsed = _PARSED.get(key)
    if parsed is None:
        parsed = _parse_lock(text, source, key)
        # list(): one step, so that threads that parse at once (`mlenv serve`) never see it change
        for stale in list(_PARSED)[:max(0, len(_PARSED) - _PARSED_KEEP + 1)]:
            _PARSED.pop(stale, None)
        _PARSED[key] = parsed
    return parsed


def text_key(text: str) -> str:
    """sha256 (hex) of a lock's text: the key of its parsed document in memory and in the cache."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _parse_lock(text: str, source: object, key: str) -> Lock:
    """The YAML is parsed once per text: its document is kept as JSON in the user cache, by the
    text's sha256, so that the commands that only read a lock (a no-op install, run, show)
    neither import nor run a YAML parser. The document is validated on every read, and only
    believed when its seal (see hatch_mlenv.sealed) binds it to this text's key: an edited,
    swapped or foreign entry is a miss, and the YAML is parsed again."""
    document = _cached_document(key)
    if document is None:
        import yaml

        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        try:
            document = yaml.load(text, Loader=loader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark is not None else ""
            raise LockfileError(source, f"corrupted lockfile: not valid YAML{where}") from None
        lock = lock_from_document(document, source)  # only a valid lock's document is kept
        _keep_document(key, document)
        return lock
    return lock_from_document(document, source)


LOCK_DOCUMENTS = "lock-documents"  # in the user cache: <sha256 of a lock's text>.json, sealed


def _document_path(key: str) -> Path:
    return cache_dir() / LOCK_DOCUMENTS / f"{key}.json"


def _cached_document(key: str) -> Any:
    body = read_sealed(_document_path(key), LOCK_DOCUMENT, key)
    if body is None:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


def _keep_document(key: str, document: Any) -> None:
    try:
        body = json.dumps(document, separators=(",", ":")).encode()
    except (TypeError, ValueError):  # a YAML type JSON lacks (a date): parse it each time instead
        return
    write_sealed(_document_path(key), LOCK_DOCUMENT, key, body)


def lock_from_document(document: Any, path: object) -> Lock:
    """Validate a parsed lockfile document; errors name the file and the key."""
    if not isinstance(document, dict):
        raise LockfileError(path, "corrupted lockfile: expected a mapping with `version`, `metadata` and `package`")
    version = document.get("version")
    if version is None:
        raise LockfileError(path, "corrupted lockfile: missing `version`")
    if version not in SUPPORTED_VERSIONS:
        raise LockfileError(
            path,
            f"unsupported lockfile version {version!r} (hatch-mlenv reads conda-lock format "
            f"versions {' and '.join(map(str, SUPPORTED_VERSIONS))})",
        )
    metadata = document.get("metadata")
    if not isinstance(metadata, dict):
        raise LockfileError(path, "corrupted lockfile: `metadata` is missing or not a mapping")
    platforms = metadata.get("platforms")
    if not isinstance(platforms, list) or not all(isinstance(p, str) for p in platforms):
        raise LockfileError(path, "corrupted lockfile: `metadata.platforms` must be a list of platforms")
    raw_packages = document.get("package")
    if not isinstance(raw_packages, list):
        raise LockfileError(path, "corrupted lockfile: `package` is missing or not a list")
    channels = []
    for entry in metadata.get("channels") or []:
        channels.append(entry.get("url", "") if isinstance(entry, dict) else str(entry))
    custom = metadata.get("custom_metadata") or {}
    content_hash = metadata.get("content_hash") or {}
    if not isinstance(custom, dict) or not isinstance(content_hash, dict):
        raise LockfileError(path, "corrupted lockfile: `metadata.custom_metadata` must be a mapping")

    packages = []
    for index, raw in enumerate(raw_packages):
        packages.append(_package(raw, index, path))
    return Lock(
        packages=tuple(packages),
        platforms=tuple(platforms),
        channels=tuple(channels),
        custom={str(k): str(v) for k, v in custom.items()},
        content_hash={str(k): str(v) for k, v in content_hash.items()},
    )


def _package(raw: Any, index: int, path: object) -> LockedPackage:
    where = f"package[{index}]"
    if not isinstance(raw, dict):
        raise LockfileError(path, f"corrupted lockfile: `{where}` is not a mapping")
    for key in ("name", "version", "manager", "platform", "url"):
        if not isinstance(raw.get(key), str):
            raise LockfileError(path, f"corrupted lockfile: `{where}.{key}` is missing or not a string")
    if raw["manager"] not in ("conda", "pip"):
        raise LockfileError(path, f"corrupted lockfile: `{where}.manager` must be conda or pip")
    hashes = raw.get("hash") or {}
    if not isinstance(hashes, dict):
        raise LockfileError(path, f"corrupted lockfile: `{where}.hash` is not a mapping")
    if raw["manager"] == "conda" and not hashes.get("md5"):
        raise LockfileError(path, f"corrupted lockfile: `{where}.hash.md5` is missing (conda packages need md5)")
    deps = raw.get("dependencies") or {}
    if isinstance(deps, list):
        deps = dict(split_dependency(str(d)) for d in deps)
    build = raw.get("build")
    return LockedPackage(
        platform=raw["platform"],
        manager=raw["manager"],
        name=raw["name"],
        version=str(raw["version"]),
        url=raw["url"],
        md5=hashes.get("md5"),
        sha256=hashes.get("sha256"),
        build=None if build is None else str(build),
        dependencies={str(k): str(v) for k, v in deps.items()} if isinstance(deps, dict) else {},
        category=str(raw.get("category", "main")),
    )


def split_dependency(depend: str) -> tuple[str, str]:
    """`"numpy >=1.21,<2"` -> `("numpy", ">=1.21,<2")`, the shape conda-lock writes."""
    name, _, constraint = depend.strip().partition(" ")
    return name, " ".join(constraint.split()) or "*"


def to_conda_lock(package: LockedPackage):  # -> conda_lock's LockedDependency
    """The same package as conda-lock's own model (imports conda-lock: not for hot paths)."""
    import_conda_lock_models()
    from conda_lock.lockfile.v2prelim.models import HashModel, LockedDependency

    return LockedDependency(
        name=package.name,
        version=package.version,
        manager=package.manager,
        platform=package.platform,
        dependencies=dict(package.dependencies),
        url=package.url,
        hash=HashModel(md5=package.md5, sha256=package.sha256),
        category=package.category,
        build=package.build,
    )


def render_lockfile(
    packages: Iterable[LockedPackage],
    *,
    platforms: Iterable[str],
    channels: Iterable[str],
    content_hash: dict[str, str],
    custom: dict[str, str],
    sources: Iterable[str],
    file_name: str,
) -> str:
    """The text of a conda-lock.yml, built by conda-lock's models.

    The models validate and shape the document (`Lockfile.to_v1().dict_for_output()`);
    the text is what conda-lock's `write_conda_lock_file` writes for it (help text,
    then `yaml.dump(..., sort_keys=False)`), with libyaml's emitter where PyYAML has
    it (several times faster). tests/test_lockfile.py checks that both give the same bytes.
    """
    import_conda_lock_models()
    from conda_lock.lockfile.v2prelim.models import Lockfile, LockMeta

    model = Lockfile(
        package=[to_conda_lock(p) for p in packages],
        metadata=LockMeta(
            content_hash=dict(sorted(content_hash.items())),
            channels=list(channels),
            platforms=sorted(platforms),
            sources=list(sources),
            custom_metadata=dict(sorted(custom.items())),
        ),
    )
    # What write_conda_lock_file does to the model before writing it (conda-lock 2.5.8).
    model.alphasort_inplace()
    model.filter_virtual_packages_inplace()
    import yaml

    document = model.to_v1().dict_for_output()
    dumper = getattr(yaml, "CDumper", yaml.Dumper)  # conda-lock: yaml.dump's default, yaml.Dumper
    help_text = _help_text(file_name, {p.category for p in model.package}, model.metadata.sources)
    return help_text + yaml.dump(document, Dumper=dumper, sort_keys=False)


def _help_text(file_name: str, categories: set[str], sources: Iterable[str]) -> str:
    """The comment conda-lock's `write_conda_lock_file` puts first (`include_help_text=True`,
    no `--md` choices), for a file named `file_name`."""
    sections = [
        "This lock file was generated by conda-lock (https://github.com/conda/conda-lock). DO NOT EDIT!\n\n"
        "A \"lock file\" contains a concrete list of package versions (with checksums) to be installed. Unlike\n"
        "e.g. `conda env create`, the resulting environment will not change as new package versions become\n"
        "available, unless you explicitly update the lock file.\n\n"
        "Install this environment as \"YOURENV\" with:\n"
        f"    conda-lock install -n YOURENV {file_name}"
    ]
    if "dev" in categories:
        sections.append(
            "This lock contains optional development dependencies. Include them in the installed environment with:\n"
            f"    conda-lock install --dev-dependencies -n YOURENV {file_name}"
        )
    extras = sorted(categories.difference({"main", "dev"}))
    if extras:
        sections.append(
            f"This lock contains optional dependency categories {', '.join(extras)}. Include them in the "
            "installed environment with:\n"
            f"    conda-lock install {' '.join('-e ' + extra for extra in extras)} -n YOURENV {file_name}"
        )
    sections.append(
        "To update a single package to the latest version compatible with the version constraints in the source:\n"
        f"    conda-lock lock  --lockfile {file_name} --update PACKAGE\n"
        "To re-solve the entire environment, e.g. after changing a version constraint in the source file:\n"
        f"    conda-lock {' '.join('-f ' + path for path in sources)} --lockfile {file_name}"
    )
    return "".join(("# " + line).rstrip() + "\n" for section in sections for line in section.split("\n"))


def atomic_write(path: Path, text: str) -> None:
    """Replace `path` with `text` in one rename: readers see the old file or the new one.

    The temporary file is named after this process (`.NAME.PID.*.tmp`), so that
    the next write removes what a killed writer left behind."""
    if path.is_symlink():  # the file it points at is replaced, not the link
        path = path.resolve()
    if path.exists() and not path.is_file():  # a device, a FIFO, a directory: never replaced by a file
        from hatch_mlenv.errors import UsageError

        raise UsageError(f"{path}: not a regular file; give a file path to write")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_dead_leftovers(path.parent, f".{path.name}.")
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:  # name the file the user asked for, not our temporary one
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        else:
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_dead_leftovers(directory: Path, prefix: str) -> list[Path]:
    """Remove the entries `<prefix><PID>...` of `directory` whose process is gone (killed
    writers' temp files, staging and retired directories); returns what was removed."""
    # Only names this module's writers make (`.NAME.PID.xxxx.tmp`, `.NAME.PID.new` and its
    # journals; `.NAME.staging-PID` for a prefix ending in "-"): a user's `.out.txt.20240101/`
    # is not ours to delete.
    tail = "" if prefix.endswith("-") else r"(?:\.[A-Za-z0-9_]+)?\.(?:tmp|new)(?:-wal|-shm|-journal)?"
    pattern = re.compile(rf"{re.escape(prefix)}([0-9]+){tail}")
    removed = []
    try:
        entries = list(directory.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None or int(match.group(1)) == os.getpid() or pid_alive(int(match.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux `renameat2(RENAME_EXCHANGE)`); False where the
    system cannot, so the caller falls back to two renames."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes  # here: lockfile is read by every command, few of them swap directories

    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def source_of(url: str, manager: str = "conda") -> str:
    """Where a package came from, by its URL: a conda package's channel
    (`https://host/chan/linux-64/pkg.conda` -> `https://host/chan`), a pip file's index host, or
    a local file's directory."""
    if manager == "conda":
        parts = url.rsplit("/", 2)
        return parts[0] if len(parts) == 3 and "://" in url else ""
    parts = urlsplit(url)
    if parts.scheme in ("http", "https"):
        return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}"
    return url.rsplit("/", 1)[0]
