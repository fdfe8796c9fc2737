"""An unsolvable conda request says on its first line everything that cannot be had, and why.

rattler names only the first requested spec without candidates; `mlenv lock` names every one
(with the channel's newest version, its builds or a close name), a conflict between requested
specs, a missing dependency or virtual package, and keeps rattler's derivation below. Against
the real 2018 `defaults` snapshot and against channels built here from package archives.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import assert_clean_error, mlenv, tree_hashes, write_project

GLIBC_2_17 = '[tool.mlenv.virtual-packages.linux-64]\n__glibc = "2.17"\n'


def first_line(result: subprocess.CompletedProcess[str]) -> str:
    """The error line a user reads first, after the progress lines of the steps that ran."""
    assert_clean_error(result, 1, "cannot solve the environment for linux-64: ")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    while lines[0].startswith("mlenv: "):
        lines.pop(0)
    return lines[0]


def below(result: subprocess.CompletedProcess[str]) -> str:
    """What follows the first line: rattler's own derivation."""
    return result.stderr.split("error: cannot solve the environment", 1)[1].split("\n", 1)[1]


def lock_fails(root: Path) -> subprocess.CompletedProcess[str]:
    """`mlenv lock` fails, writes no lockfile and changes no file."""
    before = tree_hashes(root)
    result = mlenv("lock", "--project", str(root))
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert tree_hashes(root) == before
    return result


def project(root: Path, channels: list[Path], body: str) -> Path:
    listed = ", ".join(f'"{c}"' for c in channels)
    return write_project(root, f'channels = [{listed}]\nplatforms = ["linux-64"]\n' + body)


@pytest.fixture(scope="module")
def odd_channel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The GPU packages of test_system.py, and packages whose dependencies no channel has."""
    from fixtures.conda_channel import CondaPackage, build_channel, gpu_packages

    return build_channel(tmp_path_factory.mktemp("odd-channel"), [
        *gpu_packages(),
        CondaPackage("needs-missing", "1.0", depends=("not-there >=1",)),
        CondaPackage("needs-missing", "2.0", depends=("mlenv-cudart >=13",)),
    ])


# --- requested specs the channels cannot give, on the real 2018 snapshot ---------------------


def test_a_python_the_channel_does_not_have_names_the_newest_it_has(tmp_path: Path, defaults_2018: Path) -> None:
    root = project(tmp_path / "proj", [defaults_2018], f'python = "3.8"\nconda = ["numpy"]\n{GLIBC_2_17}')
    result = lock_fails(root)
    # before: "error: cannot solve the environment for linux-64:" and rattler's text on line 2
    assert first_line(result) == (
        f"error: cannot solve the environment for linux-64: no python 3.8.* in {defaults_2018.as_uri()}, "
        "newest is 3.7.0"
    )
    assert "No candidates were found for python 3.8.*." in below(result)
    assert not (root / "conda-lock.yml").exists()


def test_every_missing_package_is_named_on_the_first_line(tmp_path: Path, defaults_2018: Path) -> None:
    root = project(tmp_path / "proj", [defaults_2018],
                   f'python = "3.8"\nconda = ["numpy", "nonexistent-pkg", "scipy >=9"]\n{GLIBC_2_17}')
    line = first_line(lock_fails(root))
    channel = defaults_2018.as_uri()
    # rattler stops at python; the records say all three
    assert line == (
        f"error: cannot solve the environment for linux-64: no python 3.8.* in {channel}, newest is 3.7.0; "
        f"no package nonexistent-pkg in {channel}; no scipy >=9 in {channel}, newest is 1.1.0"
    )


def test_a_misspelt_name_gets_a_suggestion(tmp_path: Path, defaults_2018: Path) -> None:
    root = project(tmp_path / "proj", [defaults_2018], f'python = "3.6"\nconda = ["numpyy", "pandsa"]\n{GLIBC_2_17}')
    assert first_line(lock_fails(root)) == (
        "error: cannot solve the environment for linux-64: no packages numpyy (did you mean numpy?) and "
        f"pandsa (did you mean pandas?) in {defaults_2018.as_uri()}"
    )


def test_a_build_the_channel_does_not_have_lists_the_builds_it_has(tmp_path: Path, defaults_2018: Path) -> None:
    root = project(tmp_path / "proj", [defaults_2018], f'conda = ["numpy ==1.15.0 py36_nomkl*"]\n{GLIBC_2_17}')
    assert first_line(lock_fails(root)) == (
        f"error: cannot solve the environment for linux-64: no numpy ==1.15.0 py36_nomkl* in {defaults_2018.as_uri()}, "
        "builds there: py37h2aefc1b_0, py37h1b885b7_0, py36h2aefc1b_0 and 5 more"
    )


def test_a_long_list_is_cut_short(tmp_path: Path, defaults_2018: Path) -> None:
    names = [f"no-such-{n}" for n in range(8)]
    root = project(tmp_path / "proj", [defaults_2018], f"conda = {names!r}\n{GLIBC_2_17}".replace("'", '"'))
    assert first_line(lock_fails(root)) == (
        "error: cannot solve the environment for linux-64: no packages no-such-0, no-such-1, no-such-2, "
        f"no-such-3, no-such-4 and 3 more in {defaults_2018.as_uri()}"
    )


# --- conflicts ------------------------------------------------------------------------------


def test_a_requested_package_that_needs_another_python_names_both(tmp_path: Path, defaults_2018: Path) -> None:
    root = project(tmp_path / "proj", [defaults_2018], f'python = "3.7"\nconda = ["pandas 0.20.*"]\n{GLIBC_2_17}')
    result = lock_fails(root)
    # before: "error: cannot solve the environment for linux-64:"
    assert first_line(result) == (
        "error: cannot solve the environment for linux-64: pandas 0.20.* conflicts with python 3.7.* "
        "(needs python >=3.6,<3.7.0a0, >=3.5,<3.6.0a0 or >=2.7,<2.8.0a0)"
    )
    assert "pandas 0.20.* cannot be installed because there are no viable options:" in below(result)


def test_two_requested_versions_of_one_package(tmp_path: Path, defaults_2018: Path) -> None:
    root = project(tmp_path / "proj", [defaults_2018], f'python = "3.6"\nconda = ["python 2.7.*"]\n{GLIBC_2_17}')
    result = lock_fails(root)
    assert first_line(result) == (
        "error: cannot solve the environment for linux-64: python 3.6.* conflicts with python 2.7.*"
    )
    assert "The following packages are incompatible" in below(result)


def test_two_requested_packages_that_need_different_versions_of_a_third(tmp_path: Path, channel: Path) -> None:
    root = project(tmp_path / "proj", [channel], 'conda = ["conflict-a", "conflict-b"]\n')
    assert first_line(lock_fails(root)) == (
        "error: cannot solve the environment for linux-64: conflict-a conflicts with conflict-b over libbar"
    )


def test_the_previous_lock_is_kept(tmp_path: Path, channel: Path) -> None:
    root = project(tmp_path / "proj", [channel], 'python = "3.10"\nconda = ["numpy"]\n')
    mlenv("lock", "--project", str(root), check=True)
    pyproject = root / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"numpy"', '"numpy 1.25.*"'))
    result = lock_fails(root)  # numpy 1.25 is built for python 3.11 only
    assert first_line(result) == (
        "error: cannot solve the environment for linux-64: numpy 1.25.* conflicts with python 3.10.* "
        "(needs python >=3.11,<3.12)"
    )
    assert (root / "conda-lock.yml").exists()


# --- what the requested packages need -------------------------------------------------------


def test_a_missing_cuda_driver_is_named(tmp_path: Path, odd_channel: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONDA_OVERRIDE_CUDA", raising=False)
    root = project(tmp_path / "proj", [odd_channel], 'conda = ["mlenv-cudart"]\n')
    result = lock_fails(root)
    assert first_line(result) == (
        "error: cannot solve the environment for linux-64: mlenv-cudart needs __cuda >=12.0 "
        "(linux-64 declares no __cuda: set [tool.mlenv.system-requirements] cuda)"
    )
    assert "__cuda >=12.0, for which no candidates were found." in below(result)


def test_a_cuda_build_asked_for_by_its_build_string(tmp_path: Path, odd_channel: Path) -> None:
    root = project(tmp_path / "proj", [odd_channel], 'conda = ["mlenv-torch * cuda*"]\n'
                   '[tool.mlenv.system-requirements]\ncuda = "11.8"\n')
    # the CUDA build takes CUDA 11.2, but the runtime it pulls in takes 12.0
    assert first_line(lock_fails(root)) == (
        "error: cannot solve the environment for linux-64: mlenv-torch * cuda* needs mlenv-cudart 12.*, "
        "which needs __cuda >=12.0 (linux-64 is solved for __cuda 11.8)"
    )


def test_a_glibc_too_old_is_named_with_the_one_solved_for(tmp_path: Path, odd_channel: Path) -> None:
    root = project(tmp_path / "proj", [odd_channel], 'conda = ["mlenv-newlibc"]\n')
    assert first_line(lock_fails(root)) == (
        "error: cannot solve the environment for linux-64: mlenv-newlibc needs __glibc >=2.34 "
        "(linux-64 is solved for __glibc 2.28)"
    )


def test_dependencies_no_channel_has(tmp_path: Path, odd_channel: Path) -> None:
    root = project(tmp_path / "proj", [odd_channel], 'conda = ["needs-missing"]\n')
    assert first_line(lock_fails(root)) == (
        "error: cannot solve the environment for linux-64: needs-missing needs mlenv-cudart >=13 "
        "(newest mlenv-cudart is 12.4) or not-there >=1 (no package not-there in the channels)"
    )


# --- channels named in a spec, channels with credentials ------------------------------------


def test_a_channel_named_in_a_spec(tmp_path: Path, channel: Path, odd_channel: Path) -> None:
    outside = project(tmp_path / "outside", [channel], f'conda = ["{odd_channel.as_uri()}::mlenv-newlibc"]\n')
    assert first_line(lock_fails(outside)) == (
        f"error: cannot solve the environment for linux-64: mlenv-newlibc is asked from {odd_channel.as_uri()}, "
        f"which is not one of the channels ({channel.as_uri()})"
    )
    elsewhere = project(tmp_path / "elsewhere", [channel, odd_channel], f'conda = ["{odd_channel.as_uri()}::six"]\n')
    assert first_line(lock_fails(elsewhere)) == (
        f"error: cannot solve the environment for linux-64: no package six in {odd_channel.as_uri()} "
        f"(it is in {channel.as_uri()})"
    )


@pytest.mark.parametrize("form", ["basic-auth", "token-path"])
def test_credentials_of_a_channel_stay_out_of_the_message(
    tmp_path: Path, channel: Path, monkeypatch: pytest.MonkeyPatch, form: str
) -> None:
    from fixtures.pip_index import serve

    secret = "s3cret-Chan-77"
    server = serve(channel, auth=("mlenv-bot", secret)) if form == "basic-auth" else serve(channel, token=secret)
    with server as url:
        base = url.removesuffix("/simple/")
        listed = base.replace("http://", "http://mlenv-bot:${MLENV_TEST_SECRET}@") if form == "basic-auth" \
            else base + "/t/${MLENV_TEST_SECRET}"
        root = write_project(tmp_path / "proj", f'channels = ["{listed}"]\nplatforms = ["linux-64"]\n'
                             'conda = ["mlenv-hello 9.*", "no-such-thing"]\n')
        monkeypatch.setenv("MLENV_TEST_SECRET", secret)
        result = lock_fails(root)
    assert first_line(result) == (
        f"error: cannot solve the environment for linux-64: no mlenv-hello 9.* in {base}, newest is 1.1.0; "
        f"no package no-such-thing in {base}"
    )
    assert secret not in result.stderr + result.stdout


def test_explaining_a_failed_solve_imports_nothing(channel: Path) -> None:
    """The solve runs while another thread imports conda-lock's models (see _compat.SOLVE_IMPORTS):
    explaining its failure must import nothing either."""
    script = (
        "import importlib, json, sys\n"
        "from hatch_mlenv import _compat\n"
        "from hatch_mlenv.errors import SolveError\n"
        "from hatch_mlenv.solve import RattlerSolver, SolveRequest\n"
        "from hatch_mlenv.spec import default_virtual_packages\n"
        "for name in _compat.SOLVE_IMPORTS:\n"
        "    importlib.import_module(name)\n"
        "before = set(sys.modules)\n"
        "lines = []\n"
        "for specs in (('python 3.8.*', 'numpyy'), ('conflict-a', 'conflict-b'), ('cuda-thing',)):\n"
        f"    request = SolveRequest(channels=({channel.as_uri()!r},), specs=specs, platforms=('linux-64',),\n"
        "                           virtual_packages={'linux-64': default_virtual_packages('linux-64')})\n"
        "    try:\n"
        "        RattlerSolver().solve(request)\n"
        "    except SolveError as exc:\n"
        "        lines.append(str(exc).splitlines()[0])\n"
        "print(json.dumps([lines, sorted(set(sys.modules) - before)]))\n"
    )
    shown = subprocess.run([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, timeout=300, check=True).stdout
    lines, imported = json.loads(shown.splitlines()[-1])
    assert [line.split(": ", 1)[1].split(" ")[0] for line in lines] == ["no", "conflict-a", "cuda-thing"], lines
    assert "did you mean numpy?" in lines[0]
    assert imported == []
