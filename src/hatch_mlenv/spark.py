"""The Spark stage: a packed, relocatable environment for executors, and the Spark settings that use it.

`pack` archives the installed linux-64 prefix with conda-pack (prefix
placeholders are restored in the archive; `bin/conda-unpack` rewrites them for
wherever it is unpacked), then rewrites conda-pack's tar reproducibly (see
`reproducible_archive`): the same lock packs to the same bytes on any machine,
so `verify_pack` checks an archive by packing the lock again and comparing.
`settings` gives the properties: the archive as
`spark.archives=...#environment`, executors' python inside it, the
environment's non-secret variables as `spark.executorEnv.*`, the Maven
packages and repositories, and `[tool.mlenv.spark] conf`.
"""

from __future__ import annotations

import base64
import csv
import gzip
import hashlib
import io
import json
import os
import posixpath
import shlex
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hatch_mlenv.environment import Environment
from hatch_mlenv.errors import PackError, UsageError
from hatch_mlenv.platforms import current_platform
from hatch_mlenv.verify import STATE_FILE

PLATFORM = "linux-64"
ARCHIVE_ALIAS = "environment"


def default_archive(env: Any) -> Path:
    return env.state_dir / "packs" / f"{env.name}-{env.digest[:12]}.tar.gz"


def pack(env: Any, output: Path | None = None, prefix: Path | None = None) -> Path:
    """Pack the installed linux-64 environment into `output` (a .tar.gz), atomically."""
    if not env.lock.for_platform(PLATFORM):
        raise PackError(f"{env.spec.lockfile}: the lock has no {PLATFORM} packages; Spark executors run linux-64")
    if current_platform() != PLATFORM:
        raise PackError(f"packing needs the {PLATFORM} environment installed, and this machine is {current_platform()}")
    prefix = (prefix or env.default_prefix).absolute()
    try:
        state = json.loads((prefix / STATE_FILE).read_text())
    except (OSError, ValueError):
        state = {}
    if not (prefix / "conda-meta").is_dir():
        raise PackError(f"{prefix}: the environment is not installed; run `mlenv install` first")
    if state.get("digest") != env.digest:
        raise PackError(f"{prefix}: the installed environment is not the locked one; run `mlenv install` first")
    output = (output or default_archive(env)).absolute()
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tar.gz", dir=output.parent)
        os.close(fd)
    except OSError as exc:
        raise PackError(f"{output}: cannot write the archive there: {exc.strerror or exc}") from None
    plain = Path(f"{partial}.tar")
    try:
        import conda_pack  # lazy: ~0.05 s, only for packing

        files = _pack_files(conda_pack.CondaEnv.from_prefix(str(prefix), ignore_missing_files=False), prefix)
        conda_pack.CondaEnv(str(prefix), files).pack(output=str(plain), format="tar", force=True, verbose=False)
        # conda-managed files come from the package cache with the package's own times; everything
        # else (conda-meta, wheels, conda-pack's scripts) was written at install or pack time
        kept_times = {f.target for f in files if not os.path.abspath(f.source).startswith(f"{prefix}{os.sep}")}
        sha256 = reproducible_archive(plain, Path(partial), kept_times)
        os.replace(partial, output)
        from hatch_mlenv.lockfile import atomic_write

        atomic_write(Path(f"{output}.sha256"), f"{sha256}  {output.name}\n")  # `sha256sum -c` reads it
    except conda_pack.CondaPackException as exc:
        raise PackError(f"cannot pack {prefix}: {exc}") from None
    finally:
        Path(partial).unlink(missing_ok=True)
        plain.unlink(missing_ok=True)
    return output


GZIP_LEVEL = 4  # conda-pack's default: the archive is as large and as fast to write as before


def _pack_files(conda_env: Any, prefix: Path) -> list:
    """conda-pack's file list, made independent of where the prefix lives.

    conda-pack lists every file no conda package owns (the wheels) as text to be
    rewritten by `conda-unpack` from the *source prefix's path*, which then appears in
    the archive. Only those that hold that path need it (a script's shebang in `bin/`
    conda-pack rewrites itself); the others are packed as they are."""
    import conda_pack  # lazy: as above

    from hatch_mlenv.verify import STATE_FILE

    needle = str(prefix).encode()
    files = []
    for file in conda_env.files:
        # not the environment's: the install record (its fingerprint holds install times), and
        # bytecode Python wrote when something ran there
        if file.target == STATE_FILE or (not file.is_conda and file.target.endswith((".pyc", ".pyo"))):
            continue
        if not file.is_conda and file.file_mode == "unknown" and not file.target.startswith("bin/"):
            try:
                with open(file.source, "rb") as handle:
                    holds_prefix = needle in handle.read()
            except OSError:
                holds_prefix = True  # conda-pack reports it
            if not holds_prefix:
                file = conda_pack.core.File(file.source, file.target, is_conda=False, file_mode=None)
        files.append(file)
    return files


def source_date_epoch() -> int:
    """The time every file written at install or pack time gets: `SOURCE_DATE_EPOCH`, else 0."""
    try:
        return max(0, int(os.environ.get("SOURCE_DATE_EPOCH", "0")))
    except ValueError:
        raise UsageError(f"SOURCE_DATE_EPOCH={os.environ['SOURCE_DATE_EPOCH']!r} is not a number of seconds") from None


def reproducible_archive(plain: Path, output: Path, kept_times: set[str] | frozenset[str] = frozenset()) -> str:
    """Rewrite the uncompressed tar `plain` into the gzip'd tar `output` so that its bytes depend on
    its content only (conda-pack's own issue #345); returns the sha256 of `output`.

    Members sorted by name; hard links stored as the file they link to; uid/gid 0 without names;
    modes 0755 (directories, executables), 0644 (other files), 0777 (symlinks); times those of the
    conda package for `kept_times` (clamped to `SOURCE_DATE_EPOCH` when set), else
    `source_date_epoch()`; GNU tar headers; gzip level `GZIP_LEVEL` with no name and time 0. A wheel's
    RECORD names the hash of its scripts as installed (their shebang held the prefix's path):
    those rows take the script as packed."""
    epoch = source_date_epoch()
    clamp = epoch if "SOURCE_DATE_EPOCH" in os.environ else None
    with tarfile.open(plain, "r:") as source:
        members = {}
        for member in source.getmembers():
            members[member.name] = member  # the last of a name wins, as tar extracts it
        resolved = {name: _link_target(members, member) for name, member in members.items()}

        def data(name: str) -> bytes:
            handle = source.extractfile(resolved[name])
            return handle.read() if handle is not None else b""

        with open(output, "wb") as raw:
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=GZIP_LEVEL, mtime=0) as zipped:
                with tarfile.open(fileobj=zipped, mode="w|", format=tarfile.GNU_FORMAT) as out:
                    for name in sorted(members):
                        member = resolved[name]
                        info = tarfile.TarInfo(name)
                        info.uid = info.gid = 0
                        info.uname = info.gname = ""
                        if name in kept_times:
                            info.mtime = int(member.mtime) if clamp is None else min(int(member.mtime), clamp)
                        else:
                            info.mtime = epoch
                        if member.issym():
                            info.type, info.linkname, info.mode = tarfile.SYMTYPE, member.linkname, 0o777
                            out.addfile(info)
                        elif member.isdir():
                            info.type, info.mode = tarfile.DIRTYPE, 0o755
                            out.addfile(info)
                        elif member.isfile():
                            info.mode = 0o755 if member.mode & 0o111 else 0o644
                            if name.endswith(".dist-info/RECORD"):
                                body = _record_as_packed(name, data(name), members, data)
                            elif name.startswith("conda-meta/") and name.endswith(".json") and name.count("/") == 1:
                                body = _conda_meta_as_packed(data(name))
                            else:  # streamed: a package's library can be large
                                info.size = member.size
                                out.addfile(info, source.extractfile(member))
                                continue
                            info.size = len(body)
                            out.addfile(info, io.BytesIO(body))
                        else:
                            raise PackError(f"{plain}: {name}: a {member.type!r} entry cannot be packed")
    return _sha256(output)


def _link_target(members: dict[str, Any], member: Any) -> Any:
    """A hard link's target member (conda-pack stores a second path of one inode as a link to the
    first, and which comes first depends on the file system)."""
    seen = set()
    while member.islnk() and member.linkname in members and member.linkname not in seen:
        seen.add(member.linkname)
        member = members[member.linkname]
    return member


def _conda_meta_as_packed(body: bytes) -> bytes:
    """A conda-meta record without what it says of files as they were in the source prefix: a file
    with a prefix placeholder has that prefix's path inside, so its hash and size there (rattler's
    `sha256_in_prefix`, `size_in_bytes`) are another prefix's, and wrong once unpacked elsewhere."""
    try:
        record = json.loads(body)
        paths = record["paths_data"]["paths"]
    except (ValueError, KeyError, TypeError):
        return body
    changed = False
    for entry in paths if isinstance(paths, list) else ():
        if isinstance(entry, dict) and entry.get("prefix_placeholder"):
            for key in ("sha256_in_prefix", "size_in_bytes"):
                changed = entry.pop(key, None) is not None or changed
    return json.dumps(record, indent=True, sort_keys=True).encode() if changed else body  # as conda-pack writes it


def _record_as_packed(name: str, body: bytes, members: dict[str, Any], data: Any) -> bytes:
    """A RECORD whose rows for files outside site-packages (scripts) carry the packed file's hash."""
    site = posixpath.dirname(posixpath.dirname(name))
    try:
        rows = list(csv.reader(io.StringIO(body.decode("utf-8"))))
    except (UnicodeDecodeError, csv.Error):
        return body
    changed = False
    for row in rows:
        if len(row) < 3 or not row[0].startswith("../") or not row[1]:
            continue
        target = posixpath.normpath(posixpath.join(site, row[0]))
        if target not in members or not members[target].isfile():
            continue
        content = data(target)
        hashed = "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(content).digest()).rstrip(b"=").decode()
        if row[1] != hashed:
            row[1], row[2], changed = hashed, str(len(content)), True
    if not changed:
        return body
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(rows)
    return text.getvalue().encode("utf-8")


@dataclass(frozen=True)
class PackCheck:
    """An archive against what the lock packs to on this machine (`verify_pack`)."""

    archive: Path
    sha256: str  # the archive's
    expected: str  # the pack of the lock, made here
    same_content: bool  # the same tar inside, compressed by another zlib

    @property
    def ok(self) -> bool:
        return self.sha256 == self.expected or self.same_content

    def as_dict(self) -> dict[str, Any]:
        return {"archive": str(self.archive), "sha256": self.sha256, "expected": self.expected,
                "same_content": self.same_content, "ok": self.ok}


def verify_pack(env: Any, archive: Path, prefix: Path | None = None) -> PackCheck:
    """Whether `archive` is the pack of `env`'s lock: pack the lock again (installing it first when
    needed, never solving) and compare. Packs are reproducible, so nothing needs to be stored with
    the version: the lock is the record. An archive written by a Python whose zlib compresses
    differently still passes when the tar inside is the same."""
    if not archive.is_file():
        raise UsageError(f"{archive}: no such archive")
    if prefix is None:
        from hatch_mlenv.install import install_environment

        prefix = install_environment(env).prefix
    packs = default_archive(env).parent  # beside the packs: a pack can be large for a small /tmp
    try:
        packs.mkdir(parents=True, exist_ok=True)
        scratch = tempfile.mkdtemp(prefix=".verify-pack-", dir=packs)
    except OSError as exc:
        raise PackError(f"{packs}: cannot pack {env.name} there to compare: {exc.strerror or exc}") from None
    try:
        made = pack(env, Path(scratch) / "env.tar.gz", prefix)
        expected = _sha256(made)
        found = _sha256(archive)
        same = found == expected or _tar_digest(archive) == _tar_digest(made)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return PackCheck(archive, found, expected, same and found != expected)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _tar_digest(path: Path) -> str | None:
    """sha256 of the decompressed stream, or None when it is not gzip."""
    digest = hashlib.sha256()
    try:
        with gzip.open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except (OSError, EOFError, zlib.error):
        return None
    return digest.hexdigest()


def settings(env: Any, archive: Path | str) -> dict[str, str]:
    """The Spark properties that run Python work inside the packed environment."""
    spark = env.spec.spark
    properties = {
        "spark.archives": f"{archive}#{ARCHIVE_ALIAS}",
        "spark.pyspark.python": f"./{ARCHIVE_ALIAS}/bin/python",
    }
    for name, value in sorted(env.lock.variables.items()):
        if value is not None:  # secrets never go into Spark's configuration
            properties[f"spark.executorEnv.{name}"] = value
    if spark.packages:
        properties["spark.jars.packages"] = ",".join(spark.packages)
    if spark.repositories:
        properties["spark.jars.repositories"] = ",".join(spark.repositories)
    properties.update(spark.conf)
    return properties


def render(properties: dict[str, str], fmt: str) -> str:
    if fmt == "properties":  # spark-defaults.conf
        return "".join(f"{key} {value}\n" for key, value in properties.items())
    if fmt == "json":
        return json.dumps(properties, indent=2) + "\n"
    if fmt == "submit":
        return " ".join(f"--conf {shlex.quote(f'{key}={value}')}" for key, value in properties.items()) + "\n"
    raise UsageError(f"unknown format {fmt!r}: use properties, json or submit")


def configure(builder: Any, project: Path | str = ".", *, env: str | None = None, archive: Path | str | None = None) -> Any:
    """Apply the environment's Spark settings to a `SparkSession.builder`; returns the builder.
    `project` is anything `Environment.load` takes: a project, a lockfile, `NAME:VERSION`, `NAME@LABEL`.

    >>> spark = configure(SparkSession.builder.appName("train"), project=".").getOrCreate()

    A driver started from Python (a notebook, a job script) takes the executors'
    python from `PYSPARK_PYTHON`, not from `spark.pyspark.python`; so this sets
    that variable in the current process too. Executors find `./environment`
    in their working directory, where cluster managers (YARN, Kubernetes,
    standalone, `local-cluster`) unpack `spark.archives`; plain `local[*]` runs
    Python work in the driver's directory and cannot use the archive.
    """
    environment = Environment.load(project, env)
    properties = settings(environment, archive or default_archive(environment))
    for key, value in properties.items():
        builder = builder.config(key, value)
    os.environ["PYSPARK_PYTHON"] = properties["spark.pyspark.python"]
    return builder
