"""Build hook overhead: `hatch build` (sdist + wheel) with the `mlenv` hook and a fresh lock,
vs the same build with `HATCH_BUILD_NO_HOOKS=true`.

Target (issue 13): with the hook <= 1.3x without. Two references show what hatch
charges before our hook does anything: a do-nothing custom hook (`hatch_build.py`)
and a do-nothing hook installed as a plugin (entry point `hatch`, as hatch-mlenv is),
which also makes hatchling scan every distribution's entry points in each process.

hatch's build environment (`hatch-build`) is a venv made here whose `.pth` adds this
interpreter's site-packages, so the build finds hatchling and hatch-mlenv offline and
installs nothing. (`system-packages = true` would not do: hatch creates that
environment from the base interpreter, which cannot see a virtualenv's packages.)

Usage: python bench/hook.py [--runs N]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sysconfig
from pathlib import Path

from _harness import (
    DEFAULTS_2018,
    PYTHON,
    Command,
    bench_env,
    console_script,
    footer,
    header,
    import_times,
    measure,
    median_rss,
    median_seconds,
    print_table,
    round_robin,
    run,
    scratch_dir,
    top_level_imports,
    verdict,
    write_project,
)

SPECS = ["numpy", "pandas", "scipy", "matplotlib"]
TARGET = 1.3
HATCH_BITS = """
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
    """The build environment: this interpreter's site-packages (as a site dir, so the editable
    install's .pth counts), plus a do-nothing build hook plugin installed in it."""
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


def make_project(root: Path, hook: str, env: Path) -> Path:
    plugin = {"mlenv": "hatch-mlenv", "bench-noop": "bench-noop-hook"}.get(hook, "hatchling")
    project = write_project(root, DEFAULTS_2018, SPECS, extra=HATCH_BITS.format(hook=hook, plugin=plugin, build_env=env))
    (project / "src" / "bench").mkdir(parents=True)
    (project / "src" / "bench" / "__init__.py").write_text("VALUE = 1\n")
    if hook == "custom":
        (project / "hatch_build.py").write_text(CUSTOM_HOOK)
    return project


def build(project: Path, **env: str) -> Command:
    dist = project / "dist"
    return Command([str(console_script("hatch")), "build"], env=bench_env(**env), cwd=project,
                   before=lambda: shutil.rmtree(dist, ignore_errors=True))


def imports(command: Command) -> tuple[int, dict[str, float]]:
    """Python processes one build starts, and each top-level import's cumulative seconds summed
    over them (PYTHONPROFILEIMPORTTIME in every child)."""
    command.before()
    result = subprocess.run(command.argv, cwd=command.cwd, env={**command.env, "PYTHONPROFILEIMPORTTIME": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=True)
    processes = sum(1 for name, _, _, depth in import_times(result.stderr) if name == "site" and depth == 0)
    return processes, top_level_imports(result.stderr)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    header("hook: hatch build with the mlenv hook (fresh lock) vs HATCH_BUILD_NO_HOOKS=true")

    root = scratch_dir("hook")
    env = build_env(root)
    project = make_project(root / "mlenv-hook", "mlenv", env)
    measure([console_script("mlenv"), "lock", "--project", project])
    locked = sha256(project / "conda-lock.yml")

    hooked, plain = "hatch build, mlenv hook", "hatch build, HATCH_BUILD_NO_HOOKS=true"
    plugin, custom = "hatch build, do-nothing plugin hook (ref.)", "hatch build, do-nothing custom hook (ref.)"
    commands = {
        hooked: build(project),
        plain: build(project, HATCH_BUILD_NO_HOOKS="true"),
        plugin: build(make_project(root / "plugin-hook", "bench-noop", env)),
        custom: build(make_project(root / "custom-hook", "custom", env)),
    }
    samples = round_robin(args.runs, commands)
    base = median_seconds(samples[plain])
    fresh = "yes, untouched" if sha256(project / "conda-lock.yml") == locked else "NO, rewritten"
    print(f"\nproject: {project} (sdist + wheel; lock fresh: {fresh})")
    print_table(
        f"{args.runs} runs each, interleaved, dist/ removed before each, medians",
        ["hatch build", "wall s", "peak RSS MiB*", "x no hooks"],
        [[label, median_seconds(s), f"{median_rss(s):.0f}", f"{median_seconds(s) / base:.2f}"] for label, s in samples.items()],
    )
    print("  * largest single process of the build (hatch itself or one of its children)")
    ratio = median_seconds(samples[hooked]) / base
    print(f"  target mlenv hook <= {TARGET}x no hooks: {ratio:.2f}x  {verdict(ratio, TARGET)}")
    print(f"  mlenv hook over the do-nothing plugin hook: {median_seconds(samples[hooked]) - median_seconds(samples[plugin]):+.3f} s")

    counts, found = {}, {}
    for label, command in commands.items():
        counts[label], found[label] = imports(command)
    print("\n  python processes per build: " + ", ".join(f"{n} ({label})" for label, n in counts.items()))
    extra = sorted(
        ((name, seconds, "yes" if name in found[plugin] else "no") for name, seconds in found[hooked].items()
         if name not in found[plain]),
        key=lambda r: r[1], reverse=True,
    )
    print_table("top-level imports only the mlenv-hooked build makes (summed over its processes)",
                ["module", "cumulative s", "also with do-nothing plugin hook"], [r for r in extra if r[1] >= 0.001][:10])
    footer()


if __name__ == "__main__":
    run(main)
