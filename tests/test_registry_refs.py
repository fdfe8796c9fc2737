"""Issue 27, item 6: one string names a version on any machine (`oci://HOST:PORT/NS/NAME:VERSION`,
`sqlite:///PATH#NAME@LABEL`, `TEAM:NAME@LABEL` for a registry named in the user config file), and
the config file names the default registry; credentials never go into it."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from tests.conftest import assert_clean_error, mlenv, tree_hashes, write_project


@pytest.fixture
def registered(tmp_path: Path, channel: Path) -> tuple[Path, str]:
    """A project registered as demo:1 in a registry file of its own; (project, registry URL)."""
    root = write_project(tmp_path / "proj", f"""
        channels = ["{channel}"]
        platforms = ["linux-64"]
        conda = ["mlenv-hello ==1.0.0"]
        """)
    url = f"sqlite:///{tmp_path / 'team.sqlite3'}"
    mlenv("register", "--project", str(root), "--registry", url, "--label", "prod", check=True)
    return root, url


def digest_of(*args: str, cwd: Path) -> str:
    return json.loads(mlenv("show", *args, "--json", cwd=cwd, check=True).stdout)["digest"]


def test_a_registry_file_reference_from_an_empty_directory(registered: tuple[Path, str], tmp_path: Path) -> None:
    root, url = registered
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    expected = digest_of(cwd=root)
    assert digest_of(f"{url}#demo:1", cwd=empty) == expected
    assert digest_of(f"{url}#demo@prod", cwd=empty) == expected
    got = mlenv("get", f"{url}#demo@prod", "-o", str(empty / "out"), cwd=empty, check=True)
    assert got.stdout.startswith("demo:1 sha256:")
    # the local registry of this machine was never involved
    assert "no environment named 'demo'" in mlenv("show", "demo:1", cwd=empty).stderr
    for bad in (f"{url}#", f"{url}", f"{url}#demo:x"):
        assert_clean_error(mlenv("show", bad, cwd=empty), 2, "malformed reference")


def test_named_registries_and_the_default(registered: tuple[Path, str], tmp_path: Path,
                                          isolated_registry: Path) -> None:
    root, url = registered
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    added = mlenv("registry", "add", "team", url, check=True)
    config = isolated_registry / "config.toml"
    assert added.stdout.startswith(f"team = {url} in ")
    assert config.read_text() == f'[registries]\nteam = "{url}"\n'
    expected = digest_of(cwd=root)
    assert digest_of("team:demo@prod", cwd=empty) == expected
    assert digest_of("team:demo", cwd=empty) == expected  # @latest
    assert digest_of("demo:1", "--registry", "team", cwd=empty) == expected
    # a bare NAME:VERSION is the default registry's; the default is set by name
    assert mlenv("show", "demo:1", cwd=empty).returncode != 0
    mlenv("registry", "add", "team", url, "--default", check=True)
    assert digest_of("demo:1", cwd=empty) == expected
    listing = json.loads(mlenv("registry", "list", "--json", check=True).stdout)
    assert listing["registry"] == "team" and listing["registries"] == {"team": url}
    # NAME:DIGITS is always a version, never a registry called NAME
    mlenv("registry", "add", "demo", "local", check=True)
    assert digest_of("demo:1", cwd=empty) == expected

    mlenv("registry", "remove", "team", check=True)
    assert "team" not in config.read_text()
    assert_clean_error(mlenv("show", "team:demo@prod", cwd=empty), 2, "unknown registry 'team'", str(config))


def test_the_config_file_refuses_credentials_and_says_where_it_is_broken(isolated_registry: Path) -> None:
    config = isolated_registry / "config.toml"
    assert_clean_error(mlenv("registry", "add", "team", "oci://alice:secret@127.0.0.1:5000/ml"), 2,
                       "holds no credentials", "docker login")
    assert not config.exists()
    assert_clean_error(mlenv("registry", "add", "local", "oci://127.0.0.1:5000/ml"), 2, "invalid registry name")
    assert_clean_error(mlenv("registry", "add", "team", "https://127.0.0.1:5000/ml"), 2, "not a registry URL")
    assert not config.exists()
    assert_clean_error(mlenv("registry", "remove", "team"), 2, "no registry named 'team'")

    config.write_text("registry = [\n")
    assert_clean_error(mlenv("list"), 2, str(config), "invalid TOML")
    config.write_text('registry = "nowhere"\n')
    assert_clean_error(mlenv("list"), 2, str(config), "registry", "'nowhere' is neither")
    config.write_text('[registries]\nteam = "oci://bob:pw@h/ns"\n')
    assert_clean_error(mlenv("list"), 2, str(config), "registries.team", "no credentials")
    before = tree_hashes(isolated_registry)
    assert_clean_error(mlenv("registry", "add", "other", "local"), 2, str(config))
    assert tree_hashes(isolated_registry) == before


def test_an_oci_reference_names_its_registry(oci_registry, tmp_path: Path, channel: Path,  # noqa: ANN001
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLENV_REGISTRY_USERNAME", oci_registry.user)
    monkeypatch.setenv("MLENV_REGISTRY_PASSWORD", oci_registry.password)
    url = oci_registry.url(f"ns{uuid.uuid4().hex[:8]}")
    root = write_project(tmp_path / "proj", f"""
        channels = ["{channel}"]
        platforms = ["linux-64"]
        conda = ["mlenv-hello ==1.0.0"]
        """)
    mlenv("register", "--project", str(root), "--registry", url, "--label", "prod", check=True)
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    expected = digest_of(cwd=root)
    assert digest_of(f"{url}/demo:1", cwd=empty) == expected
    assert digest_of(f"{url}/demo@prod", cwd=empty) == expected
    labelled = mlenv("label", f"{url}/demo:1", "stable", cwd=empty, check=True)
    assert labelled.stdout.strip() == "demo@stable -> demo:1"
    assert_clean_error(mlenv("show", f"oci://{oci_registry.host}/demo:1", cwd=empty), 2, "malformed reference",
                       "oci://HOST[:PORT]/NAMESPACE/NAME")
    assert_clean_error(mlenv("show", "oci://127.0.0.1:9/ns/demo:1", cwd=empty), 1, "oci://127.0.0.1:9/ns",
                       "unreachable")
