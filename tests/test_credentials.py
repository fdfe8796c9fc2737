"""Credentials of channels and pip indexes are used to fetch and never written.

A channel behind basic auth and one behind a conda token path, and a pip index
behind basic auth, all on 127.0.0.1. After lock, install, export (every
format), sbom, register/get and an image build context, no file and no output
holds the password or the token.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fixtures.pip_index import Wheel, build_index, serve
from hatch_mlenv.lockfile import read_lock
from tests.conftest import assert_clean_error, mlenv, write_project

PASSWORD = "Ch4nnel-s3cret"
TOKEN = "tk-9f8e7d6c5b4a"
INDEX_PASSWORD = "1ndex-s3cret"
SECRETS = (PASSWORD, TOKEN, INDEX_PASSWORD, "mlenv-bot")


def _files_holding_secrets(*roots: Path) -> list[str]:
    found = []
    for root in roots:
        for path in [root] if root.is_file() else sorted(root.rglob("*")):
            if path.is_file() and not path.is_symlink() and path.name != "pyproject.toml":  # the user's own input
                data = path.read_bytes()
                found += [f"{path}: {s}" for s in SECRETS if s.encode() in data]
    return found


@pytest.mark.parametrize("form", ["basic-auth", "token-path"])
def test_credentials_are_used_and_never_written(
    tmp_path: Path, channel: Path, isolated_registry: Path, monkeypatch: pytest.MonkeyPatch, form: str
) -> None:
    index_root = build_index(tmp_path / "index", [Wheel("mlenv-tiny", "0.2.0")])
    channel_server = serve(channel, auth=("mlenv-bot", PASSWORD)) if form == "basic-auth" else serve(channel, token=TOKEN)
    with channel_server as channel_url, serve(index_root, auth=("mlenv-bot", INDEX_PASSWORD)) as index_url:
        base = channel_url.removesuffix("/simple/")
        if form == "basic-auth":
            channel_spec = base.replace("http://", "http://${MLENV_TEST_CHANNEL_USER}:${MLENV_TEST_CHANNEL_SECRET}@")
        else:
            channel_spec = base + "/t/${MLENV_TEST_CHANNEL_SECRET}"
        index_spec = index_url.replace("http://", "http://mlenv-bot:${MLENV_TEST_INDEX_SECRET}@")
        project = write_project(tmp_path / "proj", f"""
            channels = ["{channel_spec}"]
            platforms = ["linux-64"]
            python = "3.11"
            conda = ["mlenv-hello ==1.0.0", "six"]
            pip = ["mlenv-tiny"]
            pip-index-url = "{index_spec}"
            """)
        monkeypatch.setenv("MLENV_TEST_CHANNEL_USER", "mlenv-bot")
        monkeypatch.setenv("MLENV_TEST_INDEX_SECRET", INDEX_PASSWORD)
        monkeypatch.setenv("MLENV_TEST_CHANNEL_SECRET", "wrong-" + (PASSWORD if form == "basic-auth" else TOKEN))
        refused = mlenv("lock", "--project", str(project))
        assert_clean_error(refused, 1, "cannot read the channels for linux-64")
        assert "wrong-" not in refused.stderr

        monkeypatch.setenv("MLENV_TEST_CHANNEL_SECRET", PASSWORD if form == "basic-auth" else TOKEN)
        outputs = [mlenv("lock", "--project", str(project), check=True)]
        lock = read_lock(project / "conda-lock.yml")
        assert {p.name for p in lock.packages} >= {"mlenv-hello", "six", "mlenv-tiny", "python"}
        assert all(p.url.startswith(base) for p in lock.packages if p.manager == "conda")
        assert lock.channels == (base,)

        prefix = tmp_path / "env"
        outputs.append(mlenv("install", "--project", str(project), "--prefix", str(prefix), check=True))
        assert (prefix / "bin" / "mlenv-hello").is_file()
        assert (prefix / "lib" / "python3.11" / "site-packages" / "mlenv_tiny" / "__init__.py").is_file()
        exports = tmp_path / "exports"
        exports.mkdir()
        for fmt in ("environment-yml", "explicit", "requirements", "pylock"):
            outputs.append(mlenv("export", "--project", str(project), "--format", fmt, "--platform", "linux-64",
                                 "-o", str(exports / fmt), check=True))
        outputs.append(mlenv("sbom", "--project", str(project), "-o", str(exports / "sbom.json"), check=True))
        outputs.append(mlenv("register", "--project", str(project), check=True))
        outputs.append(mlenv("get", "demo:1", "-o", str(tmp_path / "got"), check=True))
        outputs.append(mlenv("image", "context", "--project", str(project), "-o", str(tmp_path / "context"), check=True))
        assert (tmp_path / "context" / "env" / "bin" / "mlenv-hello").is_file()

    leaks = _files_holding_secrets(project, prefix, exports, tmp_path / "got", tmp_path / "context", isolated_registry)
    assert leaks == []
    for result in outputs:
        for secret in SECRETS[:3]:
            assert secret not in result.stdout + result.stderr, (result.args, secret)


def test_rattler_authentication_storage_is_used_for_channels(
    tmp_path: Path, channel: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A channel URL without credentials: rattler's RATTLER_AUTH_FILE has them (keyed by host)."""
    import json

    auth = tmp_path / "rattler-auth.json"
    auth.write_text(json.dumps({"127.0.0.1": {"BasicHTTP": {"username": "mlenv-bot", "password": PASSWORD}}}))
    with serve(channel, auth=("mlenv-bot", PASSWORD)) as url:
        base = url.removesuffix("/simple/")
        project = write_project(tmp_path / "proj", f"""
            channels = ["{base}"]
            platforms = ["linux-64"]
            python = "3.11"
            conda = ["mlenv-hello ==1.0.0"]
            """)
        refused = mlenv("lock", "--project", str(project))
        assert_clean_error(refused, 1, "cannot read the channels for linux-64")
        assert "401" in refused.stderr
        monkeypatch.setenv("RATTLER_AUTH_FILE", str(auth))
        mlenv("lock", "--project", str(project), check=True)
        mlenv("install", "--project", str(project), "--prefix", str(tmp_path / "env"), check=True)
    assert (tmp_path / "env" / "bin" / "mlenv-hello").is_file()
    assert _files_holding_secrets(project, tmp_path / "env") == []
