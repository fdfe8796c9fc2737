"""[tool.mlenv] parsing: the typed model, defaults, the spec hash, and every config error."""

from __future__ import annotations

from pathlib import Path

import pytest

from hatch_mlenv.errors import ConfigError
from hatch_mlenv.spec import current_platform, load_spec
from tests.conftest import assert_clean_error, mlenv, tree_hashes, write_project


def test_full_spec_is_typed(tmp_path: Path) -> None:
    (tmp_path / "chan").mkdir()
    write_project(
        tmp_path,
        """
        name = "fraud-train"
        channels = ["./chan", "conda-forge", "https://example.invalid/my-channel/"]
        platforms = ["linux-64", "osx-arm64"]
        python = "3.11"
        conda = ["numpy >=1.26", "pandas"]
        pip = ["mlenv-tiny>=0.2"]
        pip-index-url = "http://127.0.0.1:1/simple/"
        lockfile = "locks/env.yml"
        variables = { OMP_NUM_THREADS = "4", API_TOKEN = { secret = true } }
        [tool.mlenv.virtual-packages.linux-64]
        __cuda = "12.2"
        __glibc = "2.17"
        [tool.mlenv.docker]
        base-image = "debian:12-slim"
        registry = "127.0.0.1:5000"
        """,
    )
    spec = load_spec(tmp_path)
    assert spec.name == "fraud-train"
    assert [c.url for c in spec.channels] == [
        (tmp_path / "chan").as_uri(),
        "https://conda.anaconda.org/conda-forge",
        "https://example.invalid/my-channel",
    ]
    assert spec.platforms == ("linux-64", "osx-arm64")
    assert spec.conda_specs == ["python 3.11.*", "numpy >=1.26", "pandas"]
    assert spec.lockfile == tmp_path / "locks" / "env.yml"
    assert spec.virtual_packages["linux-64"]["__cuda"] == ("12.2", "0")
    assert spec.virtual_packages["linux-64"]["__glibc"] == ("2.17", "0")
    assert "__osx" in spec.virtual_packages["osx-arm64"]
    secret = next(v for v in spec.variables if v.name == "API_TOKEN")
    assert secret.secret and secret.value is None
    assert spec.docker.prefix == "/opt/env"
    assert spec.docker.base_image == "debian:12-slim"


def test_defaults(tmp_path: Path) -> None:
    write_project(tmp_path, "", name="my-project")
    spec = load_spec(tmp_path)
    assert spec.name == "my-project"
    assert spec.platforms == (current_platform(),)
    assert [c.raw for c in spec.channels] == ["conda-forge"]
    assert spec.lockfile == tmp_path / "conda-lock.yml"
    # glibc 2.28 on linux and no CUDA: nothing declared, nothing assumed
    assert spec.virtual_packages["linux-64"]["__glibc"] == ("2.28", "0")
    assert "__cuda" not in spec.virtual_packages["linux-64"]
    assert spec.system_requirements == {}


def test_include_project_dependencies(tmp_path: Path) -> None:
    write_project(
        tmp_path,
        'pip = ["mlenv-tiny"]\ninclude-project-dependencies = true\n',
        extra='dependencies = ["mlenv-util>=1", "mlenv-tiny"]',
    )
    assert load_spec(tmp_path).pip == ("mlenv-tiny", "mlenv-util>=1")


def test_spec_hash_ignores_order_and_formatting(tmp_path: Path) -> None:
    a = write_project(tmp_path / "a", 'conda = ["numpy >=1.2", "pandas"]\nplatforms = ["linux-64", "osx-64"]\n')
    b = write_project(
        tmp_path / "b",
        """
        # reordered, reformatted, commented
        platforms = [ "osx-64",
                      "linux-64" ]
        conda = ["pandas",   "numpy  >=1.2"]
        """,
    )
    c = write_project(tmp_path / "c", 'conda = ["numpy >=1.3", "pandas"]\nplatforms = ["linux-64", "osx-64"]\n')
    assert load_spec(a).hash() == load_spec(b).hash()
    assert load_spec(a).hash() != load_spec(c).hash()


def test_the_default_solver_keeps_existing_locks_fresh(tmp_path: Path) -> None:
    absent = load_spec(write_project(tmp_path / "absent", 'conda = ["numpy"]\n'))
    default = load_spec(write_project(tmp_path / "default", 'conda = ["numpy"]\nsolver = "rattler"\n'))
    other = load_spec(write_project(tmp_path / "other", 'conda = ["numpy"]\nsolver = "conda"\n'))
    assert absent.solver == default.solver == "rattler" and other.solver == "conda"
    assert absent.hash() == default.hash() != other.hash()


def test_base_dockerfile_content_is_in_the_hash_and_its_path_in_the_definition(tmp_path: Path) -> None:
    project = write_project(tmp_path, '[tool.mlenv.docker]\nbase-dockerfile = "docker/base.Dockerfile"\n')
    without = load_spec(write_project(tmp_path / "without", ""))
    dockerfile = project / "docker" / "base.Dockerfile"
    spec = load_spec(project)  # parsing does not need the file; its content does
    assert spec.docker.base_dockerfile == dockerfile
    with pytest.raises(ConfigError, match="tool.mlenv.docker.base-dockerfile: .*base.Dockerfile' does not exist"):
        spec.hash()
    dockerfile.parent.mkdir()
    dockerfile.write_text("FROM debian:12-slim\nRUN apt-get update && apt-get install -y libgl1\n")
    first = load_spec(project)
    assert first.hash() != without.hash()
    assert first.definition()["docker"] == {"base-dockerfile": str(dockerfile)}
    moved = project / "other.Dockerfile"  # the same content elsewhere: the same environment
    moved.write_bytes(dockerfile.read_bytes())
    (project / "pyproject.toml").write_text((project / "pyproject.toml").read_text().replace("docker/base", "other"))
    assert load_spec(project).hash() == first.hash()
    moved.write_text(moved.read_text() + "RUN true\n")
    assert load_spec(project).hash() != first.hash()


def test_locks_without_a_base_dockerfile_keep_their_digest() -> None:
    from hatch_mlenv.lockfile import LockedPackage, lock_digest

    package = LockedPackage("linux-64", "conda", "zlib", "1.3", "https://x/zlib.conda", sha256="0" * 64)
    # the digest's payload before base-dockerfile existed, written out
    import hashlib
    import json

    before = {"packages": [package.canonical()], "variables": [["A", "1"]], "base-image": None}
    expected = hashlib.sha256(json.dumps(before, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert lock_digest([package], {"A": "1"}, None) == lock_digest([package], {"A": "1"}, None, None, None) == expected
    assert lock_digest([package], {"A": "1"}, None, None, "f" * 64) != expected


def test_secret_value_does_not_reach_the_hash_payload(tmp_path: Path) -> None:
    one = write_project(tmp_path / "one", 'variables = { T = { value = "s3cr3t-1", secret = true } }\n')
    two = write_project(tmp_path / "two", 'variables = { T = { value = "s3cr3t-2", secret = true } }\n')
    assert load_spec(one).hash() == load_spec(two).hash()


@pytest.mark.parametrize(
    ("body", "key", "message"),
    [
        ('chanels = ["x"]\n', "tool.mlenv.chanels", "did you mean channels?"),
        ('platfroms = ["linux-64"]\n', "tool.mlenv.platfroms", "did you mean platforms?"),
        ("[tool.mlenv.docker]\nbase_image = 'x'\n", "tool.mlenv.docker.base_image", "did you mean base-image?"),
        ('conda = "numpy"\n', "tool.mlenv.conda", "must be an array of strings, not a string"),
        ("conda = [1]\n", "tool.mlenv.conda[0]", "must be a string, not an integer"),
        ("python = 3.11\n", "tool.mlenv.python", "must be a string, not a float"),
        ('include-project-dependencies = "yes"\n', "tool.mlenv.include-project-dependencies", "true or false"),
        ('pip = ["requests >>> 2"]\n', "tool.mlenv.pip[0]", "invalid PEP 508 requirement"),
        ('platforms = ["linux-46"]\n', "tool.mlenv.platforms[0]", "did you mean linux-64?"),
        ('name = "has space"\n', "tool.mlenv.name", "invalid name"),
        ("variables = { 1BAD = 'x' }\n", "tool.mlenv.variables.1BAD", "invalid environment variable name"),
        ("variables = { X = { secret = false } }\n", "tool.mlenv.variables.X.value", "missing"),
        ("variables = { X = 3 }\n", "tool.mlenv.variables.X", "must be a string or a table"),
        ("[tool.mlenv.virtual-packages.linux-64]\ncuda = '12'\n", "tool.mlenv.virtual-packages.linux-64.cuda", "start with '__'"),
        ("[tool.mlenv.virtual-packages.linx-64]\n__cuda = '12'\n", "tool.mlenv.virtual-packages.linx-64", "did you mean linux-64?"),
        ("[tool.mlenv.docker]\nprefix = 'opt/env'\n", "tool.mlenv.docker.prefix", "absolute path"),
        ("[tool.mlenv.docker]\nbase-dockerfile = ' '\n", "tool.mlenv.docker.base-dockerfile", "must name a Dockerfile"),
        ("[tool.mlenv.docker]\nbase-dockerfile = 3\n", "tool.mlenv.docker.base-dockerfile", "must be a string"),
        ("[tool.mlenv.docker]\nbase-dockerfile = 'base.Dockerfile'\nbase-image = 'debian:12-slim'\n",
         "tool.mlenv.docker.base-dockerfile", "and base-image ('debian:12-slim') are both set"),
        ("[tool.mlenv.docker]\nbase-docker-file = 'x'\n", "tool.mlenv.docker.base-docker-file",
         "did you mean base-dockerfile?"),
        ('pip-index-url = "ftp://x"\n', "tool.mlenv.pip-index-url", "not an http(s) or file URL"),
        ('lockfile = "../../x.yml"\n', "tool.mlenv.lockfile", "outside the project directory"),
        ('lockfile = "/nonexistent/dir/l.yml"\n', "tool.mlenv.lockfile", "outside the project directory"),
        (f'name = "{"n" * 101}"\n', "tool.mlenv.name", "at most 100 characters"),
        ("solver = 1\n", "tool.mlenv.solver", "must be a string, not an integer"),
        ('solver = " "\n', "tool.mlenv.solver", "must name a solver"),
        (f"variables = {{ BIG = '{'x' * (32 * 1024 + 1)}' }}\n", "tool.mlenv.variables.BIG", "longer than 32 KiB"),
        (f"variables = {{ BIG = {{ value = '{'x' * (32 * 1024 + 1)}' }} }}\n", "tool.mlenv.variables.BIG",
         "longer than 32 KiB"),
    ],
)
def test_config_errors_name_file_and_key(tmp_path: Path, body: str, key: str, message: str) -> None:
    write_project(tmp_path, body)
    with pytest.raises(ConfigError) as info:
        load_spec(tmp_path)
    text = str(info.value)
    assert text.startswith(f"{tmp_path / 'pyproject.toml'}: {key}: "), text
    assert message in text


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ('chanels = ["x"]\n', "tool.mlenv.chanels: unknown key; did you mean channels?"),
        ('conda = ["numpy 1.2.3.4.5 [[["]\n', "tool.mlenv.conda[0]: invalid match spec"),
        ('python = ">>3.6"\n', "tool.mlenv.python: invalid match spec"),
        ('channels = ["./no-such-channel"]\nconda = ["numpy"]\n', "tool.mlenv.channels[0]: channel directory"),
        ('platforms = ["windows-64"]\n', "tool.mlenv.platforms[0]: unknown platform"),
        ('pip = ["mlenv-tiny @@ 1"]\n', "tool.mlenv.pip[0]: invalid PEP 508"),
        ('conda = "numpy"\n', "tool.mlenv.conda: must be an array"),
    ],
)
def test_cli_config_errors_exit_2_and_change_nothing(tmp_path: Path, defaults_2018: Path, body: str, needle: str) -> None:
    if "channels" not in body:
        body = f'channels = ["{defaults_2018}"]\n' + body
    write_project(tmp_path, body)
    before = tree_hashes(tmp_path)
    result = mlenv("lock", "--project", str(tmp_path))
    assert_clean_error(result, 2, "pyproject.toml", needle)
    assert tree_hashes(tmp_path) == before


def test_missing_pyproject(tmp_path: Path) -> None:
    result = mlenv("lock", "--project", str(tmp_path))
    assert_clean_error(result, 2, str(tmp_path / "pyproject.toml"), "file not found")
    assert list(tmp_path.iterdir()) == []


def test_invalid_toml_and_missing_table(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[project\nname = 1\n")
    assert_clean_error(mlenv("show", "--project", str(tmp_path)), 2, "pyproject.toml", "invalid TOML")
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    assert_clean_error(mlenv("lock", "--project", str(tmp_path)), 2, "tool.mlenv", "missing table")
