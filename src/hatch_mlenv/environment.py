"""The `Environment` value that flows through every stage: spec + lock + identity."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

from hatch_mlenv._compat import tomllib
from hatch_mlenv.errors import ConfigError, RegistryError, UsageError
from hatch_mlenv.hashes import TAG_LENGTH
from hatch_mlenv.lock import POLICIES, REPORT, current_lock, lock_policy
from hatch_mlenv.lockfile import Lock, atomic_write, lockfile_name, parse_lock, read_lock_text
from hatch_mlenv.manifest import lock_manifest
from hatch_mlenv.paths import data_dir
from hatch_mlenv.provenance import git_state
from hatch_mlenv.reference import Target, image_reference, option_reference, parse_target
from hatch_mlenv.registry import open_registry, select_url
from hatch_mlenv.sbom import cyclonedx
from hatch_mlenv.spec import PYPROJECT, Spec, check_locked_values, load_spec, parse_spec


@dataclass(frozen=True)
class Environment:
    """The value every stage takes: the spec and its lock; the facts derived from them
    (digest, image reference, manifest with provenance) are computed once, on first use.

    Loaded from a project, a lockfile or a registered version (`Environment.load`); a
    registered version also knows its number, its registry and the manifest stored with it."""

    spec: Spec
    lock: Lock
    version: int | None = None  # the registered version, when loaded as NAME:VERSION / NAME@LABEL
    registry: str | None = None  # the registry it was loaded from
    reference: str | None = None  # the reference as given (`fraud-train@production`), or the lockfile's path
    stored_manifest: dict[str, Any] | None = field(default=None, compare=False, repr=False)
    # (lock text, pyproject document) of a version's directory, written by `files()` when needed
    pending: tuple[str, dict[str, Any]] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def load(cls, reference: Path | str = ".", env: str | None = None, *, registry: str | None = None,
             policy: str | None = None, announce: Callable[[str], None] | None = None,
             default_policy: str = "relock") -> Environment:
        """The one resolver of every command: `reference` is a project directory (`env`: one of its
        `[tool.mlenv.envs.NAME]`), a lockfile, or `NAME`, `NAME:VERSION`, `NAME@LABEL` in the registry
        chosen by `registry`, then `$MLENV_REGISTRY`, then the current project's `registry`, then `local`.

        A project's lock follows the stale-lock `policy` (`hatch_mlenv.lock.lock_policy`): `relock`
        (default) locks a stale or missing lock again and says so through `announce`, `locked`
        refuses it, `frozen` takes it as it is; with none asked or configured, `default_policy`
        (`report` for what only describes a lock: say it is stale, use it as it is). A lockfile or a
        registered version is what it is: nothing to be stale against, so the policy does not apply."""
        for given in (policy, default_policy):
            if given is not None and given not in (*POLICIES, REPORT):
                raise UsageError(f"unknown lock policy {given!r}: use one of {', '.join(POLICIES)}")

        target = Target(str(reference), path=str(reference)) if isinstance(reference, Path) else parse_target(reference)
        if target.reference is None:
            path = Path(target.path or ".")
            if path.is_dir() or not path.exists():
                if not isinstance(reference, Path) and _bare_name(target.text) and not (path / "pyproject.toml").exists():
                    raise UsageError(f"{target.text}: a directory here without pyproject.toml (a path that exists "
                                     f"wins); for the registered version write {target.text}@latest")
                return cls._from_project(path, env, policy, announce, default_policy)
            if env is not None:
                raise UsageError(f"--env names an environment of a project; {path} is a lockfile")
            return _from_lockfile(path)
        if env is not None:
            raise UsageError(f"--env names an environment of a project; {target.text} is a registered version")
        return _from_registry(target.text, target.reference, registry)

    @classmethod
    def _from_project(cls, project: Path, env: str | None, policy: str | None = None,
                      announce: Callable[[str], None] | None = None, default_policy: str = "relock") -> Environment:
        spec = load_spec(project, env)
        return cls(spec, current_lock(spec, lock_policy(policy, spec, default=default_policy), announce))

    @property
    def source(self) -> str:
        """What an error about its definition names: the project's pyproject.toml, or the version
        (`NAME:VERSION in REGISTRY`) or the lockfile it was loaded from."""
        return str(self.spec.pyproject) if self.reference is None else _origin(self.reference, self.registry)

    @property
    def is_registered(self) -> bool:
        """Loaded from a registry or a lockfile, not from a project: it lives in the user data directory."""
        return self.reference is not None

    def files(self) -> Environment:
        """Make sure the spec's files exist: a version loaded by reference gets its directory
        (`versions/NAME-DIGEST12/`) written, or rewritten when it differs. For the stages that
        read the lockfile from disk (install, images); a no-op for a project."""
        if self.pending is not None:
            _write_version(self.spec.project_dir, *self.pending)
        return self

    @property
    def state_dir(self) -> Path:
        """Where installs and packs go: the project's `.mlenv/`, or for a version loaded by reference
        the user data directory, shared by every project and command that asks for the same digest."""
        if self.is_registered:
            from hatch_mlenv.paths import data_dir

            return data_dir()
        return self.spec.project_dir / ".mlenv"

    @property
    def default_prefix(self) -> Path:
        """`<project>/.mlenv/envs/NAME`; for a version loaded by reference, `<data>/envs/NAME-DIGEST12`."""
        if self.is_registered:
            return self.state_dir / "envs" / f"{self.name}-{self.digest[:TAG_LENGTH]}"
        return self.state_dir / "envs" / self.name

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def variables(self) -> dict[str, str | None]:
        """The environment variables it sets; a secret's value is None (it comes from the caller)."""
        return self.lock.variables

    def install(self, prefix: Path | str | None = None, *, force: bool = False) -> Path:
        """Install (or find up to date) this environment for this machine; returns the prefix
        (default `default_prefix`). Never solves."""
        from hatch_mlenv.install import (
            install_environment,  # lazy: install imports rattler (~0.12 s); most commands never install
        )

        return install_environment(self, Path(prefix) if prefix is not None else None, force=force).prefix

    def activated(self, prefix: Path | str | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
        """The process environment to run in the installed prefix: `base` (default `os.environ`)
        with conda's activation of the prefix and this environment's variables."""
        from hatch_mlenv.install.activation import activation  # lazy: as above

        variables, _missing = activation(self, Path(prefix) if prefix is not None else self.default_prefix,
                                         dict(os.environ if base is None else base))
        return variables

    @cached_property
    def definition(self) -> dict[str, Any] | None:
        """The `[tool.mlenv]` definition (`Spec.definition`): the project's, or the one stored with a
        registered version; None for a bare lockfile or a version registered without one."""
        if self.stored_manifest is not None:
            return self.stored_manifest.get("definition")
        return None if self.is_registered else self.spec.definition()

    @cached_property
    def digest(self) -> str:
        return self.lock.digest()

    @cached_property
    def image(self) -> str:
        return image_reference(self.digest, self.spec)

    @cached_property
    def sbom(self) -> dict[str, Any]:
        """The CycloneDX SBOM of the lock (`hatch_mlenv.sbom`): for `mlenv sbom` and a pushed image's referrers."""
        return cyclonedx(self)

    def manifest(self) -> dict[str, Any]:
        """The manifest (`mlenv.json`) shipped in wheels and written next to dist files (a copy);
        for a registered version, the one stored with it."""
        return copy.deepcopy(self.stored_manifest if self.stored_manifest is not None else self._manifest)

    @cached_property
    def _manifest(self) -> dict[str, Any]:

        spec = self.spec
        commit, dirty = git_state(spec.project_dir)
        manifest = lock_manifest(
            self.name,
            self.lock,
            image=self.image,
            lockfile=spec.lockfile.name,
            project={"name": spec.project_name, "version": spec.project_version},
        )
        manifest["definition"] = self.definition
        # Which lock, which commit: enough for a model artifact to name the environment it was made in.
        # A lockfile loaded by reference: the text it was read from (its directory under `versions/`
        # is written only when a stage needs it).
        lock_bytes = self.pending[0].encode("utf-8") if self.pending is not None else spec.lockfile.read_bytes()
        manifest["provenance"] = {
            "lockfile_sha256": hashlib.sha256(lock_bytes).hexdigest(),
            "git_commit": commit,
            "git_dirty": dirty,
        }
        return manifest


def _from_registry(text: str, ref: Any, url: str | None) -> Environment:
    """A registered version, checked against its digest, as a self-contained project in the user
    data directory (`versions/NAME-DIGEST12/`: its definition as pyproject.toml, its lock)."""
    url = select_url(ref.registry or url, configured_registry())  # a reference naming its registry wins
    if url == "local" or url.startswith("sqlite://"):  # reading creates no database where there is none
        from hatch_mlenv.errors import NotFoundError
        from hatch_mlenv.registry.local import database_path

        if not database_path(url).exists():
            raise NotFoundError(f"{text}: no environment named {ref.name!r} in {url} "
                                f"({database_path(url)} does not exist: nothing is registered there)")
    registry = open_registry(url)
    try:
        stored = registry.get(ref)  # verified: entry hash and the lock's own digest
    except RegistryError as exc:  # name the reference and the registry on the first line
        message = str(exc) if registry.url in str(exc) else f"{exc} (in {registry.url})"
        raise type(exc)(f"{text}: {message}") from None
    if stored.archived:
        if ref.version is None:
            raise RegistryError(f"{text} points at {stored.ref}, which is archived, in {registry.url}; "
                                f"use {stored.ref} to use it anyway, or `mlenv restore {stored.ref}`")
        from hatch_mlenv.progress import note

        note(f"{stored.ref} is archived in {registry.url}; using it as asked")
    return from_version(stored, registry.url, text)


def from_version(stored: Any, registry: str, reference: str | None = None) -> Environment:
    """A `registry.Version` already read (and verified) from `registry` as an Environment, written
    nowhere until a stage needs its files: for a reader that keeps its registry open (`mlenv serve`)."""
    lock = parse_lock(stored.lockfile, f"{stored.ref} in {registry}")
    manifest = stored.manifest_with_version()
    definition = manifest.get("definition") or _definition_from_lock(stored.name, lock)
    return _registered(stored.name, stored.lockfile, lock, definition, manifest.get("project") or {},
                       version=stored.version, registry=registry, reference=reference or stored.ref,
                       stored_manifest=manifest)


def _from_lockfile(path: Path) -> Environment:
    """Any conda-lock.yml (one conda-lock wrote, one `mlenv get` wrote) as an environment."""
    text = read_lock_text(path)
    lock = parse_lock(text, path)
    name = lockfile_name(lock, path)
    return _registered(name, text, lock, _definition_from_lock(name, lock), {}, reference=str(path))


def _registered(name: str, lock_text: str, lock: Lock, definition: dict[str, Any], project: dict[str, Any],
                **origin: Any) -> Environment:
    """A version as a self-contained project, `versions/NAME-DIGEST12/` in the user data directory:
    its definition as pyproject.toml and its lock. The spec is read from memory; the files are
    written only when a stage needs them (`Environment.files`), so reading commands write nothing."""
    # Whoever registered it may not be whoever builds it: its definition gets every check of a spec,
    # and what its lock carries into images and processes the checks of the keys it came from.
    # Errors name the version, not the directory it would be written to.
    source = _origin(origin["reference"], origin.get("registry"))
    if not isinstance(definition, dict) or not isinstance(project, dict):
        raise ConfigError(source, "tool.mlenv", "the stored definition is not a table")
    directory = data_dir() / "versions" / f"{name}-{lock.digest()[:TAG_LENGTH]}"
    document = {"project": {"name": project.get("name") or name}, "tool": {"mlenv": Spec.ordered(definition)}}
    if project.get("version"):
        document["project"]["version"] = project["version"]
    try:
        spec = parse_spec(document, directory / PYPROJECT)
        try:
            variables = lock.variables
        except ValueError:
            raise ConfigError(source, "tool.mlenv.variables", "the lock's variables are not readable JSON") from None
        check_locked_values(source, spec.project_dir, lock.base_image, variables)
    except ConfigError as exc:
        raise ConfigError(source, exc.key, exc.message) from None
    return Environment(spec, lock, pending=(lock_text, document), **origin)


def _origin(reference: str, registry: str | None) -> str:
    return f"{reference} in {registry}" if registry else reference


def _bare_name(text: str) -> bool:
    """`fraud-train`: what could as well be a registered name as a directory."""
    return re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", text) is not None and text not in (".", "..")


def _definition_from_lock(name: str, lock: Lock) -> dict[str, Any]:
    """What a lock alone says of its definition (versions registered without one)."""
    table: dict[str, Any] = {"name": name, "channels": list(lock.channels) or ["conda-forge"],
                             "platforms": sorted(lock.platforms)}
    try:
        variables = lock.variables
    except ValueError:  # unreadable: `_registered` says so
        variables = {}
    if variables and isinstance(variables, dict):
        table["variables"] = {k: {"secret": True} if v is None else v for k, v in variables.items()}
    if lock.base_image:
        table["docker"] = {"base-image": lock.base_image}
    return table


def _write_version(directory: Path, lock_text: str, document: dict[str, Any]) -> None:
    """Write `directory`'s pyproject.toml and conda-lock.yml when they differ from what is asked
    (`.source` holds the hash of both, so that the up-to-date case renders no TOML)."""

    asked = hashlib.sha256(json.dumps([lock_text, document], sort_keys=True).encode()).hexdigest()

    def written() -> str:  # what is on disk now, whoever wrote it
        return hashlib.sha256((directory / "conda-lock.yml").read_bytes() + b"\0"
                              + (directory / "pyproject.toml").read_bytes()).hexdigest()

    try:
        if (directory / ".source").read_text() == f"{asked} {written()}":
            return
    except OSError:
        pass
    import tomlkit

    atomic_write(directory / "conda-lock.yml", lock_text)
    atomic_write(directory / "pyproject.toml", tomlkit.dumps(document))
    atomic_write(directory / ".source", f"{asked} {written()}")


def registered_option(option: str | None, project_dir: Path) -> Environment | None:
    """The registered version an option names (see `reference.option_reference`), from
    `$MLENV_REGISTRY`, else the registry of the project in `project_dir`, else local; None
    when the option names no registered version."""
    ref = option_reference(option)
    if ref is None:
        return None
    return Environment.load(str(ref), registry=select_url(None, configured_registry(project_dir)))


def configured_registry(directory: Path = Path(".")) -> str | None:
    """`registry = ...` of the project in `directory` (default: the current one), if there is one:
    cheap, and silent when there is none or it does not parse (the reference is not about that project)."""
    try:
        document = tomllib.loads((directory / "pyproject.toml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    value = document.get("tool", {}).get("mlenv", {}).get("registry")
    return value if isinstance(value, str) else None
