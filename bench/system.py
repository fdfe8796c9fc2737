"""What the host check costs: a no-op `mlenv install` and `mlenv run` of a lock with needs vs one without.

The check (`hatch_mlenv.system.require_host`) loads rattler and asks it for this machine's virtual
packages only when the lock needs something of the host (`__cuda`, `__glibc`, ...); a no-op install
otherwise never loads rattler, while `mlenv run` loads it anyway for conda's activation. Two
projects are locked from a channel generated here with fixtures.conda_channel: `needs` locks the
CUDA build of `mlenv-torch` with `cuda = "12.2"` declared (needs `__cuda` and `__glibc`), `plain`
a package without virtual dependencies. Both are installed once; every measured run is a no-op.
CONDA_OVERRIDE_CUDA=12.4 stands in for a driver. Baselines in the same run: `python -c pass` and
`python -c "import rattler"` (what loading rattler costs a fresh process).

No targets: it prints ratios.

Usage: python bench/system.py [--runs N]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _harness import PYTHON, Command, bench_env, footer, header, round_robin, measure, median_seconds, print_table, run
from _harness import scratch_dir

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # fixtures/


def main() -> None:
    from fixtures.conda_channel import CondaPackage, build_channel, gpu_packages

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    header("system: the host check on a no-op install and run")

    scratch = scratch_dir("system")
    plain_package = CondaPackage("mlenv-plain", "1.0", files={"share/mlenv-plain.txt": "plain\n"})
    channel = build_channel(scratch / "channel", [*gpu_packages(), plain_package])
    projects = {
        "needs": 'conda = ["mlenv-torch"]\n[tool.mlenv.system-requirements]\ncuda = "12.2"\n',
        "plain": 'conda = ["mlenv-plain"]\n',
    }
    env = bench_env(CONDA_OVERRIDE_CUDA="12.4")
    for name, body in projects.items():
        root = scratch / name
        root.mkdir()
        (root / "pyproject.toml").write_text(
            f'[project]\nname = "{name}"\nversion = "0.1"\n[tool.mlenv]\nchannels = ["{channel}"]\n'
            f'platforms = ["linux-64"]\n{body}'
        )
        for command in (["lock"], ["install"]):
            measure([PYTHON, "-m", "hatch_mlenv", *command, "--project", str(root)], env=env)

    def mlenv(*argv: str) -> Command:
        return Command([PYTHON, "-m", "hatch_mlenv", *argv], env=env)

    commands = {
        "python -c pass": Command([PYTHON, "-c", "pass"], env=env),
        "python -c 'import rattler'": Command([PYTHON, "-c", "import rattler"], env=env),
        "install (no-op), lock without needs": mlenv("install", "--project", str(scratch / "plain")),
        "install (no-op), lock with needs": mlenv("install", "--project", str(scratch / "needs")),
        "run -- true, lock without needs": mlenv("run", "--project", str(scratch / "plain"), "--", "true"),
        "run -- true, lock with needs": mlenv("run", "--project", str(scratch / "needs"), "--", "true"),
        "doctor, lock with needs": mlenv("doctor", "--project", str(scratch / "needs")),
    }
    samples = round_robin(args.runs, commands)
    base = median_seconds(samples["python -c pass"])
    rows = [[label, median_seconds(s), f"{median_seconds(s) / base:.2f}"] for label, s in samples.items()]
    print_table(f"{args.runs} runs each, interleaved, medians", ["fresh process", "wall s", "x python -c pass"], rows)
    for verb in ("install (no-op)", "run -- true"):
        with_needs = median_seconds(samples[f"{verb}, lock with needs"])
        without = median_seconds(samples[f"{verb}, lock without needs"])
        print(f"  {verb}: with needs / without = {with_needs / without:.2f}x (+{with_needs - without:.3f} s)")
    footer()


if __name__ == "__main__":
    run(main)
