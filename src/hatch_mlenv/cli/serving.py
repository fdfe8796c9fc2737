"""Commands that serve others: the registry's web page (`serve`) and Ray's runtime_env field (`ray-env`).

Each imports its server only when it runs (Starlette and uvicorn, or Ray: ~0.1 s and ~0.4 s)."""

from __future__ import annotations

import click

from hatch_mlenv.cli._common import registry_option
from hatch_mlenv.registry import select_url


@click.command(name="ray-env")
@click.argument("reference", metavar="REF")
@registry_option
def ray_env(reference: str, registry_url: str | None) -> None:
    """Print the Ray runtime_env JSON that runs work in a registered version (NAME, NAME:VERSION, NAME@LABEL),
    pinned here to NAME:VERSION and its digest: ray job submit --runtime-env-json "$(mlenv ray-env REF)"."""
    from hatch_mlenv.ray import field_json  # Ray, imported by this command only

    click.echo(field_json(reference, registry_url))


@click.command()
@registry_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; one that is not loopback is reachable from other machines (a warning says so).")
@click.option("--port", type=click.IntRange(0, 65535), default=8077, show_default=True, help="Port; 0 picks a free one.")
def serve(registry_url: str | None, host: str, port: int) -> None:
    """A read-only web page over the registry: environments, versions, definitions, packages,
    dependency graphs, diffs and downloads, each with its JSON under /api/. Writes nothing."""
    from hatch_mlenv.web.app import serve as serve_registry  # Starlette and uvicorn, for this command only

    serve_registry(select_url(registry_url), host, port, say=click.echo,
                   warn=lambda line: click.echo(f"mlenv: warning: {line}", err=True))

