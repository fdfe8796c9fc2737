"""The Docker engine and the registries as a Docker engine sees them: what both builders ask of
it (a client, whether an image is there) and what the docker builder pushes with."""

from __future__ import annotations

import os
from typing import Any

from hatch_mlenv.errors import ImageError
from hatch_mlenv.errors import first_line as _first_line


def docker_client():  # -> docker.DockerClient
    import docker  # lazy: the docker SDK, only when an engine is asked

    try:
        client = docker.from_env(timeout=300)
        client.ping()
    except Exception as exc:  # DockerException, requests' ConnectionError, FileNotFoundError
        raise ImageError(
            f"cannot reach the Docker engine ({_first_line(exc)}); is dockerd running and DOCKER_HOST right?"
        ) from None
    return client


def image_exists(client: Any, reference: str) -> bool:
    import docker  # lazy: the docker SDK, only when an engine is asked

    try:
        client.images.get(reference)
        return True
    except docker.errors.ImageNotFound:
        return False


def base_image_digest(client: Any, base: str) -> str | None:
    """The base image's repo digest (or image ID) when the engine has it."""
    import docker  # lazy: the docker SDK, only when an engine is asked

    try:
        image = client.images.get(base)
    except docker.errors.ImageNotFound:
        return None
    digests = image.attrs.get("RepoDigests") or []
    return digests[0] if digests else image.id


def remote_has(client: Any, reference: str) -> bool:
    import docker  # lazy: the docker SDK, only when an engine is asked

    try:
        client.images.get_registry_data(reference, auth_config=auth_config())
        return True
    except docker.errors.NotFound:
        return False
    except docker.errors.APIError as exc:
        text = str(exc)
        if "manifest unknown" in text or "not found" in text.lower():
            return False
        raise ImageError(f"cannot ask the registry about {reference}: {_first_line(exc)}") from None


def auth_config() -> dict[str, str] | None:
    user, password = os.environ.get("MLENV_REGISTRY_USERNAME"), os.environ.get("MLENV_REGISTRY_PASSWORD")
    return {"username": user, "password": password} if user and password else None
