"""What the host check costs a no-op `mlenv install` and `mlenv run`: a lock with needs vs one without.

The check loads rattler and asks it for this machine's virtual packages only when the lock
needs something of the host (`__cuda`, `__glibc`, ...); `mlenv run` loads rattler anyway for
conda's activation. `needs` locks the CUDA build of `mlenv-torch` with `cuda = "12.2"` declared,
`plain` a package without virtual dependencies, both from a channel made with
fixtures.conda_channel and installed once: every measured run is a no-op.
CONDA_OVERRIDE_CUDA=12.4 stands in for a driver. No targets.
"""

from __future__ import annotations

from bench._harness import (MLENV, PYTHON, Command, Figure, Options, bench_env, benchmark, measure, print_samples,
                            round_robin, scratch_dir, versus)
from fixtures.conda_channel import CondaPackage, build_channel, gpu_packages


@benchmark
def system(options: Options) -> list[Figure]:
    scratch = scratch_dir("system")
    plain = CondaPackage("mlenv-plain", "1.0", files={"share/mlenv-plain.txt": "plain\n"})
    channel = build_channel(scratch / "channel", [*gpu_packages(), plain])
    env = bench_env(CONDA_OVERRIDE_CUDA="12.4")
    projects = {"needs": 'conda = ["mlenv-torch"]\n[tool.mlenv.system-requirements]\ncuda = "12.2"\n',
                "plain": 'conda = ["mlenv-plain"]\n'}
    for name, body in projects.items():
        (scratch / name).mkdir()
        (scratch / name / "pyproject.toml").write_text(
            f'[project]\nname = "{name}"\nversion = "0.1"\n[tool.mlenv]\nchannels = ["{channel}"]\n'
            f'platforms = ["linux-64"]\n{body}')
        for verb in ("lock", "install"):
            measure([MLENV, verb, "--project", scratch / name], env=env)

    def mlenv(*argv: str, project: str) -> Command:
        return Command([MLENV, *argv[:1], "--project", str(scratch / project), *argv[1:]], env=env)

    samples = round_robin(options.n(15, quick=5), {
        "python -c pass": Command([PYTHON, "-c", "pass"], env=env),
        "python -c 'import rattler'": Command([PYTHON, "-c", "import rattler"], env=env),
        "install (no-op), lock without needs": mlenv("install", project="plain"),
        "install (no-op), lock with needs": mlenv("install", project="needs"),
        "run -- true, lock without needs": mlenv("run", "--", "true", project="plain"),
        "run -- true, lock with needs": mlenv("run", "--", "true", project="needs"),
        "doctor, lock with needs": mlenv("doctor", project="needs"),
    })
    print_samples("system", samples, "python -c pass")
    return [versus(f"{verb}: lock with host needs vs without", samples[f"{verb}, lock with needs"],
                   samples[f"{verb}, lock without needs"]) for verb in ("install (no-op)", "run -- true")]
