"""Issue 22 (hardening), the input: every value that reaches a Dockerfile, a shell script, a path or a
URL is checked where the spec, or a registered version, is read, against the grammar of what it
becomes, and written with the quoting its consumer understands. A config error is exit 2, one line
naming the file (or the version) and the key, and writes nothing.

One test per hole of the issue, each starting with the issue's own repro."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from tests.conftest import assert_clean_error, mlenv, tree_hashes, write_project

# A local channel that does not exist: a spec that got past its reading would stop at
# `channel directory ... does not exist` (another key), never at the network.
NO_CHANNEL = 'channels = ["./no-channel"]\nplatforms = ["linux-64"]\n'


def refused(project: Path, key: str, *args: str, needle: str = "") -> None:
    """`mlenv lock` (or `args`) fails with exit 2 naming pyproject.toml and `key`, changing nothing."""
    before = tree_hashes(project)
    result = mlenv(*(args or ("lock",)), "--project", str(project))
    assert_clean_error(result, 2, f"{project / 'pyproject.toml'}: {key}: ", needle)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert tree_hashes(project) == before


# -- 1. Dockerfile injection -----------------------------------------------------------------

def test_1_a_newline_in_base_image_or_prefix_is_refused_before_any_dockerfile(tmp_path: Path) -> None:
    project = write_project(tmp_path / "base", NO_CHANNEL + '[tool.mlenv.docker]\nbase-image = "debian:12\\nRUN evil"\n')
    refused(project, "tool.mlenv.docker.base-image", needle="line break")
    for strategy in ("host", "dockerfile"):
        refused(project, "tool.mlenv.docker.base-image", "image", "context", "--strategy", strategy,
                "-o", str(tmp_path / "ctx"))
        assert not (tmp_path / "ctx").exists()

    project = write_project(tmp_path / "prefix", NO_CHANNEL + '[tool.mlenv.docker]\nprefix = "/opt/env\\nRUN rm -rf /"\n')
    refused(project, "tool.mlenv.docker.prefix", needle="line break")
    refused(project, "tool.mlenv.docker.prefix", "image", "context", "-o", str(tmp_path / "ctx"))
    assert not (tmp_path / "ctx").exists()


@pytest.fixture
def registered(tmp_path: Path, channel: Path) -> tuple[Path, object]:
    """bad-env's first version, registered from a real project: (project, its stored Version)."""
    from hatch_mlenv.reference import parse_reference
    from hatch_mlenv.registry import open_registry

    project = write_project(tmp_path / "good", f'channels = ["{channel}"]\nplatforms = ["linux-64"]\n'
                            'conda = ["mlenv-hello ==1.0.0"]\nvariables = { OMP_NUM_THREADS = "2" }\n', name="bad-env")
    mlenv("lock", "--project", str(project), check=True)
    mlenv("register", "--project", str(project), check=True)
    registry = open_registry("local")
    try:
        return project, registry.get(parse_reference("bad-env:1"))
    finally:
        registry.close()


def plant(good: object, *, base_image: str | None = None, variables: dict[str, str] | None = None,
          docker: dict[str, str] | None = None) -> str:
    """Register a new version of bad-env as someone who controls the registry would: the lock's
    metadata and the stored definition edited, the digest and the entry hash computed anew (through
    the registry's own API), so that nothing but the values themselves is wrong. Returns its reference."""
    import yaml

    from hatch_mlenv.lockfile import META_BASE_IMAGE, META_DIGEST, META_VARIABLES, parse_lock
    from hatch_mlenv.registry import open_registry

    document = yaml.safe_load(good.lockfile)
    custom = document["metadata"]["custom_metadata"]
    if base_image is not None:
        custom[META_BASE_IMAGE] = base_image
    if variables is not None:
        custom[META_VARIABLES] = json.dumps(variables)
    custom[META_DIGEST] = parse_lock(yaml.safe_dump(document, sort_keys=False), "planted").digest()
    text = yaml.safe_dump(document, sort_keys=False)
    manifest = copy.deepcopy(good.manifest)
    definition = manifest["definition"]
    if base_image is not None:
        definition.setdefault("docker", {})["base-image"] = base_image
    if variables is not None:
        definition["variables"] = variables
    if docker is not None:
        definition.setdefault("docker", {}).update(docker)
    manifest["digest"] = f"sha256:{parse_lock(text, 'planted').digest()}"
    registry = open_registry("local")
    try:
        return registry.register("bad-env", text, manifest, dict(good.provenance)).version.ref
    finally:
        registry.close()


def test_1_a_registered_version_is_checked_again_when_it_is_used(registered: tuple[Path, object], tmp_path: Path) -> None:
    project, good = registered
    out = tmp_path / "ctx"
    mlenv("image", "context", "bad-env:1", "--strategy", "dockerfile", "-o", str(out), check=True)  # the good one
    assert "FROM debian:12-slim" in (out / "Dockerfile").read_text()

    evil = plant(good, base_image="debian:12\nRUN evil")
    assert evil == "bad-env:2"
    for args in (["image", "context", evil, "-o", str(tmp_path / "a")],
                 ["image", "context", evil, "--strategy", "dockerfile", "-o", str(tmp_path / "b")],
                 ["image", "build", evil, "--builder", "oci", "-o", str(tmp_path / "c")],
                 ["image", "tag", evil], ["install", evil], ["run", evil, "--", "true"]):
        result = mlenv(*args, cwd=tmp_path)
        assert_clean_error(result, 2, f"{evil} in ", "tool.mlenv.docker.base-image: ", "line break")
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not any((tmp_path / name).exists() for name in "abc")

    # the lock alone (its definition left clean) is checked too; so are the prefix and the variables
    only_lock = plant(good, base_image="debian:12\nRUN evil2")
    assert_clean_error(mlenv("image", "context", only_lock, "-o", str(tmp_path / "d")), 2, "tool.mlenv.docker.base-image")
    # (the prefix is not in the digest: a variable changes too, or this would be version 1 again)
    prefix = plant(good, docker={"prefix": "/opt/env\nRUN rm -rf /"}, variables={"OMP_NUM_THREADS": "3"})
    assert_clean_error(mlenv("image", "context", prefix, "-o", str(tmp_path / "e")), 2, "tool.mlenv.docker.prefix")
    nul = plant(good, variables={"OMP_NUM_THREADS": "2\x00"})
    assert_clean_error(mlenv("run", nul, "--", "true"), 2, "tool.mlenv.variables.OMP_NUM_THREADS", "NUL")
    assert not (tmp_path / "d").exists() and not (tmp_path / "e").exists()


def test_1_values_are_written_with_the_dockerfile_s_own_quoting(tmp_path: Path) -> None:
    """Whatever a value holds, it is one quoted Dockerfile word that means exactly itself, checked
    by a real build: `$` is not expanded, quotes and backslashes survive, UTF-8 is kept."""
    import docker

    from fixtures.docker_base import BASE_IMAGE, ensure_base_image
    from hatch_mlenv.image.dockerfile import host_dockerfile
    from hatch_mlenv.image.plan import ImagePlan

    client = docker.from_env()
    ensure_base_image(client)
    values = {"DOLLAR": "$HOME and ${PATH}", "QUOTES": 'say "hi" \'there\'', "BACKSLASH": "a\\b\\\\c\\",
              "UNICODE": "café ✓", "TAB": "a\tb", "SPACES": "  two  "}
    plan = ImagePlan(name="quoting", digest="0" * 64, repository="mlenv-quoting", base_image=BASE_IMAGE,
                     prefix="/opt/env", variables=values, managed=False)
    import io

    image = client.images.build(fileobj=io.BytesIO(host_dockerfile(plan).encode()), rm=True, pull=False)[0]
    try:
        env = dict(line.split("=", 1) for line in client.api.inspect_image(image.id)["Config"]["Env"])
        assert {k: env[k] for k in values} == values
        assert client.api.inspect_image(image.id)["Config"]["Labels"]["io.mlenv.prefix"] == "/opt/env"
    finally:
        client.images.remove(image.id, force=True)


def test_1_a_line_break_never_reaches_a_dockerfile_or_the_entrypoint(tmp_path: Path) -> None:
    from hatch_mlenv.errors import ImageError
    from hatch_mlenv.image.dockerfile import host_dockerfile, micromamba_dockerfile
    from hatch_mlenv.image.plan import ImagePlan

    project = write_project(tmp_path, NO_CHANNEL + 'variables = { X = "a\\nRUN evil" }\n')
    refused(project, "tool.mlenv.variables.X", needle="line break")
    refused(project, "tool.mlenv.variables.X", "image", "context", "-o", str(tmp_path / "ctx"))
    # and should a plan hold one anyway, the writers refuse it rather than write a second instruction
    base = dict(name="x", digest="0" * 64, repository="x", base_image="debian:12", prefix="/opt/env")
    for plan in (ImagePlan(**base, variables={"X": "a\nRUN evil"}),
                 ImagePlan(**{**base, "prefix": "/opt/env\nRUN rm -rf /"}, variables={}),
                 ImagePlan(**{**base, "base_image": "debian:12\nRUN evil"}, variables={})):
        for write in (host_dockerfile, micromamba_dockerfile):
            with pytest.raises(ImageError):
                write(plan)


# -- 6. lockfile paths ---------------------------------------------------------------------------

def test_6_lockfile_must_be_a_yaml_file_inside_the_project_outside_git(tmp_path: Path) -> None:
    project = write_project(tmp_path / "git", NO_CHANNEL + 'lockfile = ".git/config"\n')
    (project / ".git").mkdir()
    (project / ".git" / "config").write_text("[core]\n\trepositoryformatversion = 0\n")
    refused(project, "tool.mlenv.lockfile", needle="version control directory")

    project = write_project(tmp_path / "dir", NO_CHANNEL + 'lockfile = "dir/"\n')
    refused(project, "tool.mlenv.lockfile", needle="names a directory")
    assert not (project / "dir").exists()

    for value, needle in (("pyproject.toml", "*.yml or *.yaml"), ("../outside.yml", "outside the project"),
                          ("locks/../../outside.yml", "outside the project"), ("sub/.git/x.yml", "version control")):
        project = write_project(tmp_path / "other", NO_CHANNEL + f'lockfile = "{value}"\n')
        refused(project, "tool.mlenv.lockfile", needle=needle)
    (project / "locks").mkdir()
    project = write_project(project, NO_CHANNEL + 'lockfile = "locks"\n')
    refused(project, "tool.mlenv.lockfile", needle="*.yml")


# -- 7. NUL in a variable ----------------------------------------------------------------------

def test_7_a_nul_byte_in_a_variable_is_a_config_error_not_an_internal_one(tmp_path: Path) -> None:
    project = write_project(tmp_path, NO_CHANNEL + 'variables = { X = "a\\u0000b" }\n')
    refused(project, "tool.mlenv.variables.X", needle="NUL")
    result = mlenv("run", "--project", str(project), "--", "true")
    assert_clean_error(result, 2, "tool.mlenv.variables.X", "NUL")
    assert "internal error" not in result.stderr
    assert not (project / "conda-lock.yml").exists()


# -- 8. values accepted without validation -------------------------------------------------------

@pytest.mark.parametrize(
    ("body", "key", "needle"),
    [
        ('python = "3.11.*.*"\n', "tool.mlenv.python", "invalid match spec"),
        ('conda = ["::numpy"]\n', "tool.mlenv.conda[0]", "channel before '::' is empty"),
        ("pip = ['mlenv-tiny; python_version > \"3.x\"']\n", "tool.mlenv.pip[0]", "'3.x' is not a version"),
        ('[tool.mlenv.virtual-packages.linux-64]\n__glibc = "abc"\n', "tool.mlenv.virtual-packages.linux-64.__glibc",
         "invalid value 'abc'"),
        ('[tool.mlenv.system-requirements]\nglibc = "abc"\n', "tool.mlenv.system-requirements.glibc", "invalid value"),
        ('[tool.mlenv.docker]\nrepository = "UPPER/../x"\n', "tool.mlenv.docker.repository", "not an image repository"),
        ('[tool.mlenv.docker]\nbase-image = ""\n', "tool.mlenv.docker.base-image", "not an image reference"),
        ('[tool.mlenv.docker]\nbase-image = "bad image name!!"\n', "tool.mlenv.docker.base-image", "not an image reference"),
        ('[tool.mlenv.docker]\nbase-image = "oci:../../etc"\n', "tool.mlenv.docker.base-image", "outside the project"),
        ('[tool.mlenv.docker]\nprefix = "/"\n', "tool.mlenv.docker.prefix", "must not be /"),
        ('pip-index-url = "https://${}@h/x"\npip = ["mlenv-tiny"]\n', "tool.mlenv.pip-index-url", "malformed reference '${}'"),
    ],
    ids=["python", "conda", "marker", "virtual-glibc", "system-glibc", "repository", "empty-image", "bad-image",
         "oci-escape", "prefix-root", "empty-reference"],
)
def test_8_each_value_is_checked_where_the_spec_is_read(tmp_path: Path, body: str, key: str, needle: str) -> None:
    project = write_project(tmp_path, NO_CHANNEL + body)
    refused(project, key, needle=needle)
    refused(project, key, "show")  # any command that reads the spec, not only lock


def test_8_an_unset_variable_in_pip_index_url_is_an_error_at_lock_time_even_without_pip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOVAR", raising=False)
    (tmp_path / "chan").mkdir()
    project = write_project(tmp_path, 'channels = ["./chan"]\nplatforms = ["linux-64"]\n'
                            'pip-index-url = "https://u:${NOVAR}@pypi.example.com/simple"\n')
    refused(project, "tool.mlenv.pip-index-url", needle="NOVAR is not set")


def test_the_forms_people_write_are_still_accepted(tmp_path: Path) -> None:
    from hatch_mlenv.spec import load_spec

    digest = "sha256:" + "a" * 64
    for image in ("debian:12-slim", "python:3.11-slim", "ghcr.io/org/team/img:v1.2", f"busybox@{digest}",
                  f"127.0.0.1:5000/bases/busybox:1@{digest}", "localhost/x_y__z-w", "[::1]:5000/x",
                  "oci:base-layout:busybox", f"oci:layouts/base@{digest}", "oci:/srv/layouts/base"):
        write_project(tmp_path, f'[tool.mlenv.docker]\nbase-image = "{image}"\n')
        assert load_spec(tmp_path).docker.base_image == image
    write_project(tmp_path, 'python = ">=3.10,<3.12"\nconda = ["conda-forge::numpy >=1.26", "pytorch[build=cuda*]"]\n'
                  "pip = ['tomli; python_version < \"3.11\"', 'x; sys_platform == \"linux\"']\n"
                  'pip-index-url = "https://__token__:${PYPI_TOKEN}@pypi.example.com/simple"\n'
                  'lockfile = "locks/env.yaml"\nvariables = { GREETING = "tab\\there, $HOME, \\"quoted\\", café" }\n'
                  '[tool.mlenv.virtual-packages.linux-64]\n__glibc = "2.17"\n__archspec = "1=x86_64_v3"\n'
                  '[tool.mlenv.docker]\nprefix = "/opt/env/"\nregistry = "127.0.0.1:5000/team"\nrepository = "fraud/train"\n')
    spec = load_spec(tmp_path)
    assert spec.docker.prefix == "/opt/env" and spec.lockfile == tmp_path.resolve() / "locks" / "env.yaml"


def test_attack_run_findings_are_config_errors(tmp_path: Path) -> None:
    """From the attack run after issue 22: script digits in versions were internal errors, and a
    newline in a Spark repository added a spark-defaults line."""
    cases = {
        'python = "3.11"\n[tool.mlenv.virtual-packages.linux-64]\n__glibc = "١٢.17"\n':
            "tool.mlenv.virtual-packages.linux-64.__glibc",
        'python = "３.１１"\n': "tool.mlenv.python",
        'python = "3.11"\n[tool.mlenv.spark]\nrepositories = ["https://repo.example.com/m2\\nspark.driver.extraJavaOptions -Xevil"]\n':
            "tool.mlenv.spark.repositories[0]",
    }
    for index, (body, key) in enumerate(cases.items()):
        proj = write_project(tmp_path / str(index), 'channels = ["conda-forge"]\nplatforms = ["linux-64"]\n' + body)
        result = mlenv("lock", "--project", str(proj))
        assert_clean_error(result, 2, key)
        assert "internal error" not in result.stderr
        assert not (proj / "conda-lock.yml").exists()


def test_history_of_a_malformed_name_is_a_usage_error() -> None:
    for name in ("clip:١", "", "a:b:c"):
        assert_clean_error(mlenv("history", name), 2, "invalid environment name")
