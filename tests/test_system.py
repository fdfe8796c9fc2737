"""System requirements: declared, locked, detected on the host (CONDA_OVERRIDE_*) and checked before anything runs.

The channel holds real package archives: `mlenv-torch` 2.3.0 as a CPU build and as a CUDA build
(higher build number, `__cuda >=11.2`, pulling `mlenv-cudart`, which needs `__cuda >=12.0` and
`__glibc >=2.28`), and `mlenv-newlibc`, which needs `__glibc >=2.34`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hatch_mlenv.lockfile import read_lock
from tests.conftest import assert_clean_error, mlenv, tree_hashes, write_project

OVERRIDES = ("CONDA_OVERRIDE_CUDA", "CONDA_OVERRIDE_GLIBC", "CONDA_OVERRIDE_OSX", "CONDA_OVERRIDE_ARCHSPEC",
             "MLENV_IGNORE_SYSTEM_REQUIREMENTS")


@pytest.fixture(scope="module")
def gpu_channel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fixtures.conda_channel import build_channel, gpu_packages

    return build_channel(tmp_path_factory.mktemp("gpu-channel"), gpu_packages())


@pytest.fixture(autouse=True)
def host_as_detected(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sets the overrides it means; none leaks in from the caller's shell."""
    for name in OVERRIDES:
        monkeypatch.delenv(name, raising=False)


def project(root: Path, channel: Path, body: str) -> Path:
    return write_project(root, f'channels = ["{channel}"]\nplatforms = ["linux-64"]\n' + body, name=root.name)


def builds(root: Path, lockfile: str = "conda-lock.yml") -> dict[str, str]:
    return {p.name: p.build or "" for p in read_lock(root / lockfile).packages}


def test_a_cpu_environment_locks_the_cpu_build_and_a_declared_cuda_the_cuda_build(
    tmp_path: Path, gpu_channel: Path
) -> None:
    cpu = project(tmp_path / "cpu", gpu_channel, 'conda = ["mlenv-torch"]\n')
    mlenv("lock", "--project", str(cpu), check=True)
    assert builds(cpu) == {"mlenv-torch": "cpu_0"}  # conda-lock's assumed CUDA 11.4 would take cuda120_1

    gpu = project(tmp_path / "gpu", gpu_channel,
                  'conda = ["mlenv-torch"]\n[tool.mlenv.system-requirements]\ncuda = "12.2"\n')
    mlenv("lock", "--project", str(gpu), check=True)
    assert builds(gpu) == {"mlenv-torch": "cuda120_1", "mlenv-cudart": "0"}
    lock = read_lock(gpu / "conda-lock.yml")
    assert lock.system_requirements == {"cuda": "12.2"}
    assert lock.recorded_needs == {"linux-64": {
        "__cuda": {"constraint": ">=12.2", "by": ["tool.mlenv.system-requirements.cuda"]},
        "__glibc": {"constraint": ">=2.28,<3.0.a0", "by": ["mlenv-cudart 12.4 0"]},
    }}

    shown = json.loads(mlenv("show", "--project", str(gpu), "--json", check=True).stdout)
    assert shown["system_requirements"] == {"cuda": "12.2"}
    assert shown["needs"]["linux-64"]["__cuda"]["constraint"] == ">=12.2"
    text = mlenv("show", "--project", str(gpu), check=True).stdout
    assert "requires  cuda 12.2" in text and "__cuda >=12.2" in text

    # Declaring a requirement changes the spec: the lock is stale until relocked.
    pyproject = gpu / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('cuda = "12.2"', 'cuda = "12.4"'))
    assert mlenv("lock", "--check", "--project", str(gpu)).returncode == 1


def test_named_environments_inherit_and_drop_requirements(tmp_path: Path, gpu_channel: Path) -> None:
    root = project(tmp_path / "proj", gpu_channel, """
        conda = ["mlenv-torch"]
        [tool.mlenv.system-requirements]
        cuda = "12.2"
        [tool.mlenv.envs.cpu.system-requirements]
        cuda = false
        [tool.mlenv.envs.old-glibc.system-requirements]
        glibc = "2.17"
        """)
    mlenv("lock", "--project", str(root), "--env", "cpu", check=True)
    assert builds(root, "conda-lock.cpu.yml") == {"mlenv-torch": "cpu_0"}
    assert read_lock(root / "conda-lock.cpu.yml").system_requirements == {}
    # cuda inherited, glibc 2.17 added: mlenv-cudart (needs glibc 2.28) rules the CUDA build out
    mlenv("lock", "--project", str(root), "--env", "old-glibc", check=True)
    assert builds(root, "conda-lock.old-glibc.yml") == {"mlenv-torch": "cpu_0"}
    lock = read_lock(root / "conda-lock.old-glibc.yml")
    assert lock.system_requirements == {"cuda": "12.2", "glibc": "2.17"}
    # the declared >=2.17 and the package's >=2.17,<3.0.a0 have the same floor: the bounded one is stronger
    assert lock.recorded_needs["linux-64"]["__glibc"] == {"constraint": ">=2.17,<3.0.a0", "by": ["mlenv-torch 2.3.0 cpu_0"]}
    assert lock.recorded_needs["linux-64"]["__cuda"] == {
        "constraint": ">=12.2", "by": ["tool.mlenv.system-requirements.cuda"]}


@pytest.mark.parametrize(
    ("body", "key", "needle"),
    [
        ('cuda = 12.2\n', "tool.mlenv.system-requirements.cuda", 'must be a quoted string such as cuda = "12.2"'),
        ('cuda = "twelve"\n', "tool.mlenv.system-requirements.cuda", "invalid value 'twelve'"),
        ('glibc = "2.28 or so"\n', "tool.mlenv.system-requirements.glibc", "must be a version"),
        ('cdua = "12"\n', "tool.mlenv.system-requirements.cdua", "did you mean cuda?"),
        ('macos = "13.0"\n', "tool.mlenv.system-requirements.macos", "applies to none of the platforms (linux-64)"),
        ('archspec = "aarch64"\n', "tool.mlenv.system-requirements.archspec", "applies to none of the platforms"),
        ('archspec = "x86-64 v3"\n', "tool.mlenv.system-requirements.archspec", "microarchitecture name"),
    ],
)
def test_a_malformed_requirement_names_the_key_and_writes_nothing(
    tmp_path: Path, gpu_channel: Path, body: str, key: str, needle: str
) -> None:
    root = project(tmp_path / "proj", gpu_channel, 'conda = ["mlenv-torch"]\n[tool.mlenv.system-requirements]\n' + body)
    before = tree_hashes(tmp_path)
    for command in (("lock",), ("doctor",), ("install",)):
        result = mlenv(*command, "--project", str(root))
        assert_clean_error(result, 2, f"pyproject.toml: {key}: ", needle)
    assert tree_hashes(tmp_path) == before


def test_not_a_table(tmp_path: Path, gpu_channel: Path) -> None:
    root = project(tmp_path / "proj", gpu_channel, 'system-requirements = "cuda 12"\n')
    assert_clean_error(mlenv("lock", "--project", str(root)), 2, "tool.mlenv.system-requirements: must be a table")


@pytest.fixture
def cuda_lock(tmp_path: Path, gpu_channel: Path) -> Path:
    """A CUDA lock made with the low-level `virtual-packages` override: its needs come from the packages."""
    root = project(tmp_path / "fraud-train", gpu_channel,
                   'conda = ["mlenv-torch"]\n[tool.mlenv.virtual-packages.linux-64]\n__cuda = "12.4"\n')
    mlenv("lock", "--project", str(root), check=True)
    assert builds(root)["mlenv-torch"] == "cuda120_1"
    return root


def test_install_and_run_refuse_a_host_without_the_cuda_driver_before_touching_a_prefix(
    cuda_lock: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONDA_OVERRIDE_CUDA", "")  # rattler: no CUDA driver, whatever the machine has
    before = tree_hashes(cuda_lock)
    expected = ("fraud-train needs __cuda >=12.0 (mlenv-cudart 12.4 0); this machine has no CUDA driver "
                "(set CONDA_OVERRIDE_CUDA to override, or --ignore-system-requirements)")
    for command in (("install",), ("run",), ("pack",)):
        result = mlenv(*command, "--project", str(cuda_lock), *(["--", "true"] if command == ("run",) else []))
        assert_clean_error(result, 1, expected)
        assert result.stderr.strip() == f"error: {expected}"  # one line
    assert tree_hashes(cuda_lock) == before
    assert not (cuda_lock / ".mlenv").exists()

    monkeypatch.setenv("CONDA_OVERRIDE_CUDA", "11.8")
    result = mlenv("install", "--project", str(cuda_lock))
    assert_clean_error(result, 1, "needs __cuda >=12.0 (mlenv-cudart 12.4 0); this machine has __cuda 11.8")

    monkeypatch.setenv("CONDA_OVERRIDE_CUDA", "12.4")
    mlenv("install", "--project", str(cuda_lock), check=True)
    prefix = cuda_lock / ".mlenv" / "envs" / "fraud-train"
    assert (prefix / "share" / "mlenv-torch" / "build.txt").read_text() == "cuda120_1\n"
    ran = mlenv("run", "--project", str(cuda_lock), "--", "cat", str(prefix / "share" / "mlenv-torch" / "build.txt"))
    assert ran.returncode == 0 and ran.stdout == "cuda120_1\n", ran.stderr

    monkeypatch.setenv("CONDA_OVERRIDE_GLIBC", "2.17")  # a driver, but an old Linux: the glibc need fails
    result = mlenv("run", "--project", str(cuda_lock), "--", "true")
    assert_clean_error(result, 1, "fraud-train needs __glibc >=2.28,<3.0.a0 (mlenv-cudart 12.4 0); "
                       "this machine has __glibc 2.17 (set CONDA_OVERRIDE_GLIBC to override")


def test_the_bypass_flag_warns_and_goes_on(cuda_lock: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONDA_OVERRIDE_CUDA", "")
    result = mlenv("install", "--project", str(cuda_lock), "--ignore-system-requirements")
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("mlenv: warning: ignoring system requirements: fraud-train needs __cuda >=12.0")
    assert (cuda_lock / ".mlenv" / "envs" / "fraud-train" / "conda-meta").is_dir()
    ran = mlenv("run", "--project", str(cuda_lock), "--ignore-system-requirements", "--", "true")
    assert ran.returncode == 0 and "mlenv: warning: ignoring system requirements" in ran.stderr


def test_a_glibc_too_old_for_a_package(tmp_path: Path, gpu_channel: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = project(tmp_path / "newlibc", gpu_channel, 'conda = ["mlenv-newlibc"]\n')
    result = mlenv("lock", "--project", str(root))  # the solve assumes glibc 2.28 unless told otherwise
    assert_clean_error(result, 1, "cannot solve the environment for linux-64")
    assert "__glibc" in result.stderr
    pyproject = root / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + '[tool.mlenv.system-requirements]\nglibc = "2.34"\n')
    mlenv("lock", "--project", str(root), check=True)
    monkeypatch.setenv("CONDA_OVERRIDE_GLIBC", "2.28")
    assert_clean_error(mlenv("install", "--project", str(root)), 1,
                       "newlibc needs __glibc >=2.34 (mlenv-newlibc 1.0 0 and 1 more); this machine has __glibc 2.28")
    monkeypatch.setenv("CONDA_OVERRIDE_GLIBC", "2.34")
    mlenv("install", "--project", str(root), check=True)


def test_doctor_json(cuda_lock: Path, tmp_path: Path, gpu_channel: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONDA_OVERRIDE_CUDA", "")
    refused = mlenv("doctor", "--project", str(cuda_lock), "--json")
    assert refused.returncode == 1, refused.stderr
    report = json.loads(refused.stdout)
    assert report["ok"] is False and report["platform"] == "linux-64" and report["platform_locked"] is True
    assert report["overrides"] == {"CONDA_OVERRIDE_CUDA": ""}
    assert "__cuda" not in {p["name"] for p in report["host"]}
    assert "__glibc" in {p["name"] for p in report["host"]}
    assert report["needs"][0] == {"name": "__cuda", "constraint": ">=12.0", "by": ["mlenv-cudart 12.4 0"],
                                  "host": None, "met": False}
    assert report["needs"][1]["name"] == "__glibc" and report["needs"][1]["met"] is True
    assert report["unmet"] == ["fraud-train needs __cuda >=12.0 (mlenv-cudart 12.4 0); this machine has no CUDA "
                               "driver (set CONDA_OVERRIDE_CUDA to override, or --ignore-system-requirements)"]

    monkeypatch.setenv("CONDA_OVERRIDE_CUDA", "12.4")
    monkeypatch.setenv("CONDA_OVERRIDE_ARCHSPEC", "x86_64_v3")
    accepted = mlenv("doctor", "--project", str(cuda_lock), "--json")
    assert accepted.returncode == 0, accepted.stderr
    report = json.loads(accepted.stdout)
    assert report["ok"] is True and report["unmet"] == []
    host = {p["name"]: p for p in report["host"]}
    assert host["__cuda"]["version"] == "12.4" and host["__archspec"]["build"] == "x86_64_v3"
    assert [n["host"] for n in report["needs"]] == ["12.4", report["needs"][1]["host"]]

    text = mlenv("doctor", "--project", str(cuda_lock))
    assert text.returncode == 0 and "__cuda >=12.0" in text.stdout and "mlenv-cudart 12.4 0" in text.stdout


def test_doctor_bad_input(tmp_path: Path, cuda_lock: Path, gpu_channel: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    unlocked = project(tmp_path / "unlocked", gpu_channel, 'conda = ["mlenv-torch"]\n')
    assert_clean_error(mlenv("doctor", "--project", str(unlocked)), 1, "conda-lock.yml", "run `mlenv lock`")  # not there
    assert_clean_error(mlenv("doctor", "--project", str(tmp_path / "nowhere")), 2, "pyproject.toml")
    assert_clean_error(mlenv("doctor", "--project", str(cuda_lock), "--env", "nope"), 2, "tool.mlenv.envs.nope")
    monkeypatch.setenv("CONDA_OVERRIDE_ARCHSPEC", "bogus")
    assert_clean_error(mlenv("doctor", "--project", str(cuda_lock)), 2,
                       "cannot detect this machine's virtual packages (CONDA_OVERRIDE_ARCHSPEC='bogus')")


def test_archspec_needs_are_met_by_higher_levels(tmp_path: Path, gpu_channel: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    root = project(tmp_path / "v3", gpu_channel,
                   'conda = ["mlenv-torch"]\n[tool.mlenv.system-requirements]\narchspec = "x86_64_v3"\n')
    mlenv("lock", "--project", str(root), check=True)
    assert read_lock(root / "conda-lock.yml").recorded_needs["linux-64"]["__archspec"]["constraint"] == "x86_64_v3"
    monkeypatch.setenv("CONDA_OVERRIDE_ARCHSPEC", "x86_64_v4")  # includes v3
    assert mlenv("doctor", "--project", str(root)).returncode == 0
    monkeypatch.setenv("CONDA_OVERRIDE_ARCHSPEC", "x86_64_v2")
    assert_clean_error(mlenv("install", "--project", str(root)), 1,
                       "v3 needs __archspec x86_64_v3 (tool.mlenv.system-requirements.archspec); "
                       "this machine has __archspec x86_64_v2 (set CONDA_OVERRIDE_ARCHSPEC")


def test_a_lock_without_recorded_needs_derives_them(cuda_lock: Path) -> None:
    """Locks written before hatch-mlenv recorded needs (or by conda-lock) are checked all the same."""
    from hatch_mlenv.lockfile import parse_lock
    from hatch_mlenv.system import lock_needs

    text = (cuda_lock / "conda-lock.yml").read_text()
    older = "\n".join(line for line in text.splitlines() if "mlenv.needs:" not in line)
    lock = parse_lock(older, "older")
    assert "mlenv.needs" not in lock.custom
    assert lock_needs(lock) == read_lock(cuda_lock / "conda-lock.yml").recorded_needs


def test_the_pytest_plugin_refuses_a_host_that_cannot_run_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import subprocess
    import sys

    from fixtures.host_python import host_python_minor, make_host_python_channel

    channel = make_host_python_channel(tmp_path / "channel")
    root = write_project(tmp_path / "proj", f'channels = ["{channel}"]\nplatforms = ["linux-64"]\n'
                         f'python = "{host_python_minor()}"\nconda = ["mlenv-hello ==1.0.0"]\n'
                         '[tool.mlenv.system-requirements]\ncuda = "12.2"\n')
    (root / "test_sample.py").write_text("def test_runs():\n    assert True\n")
    monkeypatch.setenv("CONDA_OVERRIDE_CUDA", "12.4")
    mlenv("lock", "--project", str(root), check=True)
    mlenv("install", "--project", str(root), check=True)
    prefix = root / ".mlenv" / "envs" / "demo"
    repo = Path(__file__).resolve().parents[1]
    host_site = [p for p in sys.path if p.endswith("site-packages")]

    def pytest_in_prefix(*args: str, cuda: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo / "src"), *host_site]),
               "CONDA_OVERRIDE_CUDA": cuda}
        process = subprocess.Popen([str(prefix / "bin" / "python"), "-m", "pytest", "-p", "no:cacheprovider",
                                    "--mlenv-verify", *args], cwd=root, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=env)
        out, err = process.communicate(timeout=300)
        return subprocess.CompletedProcess(process.args, process.returncode, out, err)

    assert pytest_in_prefix(cuda="12.4").returncode == 0
    refused = pytest_in_prefix(cuda="")
    assert refused.returncode == 1
    assert ("mlenv: error: demo needs __cuda >=12.2 (tool.mlenv.system-requirements.cuda); this machine has no CUDA "
            "driver (set CONDA_OVERRIDE_CUDA to override, or --mlenv-ignore-system-requirements)") in refused.stdout + refused.stderr
    assert "1 passed" not in refused.stdout
    bypassed = pytest_in_prefix("--mlenv-ignore-system-requirements", cuda="")
    assert bypassed.returncode == 0 and "1 passed" in bypassed.stdout
    assert "mlenv: ignoring system requirements: demo needs __cuda >=12.2" in bypassed.stdout + bypassed.stderr


@pytest.mark.parametrize("needs", [
    {"__glibc": {"constraint": ">=2.17"}},
    {"__glibc": {"constraint": ">=99.0"}},
    {"__linux": {"constraint": ">=3.10"}},
    {"__linux": {"constraint": ">=3.10"}, "__glibc": {"constraint": ">=2.28"}},
    {"__linux": {"constraint": ">=999"}},
])
def test_the_fast_host_check_agrees_with_rattler(needs: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """`simple_needs_met` reads glibc and the kernel with the standard library (no rattler on a
    no-op install); where it says met, rattler's detection must say met too, and where rattler says
    unmet, it must leave the answer to rattler."""
    from hatch_mlenv.system import check, detect_host, simple_needs_met

    for variable in ("CONDA_OVERRIDE_GLIBC", "CONDA_OVERRIDE_CUDA", "CONDA_OVERRIDE_OSX", "CONDA_OVERRIDE_ARCHSPEC"):
        monkeypatch.delenv(variable, raising=False)
    rattler_says = all(finding.met for finding in check(needs, detect_host()))
    assert simple_needs_met(needs) == rattler_says
    monkeypatch.setenv("CONDA_OVERRIDE_GLIBC", "2.17")
    if "__glibc" in needs:
        assert not simple_needs_met(needs)  # an override is rattler's to read
