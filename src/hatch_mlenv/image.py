"""The image stage: a Docker image from a locked environment.

- The tag is `[registry/]repository:<first 12 hex of the digest>`, computable
  from the lock alone; a registered version also gets `v<N>`.
- Strategy `host` (default) installs the linux-64 lock on this machine into the
  build context, for the image's prefix, and writes a short Dockerfile that
  copies it onto the base image: no network inside the build.
- Strategy `dockerfile` writes a self-contained multi-stage Dockerfile that
  installs the lock with micromamba, for remote builders.
- Builds go through the Docker SDK against a real engine; an existing tag is
  reused, not rebuilt. Secret variables never reach the image.
- What the lock needs from the host (`hatch_mlenv.system`) becomes labels,
  `io.mlenv.requires.cuda=">=12.0"` etc.; an image that needs `__cuda` also
  gets the NVIDIA container runtime's variables (`NVIDIA_VISIBLE_DEVICES`,
  `NVIDIA_DRIVER_CAPABILITIES`, and `NVIDIA_REQUIRE_CUDA` for a plain floor,
  so that the runtime refuses a host whose driver is too old).
- System libraries: `[tool.mlenv.docker] base-dockerfile` is built first, without a
  context, into `<repository>-base:<first 12 hex of its sha256>` (reused when the engine
  has it), and the environment goes on top of it. The Dockerfile's sha256 is in the lock,
  so the image tag changes with it; the oci builder and the dockerfile strategy need a
  base that is already in a registry and refuse it.
- Activation: ENV sets PATH, CONDA_PREFIX and the lock's variables. When the
  installed prefix has activation scripts (`etc/conda/activate.d/*.sh`,
  `etc/conda/env_vars.d`), the host strategy also writes an entrypoint,
  `<prefix>/etc/hatch-mlenv/entrypoint.sh`, that runs conda's activation (the
  script rattler writes for the prefix) before exec'ing the command. The
  dockerfile strategy does not: its prefix is only known inside the build.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from hatch_mlenv import __version__, progress
from hatch_mlenv.errors import ConfigError, ImageError, UsageError
from hatch_mlenv.errors import first_line as _first_line
from hatch_mlenv.hashes import TAG_LENGTH
from hatch_mlenv.lockfile import Lock
from hatch_mlenv.platforms import REQUIREMENT_KEYS
from hatch_mlenv.spec import BASE_DOCKERFILE_KEY

PLATFORM = "linux-64"
DEFAULT_BASE_IMAGE = "debian:12-slim"
MICROMAMBA_IMAGE = "mambaorg/micromamba:1.5.10"
STRATEGIES = ("host", "dockerfile")


def repository_name(name: str, repository: str | None = None, registry: str | None = None) -> str:
    """The image repository: `[tool.mlenv.docker] repository`, else the environment name, lowercased."""
    repository = repository or re.sub(r"[^a-z0-9._/-]+", "-", name.lower())
    if registry:
        repository = f"{registry.rstrip('/')}/{repository}"
    return repository


def image_reference(digest: str, spec: Any) -> str:
    """`[registry/]repository:<first 12 hex of the digest>`: known before any daemon is asked."""
    return f"{repository_name(spec.name, spec.docker.repository, spec.docker.registry)}:{digest[:TAG_LENGTH]}"


def base_dockerfile_reference(repository: str, sha256: str) -> str:
    """The base image built from a base Dockerfile: `<repository>-base:<first 12 hex of its sha256>`."""
    return f"{repository}-base:{sha256[:TAG_LENGTH]}"


def image_reference_for(name: str, digest: str) -> str:
    """The image reference of a lock registered without a project: `name:<digest12>`."""
    return f"{repository_name(name)}:{digest[:TAG_LENGTH]}"


@dataclass(frozen=True)
class ImagePlan:
    """Everything that decides the image, as values."""

    name: str
    digest: str
    repository: str  # [registry/]repository
    base_image: str
    prefix: str
    variables: dict[str, str]  # non-secret only
    version: int | None = None
    project_version: str | None = None
    managed: bool = True  # False: a user-managed environment, the base image is used as it is
    base_digest: str | None = None  # the base image by digest, when the engine knows it
    # What the linux-64 lock needs from the host: virtual package -> constraint (`__cuda` -> `>=12.0`).
    needs: dict[str, str] = field(default_factory=dict, hash=False)
    base_dockerfile: str | None = None  # sha256 of the base Dockerfile that base_image is built from

    def runtime_variables(self) -> dict[str, str]:
        """The NVIDIA container runtime's variables for an environment that needs CUDA (the lock's own win)."""
        cuda = self.needs.get("__cuda")
        if cuda is None:
            return {}
        found = re.fullmatch(r">=\s*(\d+(?:\.\d+)*)", cuda)
        runtime = {"NVIDIA_VISIBLE_DEVICES": "all", "NVIDIA_DRIVER_CAPABILITIES": "compute,utility"}
        if found:
            runtime["NVIDIA_REQUIRE_CUDA"] = f"cuda>={found.group(1)}"
        return {k: v for k, v in runtime.items() if k not in self.variables}

    @property
    def reference(self) -> str:
        return f"{self.repository}:{self.digest[:TAG_LENGTH]}"

    @property
    def tags(self) -> list[str]:
        tags = [self.digest[:TAG_LENGTH]]
        if self.version is not None:
            tags.append(f"v{self.version}")
        return tags

    def labels(self) -> dict[str, str]:
        labels = {
            "org.opencontainers.image.title": self.name,
            "org.opencontainers.image.base.name": self.base_image,
            "org.opencontainers.image.description": f"hatch-mlenv environment {self.name}",
            "io.mlenv.name": self.name,
            "io.mlenv.digest": f"sha256:{self.digest}",
            "io.mlenv.prefix": self.prefix,
            "io.mlenv.tool": f"hatch-mlenv {__version__}",
        }
        if self.base_digest is not None:
            labels["io.mlenv.base-image-digest"] = self.base_digest
        if self.base_dockerfile is not None:
            labels["io.mlenv.base-dockerfile"] = f"sha256:{self.base_dockerfile}"
        if self.version is not None:
            labels["io.mlenv.version"] = str(self.version)
            labels["org.opencontainers.image.version"] = f"v{self.version}"
        for name, constraint in self.needs.items():
            labels[f"io.mlenv.requires.{REQUIREMENT_KEYS.get(name, name.lstrip('_'))}"] = constraint
        return labels


def plan_for(env: Any, version: int | None = None, base_digest: str | None = None) -> ImagePlan:
    """The plan of an `Environment`: base image and variables come from the lock (the digest covers them).

    What the plan takes from the spec and the lock is checked again here, against the grammar of
    the Dockerfile words, paths and environment entries it becomes (as `parse_spec` checked the
    spec): a lockfile edited by hand or a version registered elsewhere is written into no image
    unchecked. A ConfigError names the key and where the environment came from."""
    from hatch_mlenv.spec import check_locked_values, prefix_problem, registry_problem, repository_problem
    from hatch_mlenv.system import lock_needs

    spec, lock = env.spec, env.lock
    source = getattr(env, "source", spec.pyproject)
    docker = spec.docker
    for key, value, problem in (("prefix", docker.prefix, prefix_problem),
                                ("registry", docker.registry, registry_problem),
                                ("repository", docker.repository, repository_problem)):
        wrong = problem(value.rstrip("/") if key == "registry" else value) if value is not None else None
        if wrong is not None:
            raise ConfigError(source, f"tool.mlenv.docker.{key}", f"{value!r} {wrong}")
    check_locked_values(source, spec.project_dir, lock.base_image or spec.docker.base_image, lock.variables)
    repository = repository_name(spec.name, spec.docker.repository, spec.docker.registry)
    base_image = lock.base_image or spec.docker.base_image or DEFAULT_BASE_IMAGE
    if lock.base_dockerfile:
        if not re.fullmatch(r"[0-9a-f]{64}", lock.base_dockerfile):
            raise ConfigError(source, BASE_DOCKERFILE_KEY,
                              "the lock's sha256 of the base Dockerfile is not 64 hex digits")
        base_image = base_dockerfile_reference(repository, lock.base_dockerfile)
    return ImagePlan(
        name=spec.name,
        digest=lock.digest(),
        repository=repository,
        base_image=base_image,
        prefix=spec.docker.prefix,
        variables={k: v for k, v in lock.variables.items() if v is not None},
        version=version,
        project_version=spec.project_version,
        managed=spec.managed,
        base_digest=base_digest,
        needs={name: need["constraint"] for name, need in lock_needs(lock).get(PLATFORM, {}).items()},
        base_dockerfile=lock.base_dockerfile,
    )


def require_linux(lock: Lock, lockfile: Path | str) -> None:
    if PLATFORM not in lock.platforms or not lock.for_platform(PLATFORM):
        raise ImageError(
            f"{lockfile}: the lock has no {PLATFORM} packages (platforms: {', '.join(lock.platforms) or 'none'}); "
            f"add \"{PLATFORM}\" to tool.mlenv.platforms and run `mlenv lock`"
        )


BASE_IMAGE_KEY = "tool.mlenv.docker.base-image"


def preflight(env: Any, *, builder: str = "docker", strategy: str = "host") -> ImagePlan:
    """What an image context or build can know is wrong before it contacts anything (a Docker
    engine, a registry): a lock without linux-64 packages, values a Dockerfile cannot take, and a
    base the builder cannot start from. Every builder and the CLI call it first."""
    if strategy not in STRATEGIES:
        raise ImageError(f"unknown strategy {strategy!r}: use {' or '.join(STRATEGIES)}")
    require_linux(env.lock, env.reference if getattr(env, "is_registered", False) else env.spec.lockfile)
    plan = plan_for(env)
    if builder == "oci":
        return plan  # any base: a registry's or an OCI layout's (`oci_image.build_oci` refuses a base Dockerfile)
    if plan.base_image.startswith("oci:"):
        raise ConfigError(getattr(env, "source", env.spec.pyproject), BASE_IMAGE_KEY,
                          f"{plan.base_image!r} is an OCI image layout on this machine, which only the oci builder "
                          "reads (`mlenv image build --builder oci`); a Dockerfile cannot start FROM it: name an "
                          "image in a registry or in the Docker engine")
    if strategy == "dockerfile" and not plan.managed:
        raise ImageError("a user-managed environment (managed = false) uses its base image as it is: "
                         "there is nothing for micromamba to install; use --strategy host")
    if strategy == "dockerfile" and plan.base_dockerfile:
        raise ConfigError(env.spec.pyproject, BASE_DOCKERFILE_KEY, "the dockerfile strategy is for remote "
                          f"builders, which cannot see the base image built here ({plan.base_image}); push the "
                          "base to a registry and set base-image in place of base-dockerfile, or use --strategy host")
    if strategy == "host" and env.spec.docker.base_dockerfile is not None and not plan.base_dockerfile:
        raise ImageError(f"{env.spec.lockfile}: written before {BASE_DOCKERFILE_KEY} was set, so it is not "
                         "in the image's tag; run `mlenv lock`")
    return plan


# -- writing values into a Dockerfile ----------------------------------------------------------
# Values were checked by the spec and by `plan_for`; the writers still refuse what a Dockerfile
# cannot hold as one word or one quoted string, so that no value ever becomes an instruction.
_DOCKERFILE_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_UNWRITABLE_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def dockerfile_string(value: str, raw_tail: str = "") -> str:
    """`value` as a double-quoted Dockerfile word that means exactly `value`: the Dockerfile's escapes
    (backslash before `\\`, `"` and `$`, so that nothing is expanded), UTF-8 kept as is. `raw_tail`
    is appended unescaped (the `$PATH` that ENV PATH expands on purpose)."""
    if _UNWRITABLE_RE.search(value):
        raise ImageError(f"{value!r} holds a line break or control character, which a Dockerfile cannot hold")
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
    return f'"{escaped}{raw_tail}"'


def _word(value: str, what: str) -> str:
    """A value written bare (FROM's image, a comment's name): one word, nothing a parser splits on."""
    if not value or any(c.isspace() for c in value) or _UNWRITABLE_RE.search(value):
        raise ImageError(f"{what} {value!r} is not one word: it cannot be written into a Dockerfile")
    return value


def _instruction(keyword: str, pairs: list[tuple[str, str]]) -> str:
    """One ENV or LABEL instruction for all pairs (one layer of history); `pairs` hold quoted values."""
    for key, _ in pairs:
        if not _DOCKERFILE_KEY_RE.fullmatch(key):
            raise ImageError(f"{keyword} key {key!r} cannot be written into a Dockerfile")
    body = " \\\n    ".join(f"{key}={value}" for key, value in pairs)
    return f"{keyword} {body}"


def _env_lines(plan: ImagePlan) -> list[str]:
    pairs = ([("PATH", dockerfile_string(f"{plan.prefix}/bin:", raw_tail="$PATH")),
              ("CONDA_PREFIX", dockerfile_string(plan.prefix))] if plan.managed else [])
    variables = plan.variables | plan.runtime_variables()
    pairs += [(key, dockerfile_string(value)) for key, value in sorted(variables.items())]
    return [_instruction("ENV", pairs)] if pairs else []


def _label_lines(plan: ImagePlan) -> list[str]:
    return [_instruction("LABEL", [(key, dockerfile_string(value)) for key, value in sorted(plan.labels().items())])]


ENTRYPOINT = "etc/hatch-mlenv/entrypoint.sh"  # inside the prefix


def host_dockerfile(plan: ImagePlan, *, entrypoint: bool = False) -> str:
    """The host strategy's Dockerfile; `entrypoint`: the prefix has ENTRYPOINT's activation wrapper."""
    # An ENTRYPOINT clears the CMD inherited from the base image: give it one.
    prefix = _word(plan.prefix, "prefix")
    activate = [f"ENTRYPOINT {json.dumps([f'{prefix}/{ENTRYPOINT}'])}", 'CMD ["/bin/sh"]'] if entrypoint else []
    built_base = ([f"# {_word(plan.base_image, 'base image')} is built from the base Dockerfile "
                   f"(sha256:{plan.base_dockerfile}) by `mlenv image build`"] if plan.base_dockerfile else [])
    return "\n".join(
        [
            f"# Generated by hatch-mlenv {__version__} for {_word(plan.name, 'name')} sha256:{plan.digest}",
            *built_base,
            f"FROM {_word(plan.base_image, 'base image')}",
            *([f"COPY {json.dumps(['env/', f'{prefix}/'])}"] if plan.managed else []),
            *_env_lines(plan),
            *activate,
            *_label_lines(plan),
            "",
        ]
    )


def entrypoint_script(staged: Path, plan: ImagePlan) -> str | None:
    """The image's activation wrapper, or None when the prefix installed at `staged` has nothing to activate.

    The packages' scripts compute their variables from the running container (its
    CONDA_PREFIX, its PATH, what they find on disk there), so they cannot be run on
    this host to become ENV lines, nor by a RUN step, whose environment no later
    step inherits: they run at container start, as `conda activate` would run them.
    """
    import shlex

    from rattler.shell import ActivationVariables, PathModificationBehavior, Shell, activate

    conda = staged / "etc" / "conda"
    if not (any(conda.glob("activate.d/*.sh")) or any(conda.glob("env_vars.d/*.json"))):
        return None
    bin_dir, staged = f"{plan.prefix}/bin", staged.absolute()
    script = activate(
        staged, ActivationVariables(None, [bin_dir], PathModificationBehavior.Replace), Shell.bash, PLATFORM
    ).script
    # rattler writes the script for where the prefix is now; the image has it at plan.prefix.
    # Its PATH line would drop the image's PATH: ENV already puts the prefix's bin first.
    lines = [line.replace(str(staged), plan.prefix) for line in script.splitlines()
             if line.strip() and not line.startswith("export PATH=")]
    spec_values = [f"export {_shell_name(name)}={shlex.quote(value)}" for name, value in sorted(plan.variables.items())]
    quoted_bin = shlex.quote(bin_dir)
    return "\n".join(
        [
            "#!/bin/sh",
            f"# Written by hatch-mlenv {__version__} for {_word(plan.name, 'name')} sha256:{plan.digest}: the image's "
            "entrypoint.",
            f"# conda's activation of {_word(plan.prefix, 'prefix')} (as rattler writes it), then the command. The "
            "scripts' own",
            "# output goes to stderr, so a command's stdout is only the command's.",
            "{",
            *(f"    {line}" for line in lines),
            "} >&2",
            "# the lock's values have the last word, and the prefix's bin stays first, as for `mlenv run`",
            *spec_values,
            "_mlenv_rest=; set -f; _mlenv_ifs=$IFS; IFS=:",
            "for _mlenv_entry in $PATH; do",
            f'    [ "$_mlenv_entry" = {quoted_bin} ] || _mlenv_rest="$_mlenv_rest:$_mlenv_entry"',
            "done",
            "IFS=$_mlenv_ifs; set +f",
            f'export PATH={quoted_bin}"$_mlenv_rest"',
            "unset _mlenv_rest _mlenv_ifs _mlenv_entry",
            'exec "$@"',
            "",
        ]
    )


def _shell_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ImageError(f"{name!r} is not an environment variable name a shell can export")
    return name


def micromamba_dockerfile(plan: ImagePlan) -> str:
    import shlex

    prefix = _word(plan.prefix, "prefix")
    return "\n".join(
        [
            f"# Generated by hatch-mlenv {__version__} for {_word(plan.name, 'name')} sha256:{plan.digest}",
            "# Self-contained: the builder stage installs conda-lock.yml (conda and pip",
            "# packages, verified against their hashes) with micromamba; the final stage",
            "# copies the prefix onto the base image. Needs network access to the channels.",
            f"FROM {MICROMAMBA_IMAGE} AS builder",
            "COPY --chown=$MAMBA_USER:$MAMBA_USER conda-lock.yml /tmp/conda-lock.yml",
            f"RUN micromamba create --yes --prefix {shlex.quote(prefix)} --file /tmp/conda-lock.yml \\",
            "    && micromamba clean --all --yes",
            "",
            f"FROM {_word(plan.base_image, 'base image')}",
            f"COPY --from=builder {json.dumps([prefix, prefix])}",
            *_env_lines(plan),
            *_label_lines(plan),
            "",
        ]
    )


def write_context(
    env: Any, out: Path, *, strategy: str = "host", version: int | None = None, base_digest: str | None = None
) -> ImagePlan:
    """Write a complete build context for `env` into `out` (which must not exist or be empty)."""
    preflight(env, strategy=strategy)
    plan = plan_for(env, version, base_digest)
    if out.exists() and any(out.iterdir()):
        raise ImageError(f"{out}: the context directory is not empty")
    staging = Path(tempfile.mkdtemp(prefix=".mlenv-context-", dir=out.parent if out.parent.exists() else None))
    try:
        if strategy == "host" and plan.managed:
            entrypoint = stage_prefix(env, staging / "env", plan)
            (staging / "Dockerfile").write_text(host_dockerfile(plan, entrypoint=entrypoint), encoding="utf-8")
        elif strategy == "host":
            (staging / "Dockerfile").write_text(host_dockerfile(plan), encoding="utf-8")
        else:
            # env.files(): a version loaded by reference gets its lockfile on disk first
            shutil.copyfile(env.files().spec.lockfile, staging / "conda-lock.yml")
            (staging / "Dockerfile").write_text(micromamba_dockerfile(plan), encoding="utf-8")
        (staging / ".dockerignore").write_text("")
        if out.exists():
            out.rmdir()
        out.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return plan


def stage_prefix(env: Any, staged: Path, plan: ImagePlan) -> bool:
    """Install the linux-64 lock at `staged` for the image's prefix, with the activation
    wrapper when the prefix needs one; returns whether it did (both builders use this)."""
    with progress.step(f"installing the {PLATFORM} lock of {env.name} for the image's prefix {plan.prefix}"):
        _install_prefix(env, staged, plan.prefix)
    wrapper = entrypoint_script(staged, plan)
    if wrapper is None:
        return False
    path = staged / ENTRYPOINT
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(wrapper, encoding="utf-8")
    path.chmod(0o755)
    return True


def _install_prefix(env: Any, prefix: Path, target_prefix: str) -> None:
    from hatch_mlenv.install import check_lock_integrity, install_conda, install_wheels, wheel_indexes

    lock, lockfile = env.files().lock, env.spec.lockfile  # a version loaded by reference: its lockfile on disk
    check_lock_integrity(lock, lockfile)
    install_conda(lockfile, PLATFORM, prefix, target_prefix=target_prefix, channels=env.spec.channel_fetch_urls())
    wheels = [p for p in lock.for_platform(PLATFORM) if p.manager == "pip"]
    if wheels:
        python = next((p for p in lock.for_platform(PLATFORM) if p.manager == "conda" and p.name == "python"), None)
        if python is None:
            raise ImageError(f"{lockfile}: pip packages are locked for {PLATFORM} but python is not")
        install_wheels(wheels, prefix, python.version, target_prefix=target_prefix,
                       indexes=wheel_indexes(env.spec, lock), find_links=env.spec.pip_find_links,
                       build_constraints=env.spec.pip_build_constraints)
    # rattler marks its own cache directories; this one is an image's prefix.
    (prefix / "CACHEDIR.TAG").unlink(missing_ok=True)


# -- the engine ------------------------------------------------------------------------------

def docker_client():  # -> docker.DockerClient
    import docker

    try:
        client = docker.from_env(timeout=300)
        client.ping()
    except Exception as exc:  # DockerException, requests' ConnectionError, FileNotFoundError
        raise ImageError(
            f"cannot reach the Docker engine ({_first_line(exc)}); is dockerd running and DOCKER_HOST right?"
        ) from None
    return client


def image_exists(client: Any, reference: str) -> bool:
    import docker

    try:
        client.images.get(reference)
        return True
    except docker.errors.ImageNotFound:
        return False


def base_image_digest(client: Any, base: str) -> str | None:
    """The base image's repo digest (or image ID) when the engine has it."""
    import docker

    try:
        image = client.images.get(base)
    except docker.errors.ImageNotFound:
        return None
    digests = image.attrs.get("RepoDigests") or []
    return digests[0] if digests else image.id


@dataclass(frozen=True)
class BuildResult:
    reference: str
    status: str  # "built" or "reused"
    image_id: str
    tags: tuple[str, ...]


def build(env: Any, *, version: int | None = None, echo: Callable[[str], None] = progress.echo) -> BuildResult:
    """Build (or reuse) the image of `env` with the host strategy."""
    preflight(env)  # before the engine is asked anything
    client = docker_client()
    plan = plan_for(env, version)
    reference = plan.reference
    if image_exists(client, reference):
        image = client.images.get(reference)
        _tag_all(image, plan)
        return BuildResult(reference, "reused", image.id, tuple(plan.tags))
    if plan.base_dockerfile:
        build_base(client, env, plan, echo)
    base_digest = base_image_digest(client, plan.base_image)
    if base_digest is None:
        raise ImageError(
            f"base image {plan.base_image!r} is not in the Docker engine; pull or load it first "
            "(hatch-mlenv builds without network access)"
        )
    with tempfile.TemporaryDirectory(prefix="mlenv-image-") as scratch:
        context = Path(scratch) / "context"
        write_context(env, context, strategy="host", version=version, base_digest=base_digest)
        echo(f"building {reference} from {plan.base_image} ({base_digest})")
        image_id = _stream_build(client, context, reference, echo)
    image = client.images.get(image_id)
    _tag_all(image, plan)
    return BuildResult(reference, "built", image.id, tuple(plan.tags))


def build_base(client: Any, env: Any, plan: ImagePlan, echo: Callable[[str], None] = progress.echo) -> None:
    """Build the base image from `[tool.mlenv.docker] base-dockerfile` as `plan.base_image`, unless
    the engine has it. The Dockerfile is built alone, without a context: its content (in the lock,
    in the tag) is all that goes in, apart from what its RUN steps fetch."""
    import hashlib
    import io

    if image_exists(client, plan.base_image):
        echo(f"base image {plan.base_image} reused")
        return
    spec, lockfile, wanted = env.spec, env.spec.lockfile, plan.base_dockerfile
    path = spec.docker.base_dockerfile
    if path is None or (env.is_registered and not path.is_file()):
        where = f"{env.reference}" if env.is_registered else str(lockfile)
        raise ImageError(f"{where}: the image is built on a base Dockerfile (sha256:{wanted}) that is not on this "
                         f"machine{f' ({path} does not exist)' if path else ''}; build the image from the project "
                         f"that declares {BASE_DOCKERFILE_KEY}, or load its base image {plan.base_image}")
    content = spec.read_base_dockerfile()
    if hashlib.sha256(content).hexdigest() != wanted:
        raise ImageError(f"{path}: changed since {lockfile.name} was written ({BASE_DOCKERFILE_KEY}); "
                         "run `mlenv lock`, which records its new content")
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
    import docker

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


def push(env: Any, *, version: int | None = None, echo: Callable[[str], None] = progress.echo) -> tuple[str, str]:
    """Push the image's tags to its registry; returns (reference, "pushed" | "reused")."""
    preflight(env)
    plan = plan_for(env, version)
    require_registry(plan.repository)
    client = docker_client()
    if _remote_has(client, plan.reference):
        return plan.reference, "reused"
    if not image_exists(client, plan.reference):
        build(env, version=version, echo=echo)
    auth = _auth_config()
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
    return plan.reference, "pushed"


def require_registry(repository: str) -> None:
    """Refuse a repository without a registry host: there is nowhere to push it (a setting is
    missing: exit 2, before anything is built)."""
    first = repository.split("/")[0]
    if "/" not in repository or not ("." in first or ":" in first or first == "localhost"):
        raise UsageError(
            f"{repository}: no registry to push to; set [tool.mlenv.docker] registry (e.g. \"127.0.0.1:5000\")"
        )


def _remote_has(client: Any, reference: str) -> bool:
    import docker

    try:
        client.images.get_registry_data(reference, auth_config=_auth_config())
        return True
    except docker.errors.NotFound:
        return False
    except docker.errors.APIError as exc:
        text = str(exc)
        if "manifest unknown" in text or "not found" in text.lower():
            return False
        raise ImageError(f"cannot ask the registry about {reference}: {_first_line(exc)}") from None


def _auth_config() -> dict[str, str] | None:
    import os

    user, password = os.environ.get("MLENV_REGISTRY_USERNAME"), os.environ.get("MLENV_REGISTRY_PASSWORD")
    return {"username": user, "password": password} if user and password else None


