"""No-op cost: `mlenv lock` on a fresh lock vs `mlenv --version` vs `python -c pass`.

The project locks python 3.6 + numpy, pandas, scipy, matplotlib from defaults-2018 once; every
measured `mlenv lock` is then a no-op (answered from a stamp in the user cache). Measured with
the real console script (a pyenv shim would add ~45 ms of pyenv's own).
"""

from __future__ import annotations

from bench._harness import (DEFAULTS_2018, MLENV, PYTHON, Command, Figure, Options, bench_env, benchmark, measure,
                            print_imports, print_samples, round_robin, scratch_dir, versus, write_project)

SPECS = ["numpy", "pandas", "scipy", "matplotlib"]


@benchmark
def noop(options: Options) -> list[Figure]:
    project = write_project(scratch_dir("noop") / "project", DEFAULTS_2018, SPECS)
    lock = [MLENV, "lock", "--project", str(project)]
    measure(lock)  # locked once: every measured run is a no-op
    no_bytecode = {k: v for k, v in bench_env(PYTHONDONTWRITEBYTECODE="1").items() if k != "PYTHONPYCACHEPREFIX"}
    samples = round_robin(options.n(20, quick=5), {
        "python -c pass": Command([PYTHON, "-c", "pass"]),
        "mlenv --version": Command([MLENV, "--version"]),
        "mlenv lock (no-op)": Command(lock),
        "mlenv lock (no-op), no bytecode cache": Command(lock, env=no_bytecode),
    })
    print_samples("noop", samples, "python -c pass")
    print_imports("`mlenv --version`", [MLENV, "--version"])
    print_imports("a no-op `mlenv lock`", lock)
    return [versus("no-op `mlenv lock` vs `mlenv --version`", samples["mlenv lock (no-op)"],
                   samples["mlenv --version"], 1.2),
            versus("`mlenv --version` vs `python -c pass`", samples["mlenv --version"], samples["python -c pass"], 3.0)]
