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


def two_versions(root: Path, url: str) -> None:
    """demo:2 in `url` (demo:1 from the fixture), labelled staging."""
    pyproject = root / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("mlenv-hello ==1.0.0", "mlenv-hello ==1.1.0"))
    mlenv("register", "--project", str(root), "--registry", url, "--label", "staging", check=True)


def test_copy_between_registries(registered: tuple[Path, str], tmp_path: Path) -> None:
    root, source = registered
    two_versions(root, source)
    target = f"sqlite:///{tmp_path / 'prod.sqlite3'}"

    # the newer version first, then the older one: latest stays on the newer
    first = json.loads(mlenv("copy", f"{source}#demo:2", target, "--labels", "--json", check=True).stdout)
    assert first["version"] == 1 and first["created"] is True and sorted(first["labels"]) == ["latest", "staging"]
    second = mlenv("copy", "demo:1", target, "--registry", source, check=True)
    assert second.stdout.startswith("demo:2 sha256:") and second.stdout.rstrip().endswith("(new)")
    history = {v["version"]: v for v in json.loads(mlenv("history", "demo", "--registry", target, "--json",
                                                         check=True).stdout)}
    assert history[1]["labels"] == ["latest", "staging"] and history[2]["labels"] == []
    originals = {v["version"]: v for v in json.loads(mlenv("history", "demo", "--registry", source, "--json",
                                                           check=True).stdout)}
    assert history[2]["digest"] == originals[1]["digest"] and history[1]["digest"] == originals[2]["digest"]
    assert history[2]["created"] == originals[1]["created"]  # the original time, not the copy's

    # provenance says where it came from; the definition came along (import works from the copy)
    copied = json.loads(mlenv("get", f"{target}#demo:2", "-o", str(tmp_path / "got"), "--json", check=True).stdout)
    assert copied["digest"] == originals[1]["digest"]
    shown = mlenv("show", f"{target}#demo:2", "--json", check=True)
    assert json.loads(shown.stdout)["digest"] == originals[1]["digest"]
    fresh = tmp_path / "imported"
    mlenv("import", f"{target}#demo:2", "--project", str(fresh), check=True)
    assert "mlenv-hello ==1.0.0" in (fresh / "pyproject.toml").read_text()

    # the same digest again: nothing created; into its own registry: refused
    again = mlenv("copy", f"{source}#demo:1", target, check=True)
    assert again.stdout.rstrip().endswith("(existing, nothing created)")
    assert len(json.loads(mlenv("history", "demo", "--registry", target, "--json", check=True).stdout)) == 2
    assert_clean_error(mlenv("copy", f"{source}#demo:1", source), 2, "already in")
    assert_clean_error(mlenv("copy", f"{source}#demo:9", target), 1, "no version 9")
    assert_clean_error(mlenv("copy", f"{source}#demo:1", "nowhere"), 2, "unknown registry 'nowhere'")


def test_copy_records_its_origin(registered: tuple[Path, str], tmp_path: Path) -> None:
    import sqlite3

    _, source = registered
    target = tmp_path / "prod.sqlite3"
    mlenv("copy", f"{source}#demo:1", f"sqlite:///{target}", check=True)
    further = tmp_path / "further.sqlite3"
    mlenv("copy", f"sqlite:///{target}#demo:1", f"sqlite:///{further}", check=True)
    for path in (target, further):
        with sqlite3.connect(path) as db:
            provenance = json.loads(db.execute("SELECT provenance FROM versions").fetchone()[0])
        assert provenance["copied_from"]["registry"] == source  # the first origin, even for a copy of a copy
        assert provenance["copied_from"]["version"] == 1 and provenance["copied_from"]["time"] == provenance["time"]


def test_label_delete_and_archived_counts(registered: tuple[Path, str]) -> None:
    root, url = registered
    two_versions(root, url)
    deleted = mlenv("label", "--delete", f"{url}#demo@prod", check=True)
    assert deleted.stdout.strip() == "demo@prod deleted (it pointed at demo:1)"
    assert_clean_error(mlenv("show", f"{url}#demo@prod"), 1, "no label 'prod'")
    assert_clean_error(mlenv("label", "--delete", f"{url}#demo@prod"), 1, "no label 'prod'")
    assert_clean_error(mlenv("label", "--delete", f"{url}#demo@latest"), 2, "latest")
    assert_clean_error(mlenv("label", "--delete", f"{url}#demo:1"), 2, "NAME@LABEL")
    mlenv("archive", f"{url}#demo:1", check=True)
    listing = json.loads(mlenv("list", "--registry", url, "--json", check=True).stdout)
    assert listing[0]["versions"] == 1 and listing[0]["archived"] == 1
    text = mlenv("list", "--registry", url, check=True).stdout.splitlines()
    assert text[0].split("\t") == ["name", "latest", "versions", "labels"]
    assert text[1].split("\t")[:3] == ["demo", "2", "1 (1 archived)"]


def test_copy_to_and_label_delete_in_an_oci_registry(registered: tuple[Path, str], oci_registry,  # noqa: ANN001
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    root, source = registered
    two_versions(root, source)
    monkeypatch.setenv("MLENV_REGISTRY_USERNAME", oci_registry.user)
    monkeypatch.setenv("MLENV_REGISTRY_PASSWORD", oci_registry.password)
    target = oci_registry.url(f"ns{uuid.uuid4().hex[:8]}")
    mlenv("copy", f"{source}#demo:2", target, "--labels", check=True)
    mlenv("copy", f"{source}#demo:1", target, "--labels", check=True)
    assert mlenv("copy", f"{source}#demo:1", target, check=True).stdout.rstrip().endswith("(existing, nothing created)")
    history = {v["version"]: v for v in json.loads(mlenv("history", "demo", "--registry", target, "--json",
                                                         check=True).stdout)}
    assert sorted(history[1]["labels"]) == ["latest", "staging"] and history[2]["labels"] == ["prod"]
    assert mlenv("label", "--delete", f"{target}/demo@prod", check=True).stdout.strip() == \
        "demo@prod deleted (it pointed at demo:2)"
    assert_clean_error(mlenv("show", f"{target}/demo@prod"), 1, "no label 'prod'")
    history = {v["version"]: v for v in json.loads(mlenv("history", "demo", "--registry", target, "--json",
                                                         check=True).stdout)}
    assert history[2]["labels"] == []
    listing = json.loads(mlenv("list", "--registry", target, "--json", check=True).stdout)
    assert listing[0]["labels"] == {"latest": 1, "staging": 1}
