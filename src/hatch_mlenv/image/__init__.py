"""The image stage: a container image from a locked environment.

Read top-down: `build`, `context` and `push` (what the CLI, the build hook and `mlenv image`
call) make the plan once from the `Environment` (`plan.py`), work out what staging the prefix
takes only when a build stages one, and hand values to one builder: `docker.py` (the host
strategy in a Docker engine) or `oci.py` (no daemon, the same bytes on any machine, an OCI
layout written by `layout.py` with layers from `layers.py`, pushed through `registry/oci.py`).
Both stage the prefix with `stage.py`. A builder never calls back up here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from hatch_mlenv.errors import UsageError
from hatch_mlenv.image.docker import BuildResult, build_base, build_host, push_tags, reuse
from hatch_mlenv.image.dockerfile import write_context
from hatch_mlenv.image.engine import docker_client, image_exists, remote_has
from hatch_mlenv.image.oci import OciBuildResult, build_oci, plan_outputs
from hatch_mlenv.image.plan import (
    LAYER_COMPRESSIONS,
    ImagePlan,
    artifacts,
    base_dockerfile_content,
    plan_for,
    preflight,
    staging_for,
)
from hatch_mlenv.progress import echo as progress_echo
from hatch_mlenv.reference import require_registry

__all__ = ["LAYER_COMPRESSIONS", "ImagePlan", "build", "context", "plan_for", "preflight", "push"]


def build(
    env: Any,
    builder: str = "docker",
    *,
    output: Path | None = None,
    push: bool = False,
    load: bool = False,
    version: int | None = None,
    compression: str = "gzip",
    echo: Callable[[str], None] = progress_echo,
) -> BuildResult | OciBuildResult:
    """Build (or reuse) the image of `env`. `builder` "docker": the host strategy in the Docker
    engine (`push`: then push it to its registry); "oci": without a daemon, written to `output`
    (a layout directory, or a tar when the name ends in .tar), pushed and/or loaded into Docker,
    its layers compressed with `compression` ("gzip", or "zstd": tags ending in `-zstd`)."""
    if builder == "oci" or output is not None or load:
        if builder != "oci":
            raise UsageError("-o/--output and --load are options of --builder oci")
        if output is None and not push and not load:
            raise UsageError("--builder oci needs somewhere to put the image: -o PATH, --push or --load")
        return _build_oci(env, output, push, load, version, compression, echo)
    return _build_docker(env, push, version, compression, echo)


def _build_oci(env: Any, output: Path | None, push: bool, load: bool, version: int | None, compression: str,
               echo: Callable[[str], None]) -> OciBuildResult:
    plan = preflight(env, builder="oci", version=version, compression=compression)
    if push:  # as for the docker builder: a missing registry setting is found before anything else
        require_registry(plan.repository)
    job = plan_outputs(plan, output=output, push=push, load=load)
    if job.done:
        return job.result
    staging = staging_for(env) if plan.managed else None
    referrers = artifacts(env) if job.push else ()
    return build_oci(job, staging, referrers, echo)


def _build_docker(env: Any, push: bool, version: int | None, compression: str,
                  echo: Callable[[str], None]) -> BuildResult:
    plan = preflight(env, version=version, compression=compression)  # before the engine is asked anything
    if push:  # a missing registry setting is found before anything is built
        require_registry(plan.repository)
    client = docker_client()
    result = _docker_build(env, plan, client, echo)
    if push:
        return BuildResult(result.reference, result.status, result.image_id, result.tags,
                           _docker_push(env, plan, client, echo))
    return result


def context(env: Any, output: Path, *, strategy: str = "host", version: int | None = None) -> ImagePlan:
    """Write a Docker build context for `env` into `output` (which must not exist or be empty):
    `host` (the staged prefix and a short Dockerfile) or `dockerfile` (micromamba installs the lock)."""
    plan = preflight(env, strategy=strategy, version=version)
    if strategy == "host" and plan.managed:
        return write_context(plan, output, strategy=strategy, staged_from=staging_for(env))
    if strategy == "dockerfile":
        env.files()  # a version loaded by reference gets its lockfile on disk first
    return write_context(plan, output, strategy=strategy)


def push(env: Any, *, version: int | None = None, echo: Callable[[str], None] = progress_echo) -> tuple[str, str]:
    """Push the image's tags to its registry with the Docker engine, building it first when the
    engine lacks it; returns (reference, "pushed" | "reused")."""
    plan = preflight(env, version=version)
    require_registry(plan.repository)
    client = docker_client()
    return plan.reference, _docker_push(env, plan, client, echo)


def _docker_build(env: Any, plan: ImagePlan, client: Any, echo: Callable[[str], None]) -> BuildResult:
    reused = reuse(client, plan)
    if reused is not None:
        return reused
    if plan.base_dockerfile and image_exists(client, plan.base_image):
        echo(f"base image {plan.base_image} reused")
    elif plan.base_dockerfile:
        build_base(client, plan, base_dockerfile_content(env, plan), echo)
    return build_host(client, plan, staging_for(env) if plan.managed else None, echo)


def _docker_push(env: Any, plan: ImagePlan, client: Any, echo: Callable[[str], None]) -> str:
    if remote_has(client, plan.reference):
        return "reused"
    if not image_exists(client, plan.reference):
        _docker_build(env, plan, client, echo)
    push_tags(client, plan, echo)
    return "pushed"
