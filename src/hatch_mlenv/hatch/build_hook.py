"""The `mlenv` build hook: lock (or check) on `hatch build`, ship the lock and the manifest."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

from hatch_mlenv.errors import ConfigError, MlenvError

if TYPE_CHECKING:
    from hatch_mlenv.environment import Environment
    from hatch_mlenv.registry import Version

# hatch imports this module in a process of its own just to find the hook
# class: everything else is imported when the hook runs.

# `auto` and `check`, the hook's first words, are `relock` and `locked` (see `hatch_mlenv.lock`).
LOCK_MODES = ("auto", "check", "relock", "locked", "frozen")
_LOCK_ALIASES = {"auto": "relock", "check": "locked"}
IMAGE_MODES = ("none", "build", "push")
IMAGE_BUILDERS = ("docker", "oci")
OCI_OUTPUT = "build/mlenv-image.oci"  # under the project


class MlenvBuildHook(BuildHookInterface):
    """`[tool.hatch.build.hooks.mlenv]`.

    Options:
    - `lock`: the stale-lock policy of every command: `"relock"` (or `"auto"`)
      locks when the lock is missing or stale; `"locked"` (or `"check"`) fails
      the build instead, for CI; `"frozen"` uses the lock as it is. Default:
      `$MLENV_LOCKED` / `$MLENV_FROZEN`, then `[tool.mlenv] lock`, then relock;
      those variables also win over this option.
    - `register`: `true` (default) registers the locked environment in the
      registry ([tool.mlenv] `registry`, `$MLENV_REGISTRY`, else the local
      one); registering an existing digest creates nothing. The manifest
      records the version.
    - `image`: `"none"` (default; the image reference is still computed and
      written to the manifest), `"build"` (build or reuse the image) or
      `"push"` (and push it to `[tool.mlenv.docker] registry`).
    - `image-builder`: `"docker"` (default; the host strategy in a Docker
      engine) or `"oci"` (no daemon, the same bytes on any machine): `"build"`
      writes the OCI image layout to `build/mlenv-image.oci` under the project,
      `"push"` pushes it; the manifest records the image's digest.
    - `image-layer-compression`: the oci builder's layers, `"gzip"` (default;
      every engine reads them) or `"zstd"` (several times faster to write and
      to read, for Docker 23+, containerd and podman; tags end in `-zstd`).

    The wheel gets `conda-lock.yml` and `mlenv.json` in
    `.dist-info/extra_metadata/`; the sdist gets the lockfile at its project
    path; when the output directory is the project's own `dist/`, the manifest
    is also written as `dist/<project>-<version>.mlenv.json`.
    """

    PLUGIN_NAME = "mlenv"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name not in ("wheel", "sdist") or version == "editable":
            return
        try:
            spec, lock = self._lock()
            if self.target_name == "sdist":
                # The sdist ships the spec and the lock; the wheel carries the manifest.
                lock_relpath = os.path.relpath(spec.lockfile, self.root).replace(os.sep, "/")
                build_data["force_include"][str(spec.lockfile)] = lock_relpath
                return
            from hatch_mlenv.environment import Environment
            from hatch_mlenv.manifest import MANIFEST_NAME

            self._environment = Environment(spec, lock)
            self._registration = self._register(self._environment)
            self._image()
        except MlenvError as exc:
            # A one-line error instead of a traceback through hatchling.
            print(f"mlenv: error: {exc}", file=sys.stderr)
            raise SystemExit(exc.exit_code) from None
        env = self._environment
        self._scratch = tempfile.mkdtemp(prefix="mlenv-build-")
        manifest = Path(self._scratch) / MANIFEST_NAME
        manifest.write_text(self._manifest_text(), encoding="utf-8")
        build_data["extra_metadata"][str(env.spec.lockfile)] = env.spec.lockfile.name
        build_data["extra_metadata"][str(manifest)] = MANIFEST_NAME

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        env = getattr(self, "_environment", None)
        if env is None:
            return
        scratch = getattr(self, "_scratch", None)
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
        if self._output_is_project_dist():
            from hatch_mlenv.manifest import MANIFEST_NAME

            name = f"{self.metadata.core.name.replace('-', '_')}-{self.metadata.version}.{MANIFEST_NAME}"
            from hatch_mlenv.lockfile import atomic_write

            atomic_write(Path(self.directory) / name, self._manifest_text())

    def _lock(self):  # -> tuple[Spec, Lock]
        import hatch_mlenv.lock as locking
        from hatch_mlenv.spec import load_spec

        configured = None
        if "lock" in self.config:
            mode = self._option("lock", LOCK_MODES)
            configured = locking.LockPolicy(_LOCK_ALIASES.get(mode, mode),
                                            f"tool.hatch.build.hooks.mlenv.lock = \"{mode}\"")
        spec = load_spec(self.root)
        policy = locking.lock_policy(None, spec, configured=configured)
        return spec, locking.current_lock(spec, policy, lambda line: self.app.display_info(f"mlenv: {line}"))

    def _option(self, key: str, choices: tuple[Any, ...]) -> Any:
        """A hook option, one of `choices` (the first is the default); errors name the key."""
        value = self.config.get(key, choices[0])
        if type(value) is not type(choices[0]) or value not in choices:
            allowed = "true or false" if isinstance(choices[0], bool) else f"one of {', '.join(map(repr, choices))}"
            raise ConfigError(
                Path(self.root) / "pyproject.toml", f"tool.hatch.build.hooks.mlenv.{key}", f"must be {allowed}, not {value!r}"
            )
        return value

    def _register(self, env: Environment) -> Version | None:
        if not self._option("register", (True, False)):
            return None
        from hatch_mlenv.registry import open_registry, register_environment, select_url

        registry = open_registry(select_url(None, env.spec.registry))
        registration = register_environment(registry, env)
        self._registry_url = registry.url
        if registration.created:
            self.app.display_info(f"mlenv: registered {registration.version.ref}")
        return registration.version

    def _image(self) -> None:
        mode = self._option("image", IMAGE_MODES)
        builder = self._option("image-builder", IMAGE_BUILDERS)
        compression = self._layer_compression(builder)  # checked with image = "none" too, as the others
        if mode == "none":
            return
        import hatch_mlenv.image as images  # lazy: as every stage here (see the module's top)

        version = self._registration.version if self._registration is not None else None
        output = Path(self.root) / OCI_OUTPUT if builder == "oci" and mode != "push" else None
        result = images.build(self._environment, builder, output=output, push=mode == "push", version=version,
                              compression=compression, echo=self.app.display_info)
        if builder == "oci":
            for line in result.lines:
                self.app.display_info(f"mlenv: image {line}")
            self._image_reference = result.reference  # zstd layers: its own tag
            self._image_digest = result.digest
            return
        self.app.display_info(f"mlenv: image {result.reference} {result.status}")
        if result.pushed is not None:
            self.app.display_info(f"mlenv: image {result.reference} {result.pushed}")

    def _layer_compression(self, builder: str) -> str:
        if "image-layer-compression" not in self.config:
            return "gzip"
        from hatch_mlenv.image.layers import COMPRESSIONS  # only a project that sets the option pays for it

        compression = self._option("image-layer-compression", tuple(COMPRESSIONS))
        if compression != "gzip" and builder != "oci":
            raise ConfigError(Path(self.root) / "pyproject.toml", "tool.hatch.build.hooks.mlenv.image-layer-compression",
                              f"{compression} layers are written by the oci builder: set image-builder = \"oci\" "
                              "(the docker builder's layers are the engine's)")
        return compression

    def _manifest_text(self) -> str:
        manifest = self._environment.manifest()
        version = getattr(self, "_registration", None)
        if version is not None:
            manifest |= {"version": version.version, "registry_ref": version.ref, "registry": self._registry_url}
        if getattr(self, "_image_digest", None):
            manifest["image"], manifest["image_digest"] = self._image_reference, self._image_digest
        return json.dumps(manifest, indent=2, sort_keys=True) + "\n"

    def _output_is_project_dist(self) -> bool:
        """A project's own `dist/`: also under `python -m build`, whose wheel is built
        from the unpacked sdist elsewhere but written to the project's dist/."""
        directory = Path(self.directory)
        return directory.name == "dist" and (directory.parent / "pyproject.toml").is_file()
