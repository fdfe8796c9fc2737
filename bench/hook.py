"""Build hook overhead: `hatch build` (sdist + wheel) with the `mlenv` hook and a fresh lock,
vs the same build with `HATCH_BUILD_NO_HOOKS=true`.

Target: with the hook <= 1.2x without. For reference, the same project with a
do-nothing custom hook (`hatch_build.py`) shows what hatch charges for any hook.

Usage: python bench/hook.py [--runs N]
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

from _common import (
    DEFAULTS_2018,
    PYTHON,
    Command,
    bench_env,
    console_script,
    footer,
    header,
    interleaved,
    measure,
    median_rss,
    median_seconds,
    print_table,
    run,
    scratch_dir,
    verdict,
    write_project,
)

SPECS = ["numpy", "pandas", "scipy", "matplotlib"]
HATCH_BITS = """
[build-system]
requires = ["hatchling", "hatch-mlenv"]
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


def build_env(root: Path) -> Path:
    """hatch's build environment, made here: a venv whose `.pth` adds this interpreter's
    site-packages, so the build finds hatchling and hatch-mlenv offline without installing
    anything (`system-packages = true` would see the base interpreter's, not this venv's)."""
    env = root / "build-env"
    subprocess.run([PYTHON, "-m", "venv", "--without-pip", str(env)], check=True)
    (site,) = (env / "lib").glob("python*/site-packages")
    (site / "bench-dev.pth").write_text("\n".join(sysconfig_paths()) + "\n")
    return env


def sysconfig_paths() -> list[str]:
    import sysconfig

    return sorted({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")})


def make_project(root: Path, hook: str, env: Path) -> Path:
    extra = HATCH_BITS.format(hook=hook, build_env=env)
    project = write_project(root, DEFAULTS_2018, SPECS, extra=extra)
    (project / "src" / "bench").mkdir(parents=True)
    (project / "src" / "bench" / "__init__.py").write_text("VALUE = 1\n")
    if hook == "custom":
        (project / "hatch_build.py").write_text(CUSTOM_HOOK)
    return project


def build(project: Path, **env: str) -> Command:
    dist = project / "dist"
    return Command(
        [str(console_script("hatch")), "build"],
        before=lambda: shutil.rmtree(dist, ignore_errors=True),
        cwd=project,
        env=bench_env(**env),
    )


def imports(command: Command) -> tuple[int, dict[str, tuple[float, int]]]:
    """Python processes one build starts, and each top-level import's summed
    cumulative seconds and process count (PYTHONPROFILEIMPORTTIME in every child)."""
    if command.before is not None:
        command.before()
    result = subprocess.run(
        command.argv, cwd=command.cwd, env={**(command.env or bench_env()), "PYTHONPROFILEIMPORTTIME": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=True,
    )
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    processes = 0
    for line in result.stderr.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \| (\S+)$", line)
        if match:
            totals[match.group(2)][0] += int(match.group(1)) / 1e6
            totals[match.group(2)][1] += 1
            processes += match.group(2) == "site"  # every process imports site once, at top level
    return processes, {name: (seconds, int(count)) for name, (seconds, count) in totals.items()}


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
    reference = make_project(root / "custom-hook", "custom", env)
    measure([str(console_script("mlenv")), "lock", "--project", str(project)], env=bench_env())
    locked = sha256(project / "conda-lock.yml")

    commands = {
        "hatch build, mlenv hook": build(project),
        "hatch build, HATCH_BUILD_NO_HOOKS=true": build(project, HATCH_BUILD_NO_HOOKS="true"),
        "hatch build, do-nothing custom hook (ref.)": build(reference),
    }
    samples = interleaved(args.runs, commands)
    base = median_seconds(samples["hatch build, HATCH_BUILD_NO_HOOKS=true"])
    print(f"\nproject: {project} (sdist + wheel; lock fresh: "
          f"{'yes, untouched' if sha256(project / 'conda-lock.yml') == locked else 'NO, rewritten'})")
    print_table(
        f"{args.runs} runs each, interleaved, dist/ removed before each, medians",
        ["hatch build", "wall s", "peak RSS MiB*", "x no hooks"],
        [[label, median_seconds(s), f"{median_rss(s):.0f}", f"{median_seconds(s) / base:.2f}"] for label, s in samples.items()],
    )
    print("  * largest single process of the build (hatch itself or one of its children)")
    ratio = median_seconds(samples["hatch build, mlenv hook"]) / base
    print(f"  target mlenv hook <= 1.2x no hooks: {ratio:.2f}x  {verdict(ratio, 1.2)}")

    counts: dict[str, int] = {}
    found: dict[str, dict[str, tuple[float, int]]] = {}
    for label, command in commands.items():
        counts[label], found[label] = imports(command)
    hooked, plain, ref = commands  # the three labels, in order
    print("\n  python processes per build: " + ", ".join(f"{n} ({label})" for label, n in counts.items()))
    extra = sorted(
        (
            (name, seconds, count, "yes" if name in found[ref] else "no")
            for name, (seconds, count) in found[hooked].items()
            if name not in found[plain]
        ),
        key=lambda r: r[1],
        reverse=True,
    )
    print_table(
        "top-level imports only the mlenv-hooked build makes (summed over its processes)",
        ["module", "cumulative s", "processes", "also with do-nothing hook"],
        [r for r in extra if r[1] >= 0.001][:10],
    )
    footer()


if __name__ == "__main__":
    run(main)
