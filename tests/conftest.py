"""Shared test helpers: real projects in temp dirs, the real `mlenv` command."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# Real data too big for the repository (the 2018 `defaults` snapshot, lockfiles
# conda-lock wrote): $MLENV_SHARED_DATA, else `shared/data` beside the checkout.
SHARED_DATA = Path(
    os.environ.get("MLENV_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
)
DEFAULTS_2018 = SHARED_DATA / "defaults-2018"
LOCK_SAMPLES = SHARED_DATA / "conda-lock-samples"
LOCK_SCHEMA = Path(__file__).parent / "data" / "conda-lock-v1.schema.json"


def write_project(root: Path, mlenv: str, *, name: str = "demo", version: str = "0.1.0", extra: str = "") -> Path:
    """A pyproject.toml with `[project]` and the given `[tool.mlenv]` body."""
    root.mkdir(parents=True, exist_ok=True)
    text = f'[project]\nname = "{name}"\nversion = "{version}"\n{textwrap.dedent(extra)}\n[tool.mlenv]\n'
    (root / "pyproject.toml").write_text(text + textwrap.dedent(mlenv).lstrip())
    return root


def mlenv(*args: str, cwd: Path | None = None, check: bool | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real `mlenv` console script."""
    result = subprocess.run(
        [sys.executable, "-m", "hatch_mlenv", *args],
        cwd=cwd,
        # not capture_output: tests that import conda-lock's own parser (its CLI
        # module) get its vendored poetry, which replaces subprocess.run in-process
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        timeout=600,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"mlenv {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under root: proves a failed command changed nothing."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def assert_clean_error(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    """A clear first line naming file and key, the documented exit code, no traceback."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    while lines and lines[0].startswith("mlenv: ") and not lines[0].startswith("mlenv: warning"):
        lines.pop(0)  # progress lines of the steps that ran before the failure
    first = lines[0] if lines else ""
    assert first.startswith("error: "), result.stderr
    for needle in needles:
        assert needle in first, (needle, first)
    assert "Traceback" not in result.stderr + result.stdout


# conda-lock's vendored poetry (imported by the tests that parse with conda-lock's
# own CLI module) replaces subprocess.run with a Python 3.5 backport that knows no
# capture_output; hatch-mlenv itself imports only conda-lock's models. Each test
# starts with the standard library's functions, whatever ran before it.
STDLIB_SUBPROCESS = (subprocess.run, subprocess.CalledProcessError)


@pytest.fixture(autouse=True)
def stdlib_subprocess() -> None:
    subprocess.run, subprocess.CalledProcessError = STDLIB_SUBPROCESS


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data directory; a test that needs it fails (never skips) without it."""
    missing = [p for p in (DEFAULTS_2018 / "linux-64" / "repodata.json", LOCK_SAMPLES) if not p.exists()]
    if missing:
        pytest.fail(
            f"shared test data not found: {missing[0]} does not exist; set MLENV_SHARED_DATA to the directory "
            "holding defaults-2018/ and conda-lock-samples/ (default: shared/data beside the checkout)",
            pytrace=False,
        )
    return SHARED_DATA


@pytest.fixture(scope="session")
def defaults_2018(shared_data: Path) -> Path:
    return DEFAULTS_2018


@pytest.fixture(scope="session")
def channel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real conda channel (linux-64, osx-arm64, noarch) built from package archives."""
    from fixtures.conda_channel import make_default_channel

    return make_default_channel(tmp_path_factory.mktemp("channel"), multi_platform=True)


@pytest.fixture(scope="session")
def pip_index(tmp_path_factory: pytest.TempPathFactory):  # -> Iterator[str]
    """A PEP 503 index of small real wheels on 127.0.0.1; yields its /simple/ URL."""
    from fixtures.pip_index import make_default_index, serve

    with serve(make_default_index(tmp_path_factory.mktemp("pypi"))) as url:
        yield url


@pytest.fixture(autouse=True)
def isolated_registry(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own local registry (and so does every `mlenv` it runs).

    Progress is asked for (`MLENV_PROGRESS=1`, as `mlenv -v` does): steps are quiet when stderr is
    not a terminal, and the tests assert which ones ran (`resolving ... with uv`, `building ...
    from source`) in what `mlenv`, `hatch` and the build hook write to a pipe. tests/test_output.py
    removes it to check the quiet default."""
    home = tmp_path_factory.mktemp("mlenv-home")
    monkeypatch.setenv("MLENV_HOME", str(home))
    monkeypatch.setenv("MLENV_PROGRESS", "1")
    for name in ("MLENV_REGISTRY", "MLENV_CONFIG", "MLENV_REGISTRY_USERNAME", "MLENV_REGISTRY_PASSWORD", "MLENV_QUIET"):
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture(scope="session")
def hatch_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("hatch-data")
    # Hatch 1.18's `type = "system"` environment touches a marker file here
    # without creating the directory first.
    (data / "env" / "system").mkdir(parents=True)
    return data


@pytest.fixture(autouse=True)
def hatch_builds_with_this_interpreter(monkeypatch: pytest.MonkeyPatch, hatch_data_dir: Path) -> None:
    """`python` is the interpreter running the tests, activated virtualenv or not.

    The test projects build with `[tool.hatch.envs.hatch-build] type = "system"`
    (offline: no build environment to fill from an index), which is whatever
    `python` PATH finds first: without this, a suite run as
    `.venv/bin/python -m pytest` would build with the machine's python. Hatch's
    environments and their metadata live in the session's own data directory.
    """
    bin_dir = os.path.dirname(sys.executable)
    monkeypatch.setenv("PATH", os.pathsep.join([bin_dir, os.environ.get("PATH", "")]))
    monkeypatch.setenv("HATCH_DATA_DIR", str(hatch_data_dir))


@pytest.fixture(scope="session")
def oci_registry(tmp_path_factory: pytest.TempPathFactory):  # -> Iterator[RunningRegistry]
    """Debian's docker-registry on 127.0.0.1 with htpasswd auth. Fails (never skips) when missing."""
    from fixtures.oci_registry import run_registry

    with run_registry(tmp_path_factory.mktemp("oci-registry")) as registry:
        yield registry


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "tampers_lockfiles: the test corrupts lockfiles on purpose; they are not schema-checked"
    )


@pytest.fixture(autouse=True)
def lockfiles_match_the_schema(request: pytest.FixtureRequest, tmp_path: Path):  # -> Iterator[None]
    """After each test, every lockfile hatch-mlenv wrote under its tmp_path validates against
    conda-lock's lock format v1 JSON Schema (as conda-lock 4 ships it)."""
    yield
    if request.node.get_closest_marker("tampers_lockfiles"):
        return
    import json

    import jsonschema
    import yaml

    validator = jsonschema.Draft7Validator(json.loads(LOCK_SCHEMA.read_text()))
    for path in sorted(tmp_path.rglob("*.yml")):
        text = path.read_text(errors="replace")
        if "mlenv.tool: hatch-mlenv" not in text:
            continue  # not written by hatch-mlenv (conda-lock samples, environment.yml, ...)
        errors = sorted(validator.iter_errors(yaml.safe_load(text)), key=lambda e: list(e.absolute_path))
        assert not errors, f"{path} does not match the conda-lock v1 schema: {errors[0].message} at {list(errors[0].absolute_path)}"
