"""Every place hatch-mlenv relies on another library's internals, in one file.

Each patch names the upstream version it was checked against and why it
exists; tests/test_compat.py fails when upstream changes what it relies on,
so an upgrade shows up as a failing test, not as a hang or a crash.
"""

from __future__ import annotations

import functools
import sys
import threading
from typing import Any

# -- Python 3.10: the standard library's TOML reader is tomli before 3.11 ------------
if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = ["tomllib"]

# The versions each patch below was checked against.
CHECKED = {"conda-lock": "2.5.8", "oras": "0.2.43", "py-rattler": "0.28.0", "ray": "2.60.0"}


# -- conda-lock 2.5.8: its lockfile models without its CLI ---------------------------
def import_conda_lock_models() -> None:
    """Import conda-lock's lockfile models (`conda_lock.lockfile.v2prelim.models`), and
    only them: ~0.15 s instead of ~0.45 s.

    `conda_lock/__init__.py` imports conda-lock's whole CLI (its solver, vendored
    conda and poetry) only to re-export `main`, and `conda_lock/lockfile/__init__.py`
    imports its PyPI name lookup (requests) and lock specs (vendored conda, which
    pulls in setuptools): neither is needed to build the models. When nothing has
    imported them yet, both packages are registered without running their
    `__init__`; the first use of a name defined there (`conda_lock.main`,
    `conda_lock.lockfile.write_conda_lock_file`, ...) runs it then, so every name
    still resolves.
    """
    import sys

    for name in ("conda_lock", "conda_lock.lockfile"):
        if name not in sys.modules:
            _register_lazy_package(name)
    import conda_lock.lockfile.v2prelim.models  # noqa: F401


def _register_lazy_package(name: str) -> None:
    import importlib.util
    import sys
    import types

    try:
        found = importlib.util.find_spec(name)
    except ModuleNotFoundError:
        return  # the real import, later, reports it
    if found is None or not found.submodule_search_locations or found.loader is None:
        return
    package = types.ModuleType(name)
    package.__path__ = list(found.submodule_search_locations)
    package.__file__ = found.origin
    package.__spec__ = found
    package.__loader__ = found.loader

    def run_init(attribute: str) -> Any:
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        del package.__getattr__  # type: ignore[attr-defined]
        found.loader.exec_module(package)  # the package's own __init__, in this module
        return getattr(package, attribute)

    package.__getattr__ = run_init  # type: ignore[attr-defined]  # PEP 562
    sys.modules[name] = package


# -- conda-lock 2.5.8 + py-rattler 0.28: importing while rattler solves --------------
# What the solving thread imports. Imported on the calling thread before the
# preload starts, so that the solve imports nothing while the preload does.
SOLVE_IMPORTS = ("asyncio", "atexit", "rattler", "rattler.exceptions", "rattler.networking")


def preload_conda_lock_models() -> threading.Thread:
    """Import conda-lock's models in a thread while rattler solves (outside the GIL).

    Two threads importing at once can deadlock on module locks: conda-lock's
    full import installed six's `_SixMetaPathImporter` (urllib3's and vendored
    conda's), which defeats CPython's import deadlock detection; seen here as a
    hang, one run in ~30. The models alone no longer install it, but the solve
    still imports nothing while the preload does: everything the solving thread
    imports is imported first (SOLVE_IMPORTS).
    """
    import importlib

    for name in SOLVE_IMPORTS:
        importlib.import_module(name)
    importlib.import_module("hatch_mlenv.progress").prepare()  # the solve's spinner, on a terminal

    def load() -> None:
        try:
            import_conda_lock_models()
        except Exception:  # the real import, later, reports any problem
            pass

    thread = threading.Thread(target=load, name="mlenv-preload", daemon=True)
    thread.start()
    return thread


# -- py-rattler 0.28: its runtime threads at interpreter exit -------------------------
@functools.lru_cache(maxsize=None)
def settle_rattler_at_exit() -> None:
    """Pause briefly at exit once rattler has solved, indexed or installed.

    py-rattler's runtime threads can still hold the GIL machinery when the
    interpreter finalizes, which aborts the process (SIGSEGV or "Fatal Python
    error: PyGILState_Release") after a failed solve, an install (~17% of runs)
    or `index_fs` (~2%). A short pause at exit, before finalization, lets them
    finish: 0 crashes in 200 runs each (py-rattler 0.28.0).
    """
    import atexit
    import time

    atexit.register(time.sleep, 0.02)


# -- oras 0.2.43: one request, no retries; whether credentials were found; no netrc ---
def oras_request_once(client: Any, url: str, method: str, *, data: Any = None, headers: dict | None = None) -> Any:
    """`oras.provider.Registry.do_request` without its `@decorator.retry()`.

    oras retries every failure five times with pauses growing to 81 s, which
    turns "registry down" into minutes; the undecorated method (kept by
    `functools.wraps` as `__wrapped__`) still does oras' auth handshake.
    """
    import oras.provider

    do_request = oras.provider.Registry.do_request.__wrapped__
    return do_request(client, url, method, data=data, headers=dict(headers or {}))


def oras_has_credentials(client: Any) -> bool:
    """Whether the client's auth backend holds a username and password.

    oras has no public accessor: both its `basic` and `token` backends keep the
    credentials from `set_basic_auth` or the Docker config in `_basic_auth`
    (the token backend only once one was set).
    """
    return bool(getattr(client.auth, "_basic_auth", None))


def oras_without_netrc(client: Any) -> None:
    """Stop requests from putting a netrc entry over the credentials oras sends.

    oras sends its `Authorization` header itself; requests (2.x), whose session
    oras keeps in `Registry.session` and shares with its auth backend, then
    applies the request host's netrc entry when neither the request nor the
    session has an `auth`, replacing that header: a `~/.netrc` entry for the
    registry's host beat MLENV_REGISTRY_USERNAME/PASSWORD. A session `auth`
    that adds nothing keeps the header oras chose.
    """
    client.session.auth = _headers_as_given


def _headers_as_given(request: Any) -> Any:
    return request


# -- py-rattler 0.28: a detected microarchitecture's ancestors ------------------------
def archspec_lineage(virtual_package: Any) -> tuple[str, ...]:
    """The detected `__archspec` and the levels it includes (icelake -> ..., x86_64_v4, ..., x86_64).

    py-rattler 0.28 exposes a detected microarchitecture's ancestors only in the
    virtual package's `str()` (`Archspec(Microarchitecture(... ancestors: [...]`);
    without them only an exact name would meet a need such as x86_64_v3.
    """
    import re

    name = str(virtual_package.into_generic().build_string)
    found = re.search(r"ancestors: \[([^\]]*)\]", str(virtual_package))
    ancestors = re.findall(r'"([^"]+)"', found.group(1)) if found else []
    return (name, *ancestors)


# -- ray 2.60: the runtime-environment plugin base, a DeveloperAPI under ray._private -------
# What hatch_mlenv.ray relies on: Ray's agent (ray._private.runtime_env.plugin) loads the classes
# named in RAY_RUNTIME_ENV_PLUGINS, refuses one that does not subclass this base, and for a
# runtime_env holding the plugin's `name` calls `validate(runtime_env)`, `get_uris(runtime_env)`,
# `create(uri, runtime_env, context, logger)` (a coroutine, for a URI not in its cache) and
# `modify_context(uris, runtime_env, context, logger)`; its URI cache calls `delete_uri(uri, logger)`.
# The context's `py_executable`, `env_vars` and `command_prefix` start the worker.
RAY_PLUGIN_METHODS = ("validate", "get_uris", "create", "modify_context", "delete_uri")
RAY_CONTEXT_FIELDS = ("py_executable", "env_vars", "command_prefix")


def ray_plugin_base() -> type:
    """Ray's `RuntimeEnvPlugin`, or `object` where Ray is not installed (nothing can load the plugin
    there; `mlenv ray-env` and the rest of hatch_mlenv.ray still work). Any other failure to import
    it (Ray moved it) is raised: the plugin must not pretend to be one."""
    try:
        from ray._private.runtime_env.plugin import RuntimeEnvPlugin
    except ModuleNotFoundError as exc:
        if exc.name == "ray":
            return object
        raise
    return RuntimeEnvPlugin
