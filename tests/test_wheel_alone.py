"""hatch-mlenv's wheel installed alone: every runtime import is a declared dependency.

The wheel is built from this checkout and installed, with nothing but the
transitive closure of its declared dependencies (no extras, no hatch), into a
fresh virtualenv, offline: each dependency's files are copied from the test
environment as its RECORD lists them. A module that hatch-mlenv imports but
does not declare is then simply absent, as it is for a user who runs
`pip install hatch-mlenv`. In that virtualenv: `pip check`, every command's
`--help`, and a conda + pip environment locked, installed and run.
"""

from __future__ import annotations

import ast
import email.parser
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import write_project

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "src" / "hatch_mlenv"

# Imports that hatch-mlenv does not declare because only a host that has them loads the
# module: {module file: {top-level import: the host}}.
HOSTED_IMPORTS = {
    "hatch/environment.py": {
        "hatch": "the Hatch environment plugin, loaded by hatch through the `hatch` entry point",
        "pyproject_hooks": "the Hatch environment plugin (hatch requires pyproject-hooks)",
    },
    "pytest_plugin.py": {"pytest": "the pytest plugin, loaded by pytest through the `pytest11` entry point"},
}

# Imports of an optional extra's distribution, made only by what that extra enables (inside functions,
# so the module still imports without it): {module file: {top-level import: the extra}}.
EXTRA_IMPORTS = {
    "ray.py": {"ray": "ray"},  # the Ray runtime_env plugin, loaded by Ray's own agent
    "_compat.py": {"ray": "ray"},  # Ray's plugin base class, for ray.py
}


# -- what the source imports ------------------------------------------------------------------

def _imports(path: Path) -> set[str]:
    """The top-level names of every absolute import in a file: at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.partition(".")[0])
    return found - set(sys.stdlib_module_names) - {"__future__", "hatch_mlenv"}


def _declared(extra: str | None = None) -> list[Requirement]:
    """`[project] dependencies`, or with `extra` that optional dependency group."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    texts = project["dependencies"] if extra is None else project.get("optional-dependencies", {}).get(extra, [])
    return [Requirement(text) for text in texts]


def test_every_import_is_a_declared_dependency() -> None:
    """Each third-party module the package imports, anywhere, belongs to a distribution that
    pyproject.toml's `[project] dependencies` names, not one that arrives with another."""
    declared = {canonicalize_name(requirement.name) for requirement in _declared()}
    providers = metadata.packages_distributions()
    undeclared = []
    for path in sorted(SOURCE.rglob("*.py")):
        relative = path.relative_to(SOURCE).as_posix()
        for module in sorted(_imports(path)):
            if module in HOSTED_IMPORTS.get(relative, {}):
                continue
            distributions = {canonicalize_name(name) for name in providers.get(module, [])}
            extra = EXTRA_IMPORTS.get(relative, {}).get(module)
            if extra is not None:
                in_extra = {canonicalize_name(requirement.name) for requirement in _declared(extra)}
                if not distributions & in_extra:
                    undeclared.append(f"{relative}: {module} (not in the [{extra}] extra)")
                continue
            # a dependency declared for other Pythons only (tomli) is not installed here
            if not distributions & declared and canonicalize_name(module) not in declared:
                undeclared.append(f"{relative}: {module} (from {', '.join(sorted(distributions)) or 'nothing installed'})")
    assert not undeclared, "imported but not in [project] dependencies:\n" + "\n".join(undeclared)


# -- the wheel and its virtualenv -------------------------------------------------------------

@dataclass(frozen=True)
class Alone:
    """A virtualenv holding hatch-mlenv's wheel and its dependency closure, nothing else."""

    root: Path
    wheel: Path
    closure: tuple[str, ...]  # the dependencies' canonical names

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    def environ(self, home: Path) -> dict[str, str]:
        """A user's environment with this virtualenv on PATH, everything hatch-mlenv and uv keep under `home`."""
        return {
            "PATH": os.pathsep.join([str(self.bin), os.defpath]),
            "HOME": str(home),
            "MLENV_HOME": str(home / "mlenv"),
            "XDG_CACHE_HOME": str(home / "cache"),
            "XDG_DATA_HOME": str(home / "data"),
            "XDG_CONFIG_HOME": str(home / "config"),
            "UV_CACHE_DIR": str(home / "uv-cache"),
            "PYTHONNOUSERSITE": "1",
            "LANG": "C.UTF-8",
        }

    def run(self, *args: str, home: Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(args), cwd=cwd or home, env=self.environ(home), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, timeout=600)

    def mlenv(self, *args: str, home: Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        result = self.run(str(self.bin / "mlenv"), *args, home=home, cwd=cwd)
        assert result.returncode == 0, f"mlenv {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        return result


def _wheel_requirements(wheel: Path) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
        headers = email.parser.HeaderParser().parsestr(archive.read(name).decode())
    return [Requirement(text) for text in headers.get_all("Requires-Dist") or []]


def _applies(requirement: Requirement, extras: set[str]) -> bool:
    """Whether a requirement holds on this interpreter for a distribution installed with `extras`."""
    marker = requirement.marker
    return marker is None or any(marker.evaluate({"extra": extra}) for extra in ("", *sorted(extras)))


def dependency_closure(requirements: list[Requirement]) -> dict[str, metadata.Distribution]:
    """The distributions (as installed here) that `requirements`, without extras of their own,
    need transitively: markers evaluated for this interpreter, a dependency's requested extras followed."""
    found: dict[str, tuple[metadata.Distribution, set[str]]] = {}
    queue = [(requirement, "hatch-mlenv") for requirement in requirements if _applies(requirement, set())]
    while queue:
        requirement, wanted_by = queue.pop()
        name = canonicalize_name(requirement.name)
        try:
            distribution = metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            pytest.fail(f"{requirement} (required by {wanted_by}) is not installed in the test environment "
                        f"{sys.prefix}; install the project there with its dependencies: pip install -e '.[test]'",
                        pytrace=False)
        if not requirement.specifier.contains(distribution.version, prereleases=True):
            pytest.fail(f"{requirement} (required by {wanted_by}): the test environment has {distribution.version}",
                        pytrace=False)
        known = found.get(name, (distribution, set()))[1]
        if name in found and set(requirement.extras) <= known:
            continue
        extras = known | set(requirement.extras)
        found[name] = (distribution, extras)
        queue += [(Requirement(text), name) for text in distribution.requires or []
                  if _applies(Requirement(text), extras)]
    return {name: distribution for name, (distribution, _) in found.items()}


def _copy_distribution(distribution: metadata.Distribution, site: Path, root: Path, python: Path) -> None:
    """The distribution's files, as its RECORD lists them relative to its site-packages
    (scripts as `../../../bin/...`), into `site`; scripts' shebangs name `python`."""
    name = distribution.metadata["Name"]
    if distribution.files is None:
        pytest.fail(f"{name} has no RECORD in the test environment; cannot copy it", pytrace=False)
    here = Path(sys.executable).parent
    for file in distribution.files:
        source = Path(distribution.locate_file(file))
        if not source.is_file():  # a RECORD may list bytecode that was never written
            continue
        target = Path(os.path.normpath(site / file))
        assert target.is_relative_to(root), f"{name}: {file} lands outside the virtualenv"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
        if target.parent == root / "bin":
            with open(target, "rb") as handle:
                first = handle.readline()
            if first.startswith(b"#!") and str(here).encode() in first:
                data = target.read_bytes()
                target.write_bytes(b"#!" + str(python).encode() + b"\n" + data[len(first):])


@pytest.fixture(scope="module")
def alone(tmp_path_factory: pytest.TempPathFactory) -> Alone:
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(ROOT)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert build.returncode == 0, build.stdout
    (wheel,) = out.glob("hatch_mlenv-*.whl")
    closure = dependency_closure([r for r in _wheel_requirements(wheel) if not r.extras])
    closure.pop("hatch-mlenv", None)  # the wheel is what gets installed, never the editable checkout

    root = tmp_path_factory.mktemp("alone") / "venv"
    # No pip, no setuptools: only what the wheel declares. pip runs from outside (--python).
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    python = root / "bin" / "python"
    site = Path(sysconfig.get_path("purelib", vars={"base": str(root), "platbase": str(root)}))
    for distribution in closure.values():
        _copy_distribution(distribution, site, root, python)
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600,
    )
    assert install.returncode == 0, install.stdout
    return Alone(root, wheel, tuple(sorted(closure)))


def test_the_virtualenv_holds_the_wheel_and_its_dependencies_only(alone: Alone, tmp_path: Path) -> None:
    listing = alone.run(str(alone.bin / "python"), "-c", (
        "import importlib.metadata as m, importlib.util as u, json, hatch_mlenv; "
        "print(json.dumps([sorted(d.metadata['Name'] for d in m.distributions()), hatch_mlenv.__file__, "
        "u.find_spec('hatch') is not None]))"
    ), home=tmp_path)
    assert listing.returncode == 0, listing.stderr
    names, module, has_hatch = json.loads(listing.stdout)
    assert sorted(canonicalize_name(n) for n in names) == sorted([*alone.closure, "hatch-mlenv"])
    assert Path(module).is_relative_to(alone.root)  # the wheel, not this checkout
    assert not has_hatch  # the Hatch plugin's host is not a dependency


def test_pip_check(alone: Alone, tmp_path: Path) -> None:
    result = alone.run(sys.executable, "-m", "pip", "--python", str(alone.bin / "python"), "check", home=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No broken requirements found." in result.stdout


def test_every_module_imports(alone: Alone, tmp_path: Path) -> None:
    """Every module's top-level imports; a module that only its host loads may miss that host only."""
    program = (
        "import importlib, json, pkgutil, hatch_mlenv\n"
        "names = [m.name for m in pkgutil.walk_packages(hatch_mlenv.__path__, 'hatch_mlenv.')]\n"
        "failed = {}\n"
        "for name in names:\n"
        "    if name == 'hatch_mlenv.__main__':\n"
        "        continue  # runs the CLI\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        failed[name] = [type(exc).__name__, getattr(exc, 'name', None), str(exc)]\n"
        "print(json.dumps({'names': names, 'failed': failed}))\n"
    )
    result = alone.run(str(alone.bin / "python"), "-c", program, home=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    hosted = {f"hatch_mlenv.{path.removesuffix('.py').replace('/', '.')}": set(modules)
              for path, modules in HOSTED_IMPORTS.items()}
    failed = {name: message for name, (kind, missing, message) in report["failed"].items()
              if not (kind == "ModuleNotFoundError" and missing in hosted.get(name, ()))}
    assert not failed, failed
    assert {"hatch_mlenv.cli", "hatch_mlenv.pip", "hatch_mlenv.hatch.build_hook"} <= set(report["names"])
    assert set(report["failed"]) == {"hatch_mlenv.hatch.environment"}  # no hatch here: it is not a dependency


_COMMANDS = """
import json, click
from hatch_mlenv.cli import main

def walk(group, path):
    context = click.Context(group, info_name=path[-1] if path else "mlenv")
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        yield [*path, name]
        if isinstance(command, click.Group):
            yield from walk(command, [*path, name])

print(json.dumps([[], *walk(main, [])]))
"""


def test_every_command_has_help(alone: Alone, tmp_path: Path) -> None:
    listing = alone.run(str(alone.bin / "python"), "-c", _COMMANDS, home=tmp_path)
    assert listing.returncode == 0, listing.stderr
    commands = [tuple(path) for path in json.loads(listing.stdout)]
    assert {(), ("lock",), ("install",), ("run",), ("image", "build"), ("curated", "list")} <= set(commands)

    def helps(path: tuple[str, ...]) -> str | None:
        result = alone.run(str(alone.bin / "mlenv"), *path, "--help", home=tmp_path)
        usage = f"Usage: mlenv {' '.join(path)}".rstrip()
        if result.returncode != 0 or not result.stdout.startswith(usage) or result.stderr:
            return f"mlenv {' '.join(path)} --help: exit {result.returncode}\n{result.stdout}{result.stderr}"
        return None

    with ThreadPoolExecutor(max_workers=2) as pool:
        failures = [failure for failure in pool.map(helps, commands) if failure]
    assert not failures, "\n".join(failures)
    version = alone.mlenv("--version", home=tmp_path).stdout.strip()
    assert version == f"mlenv {alone.wheel.name.split('-')[1]}"


@pytest.fixture
def served_index(tmp_path: Path) -> Iterator[str]:
    from fixtures.pip_index import make_default_index, serve

    with serve(make_default_index(tmp_path / "pypi")) as url:
        yield url


def test_lock_install_run_a_conda_and_pip_environment(alone: Alone, tmp_path: Path, served_index: str) -> None:
    from fixtures.host_python import host_python_minor, make_host_python_channel
    from hatch_mlenv.lockfile import read_lock

    minor = host_python_minor()
    channel = make_host_python_channel(tmp_path / "channel")
    project = write_project(tmp_path / "project", f"""
        channels = ["{channel}"]
        platforms = ["linux-64"]
        python = "{minor}"
        conda = ["mlenv-greeting"]
        pip = ["mlenv-util"]
        pip-index-url = "{served_index}"
    """)
    home = tmp_path / "home"
    home.mkdir()

    locked = alone.mlenv("lock", "--project", str(project), home=home)
    assert "locked demo for linux-64" in locked.stdout
    lock = read_lock(project / "conda-lock.yml")
    assert {p.name: p.version for p in lock.packages if p.manager == "pip"} == {"mlenv-util": "1.0.0", "mlenv-tiny": "0.2.0"}
    assert {p.name: p.version for p in lock.packages if p.manager == "conda" and p.name.startswith("mlenv")} == {
        "mlenv-greeting": "2.0"
    }

    alone.mlenv("install", "--project", str(project), home=home)
    prefix = project / ".mlenv" / "envs" / "demo"
    site = prefix / "lib" / f"python{minor}" / "site-packages"
    assert (site / "mlenv_util" / "__init__.py").read_text() == '__version__ = "1.0.0"\n'
    assert (site / "mlenv_tiny-0.2.0.dist-info" / "METADATA").is_file()
    assert (site / "mlenv_greeting" / "__init__.py").read_text() == '__version__ = "2.0"\n'

    ran = alone.mlenv("run", "--project", str(project), "--", "python", "-c", (
        "import sys, mlenv_greeting, mlenv_tiny, mlenv_util; "
        "print(sys.prefix, mlenv_util.__file__, mlenv_util.__version__, mlenv_tiny.__version__, "
        "mlenv_greeting.__version__)"
    ), home=home, cwd=project)
    where, module, util, tiny, greeting = ran.stdout.split()
    assert Path(where) == prefix and Path(module) == site / "mlenv_util" / "__init__.py"
    assert (util, tiny, greeting) == ("1.0.0", "0.2.0", "2.0")


def test_a_missing_tool_is_named_with_the_declared_range(alone: Alone, tmp_path: Path) -> None:
    """`errors.missing_tool` takes the version range from the installed wheel's own metadata."""
    (declared,) = [r for r in _wheel_requirements(alone.wheel) if r.name == "uv"]
    said = alone.run(str(alone.bin / "python"), "-c", (
        "from hatch_mlenv.errors import missing_tool; error = missing_tool('uv', 'to lock pip packages'); "
        "print(error.exit_code, error)"
    ), home=tmp_path)
    assert said.stdout == (f"1 uv is not installed; hatch-mlenv needs it to lock pip packages: "
                           f"pip install 'uv{declared.specifier}'\n"), said.stderr
