"""Credentials travel in memory only: no file a command leaves behind holds them.

A conda channel on 127.0.0.1 behind each credential style a user may give it
(`user:password@` literally or through `${VAR}`, a conda token path literally
or through `${VAR}`, `~/.netrc`, `RATTLER_AUTH_FILE`), and a pip index behind
basic auth. `mlenv lock`, `install`, `register` and `image build` run with
every user directory (cache, data, config, home, MLENV_HOME) under the test's
own tmp dir; then every file under them, binary or not, is searched for the
secrets as typed, URL-encoded and as the `Authorization` header carries them.

The OCI registry's own credentials: explicit `MLENV_REGISTRY_USERNAME`/
`MLENV_REGISTRY_PASSWORD` win over `~/.netrc`, and a refusal says which
source the refused credentials came from.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from urllib.parse import quote

import pytest

from fixtures.pip_index import Wheel, build_index, serve
from tests.conftest import assert_clean_error, mlenv, write_project

USER = "mlenv-bot"
# "+" is written as "%2B" once URL-encoded: both spellings are searched for.
PASSWORD = "Ch4nnel+s3cret"
TOKEN = "tk-9f8e7d6c5b4a"
INDEX_PASSWORD = "1ndex+s3cret"

STYLES = ["userinfo", "userinfo-variables", "token", "token-variable", "netrc", "rattler-auth-file"]


def _forms(secret: str, user: str | None = None) -> list[str]:
    forms = [secret, quote(secret, safe="")]
    if user is not None:
        forms += [base64.b64encode(f"{user}:{secret}".encode()).decode(), quote(f"{user}:{secret}", safe="")]
    return list(dict.fromkeys(forms))


SECRETS = [*_forms(PASSWORD, USER), TOKEN, *_forms(INDEX_PASSWORD, USER)]


@pytest.fixture
def homes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Every directory a command may write the user's state to, under tmp_path."""
    dirs = {name: tmp_path / name for name in ("cache", "data", "config", "home", "mlenv-home")}
    for path in dirs.values():
        path.mkdir()
    for variable, name in (("XDG_CACHE_HOME", "cache"), ("XDG_DATA_HOME", "data"), ("XDG_CONFIG_HOME", "config"),
                           ("HOME", "home"), ("MLENV_HOME", "mlenv-home")):
        monkeypatch.setenv(variable, str(dirs[name]))
    for variable in ("NETRC", "RATTLER_AUTH_FILE", "UV_CACHE_DIR", "DOCKER_CONFIG"):
        monkeypatch.delenv(variable, raising=False)
    return dirs


def _leaks(*roots: Path) -> list[str]:
    """`path: secret` for every file under `roots` holding a secret; the user's pyproject.toml is their input."""
    found = []
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.is_file() and not path.is_symlink() and path.name != "pyproject.toml":
                data = path.read_bytes()
                found += [f"{path}: {secret}" for secret in SECRETS if secret.encode() in data]
    return found


def _channel_project(tmp_path: Path, style: str, channel_url: str, index_url: str, extra: str = "",
                     name: str = "demo") -> Path:
    """The project for one credential style; netrc and auth files live in tmp_path/secrets (user input)."""
    base = channel_url.removesuffix("/simple/")
    secrets = tmp_path / "secrets"
    secrets.mkdir(exist_ok=True)
    if style == "userinfo":
        channel = base.replace("http://", f"http://{USER}:{PASSWORD}@")
    elif style == "userinfo-variables":
        channel = base.replace("http://", "http://${MLENV_TEST_USER}:${MLENV_TEST_SECRET}@")
    elif style == "token":
        channel = f"{base}/t/{TOKEN}"
    elif style == "token-variable":
        channel = base + "/t/${MLENV_TEST_SECRET}"
    elif style == "netrc":
        (secrets / "netrc").write_text(f"machine 127.0.0.1 login {USER} password {PASSWORD}\n")
        (secrets / "netrc").chmod(0o600)
        channel = base
    else:
        auth = {"127.0.0.1": {"BasicHTTP": {"username": USER, "password": PASSWORD}}}
        (secrets / "rattler-auth.json").write_text(json.dumps(auth))
        channel = base
    index = index_url.replace("http://", f"http://{USER}:${{MLENV_TEST_INDEX_SECRET}}@")
    return write_project(tmp_path / "proj", f"""
        channels = ["{channel}"]
        platforms = ["linux-64"]
        python = "3.11"
        conda = ["mlenv-hello ==1.0.0", "six"]
        pip = ["mlenv-tiny"]
        pip-index-url = "{index}"
        {extra}""", name=name)


def _credential_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, style: str) -> None:
    monkeypatch.setenv("MLENV_TEST_USER", USER)
    monkeypatch.setenv("MLENV_TEST_SECRET", TOKEN if style.startswith("token") else PASSWORD)
    monkeypatch.setenv("MLENV_TEST_INDEX_SECRET", INDEX_PASSWORD)
    if style == "netrc":
        monkeypatch.setenv("NETRC", str(tmp_path / "secrets" / "netrc"))
    if style == "rattler-auth-file":
        monkeypatch.setenv("RATTLER_AUTH_FILE", str(tmp_path / "secrets" / "rattler-auth.json"))


def _serve_channel(channel: Path, style: str):  # noqa: ANN202 - a context manager yielding the URL
    if style.startswith("token"):
        return serve(channel, token=TOKEN)
    return serve(channel, auth=(USER, PASSWORD))


@pytest.mark.parametrize("style", STYLES)
def test_lock_install_register_write_no_credentials(
    tmp_path: Path, channel: Path, homes: dict[str, Path], monkeypatch: pytest.MonkeyPatch, style: str
) -> None:
    index_root = build_index(tmp_path / "index", [Wheel("mlenv-tiny", "0.2.0")])
    _credential_environment(monkeypatch, tmp_path, style)
    outputs = []
    with _serve_channel(channel, style) as channel_url, serve(index_root, auth=(USER, INDEX_PASSWORD)) as index_url:
        project = _channel_project(tmp_path, style, channel_url, index_url)
        outputs.append(mlenv("lock", "--project", str(project), check=True))
        prefix = tmp_path / "env"
        outputs.append(mlenv("install", "--project", str(project), "--prefix", str(prefix), check=True))
        assert (prefix / "bin" / "mlenv-hello").is_file()
        # the default prefix too: it lives under the data directory
        outputs.append(mlenv("install", "--project", str(project), check=True))
        outputs.append(mlenv("register", "--project", str(project), check=True))
        outputs.append(mlenv("image", "context", "--project", str(project), "-o", str(tmp_path / "context"),
                             check=True))
    assert (homes["cache"] / "rattler").is_dir()  # rattler's repodata cache is among the files searched
    assert _leaks(*homes.values(), project, prefix, tmp_path / "context") == []
    for result in outputs:
        assert not [s for s in SECRETS if s in result.stdout + result.stderr], result.args


@pytest.fixture(scope="module")
def docker_client():  # -> docker.DockerClient
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"this test needs a running Docker engine (start dockerd; .ci/run does): {exc}")
    from fixtures.docker_base import ensure_base_image

    ensure_base_image(client)
    return client


@pytest.mark.parametrize("style", STYLES)
def test_image_build_writes_no_credentials(
    tmp_path: Path, channel: Path, homes: dict[str, Path], monkeypatch: pytest.MonkeyPatch, style: str,
    docker_client,  # noqa: ANN001
) -> None:
    from fixtures.docker_base import BASE_IMAGE

    index_root = build_index(tmp_path / "index", [Wheel("mlenv-tiny", "0.2.0")])
    _credential_environment(monkeypatch, tmp_path, style)
    name = f"creds-{style}-{tmp_path.name[-8:].lower().replace('_', '-')}"
    with _serve_channel(channel, style) as channel_url, serve(index_root, auth=(USER, INDEX_PASSWORD)) as index_url:
        project = _channel_project(tmp_path, style, channel_url, index_url, name=name,
                                   extra=f'[tool.mlenv.docker]\nbase-image = "{BASE_IMAGE}"\n')
        mlenv("lock", "--project", str(project), check=True)
        built = mlenv("image", "build", "--project", str(project), check=True)
    tag = built.stdout.split()[0]
    try:
        assert not [s for s in SECRETS if s in built.stdout + built.stderr]
        assert _leaks(*homes.values(), project) == []
        image = docker_client.images.get(tag)
        history = json.dumps([image.attrs, image.history()])
        assert not [s for s in SECRETS if s in history]
    finally:
        docker_client.images.remove(tag, force=True)


# --- the OCI registry's own credentials ----------------------------------------------


def _register_to(oci_registry, project: Path) -> object:  # noqa: ANN001
    return mlenv("register", "--project", str(project), "--registry", oci_registry.url("hardening"))


@pytest.fixture
def registry_project(tmp_path: Path, channel: Path, homes: dict[str, Path]) -> Path:
    project = write_project(tmp_path / "proj", f"""
        channels = ["{channel}"]
        platforms = ["linux-64"]
        python = "3.11"
        conda = ["mlenv-hello ==1.0.0"]
        """, name="oci-creds")
    mlenv("lock", "--project", str(project), check=True)
    return project


def _netrc(tmp_path: Path, host: str, user: str, password: str) -> Path:
    path = tmp_path / "netrc"
    path.write_text(f"machine {host.split(':')[0]} login {user} password {password}\n")
    path.chmod(0o600)
    return path


def test_registry_credentials_from_the_environment_win_over_netrc(
    tmp_path: Path, homes: dict[str, Path], registry_project: Path, oci_registry,  # noqa: ANN001
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NETRC", str(_netrc(tmp_path, oci_registry.host, oci_registry.user, "wrong-password")))
    monkeypatch.setenv("MLENV_REGISTRY_USERNAME", oci_registry.user)
    monkeypatch.setenv("MLENV_REGISTRY_PASSWORD", oci_registry.password)
    registered = _register_to(oci_registry, registry_project)
    assert registered.returncode == 0, registered.stderr

    monkeypatch.setenv("MLENV_REGISTRY_PASSWORD", "also-wrong")
    refused = _register_to(oci_registry, registry_project)
    assert_clean_error(refused, 1, "refused the credentials from MLENV_REGISTRY_USERNAME/PASSWORD", "401")
    assert "also-wrong" not in refused.stderr


def test_registry_credentials_from_netrc_and_a_refusal_names_it(
    tmp_path: Path, homes: dict[str, Path], registry_project: Path, oci_registry,  # noqa: ANN001
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    netrc = _netrc(tmp_path, oci_registry.host, oci_registry.user, oci_registry.password)
    monkeypatch.setenv("NETRC", str(netrc))
    registered = _register_to(oci_registry, registry_project)
    assert registered.returncode == 0, registered.stderr

    _netrc(tmp_path, oci_registry.host, oci_registry.user, "wrong-password")
    refused = _register_to(oci_registry, registry_project)
    assert_clean_error(refused, 1, f"refused the credentials from {netrc}", "401")
    assert "wrong-password" not in refused.stderr


def test_registry_without_credentials_says_none_were_given(
    homes: dict[str, Path], registry_project: Path, oci_registry  # noqa: ANN001
) -> None:
    refused = _register_to(oci_registry, registry_project)
    assert_clean_error(refused, 1, "requires credentials and none were given")


# -- _compat.oras_without_netrc (oras 0.2.43, requests 2.x) ---------------------------
def test_oras_sends_its_own_credentials_over_a_netrc_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """requests applies a netrc entry over the header oras sets, unless the session has an `auth`."""
    import http.server
    import threading
    from importlib import metadata

    import oras.provider

    from hatch_mlenv import _compat

    seen: list[str | None] = []

    class Registry(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            seen.append(self.headers.get("Authorization"))
            self.send_response(200 if self.headers.get("Authorization") else 401)
            self.send_header("WWW-Authenticate", 'Basic realm="test"')
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    monkeypatch.setenv("NETRC", str(_netrc(tmp_path, "127.0.0.1", "from-netrc", "netrc-secret")))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Registry)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        host = f"127.0.0.1:{server.server_address[1]}"
        answers = {}
        for patched in (False, True):
            seen.clear()
            client = oras.provider.Registry(hostname=host, insecure=True, auth_backend="basic")
            if patched:
                _compat.oras_without_netrc(client)
            client.auth.set_basic_auth("from-oras", "oras-secret")
            _compat.oras_request_once(client, f"http://{host}/v2/", "GET")
            answers[patched] = {base64.b64decode(h.split()[1]).decode().split(":")[0] for h in seen if h}
    finally:
        server.shutdown()
        server.server_close()
    assert answers[True] == {"from-oras"}, (
        f"oras {metadata.version('oras')} / requests {metadata.version('requests')}: with "
        f"_compat.oras_without_netrc the registry saw {answers[True]}: the session oras sends through is no "
        "longer `Registry.session`, or requests applies netrc despite a session auth"
    )
    assert "from-netrc" in answers[False], (
        f"requests {metadata.version('requests')} no longer puts a netrc entry over an explicit Authorization "
        "header: _compat.oras_without_netrc may be dropped"
    )
