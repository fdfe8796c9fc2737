"""`mlenv image`: the locked environment as a Docker image (tag, context, build, push)."""

from __future__ import annotations

from pathlib import Path

import click

import hatch_mlenv.image as images
from hatch_mlenv.cli._common import (
    display,
    environment_arguments,
    json_option,
    load_environment,
    print_json,
    step_echo,
)
from hatch_mlenv.registry import registered_version


layer_compression_option = click.option(
    "--layer-compression", "compression", type=click.Choice(list(images.LAYER_COMPRESSIONS)), default="gzip",
    show_default=True,
    help="oci builder: gzip (every engine) or zstd (several times faster to write and read; Docker 23+, containerd, "
         "podman; tags end in -zstd).")


@click.group()
def image() -> None:
    """Docker images of the locked environment: tag, context, build, push."""


@image.command(name="tag")
@environment_arguments
@layer_compression_option
@json_option
def image_tag(reference: str | None, project: Path | None, env: str | None, compression: str, as_json: bool,
              registry_url: str | None) -> None:
    """Print the image reference (and the v<N> tag of a registered version)."""
    env = load_environment(reference, project, env, registry_url)
    plan = images.plan_for(env, registered_version(env, registry_url), compression)
    if as_json:
        print_json({"reference": plan.reference, "repository": plan.repository, "tags": plan.tags})
        return
    for tag in plan.tags:
        click.echo(f"{plan.repository}:{tag}")


@image.command(name="context")
@environment_arguments
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), default=Path("mlenv-image"),
              show_default=True, help="Directory for the build context (must not exist or be empty).")
@click.option("--strategy", type=click.Choice(["host", "dockerfile"]), default="host", show_default=True)
def image_context(reference: str | None, project: Path | None, env: str | None, output: Path, strategy: str, registry_url: str | None) -> None:
    """Write a Docker build context: `host` (installed prefix + Dockerfile) or `dockerfile` (micromamba)."""
    env = load_environment(reference, project, env, registry_url)
    images.preflight(env, strategy=strategy)  # before the registry is asked for the version
    plan = images.context(env, output, strategy=strategy, version=registered_version(env, registry_url))
    click.echo(f"{display(output.resolve())}: {strategy} context for {plan.reference}")


@image.command(name="build")
@environment_arguments
@click.option("--push", "also_push", is_flag=True, help="Also push to [tool.mlenv.docker] registry.")
@click.option("--builder", type=click.Choice(["docker", "oci"]), default="docker", show_default=True,
              help="docker: the host strategy in a Docker engine; oci: assembled without a daemon, reproducible.")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="oci builder: write an OCI image layout directory (or a tar: PATH.tar).")
@click.option("--load", is_flag=True, help="oci builder: load the image into the Docker engine.")
@layer_compression_option
@json_option
def image_build(reference: str | None, project: Path | None, env: str | None, also_push: bool, builder: str,
                output: Path | None, load: bool, compression: str, as_json: bool, registry_url: str | None) -> None:
    """Build the image (host strategy), or reuse it when its tag exists; prints the reference and built/reused."""
    env = load_environment(reference, project, env, registry_url)
    oci = builder == "oci" or output is not None or load
    images.preflight(env, builder="oci" if oci else "docker", compression=compression)
    version = registered_version(env, registry_url)  # after the checks: the registry is the first contact
    result = images.build(env, builder, output=output, push=also_push, load=load, version=version,
                          compression=compression, echo=step_echo())
    if oci:
        if as_json:
            print_json({"builder": "oci", "reference": result.reference, "status": result.status,
                         "digest": result.digest, "lines": result.lines})
            return
        click.echo("\n".join(result.lines))
        return
    if as_json:
        print_json({"builder": "docker", "reference": result.reference, "status": result.status,
                     "image_id": result.image_id, "tags": list(result.tags), "push": result.pushed})
        return
    click.echo(f"{result.reference} {result.status}")
    if result.pushed is not None:
        click.echo(f"{result.reference} {result.pushed}")


@image.command(name="push")
@environment_arguments
def image_push(reference: str | None, project: Path | None, env: str | None, registry_url: str | None) -> None:
    """Push the image to its registry (building it first if needed); reused when the registry has it."""
    env = load_environment(reference, project, env, registry_url)
    images.preflight(env)
    reference, status = images.push(env, version=registered_version(env, registry_url), echo=step_echo())
    click.echo(f"{reference} {status}")
