"""`mlenv verify`, the `pytest --mlenv-verify` plugin, and `mlenv sbom` (validated against CycloneDX 1.5)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hatch_mlenv.lockfile import read_lock
from tests.conftest import assert_clean_error, mlenv, write_project

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def installed(tmp_path: Path, channel: Path, pip_index: str) -> Path:
    project = write_project(
        tmp_path / "proj",
        f'channels = ["{channel}"]\nplatforms = ["linux-64"]\npython = "3.11"\n'
        f'conda = ["mlenv-hello ==1.0.0", "numpy"]\npip = ["mlenv-tiny==0.1.0"]\npip-index-url = "{pip_index}"\n',
    )
    mlenv("lock", "--project", str(project), check=True)
    mlenv("install", "--project", str(project), check=True)
    return project


def test_verify_identical_then_each_kind_of_drift(installed: Path) -> None:
    prefix = installed / ".mlenv" / "envs" / "demo"
    ok = mlenv("verify", "--project", str(installed))
    assert ok.returncode == 0 and "matches conda-lock.yml" in ok.stdout

    (prefix / "bin" / "mlenv-hello").write_text("#!/bin/sh\necho changed\n")
    site = prefix / "lib" / "python3.11" / "site-packages"
    (site / "mlenv_tiny" / "__init__.py").write_text("# edited\n")
    numpy_meta = next((prefix / "conda-meta").glob("numpy-*.json"))
    numpy_meta.unlink()
    extra = json.loads(next((prefix / "conda-meta").glob("python-3*.json")).read_text())
    extra["name"], extra["version"], extra["build"] = "stowaway", "9.9", "0"
    (prefix / "conda-meta" / "stowaway-9.9-0.json").write_text(json.dumps(extra))

    drift = mlenv("verify", "--json", "--project", str(installed))
    assert drift.returncode == 1
    data = json.loads(drift.stdout)
    assert data["identical"] is False
    assert any(m.startswith("conda numpy 1.26.4") for m in data["missing"])
    assert data["extra"] == ["conda stowaway 9.9 0"]
    assert any("bin/mlenv-hello (mlenv-hello)" in f for f in data["modified_files"])
    assert any("mlenv_tiny/__init__.py" in f for f in data["modified_files"])
    table = mlenv("verify", "--project", str(installed))
    assert table.returncode == 1 and "differs from conda-lock.yml" in table.stderr and "stowaway" in table.stderr


@pytest.mark.parametrize(
    "tampering",
    ["symlinked-conda-file", "symlinked-wheel-file", "evil-pth", "evil-bin", "evil-activate", "meta-url", "meta-sha256"],
)
def test_verify_sees_what_hides_between_packages(installed: Path, tampering: str) -> None:
    prefix = installed / ".mlenv" / "envs" / "demo"
    site = prefix / "lib" / "python3.11" / "site-packages"
    assert mlenv("verify", "--project", str(installed)).returncode == 0
    hello_meta = next((prefix / "conda-meta").glob("mlenv-hello-*.json"))
    if tampering == "symlinked-conda-file":
        target = prefix / "bin" / "mlenv-hello"
        target.unlink()
        target.symlink_to("/bin/sh")
        field, needle = "modified_files", "bin/mlenv-hello (mlenv-hello): replaced by a symlink to /bin/sh"
    elif tampering == "symlinked-wheel-file":
        target = site / "mlenv_tiny" / "__init__.py"
        target.unlink()
        target.symlink_to("/etc/hostname")
        field, needle = "modified_files", "mlenv_tiny/__init__.py: replaced by a symlink to /etc/hostname"
    elif tampering == "evil-pth":
        (site / "evil.pth").write_text("import os; os.system('true')\n")
        field, needle = "unowned_files", "lib/python3.11/site-packages/evil.pth: no package installed it (a .pth file"
    elif tampering == "evil-bin":
        (prefix / "bin" / "evil").write_text("#!/bin/sh\n")
        field, needle = "unowned_files", "bin/evil: no package installed it"
    elif tampering == "evil-activate":
        (prefix / "etc" / "conda" / "activate.d").mkdir(parents=True, exist_ok=True)
        (prefix / "etc" / "conda" / "activate.d" / "evil.sh").write_text("export X=1\n")
        field, needle = "unowned_files", "etc/conda/activate.d/evil.sh: no package installed it"
    else:
        record = json.loads(hello_meta.read_text())
        key = "url" if tampering == "meta-url" else "sha256"
        record[key] = "https://evil.example/mlenv-hello.tar.bz2" if key == "url" else "0" * 64
        hello_meta.write_text(json.dumps(record))
        field, needle = "changed", f"conda mlenv-hello: conda-meta {key} "
    result = mlenv("verify", "--json", "--project", str(installed))
    assert result.returncode == 1, result.stdout
    entries = json.loads(result.stdout)[field]
    assert any(needle in entry for entry in entries), entries


def test_verify_bad_prefix(installed: Path, tmp_path: Path) -> None:
    result = mlenv("verify", "--prefix", str(tmp_path), "--project", str(installed))
    assert_clean_error(result, 1, "not a conda prefix", "not installed there")  # not there: 1, as for `pack`


PLUGIN_PROJECT_TEST = "def test_runs():\n    assert True\n"


def test_pytest_plugin_checks_the_running_interpreter(tmp_path: Path) -> None:
    from fixtures.host_python import host_python_minor, make_host_python_channel

    channel = make_host_python_channel(tmp_path / "channel")
    project = write_project(tmp_path / "proj", f'channels = ["{channel}"]\nplatforms = ["linux-64"]\n'
                            f'python = "{host_python_minor()}"\nconda = ["mlenv-hello ==1.0.0"]\n')
    (project / "test_sample.py").write_text(PLUGIN_PROJECT_TEST)
    mlenv("lock", "--project", str(project), check=True)
    mlenv("install", "--project", str(project), check=True)
    prefix = project / ".mlenv" / "envs" / "demo"
    host_site = [p for p in sys.path if p.endswith("site-packages")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), *host_site])}

    def pytest_in_prefix(*args: str) -> subprocess.CompletedProcess[str]:
        process = subprocess.Popen(
            [str(prefix / "bin" / "python"), "-m", "pytest", "-p", "no:cacheprovider", *args],
            cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        out, err = process.communicate(timeout=300)
        return subprocess.CompletedProcess(process.args, process.returncode, out, err)

    ok = pytest_in_prefix("--mlenv-verify")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"mlenv: {prefix} matches the lock" in ok.stdout and "1 passed" in ok.stdout

    (prefix / "bin" / "mlenv-hello").write_text("#!/bin/sh\necho tampered\n")
    drift = pytest_in_prefix("--mlenv-verify")
    assert drift.returncode == 1
    assert "does not match conda-lock.yml" in drift.stdout + drift.stderr
    assert "bin/mlenv-hello" in drift.stdout + drift.stderr
    assert "1 passed" not in drift.stdout  # the session stopped before collecting

    unknown = pytest_in_prefix("--mlenv-verify=nope")
    assert unknown.returncode == 4 and "unknown environment" in unknown.stderr
    assert pytest_in_prefix().returncode == 0  # without the option the plugin does nothing


VALIDATE = """
import sys
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
error = JsonStrictValidator(SchemaVersion.V1_5).validate_str(open(sys.argv[1]).read())
print(error if error is not None else "valid")
"""


def test_sbom_is_valid_cyclonedx_with_purls_hashes_and_licenses(installed: Path, tmp_path: Path) -> None:
    out = tmp_path / "sbom.json"
    mlenv("sbom", "-o", str(out), "--project", str(installed), check=True)
    text = out.read_text()
    # A fresh interpreter: conda-lock, once imported in this one, puts its vendored (older)
    # jsonschema ahead of the real one on sys.path.
    validator = subprocess.Popen([sys.executable, "-c", VALIDATE, str(out)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
    stdout, stderr = validator.communicate(timeout=120)
    assert (validator.returncode, stdout.strip()) == (0, "valid"), stdout + stderr
    bom = json.loads(text)
    lock = read_lock(installed / "conda-lock.yml")
    assert len(bom["components"]) == len(lock.packages)
    by_name = {c["name"]: c for c in bom["components"]}
    hello = by_name["mlenv-hello"]
    assert hello["purl"].startswith("pkg:conda/mlenv-hello@1.0.0?build=0&channel=file://")
    assert hello["licenses"] == [{"license": {"name": "MIT"}}]  # from the channel's repodata
    assert {h["alg"] for h in hello["hashes"]} == {"SHA-256", "MD5"}
    assert by_name["mlenv-tiny"]["purl"] == "pkg:pypi/mlenv-tiny@0.1.0"
    assert bom["metadata"]["component"]["version"] == f"sha256:{lock.digest()}"
    again = mlenv("sbom", "--project", str(installed), check=True).stdout
    assert json.loads(again) == bom  # reproducible: same lock, same SBOM
