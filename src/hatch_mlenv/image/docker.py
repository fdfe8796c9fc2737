"""The `docker` image builder: the host strategy in a real Docker engine, through the Docker SDK.

The linux-64 lock is installed on this machine into the build context, for the image's prefix
(`image.stage`), and a short Dockerfile copies it onto the base image: no network inside the
build. An existing tag is reused, not rebuilt. `[tool.mlenv.docker] base-dockerfile` is built
first, without a context, into `<repository>-base:<first 12 hex of its sha256>` (reused when the
engine has it), and the environment goes on top of it.
"""

from __future__ import annotations

import dataclasses
import io
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hatch_mlenv.errors import ImageError
from hatch_mlenv.errors import first_line as _first_line
from hatch_mlenv.image.dockerfile import write_context
from hatch_mlenv.image.engine import auth_config, base_image_digest, image_exists
from hatch_mlenv.image.plan import BASE_DOCKERFILE_KEY, ImagePlan, Staging


@dataclass(frozen=True)
class BuildResult:
    reference: str
    status: str  # "built" or "reused"
    image_id: str
    tags: tuple[str, ...]
    pushed: str | None = None  # "pushed" or "reused" when it was pushed too


def reuse(client: Any, plan: ImagePlan) -> BuildResult | None:
    """The image when the engine has its tag already (tagged v<N> too), else None."""
    if not image_exists(client, plan.reference):
        return None
    image = client.images.get(plan.reference)
    _tag_all(image, plan)
    return BuildResult(plan.reference, "reused", image.id, tuple(plan.tags))


def build_host(client: Any, plan: ImagePlan, staging: Staging | None, echo: Callable[[str], None]) -> BuildResult:
    """Build the image of `plan` with the host strategy on its base image, which the engine has."""
    base_digest = base_image_digest(client, plan.base_image)
    if base_digest is None:
        raise ImageError(
            f"base image {plan.base_image!r} is not in the Docker engine; pull or load it first "
            "(hatch-mlenv builds without network access)"
        )
    plan = dataclasses.replace(plan, base_digest=base_digest)
    with tempfile.TemporaryDirectory(prefix="mlenv-image-") as scratch:
        context = Path(scratch) / "context"
        write_context(plan, context, strategy="host", staged_from=staging)
        echo(f"building {plan.reference} from {plan.base_image} ({base_digest})")
        image_id = _stream_build(client, context, plan.reference, echo)
    image = client.images.get(image_id)
    _tag_all(image, plan)
    return BuildResult(plan.reference, "built", image.id, tuple(plan.tags))


def build_base(client: Any, plan: ImagePlan, content: bytes, echo: Callable[[str], None]) -> None:
    """Build the base image from the base Dockerfile's `content` (as locked) as `plan.base_image`.
    The Dockerfile is built alone, without a context: its content (in the lock, in the tag) is all
    that goes in, apart from what its RUN steps fetch."""
    path = plan.base_dockerfile_path
    echo(f"building the base image {plan.base_image} from {path}")
    try:
        image_id = _stream_build(client, None, plan.base_image, echo, fileobj=io.BytesIO(content))
    except ImageError as exc:
        raise ImageError(f"{path} ({BASE_DOCKERFILE_KEY}): {exc}") from None
    repository, tag = plan.base_image.rsplit(":", 1)
    client.images.get(image_id).tag(repository, tag)


def _tag_all(image: Any, plan: ImagePlan) -> None:
    for tag in plan.tags:
        image.tag(plan.repository, tag)


def _stream_build(client: Any, context: Path | None, reference: str, echo: Callable[[str], None],
                  fileobj: Any = None) -> str:
    """Run the build of `context` (or of the Dockerfile `fileobj`, alone), echoing each step;
    on failure raise with the failing step and its output."""
    import docker  # lazy: the docker SDK, only when an engine is asked

    step, output, image_id = "", [], None
    try:
        # No tag here: the reference is applied only once the build succeeded,
        # so a failed build leaves no dangling tag.
        source = {"fileobj": fileobj} if context is None else {"path": str(context)}
        for chunk in client.api.build(**source, rm=True, forcerm=True, pull=False, decode=True):
            if "stream" in chunk:
                for line in chunk["stream"].splitlines():
                    if line.startswith("Step "):
                        step, output = line, []
                    elif line.strip():
                        output.append(line)
                    if line.strip():
                        echo(line)
            if "aux" in chunk and "ID" in chunk["aux"]:
                image_id = chunk["aux"]["ID"]
            if "error" in chunk:
                detail = "\n".join(output[-20:])
                raise ImageError(f"building {reference} failed at {step or 'the start'}: {chunk['error'].strip()}"
                                 + (f"\n{detail}" if detail else ""))
    except docker.errors.APIError as exc:
        raise ImageError(f"building {reference} failed: {_first_line(exc)}") from None
    if image_id is None:
        raise ImageError(f"building {reference} failed: the engine returned no image")
    return image_id


def push_tags(client: Any, plan: ImagePlan, echo: Callable[[str], None]) -> None:
    """Push the image's tags (the engine has them) to its registry."""
    auth = auth_config()
    for tag in plan.tags:
        try:
            for chunk in client.api.push(plan.repository, tag=tag, stream=True, decode=True, auth_config=auth):
                if "error" in chunk:
                    raise ImageError(f"pushing {plan.repository}:{tag} failed: {chunk['error'].strip()}")
                if chunk.get("status") and not chunk.get("progressDetail"):
                    echo(f"{chunk.get('id', '')} {chunk['status']}".strip())
        except ImageError:
            raise
        except Exception as exc:  # APIError, connection errors
            raise ImageError(f"pushing {plan.repository}:{tag} failed: {_first_line(exc)}") from None
