"""A cold `mlenv lock` of three platforms vs the slowest single platform.

The channel is defaults-2018's real linux-64 metadata also published as linux-aarch64 and
linux-ppc64le (the records' subdir rewritten), with its noarch: three solves of the same size.
Each run deletes the lockfile first. Target (issue 28): three platforms <= 1.3x the slowest one.
"""

from __future__ import annotations

from pathlib import Path

from bench._fixtures import LINUX_PLATFORMS, platforms_channel
from bench._harness import (MLENV, Command, Figure, Options, benchmark, median_seconds, print_samples, round_robin,
                            scratch_dir, versus, write_project)

SPECS = ["numpy", "pandas", "scipy", "matplotlib"]


def cold_lock(project: Path) -> Command:
    return Command([MLENV, "lock", "--project", str(project)],
                   before=lambda: (project / "conda-lock.yml").unlink(missing_ok=True))


@benchmark
def platforms(options: Options) -> list[Figure]:
    channel, root = platforms_channel(), scratch_dir("platforms")
    commands = {"3 platforms": cold_lock(write_project(root / "all", channel, SPECS, platforms=LINUX_PLATFORMS))}
    for platform in LINUX_PLATFORMS:
        commands[platform] = cold_lock(write_project(root / platform, channel, SPECS, platforms=[platform]))
    samples = round_robin(options.n(5, quick=2), commands)
    print_samples("cold mlenv lock", samples, "3 platforms")
    slowest = max(LINUX_PLATFORMS, key=lambda p: median_seconds(samples[p]))
    return [versus(f"cold lock of 3 platforms vs the slowest one ({slowest})", samples["3 platforms"],
                   samples[slowest], 1.3)]
