"""What each patch in `hatch_mlenv._compat` relies on upstream, checked against the installed versions.

A failure here means a dependency upgrade changed that behaviour: re-check the
patch named in the message (and update `_compat.CHECKED`), do not just relax the test.
"""

from __future__ import annotations

import ast
import http.server
import importlib.util
import json
import subprocess
import sys
import threading
from importlib import metadata
from pathlib import Path

import oras.provider
import pytest

from hatch_mlenv import _compat

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _python(code: str) -> str:
    """Run `code` in a fresh interpreter (nothing imported yet) and return its stdout."""
    result = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


# -- conda-lock: import_conda_lock_models ---------------------------------------------
def test_conda_lock_init_still_imports_its_cli() -> None:
    init = Path(importlib.util.find_spec("conda_lock").origin)
    imported = {node.module for node in ast.walk(ast.parse(init.read_text())) if isinstance(node, ast.ImportFrom)}
    assert "conda_lock.conda_lock" in imported, (
        f"conda-lock {metadata.version('conda-lock')}: conda_lock/__init__.py no longer imports its CLI; "
        "_compat.import_conda_lock_models (checked against conda-lock "
        f"{_compat.CHECKED['conda-lock']}) may no longer be worth it: plain `import conda_lock.lockfile`"
    )


def test_conda_lock_lockfile_init_still_imports_what_the_models_do_not_need() -> None:
    init = Path(importlib.util.find_spec("conda_lock.lockfile").origin)
    imported = {node.module for node in ast.walk(ast.parse(init.read_text())) if isinstance(node, ast.ImportFrom)}
    assert {"conda_lock.lookup", "conda_lock.models.lock_spec"} <= imported, (
        f"conda-lock {metadata.version('conda-lock')}: conda_lock/lockfile/__init__.py no longer imports its "
        "PyPI lookup and lock specs; _compat.import_conda_lock_models (checked against conda-lock "
        f"{_compat.CHECKED['conda-lock']}) may not need to skip it"
    )


def test_conda_lock_models_import_without_the_cli() -> None:
    shown = _python(
        "import sys, json\n"
        "from hatch_mlenv._compat import import_conda_lock_models\n"
        "import_conda_lock_models()\n"
        "heavy = sorted(m for m in sys.modules if m in ('conda_lock.conda_lock', 'conda_lock.lookup', "
        "'conda_lock.models.lock_spec', 'requests', 'setuptools', 'distutils') or 'poetry' in m)\n"
        "from conda_lock.lockfile.v2prelim.models import HashModel, LockedDependency, Lockfile, LockMeta\n"
        # the packages' own __init__ runs on first use of a name it defines
        "from conda_lock.lockfile import write_conda_lock_file, parse_conda_lock_file\n"
        "import conda_lock\n"
        "print(json.dumps([heavy, callable(conda_lock.main), 'conda_lock.conda_lock' in sys.modules]))\n"
    )
    heavy, has_main, cli_loaded = json.loads(shown)
    assert heavy == [], (
        "conda-lock's lockfile models now pull in its CLI, PyPI lookup or vendored conda: "
        f"_compat.import_conda_lock_models no longer saves that ({heavy})"
    )
    assert has_main and cli_loaded


def test_the_solve_imports_nothing_after_the_solve_imports(channel: Path) -> None:
    shown = _python(
        "import importlib, json, sys\n"
        "from hatch_mlenv import _compat\n"
        "from hatch_mlenv.solve import RattlerSolver, SolveRequest\n"
        "from hatch_mlenv.spec import default_virtual_packages\n"
        "for name in _compat.SOLVE_IMPORTS:\n"
        "    importlib.import_module(name)\n"
        "before = set(sys.modules)\n"
        f"request = SolveRequest(channels=({channel.as_uri()!r},), specs=('python 3.11.*', 'numpy'),\n"
        "                       platforms=('linux-64',), virtual_packages={'linux-64': default_virtual_packages('linux-64')})\n"
        "assert RattlerSolver().solve(request)['linux-64']\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))\n"
    )
    assert json.loads(shown) == [], (
        f"py-rattler {metadata.version('py-rattler')}: the solve imported modules missing from "
        "_compat.SOLVE_IMPORTS; importing them while the preload thread imports conda-lock can deadlock"
    )


# -- py-rattler: settle_rattler_at_exit ------------------------------------------------
def test_rattler_exit_pause_was_measured_on_this_py_rattler() -> None:
    installed = metadata.version("py-rattler")
    checked = _compat.CHECKED["py-rattler"]
    assert installed.split(".")[:2] == checked.split(".")[:2], (
        f"py-rattler {installed}: _compat.settle_rattler_at_exit was measured on {checked} (up to 17% "
        "crashes at exit without it); re-measure on this version and update _compat.CHECKED"
    )


# -- oras: oras_request_once, oras_has_credentials --------------------------------------
class _Failing(http.server.BaseHTTPRequestHandler):
    calls = 0

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        type(self).calls += 1
        self.send_response(500)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_oras_do_request_keeps_the_undecorated_method() -> None:
    wrapped = getattr(oras.provider.Registry.do_request, "__wrapped__", None)
    assert wrapped is not None, (
        f"oras {metadata.version('oras')}: Registry.do_request has no __wrapped__ (no retry decorator, or one "
        "without functools.wraps): check _compat.oras_request_once"
    )
    import inspect

    parameters = list(inspect.signature(wrapped).parameters)
    assert parameters[:5] == ["self", "url", "method", "data", "headers"], parameters


def test_oras_request_once_asks_once_where_oras_retries() -> None:
    _Failing.calls = 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        host = f"127.0.0.1:{server.server_address[1]}"
        client = oras.provider.Registry(hostname=host, insecure=True, auth_backend="basic")
        response = _compat.oras_request_once(client, f"http://{host}/v2/", "GET")
    finally:
        server.shutdown()
        server.server_close()
    assert response.status_code == 500 and _Failing.calls == 1, (
        f"oras {metadata.version('oras')}: the undecorated do_request no longer answers with one request"
    )


@pytest.mark.parametrize("backend", ["basic", "token"])
def test_oras_keeps_credentials_in_basic_auth(backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORAS_USER", raising=False)
    monkeypatch.delenv("ORAS_PASS", raising=False)
    host = "127.0.0.1:5999"

    def client():  # noqa: ANN202
        return oras.provider.Registry(hostname=host, insecure=True, auth_backend=backend)

    anonymous = client()
    assert not _compat.oras_has_credentials(anonymous)
    given = client()
    given.auth.set_basic_auth("user", "secret")
    from_config = client()
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"auths": {host: {"auth": "dXNlcjpzZWNyZXQ="}}}))  # user:secret
    from_config.auth.load_configs(from_config.get_container(f"{host}/ns/x"), configs=[str(config)])
    assert _compat.oras_has_credentials(given) and _compat.oras_has_credentials(from_config), (
        f"oras {metadata.version('oras')}: the {backend} auth backend no longer keeps credentials in "
        "`_basic_auth`: fix _compat.oras_has_credentials"
    )


# -- py-rattler: archspec_lineage ------------------------------------------------------
def test_detected_archspec_still_shows_its_ancestors(monkeypatch: pytest.MonkeyPatch) -> None:
    from rattler import VirtualPackage, VirtualPackageOverrides

    monkeypatch.setenv("CONDA_OVERRIDE_ARCHSPEC", "x86_64_v3")
    detected = {p.into_generic().name.normalized: p for p in VirtualPackage.detect(VirtualPackageOverrides.from_env())}
    assert _compat.archspec_lineage(detected["__archspec"]) == ("x86_64_v3", "x86_64_v2", "x86_64"), (
        f"py-rattler {metadata.version('py-rattler')}: a detected __archspec no longer lists its ancestors in str(); "
        "re-check _compat.archspec_lineage"
    )
