"""The Ray stage: a registered environment as a runtime_env field, `{"mlenv": REF}`.

Enabled on a cluster as Ray documents for plugins, in the environment of
`ray start` (or of `ray.init` for a local cluster):

    RAY_RUNTIME_ENV_PLUGINS='[{"class": "hatch_mlenv.ray.MlenvPlugin"}]'

REF is `NAME`, `NAME:VERSION`, `NAME@LABEL`, or a table
`{"ref": ..., "registry": "oci://..." | "sqlite:///...", "digest": "sha256:..."}`;
without `registry` a node reads `MLENV_REGISTRY`, as the CLI does. `runtime_env(REF)`
(and `mlenv ray-env REF`) resolve REF where the job is written and pin it
(`NAME:VERSION` and the digest), so every node of the job runs the same bytes;
`pin_runtime_env` does that for `ray.init(runtime_env=...)` as Ray's
`RAY_RUNTIME_ENV_HOOK`.

On each node Ray's runtime-env agent runs the plugin: `validate` resolves the field
to a version and its lock digest (once per node: the answer is kept until Ray
deletes that environment, so the URIs Ray counts stay the same) and checks that
this node can run Ray work in it; `create` installs the lock with hatch-mlenv's own
install (hash-checked, no solve) into `<MLENV_RAY_DIR>/<digest12>` once per node
(a file lock makes concurrent starts wait for the first); the digest is the URI of
Ray's cache, whose GC calls `delete_uri`; `modify_context` starts the worker with
the environment's python, activated as `mlenv run` activates it.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import platform as platforms
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

from hatch_mlenv._compat import ray_plugin_base
from hatch_mlenv.environment import Environment, configured_registry
from hatch_mlenv.errors import MlenvError, RuntimeEnvError
from hatch_mlenv.hashes import TAG_LENGTH
from hatch_mlenv.install import install_environment
from hatch_mlenv.install.activation import activation
from hatch_mlenv.platforms import current_platform
from hatch_mlenv.reference import parse_reference
from hatch_mlenv.registry import select_url
from hatch_mlenv.system import BYPASS_VARIABLE, ignored_by_environment, require_host

FIELD = "mlenv"
URI_SCHEME = "mlenv://"
ROOT_VARIABLE = "MLENV_RAY_DIR"  # where a node installs environments: default <user data dir>/ray
# runtime_env fields that choose the worker's python themselves: one python per worker
EXCLUSIVE = ("pip", "uv", "conda", "py_executable", "image_uri", "container")
_KEYS = ("ref", "registry", "digest")


@dataclass(frozen=True)
class Request:
    """What `runtime_env["mlenv"]` asks for."""

    ref: str  # NAME, NAME:VERSION or NAME@LABEL
    registry: str | None = None  # None: the node's MLENV_REGISTRY, else its local registry
    digest: str | None = None  # the lock digest (hex) it was pinned to, if it was

    def shown(self) -> str:
        return f"{self.ref} in {self.registry}" if self.registry else self.ref

    def as_field(self) -> dict[str, str]:
        field = {"ref": self.ref}
        if self.registry:
            field["registry"] = self.registry
        if self.digest:
            field["digest"] = f"sha256:{self.digest}"
        return field


def parse_field(value: Any) -> Request:
    """`runtime_env["mlenv"]` as a Request; a malformed one is a RuntimeEnvError naming what is wrong."""
    if isinstance(value, str):
        table: dict[str, Any] = {"ref": value}
    elif isinstance(value, dict):
        table = value
    else:
        raise RuntimeEnvError(f"runtime_env['{FIELD}'] must be a reference (NAME, NAME:VERSION, NAME@LABEL) or a "
                              f"table with 'ref', not {type(value).__name__}")
    unknown = sorted(set(table) - set(_KEYS))
    if unknown:
        raise RuntimeEnvError(f"runtime_env['{FIELD}']: unknown key {unknown[0]!r} (use {', '.join(_KEYS)}); "
                              "variables come from the lock, secrets from each node's own environment")
    ref, registry, digest = table.get("ref"), table.get("registry"), table.get("digest")
    if not isinstance(ref, str):
        raise RuntimeEnvError(f"runtime_env['{FIELD}'] needs 'ref': NAME, NAME:VERSION or NAME@LABEL")
    try:
        parse_reference(ref)
    except MlenvError as exc:
        raise RuntimeEnvError(f"runtime_env['{FIELD}']: {exc}") from None
    if registry is not None and (not isinstance(registry, str) or not registry):
        raise RuntimeEnvError(f"runtime_env['{FIELD}']['registry'] must be a registry URL (oci://HOST/NAMESPACE, "
                              "sqlite:///PATH)")
    if digest is not None:
        hexdigest = digest.removeprefix("sha256:") if isinstance(digest, str) else ""
        if len(hexdigest) != 64 or any(c not in "0123456789abcdef" for c in hexdigest):
            raise RuntimeEnvError(f"runtime_env['{FIELD}']['digest'] must be sha256:<64 hex digits>, not {digest!r}")
        digest = hexdigest
    return Request(ref, registry, digest)


# --- where the job is written ---------------------------------------------------------------

def runtime_env(reference: str, registry: str | None = None) -> dict[str, Any]:
    """The runtime_env field that runs Ray work in a registered version, resolved here and pinned:
    `{"mlenv": {"ref": "NAME:VERSION", "digest": "sha256:...", "registry": URL}}`. A label is read
    once, now, so every node of the job runs the same bytes even if it moves. The registry is
    written unless it is this machine's `local` one (nodes then read their own MLENV_REGISTRY;
    the digest makes a node refuse a registry whose version differs)."""
    return {FIELD: _pin(parse_field(reference if registry is None else {"ref": reference, "registry": registry}))
            .as_field()}


def pin_runtime_env(runtime_env: dict[str, Any] | None) -> dict[str, Any] | None:
    """Ray's `RAY_RUNTIME_ENV_HOOK` (`hatch_mlenv.ray.pin_runtime_env`): `ray.init`'s runtime_env with
    its `mlenv` field pinned on the driver, as `runtime_env()` pins it."""
    if not runtime_env or runtime_env.get(FIELD) is None:
        return runtime_env
    request = parse_field(runtime_env[FIELD])
    if request.digest is not None:
        return runtime_env
    return {**runtime_env, FIELD: _pin(request).as_field()}


def _pin(request: Request) -> Request:
    """Where the job is written: the registry as the CLI chooses it (the current project's too)."""
    url = select_url(request.registry, configured_registry())
    env = Environment.load(request.ref, registry=url)
    return Request(f"{env.name}:{env.version}", None if url == "local" else url, env.digest)


def _load(request: Request) -> Any:
    """On a node: the field's registry, else the node's MLENV_REGISTRY, else its local one."""
    return Environment.load(request.ref, registry=select_url(request.registry))


# --- on the node: checks --------------------------------------------------------------------

def check_node(env: Any, request: Request) -> None:
    """Refuse, naming the reference, an environment whose python or ray cannot run this cluster's
    workers, or whose system requirements this node does not meet."""

    named = f"environment {env.name}:{env.version}" if env.version is not None else f"environment {env.name}"
    platform = current_platform()
    packages = env.lock.for_platform(platform)
    if not packages:
        raise RuntimeEnvError(f"{request.shown()}: {named} locks nothing for {platform}, this node's platform")
    python = next((p for p in packages if p.manager == "conda" and p.name == "python"), None)
    if python is None:
        raise RuntimeEnvError(f"{request.shown()}: {named} locks no python; Ray's workers run the environment's "
                              f"own python (add python = \"{sys.version_info[0]}.{sys.version_info[1]}\" to it)")
    if python.version.split(".")[:2] != platforms.python_version().split(".")[:2]:
        raise RuntimeEnvError(f"{request.shown()}: {named} locks python {python.version}; this cluster runs python "
                              f"{platforms.python_version()}, and Ray's workers must run the cluster's Python version")
    cluster = cluster_ray_version()
    locked = [p for p in packages if (p.manager, p.name) in (("pip", "ray"), ("conda", "ray-core"), ("conda", "ray"))]
    if not locked:
        raise RuntimeEnvError(f"{request.shown()}: {named} locks no ray; Ray's workers import ray from the "
                              f"environment: add ray=={cluster} to its pip packages")
    if not _same_version(locked[0].version, cluster):
        raise RuntimeEnvError(f"{request.shown()}: {named} locks ray {locked[0].version}; this cluster runs "
                              f"{cluster}")
    try:
        for line in require_host(env, platform, ignore=ignored_by_environment(), bypass=f"{BYPASS_VARIABLE}=1"):
            logging.getLogger(__name__).warning("ignoring system requirements: %s", line)
    except MlenvError as exc:
        raise RuntimeEnvError(f"{request.shown()}: {exc}") from None


def cluster_ray_version() -> str:
    import ray  # lazy: ray is optional; `mlenv ray-env` pins a reference on a machine without it

    return ray.__version__


def _same_version(a: str, b: str) -> bool:
    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return a == b


# --- on the node: where environments live -----------------------------------------------------

def install_root() -> Path:
    """`$MLENV_RAY_DIR`, else `<user data dir>/ray`: one per node (Ray's GC deletes from it)."""
    configured = os.environ.get(ROOT_VARIABLE)
    if configured:
        return Path(configured)
    from hatch_mlenv.paths import data_dir

    return data_dir() / "ray"


def prefix_of(digest: str) -> Path:
    return install_root() / digest[:TAG_LENGTH]


def uri_of(digest: str) -> str:
    return f"{URI_SCHEME}{digest}"


def _digest_of(uri: str) -> str:
    return uri.removeprefix(URI_SCHEME)


class _DigestLock:
    """An exclusive lock on one digest's directory, across processes (two nodes' agents on one
    machine, a `mlenv` command) and threads."""

    def __init__(self, digest: str) -> None:
        self.path = install_root() / f".{digest[:TAG_LENGTH]}.lock"

    def __enter__(self) -> _DigestLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "a")  # noqa: SIM115 - held until __exit__
        fcntl.flock(self.handle, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.close()  # releases the lock


def _size(root: Path) -> int:
    total = 0
    pending = [str(root)]
    while pending:
        try:
            entries = list(os.scandir(pending.pop()))
        except OSError:
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                pending.append(entry.path)
            else:
                try:
                    total += entry.stat(follow_symlinks=False).st_size
                except OSError:
                    pass
    return total


def worker_variables(env: Any, prefix: Path, base: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """What a worker's environment gets on top of the node's (`base`): conda's activation of the
    prefix and the lock's variables, as `mlenv run` sets them, as Ray's `env_vars` (PATH is the
    prefix's new entries before `${PATH}`, which Ray expands in the worker); and the secrets the node
    lacks. Secrets are never among them: a worker inherits them from the node's environment."""
    variables, missing = activation(env, prefix, dict(base))
    secrets = {name for name, value in env.lock.variables.items() if value is None}
    changed = {name: value for name, value in variables.items()
               if base.get(name) != value and name not in secrets and name != "PATH"}
    known = set(base.get("PATH", "").split(os.pathsep))
    added = [entry for entry in variables.get("PATH", "").split(os.pathsep) if entry and entry not in known]
    changed["PATH"] = os.pathsep.join([*added, "${PATH}"])
    return changed, missing


@dataclass
class _Resolved:
    env: Any
    digest: str


class MlenvPlugin(ray_plugin_base()):  # type: ignore[misc]  # Ray's RuntimeEnvPlugin (see _compat)
    """The `mlenv` runtime_env field (see the module docstring). Ray's agent makes one per node."""

    name = FIELD

    def __init__(self) -> None:
        self._resolved: dict[Request, _Resolved] = {}
        self._variables: dict[str, dict[str, str]] = {}
        self._guard = threading.Lock()

    # Ray calls validate(runtime_env) on the instance before each setup of a runtime_env.
    def validate(self, runtime_env: Any) -> None:  # type: ignore[override]
        value = runtime_env.get(FIELD)
        if value is None:
            return
        request = parse_field(value)
        clashing = [key for key in EXCLUSIVE if runtime_env.get(key)]
        if clashing:
            raise RuntimeEnvError(f"{request.shown()}: runtime_env['{FIELD}'] is the whole Python environment; "
                                  f"it cannot be combined with {', '.join(repr(k) for k in clashing)}")
        self._resolve(request)

    def get_uris(self, runtime_env: Any) -> list[str]:
        value = runtime_env.get(FIELD)
        if value is None:
            return []
        try:  # Ray counts references with this outside any error handling: never raise here
            return [uri_of(self._resolve(parse_field(value)).digest)]
        except Exception:  # noqa: BLE001 - validate() raises the same error where Ray reports it
            return []

    async def create(self, uri: str | None, runtime_env: Any, context: Any, logger: Any) -> float:
        resolved = self._resolve(parse_field(runtime_env.get(FIELD)))
        return await asyncio.get_running_loop().run_in_executor(None, self._install, resolved, logger)

    def modify_context(self, uris: list[str], runtime_env: Any, context: Any, logger: Any) -> None:
        request = parse_field(runtime_env.get(FIELD))
        resolved = self._resolve(request)
        prefix = prefix_of(resolved.digest)
        variables = self._variables.get(resolved.digest)
        if variables is None:
            variables = self._activate(resolved, logger)
        asked = set(runtime_env.get("env_vars") or {})  # the runtime_env's own env_vars win
        context.env_vars.update({name: value for name, value in variables.items() if name not in asked})
        context.py_executable = str(prefix / "bin" / "python")
        logger.info("mlenv: %s (sha256:%s) runs workers with %s", request.shown(), resolved.digest[:12],
                    context.py_executable)

    def delete_uri(self, uri: str, logger: Any) -> float:
        digest = _digest_of(uri)
        prefix = prefix_of(digest)
        with _DigestLock(digest):
            size = _size(prefix)
            shutil.rmtree(prefix, ignore_errors=True)
        with self._guard:  # a later use resolves its reference again
            for request in [r for r, found in self._resolved.items() if found.digest == digest]:
                del self._resolved[request]
            self._variables.pop(digest, None)
        logger.info("mlenv: deleted %s (%d bytes)", prefix, size)
        return float(size)

    # -- the work ----------------------------------------------------------------------------

    def _resolve(self, request: Request) -> _Resolved:
        """The version and digest a request names on this node: looked up once, then kept."""
        with self._guard:
            found = self._resolved.get(request)
        if found is not None:
            return found
        try:
            env = _load(request)
        except MlenvError as exc:
            message = str(exc)
            raise RuntimeEnvError(message if request.ref in message else f"{request.shown()}: {message}") from None
        if request.digest is not None and env.digest != request.digest:
            raise RuntimeEnvError(
                f"{request.shown()}: the registry has sha256:{env.digest[:12]} for {env.name}:{env.version}, and "
                f"the runtime_env was pinned to sha256:{request.digest[:12]}; this node reads another registry "
                f"(set MLENV_REGISTRY on the node, or 'registry' in the field)")
        check_node(env, request)
        with self._guard:
            return self._resolved.setdefault(request, _Resolved(env, env.digest))

    def _install(self, resolved: _Resolved, logger: Any) -> float:
        """Install once per node; later and concurrent calls find it installed (a no-op)."""

        env, prefix = resolved.env, prefix_of(resolved.digest)
        started = time.monotonic()
        with _DigestLock(resolved.digest):
            result = install_environment(env, prefix)
        shown = f"{env.name}:{env.version} (sha256:{resolved.digest[:12]})"
        if result.status == "unchanged":
            logger.info("mlenv: reused %s in %s", shown, prefix)
        else:
            logger.info("mlenv: %s %s into %s in %.2f s", result.status, shown, prefix, time.monotonic() - started)
        self._activate(resolved, logger)
        return float(_size(prefix))

    def _activate(self, resolved: _Resolved, logger: Any) -> dict[str, str]:
        variables, missing = worker_variables(resolved.env, prefix_of(resolved.digest), dict(os.environ))
        for name in missing:
            logger.warning("mlenv: secret variable %s of %s is not set in this node's environment", name,
                           resolved.env.name)
        with self._guard:
            self._variables[resolved.digest] = variables
        return variables


def field_json(reference: str, registry: str | None = None) -> str:
    """`mlenv ray-env`: the runtime_env JSON for `--runtime-env-json`."""
    return json.dumps(runtime_env(reference, registry), sort_keys=True)
