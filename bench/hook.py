"""The build hook: `hatch build` (sdist + wheel, dist/ removed before each run) with the `mlenv`
hook and a fresh lock vs the same build with `HATCH_BUILD_NO_HOOKS=true`.

Two references show what hatch charges before our hook does anything: a do-nothing custom hook
(`hatch_build.py`) and a do-nothing hook installed as a plugin (entry point `hatch`, as
hatch-mlenv is), which also makes hatchling scan every distribution's entry points in each of
its processes: the plugin row is the floor for our hook. hatch's build environment is a venv
made here whose `.pth` adds this interpreter's site-packages, so the build finds hatchling and
hatch-mlenv offline and installs nothing (`system-packages = true` cannot see a virtualenv's
packages: hatch creates that environment from the base interpreter).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sysconfig
from pathlib import Path

from bench._harness import (DEFAULTS_2018, MLENV, PYTHON, Command, Figure, Options, bench_env, benchmark,
                            console_script, import_times, measure, print_samples, print_table, round_robin,
                            scratch_dir, top_level_imports, versus, write_project)

SPECS = ["numpy", "pandas", "scipy", "matplotlib"]
HATCH_BITS = """\
[build-system]
requires = ["hatchling", "{plugin}"]
build-backend = "hatchling.build"

[tool.hatch.build.targets.wheel]
packages = ["src/bench"]

[tool.hatch.build.hooks.{hook}]

[tool.hatch.envs.hatch-build]
path = "{build_env}"

"""
CUSTOM_HOOK = """\
from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class NoOpHook(BuildHookInterface):
    PLUGIN_NAME = "custom"
"""
PLUGIN_HOOK = """\
from hatchling.builders.hooks.plugin.interface import BuildHookInterface
from hatchling.plugin import hookimpl


class NoOpPluginHook(BuildHookInterface):
    PLUGIN_NAME = "bench-noop"


@hookimpl
def hatch_register_build_hook():
    return NoOpPluginHook
"""


def build_env(root: Path) -> Path:
    """This interpreter's site-packages (as a site dir, so the editable install's .pth counts),
    plus a do-nothing build hook plugin installed in it."""
    env = root / "build-env"
    subprocess.run([PYTHON, "-m", "venv", "--without-pip", str(env)], check=True)
    (site,) = (env / "lib").glob("python*/site-packages")
    dirs = sorted({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")})
    (site / "bench-dev.pth").write_text("import site; " + "; ".join(f"site.addsitedir({d!r})" for d in dirs) + "\n")
    (site / "bench_noop_hook.py").write_text(PLUGIN_HOOK)
    dist = site / "bench_noop_hook-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: bench-noop-hook\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[hatch]\nbench-noop = bench_noop_hook\n")
    (dist / "RECORD").write_text("")
    return env


def build(root: Path, hook: str, env: Path, **variables: str) -> Command:
    plugin = {"mlenv": "hatch-mlenv", "bench-noop": "bench-noop-hook"}.get(hook, "hatchling")
    project = write_project(root, DEFAULTS_2018, SPECS, extra=HATCH_BITS.format(hook=hook, plugin=plugin, build_env=env))
    (project / "src" / "bench").mkdir(parents=True, exist_ok=True)
    (project / "src" / "bench" / "__init__.py").write_text("VALUE = 1\n")
    if hook == "custom":
        (project / "hatch_build.py").write_text(CUSTOM_HOOK)
    return Command([str(console_script("hatch")), "build"], env=bench_env(**variables), cwd=project,
                   before=lambda: shutil.rmtree(project / "dist", ignore_errors=True))


def imports(command: Command) -> tuple[int, dict[str, float]]:
    """Python processes one build starts, and each top-level import's seconds summed over them."""
    command.before()
    result = subprocess.run(command.argv, cwd=command.cwd, env={**command.env, "PYTHONPROFILEIMPORTTIME": "1"},
                            capture_output=True, text=True, check=True)
    processes = sum(1 for name, _, _, depth in import_times(result.stderr) if name == "site" and depth == 0)
    return processes, top_level_imports(result.stderr)


@benchmark
def hook(options: Options) -> list[Figure]:
    root = scratch_dir("hook")
    env = build_env(root)
    hooked, plain = "mlenv hook", "HATCH_BUILD_NO_HOOKS=true"
    plugin, custom = "do-nothing plugin hook (ref.)", "do-nothing custom hook (ref.)"
    commands = {hooked: build(root / "mlenv-hook", "mlenv", env),
                plain: build(root / "mlenv-hook", "mlenv", env, HATCH_BUILD_NO_HOOKS="true"),
                plugin: build(root / "plugin-hook", "bench-noop", env),
                custom: build(root / "custom-hook", "custom", env)}
    lockfile = root / "mlenv-hook" / "conda-lock.yml"
    measure([MLENV, "lock", "--project", root / "mlenv-hook"])
    locked = hashlib.sha256(lockfile.read_bytes()).digest()
    samples = round_robin(options.n(7, quick=2), commands)
    print_samples("hatch build (peak RSS: its largest process)", samples, plain)
    print(f"  lock fresh throughout: {hashlib.sha256(lockfile.read_bytes()).digest() == locked}")
    counts, found = {}, {}
    for label, command in commands.items():
        counts[label], found[label] = imports(command)
    print("  python processes per build: " + ", ".join(f"{n} ({label})" for label, n in counts.items()))
    extra = sorted(((name, seconds, "yes" if name in found[plugin] else "no") for name, seconds in found[hooked].items()
                    if name not in found[plain] and seconds >= 0.001), key=lambda r: r[1], reverse=True)
    print_table("top-level imports only the mlenv-hooked build makes (summed over its processes)",
                ["module", "cumulative s", "also with the plugin hook"], extra[:10])
    return [versus("`hatch build` with the mlenv hook vs without hooks", samples[hooked], samples[plain], 1.2),
            versus("mlenv hook vs a do-nothing plugin hook (hatch's floor)", samples[hooked], samples[plugin])]
