"""The `mlenv` environment plugin: `hatch run`, `hatch shell` and `hatch env` inside the locked conda prefix.

```toml
[tool.hatch.envs.train]
type = "mlenv"
env = "gpu"            # optional: [tool.mlenv.envs.gpu] instead of the top-level environment,
                       # or a registered version: "fraud-train@production", "fraud-train:3"
path = ".envs/train"   # optional: the prefix; default .mlenv/envs/<name>, the one `mlenv install` uses
```

Hatch drives the life cycle; each step maps onto a stage that already exists:

- `create` installs the lock into the prefix (`install_environment`), after the
  stale-lock policy of every command (`hatch_mlenv.lock.current_lock`): a stale
  or missing lock is locked again and said in one line (default), refused with
  `[tool.mlenv] lock = "locked"` or `MLENV_LOCKED=1`, used as it is with
  `"frozen"` or `MLENV_FROZEN=1`. The environment is always exactly a lock.
- `install_project_dev_mode` / `install_project` build the project's
  (editable) wheel with its own build backend, in hatch's interpreter (which
  has the backend: hatch installs no build environment into a conda prefix),
  and install it with PyPA's `installer` into the prefix's site-packages, for
  the prefix's python version. No dependencies: those are the lock's job
  (`include-project-dependencies`).
- `dependency_hash` is the spec hash plus the lock digest, so hatch asks
  `dependencies_in_sync` after every relock (and spec edit); in sync means the
  prefix's installed digest is the lock's digest and the project is installed.
  `sync_dependencies` installs the new lock (only changed packages move).
- Commands and shells run with `activation()`'s environment: conda's activation
  of the prefix through rattler (PATH, CONDA_PREFIX, the packages'
  `etc/conda/activate.d` scripts), the spec's variables, and secrets only from
  the caller's environment.
- Every install and command first checks that this machine can run the lock
  (`hatch_mlenv.system.require_host`: CUDA driver, glibc, macOS);
  `MLENV_IGNORE_SYSTEM_REQUIREMENTS=1` turns a refusal into a warning.

hatch's own `dependencies`/`extra-dependencies` are refused: they would put
unlocked packages into a locked environment.

hatch imports this module only when the plugin is selected (the registration in
`hatch_mlenv.hatch.plugin` imports it lazily), so importing `hatch` here is fine.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from hatch.env.plugin.interface import EnvironmentInterface
from hatch.utils.structures import EnvVars

from hatch_mlenv.errors import ConfigError, MlenvError, StaleLockError
from hatch_mlenv.errors import first_line as _first_line

if TYPE_CHECKING:
    from hatch_mlenv.environment import Environment
    from hatch_mlenv.spec import Spec

# For these shells hatch's ShellManager sources an activation script (`activate`,
# `activate.fish`, `activate.csh`) after they have read their startup files (a
# ~/.bashrc running `pyenv init` would otherwise put its shims in front of the
# prefix); other shells are exec'd with the activated environment.
_SCRIPT_SHELLS = frozenset({"bash", "zsh", "ash", "fish", "tcsh", "csh"})


class MlenvEnvironment(EnvironmentInterface):
    """`[tool.hatch.envs.NAME] type = "mlenv"`: a hatch environment that is an installed mlenv lock.

    Options (also `HATCH_ENV_TYPE_MLENV_ENV` / `HATCH_ENV_TYPE_MLENV_PATH`):
    - `env`: the `[tool.mlenv.envs.NAME]` environment to use (default: the top level).
    - `path`: where the prefix lives, absolute or relative to the project root
      (default: `.mlenv/envs/<environment name>`, shared with `mlenv install`/`mlenv run`).
    """

    PLUGIN_NAME = "mlenv"

    @staticmethod
    def get_option_types() -> dict:
        return {"env": str, "path": str}

    # --- what and where ---------------------------------------------------

    @cached_property
    def _env_option(self) -> str | None:
        name = self.get_env_var_option("env") or self.config.get("env")
        if name is not None and not isinstance(name, str):
            raise ConfigError(*self._config_key("env"), "must be the name of a [tool.mlenv.envs.NAME] table "
                              "or a registered version (NAME:VERSION, NAME@LABEL)")
        return name or None

    @cached_property
    def registered(self) -> Environment | None:
        """`env = "NAME:VERSION"` or `"NAME@LABEL"`: a registered version instead of the project's lock
        (from $MLENV_REGISTRY, else the registry `[tool.mlenv] registry` names, else local)."""
        from hatch_mlenv.environment import registered_option

        return registered_option(self._env_option, Path(self.root))

    @cached_property
    def spec(self) -> Spec:
        from hatch_mlenv.spec import load_spec

        if self.registered is not None:
            return self.registered.spec
        return load_spec(Path(self.root), self._env_option)

    @cached_property
    def prefix(self) -> Path:
        chosen = self.get_env_var_option("path") or self.config.get("path", "")
        if not isinstance(chosen, str):
            raise ConfigError(*self._config_key("path"), "must be a string")
        if chosen:
            return (Path(self.root) / Path(chosen).expanduser()).absolute()
        # Known without a lock (`hatch env find`, `remove`). A registered version gets a prefix of this
        # project's own (hatch installs the project into it), named by the reference, so that it is
        # never the one `mlenv install` gives the project's own lock: `.mlenv/envs/NAME@LABEL`, `NAME-vN`.
        from hatch_mlenv.reference import option_reference

        ref = option_reference(self._env_option)
        name = str(ref).replace(":", "-v") if ref is not None else self.spec.name
        return (Path(self.root) / ".mlenv" / "envs" / name).absolute()

    def _config_key(self, option: str) -> tuple[Path, str]:
        """Where this environment's option is written, for error messages."""
        root = Path(self.root)
        if (root / "hatch.toml").is_file():
            return root / "hatch.toml", f"envs.{self.name}.{option}"
        return root / "pyproject.toml", f"tool.hatch.envs.{self.name}.{option}"

    def _lock_command(self) -> str:
        return "mlenv lock" + (f" --env {self.spec.env}" if self.spec.env else "")

    def _environment(self) -> Environment:
        """The spec and its lock as they are now (a relock happens under a running hatch)."""
        from hatch_mlenv.environment import Environment
        from hatch_mlenv.lockfile import read_lock

        if self.registered is not None:
            return self.registered
        spec = self.spec
        if not spec.lockfile.is_file():
            raise StaleLockError(f"{spec.lockfile}: does not exist; run `{self._lock_command()}` "
                                 f"(hatch environment {self.name!r})")
        return Environment(spec, read_lock(spec.lockfile))

    def _policy(self):  # -> LockPolicy
        from hatch_mlenv.lock import lock_policy

        return lock_policy(None, self.spec)  # MLENV_LOCKED / MLENV_FROZEN, then [tool.mlenv] lock

    def _staleness(self, env: Environment) -> str | None:
        from hatch_mlenv.lock import staleness

        if env.is_registered or self._policy().mode == "frozen":
            return None
        return staleness(env.spec, env.lock)

    def _fresh_environment(self) -> Environment:
        """The lock under the stale-lock policy: relocked (said in one line), refused or taken as it is."""
        from hatch_mlenv.environment import Environment
        from hatch_mlenv.lock import current_lock

        if self.registered is not None:
            return self.registered
        lock = current_lock(self.spec, self._policy(), lambda line: self.app.display_info(f"mlenv: {line}"))
        return Environment(self.spec, lock)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """One clear line and mlenv's exit code instead of a traceback through hatch."""
        try:
            yield
        except MlenvError as exc:
            self.app.abort(f"mlenv: error: {exc}", code=exc.exit_code)

    def _check_config(self) -> None:
        for option in ("dependencies", "extra-dependencies"):
            if self.config.get(option):
                raise ConfigError(
                    *self._config_key(option),
                    f"not supported by type = \"mlenv\" (got {', '.join(map(str, self.config[option]))}): the "
                    "environment is its lock; add them to [tool.mlenv] conda or pip and run `mlenv lock` (inherited "
                    f"from the default environment? set template = \"{self.name}\" to inherit nothing)",
                )

    # --- hatch's life cycle -------------------------------------------------

    def find(self) -> Path:
        with self._errors():
            return self.prefix

    def exists(self) -> bool:
        """Installed by us: the lock's state file, and the project unless `skip-install`.

        A prefix made by `mlenv install` alone is not yet this hatch environment:
        `create` then only installs the project into it.
        """
        from hatch_mlenv.install import STATE_FILE

        with self._errors():
            if not (self.prefix / STATE_FILE).is_file():
                return False
            return self.skip_install or any(self._project_dist_infos(self.prefix.glob("lib/python*/site-packages")))

    def create(self) -> None:
        with self._errors():
            self._check_config()
            self._install_lock(self._fresh_environment())

    def remove(self) -> None:
        from hatch_mlenv.install import STATE_FILE

        with self._errors():
            prefix = self.prefix
            if prefix.exists() and not ((prefix / STATE_FILE).is_file() or (prefix / "conda-meta").is_dir()):
                # `path` may point anywhere: never delete what is not a prefix.
                raise MlenvError(f"{prefix}: not removing it, it is not a conda prefix (no conda-meta)")
            shutil.rmtree(prefix, ignore_errors=True)
            for leftover in prefix.parent.glob(f".{prefix.name}.*"):  # interrupted installs' staging copies
                shutil.rmtree(leftover, ignore_errors=True)

    def install_project(self) -> None:
        with self._errors():
            self._install_project(editable=False)

    def install_project_dev_mode(self) -> None:
        with self._errors():
            self._install_project(editable=True)

    def dependency_hash(self) -> str:
        """The spec hash and the lock digest: any relock or spec edit makes hatch check the prefix."""
        import hashlib

        from hatch_mlenv.lock import stamped_digest

        with self._errors():
            self._check_config()
            spec = self.spec
            if spec.lockfile.is_file():
                digest = stamped_digest(spec) or self._environment().digest
            else:
                digest = "missing"
            return hashlib.sha256(f"{spec.hash()}:{digest}".encode()).hexdigest()

    def dependencies_in_sync(self) -> bool:
        from hatch_mlenv.install import STATE_FILE

        with self._errors():
            self._check_config()
            if not self.spec.lockfile.is_file():
                return False  # sync_dependencies says what to do
            env = self._environment()
            if self._staleness(env) is not None:
                return False
            try:
                state = json.loads((self.prefix / STATE_FILE).read_text())
            except (OSError, ValueError):
                return False
            if state.get("digest") != env.digest:
                return False
            return self.skip_install or self._project_installed(env)

    def sync_dependencies(self) -> None:
        with self._errors():
            self._check_config()
            env = self._fresh_environment()
            self._install_lock(env)
            if not self.skip_install and not self._project_installed(env):
                # e.g. the relock moved python to another minor version: a new site-packages
                self._install_project(editable=self.dev_mode)

    # --- running things inside ------------------------------------------------

    @contextmanager
    def command_context(self) -> Iterator[dict[str, str | None]]:
        """Runs commands in `activation()`'s environment; yields what it changed (None: unset; PATH: the
        entries it added), for `enter_shell`."""
        from hatch_mlenv.install.activation import activation

        with self.get_env_vars():
            base = dict(os.environ)
            with self._errors():
                env, prefix = self._environment(), self.prefix
                self._check_host(env)
                variables, missing = activation(env, prefix, base)
            for name in missing:
                self.app.display_warning(f"mlenv: warning: secret variable {name} is not set in the environment")
            # Always re-applied in a shell, even where the caller already had the same value.
            kept = {"CONDA_PREFIX", "CONDA_DEFAULT_ENV", *(k for k, v in env.lock.variables.items() if v is not None)}
            changes = {k: v for k, v in variables.items() if k in kept or base.get(k) != v}
            changes.update({k: None for k in base.keys() - variables.keys()})
            inherited = set(base.get("PATH", "").split(os.pathsep))
            changes["PATH"] = os.pathsep.join(e for e in variables["PATH"].split(os.pathsep) if e not in inherited)
            with EnvVars(variables):
                yield changes

    def enter_shell(self, name: str, path: str, args: Any) -> None:
        from hatch.utils.shells import ShellManager

        executor = getattr(ShellManager(self), f"enter_{name}", None) if name in _SCRIPT_SHELLS else None
        with self.command_context() as changes:
            # ShellManager drives the shell through a pty and needs a terminal; piped
            # input (`echo ... | hatch shell train`) gets the shell exec'd instead.
            if executor is None or self.platform.windows or not sys.stdin.isatty():
                self.platform.exit_with_command([path, *args])
            else:
                with self._errors():
                    directory = self._write_activation_scripts(changes)
                executor(path, args, directory)

    # --- helpers ----------------------------------------------------------------

    def _check_host(self, env: Environment) -> None:
        """Refuse a machine that cannot run the lock (MLENV_IGNORE_SYSTEM_REQUIREMENTS=1 warns instead)."""
        from hatch_mlenv.system import BYPASS_VARIABLE, ignored_by_environment, require_host

        for line in require_host(env, ignore=ignored_by_environment(), bypass=f"{BYPASS_VARIABLE}=1"):
            self.app.display_warning(f"mlenv: warning: ignoring system requirements: {line}")

    def _install_lock(self, env: Environment) -> None:
        from hatch_mlenv.install import install_environment

        self._check_host(env)
        result = install_environment(env, self.prefix)
        if result.status != "unchanged":
            changed = f" ({len(result.changed)} packages changed)" if result.status == "updated" else ""
            self.app.display_info(
                f"mlenv: {result.status} {env.name} sha256:{env.digest[:12]} into {result.prefix}{changed}"
            )

    def _python_version(self, env: Environment) -> str:
        from hatch_mlenv.errors import InstallError
        from hatch_mlenv.platforms import current_platform

        platform = current_platform()
        for package in env.lock.for_platform(platform):
            if package.manager == "conda" and package.name == "python":
                return package.version
        raise InstallError(
            f"{env.spec.lockfile}: no python is locked for {platform}, so the project cannot be installed into "
            f"hatch environment {self.name!r}; add `python = \"3.x\"` to [tool.mlenv] and run "
            f"`{self._lock_command()}`, or set skip-install = true"
        )

    def _site_packages(self, env: Environment) -> Path:
        short = ".".join(self._python_version(env).split(".")[:2])
        return self.prefix / "lib" / f"python{short}" / "site-packages"

    def _project_dist_infos(self, sites: Any) -> Iterator[Path]:
        from packaging.utils import canonicalize_name

        name = canonicalize_name(self.metadata.name)
        for site in sites:
            for dist_info in site.glob("*.dist-info"):
                if canonicalize_name(dist_info.name.split("-")[0]) == name:
                    yield dist_info

    def _project_installed(self, env: Environment) -> bool:
        return any(self._project_dist_infos([self._site_packages(env)]))

    def _install_project(self, *, editable: bool) -> None:
        """Build the project's (editable) wheel with its backend and install it into the prefix, without deps."""
        from installer import install
        from installer.destinations import SchemeDictionaryDestination
        from installer.sources import WheelFile

        from hatch_mlenv.errors import InstallError
        from hatch_mlenv.install import record_addition
        from hatch_mlenv.install.wheels import uninstall_dist

        env = self._environment()
        python_version = self._python_version(env)
        short = ".".join(python_version.split(".")[:2])
        site = self._site_packages(env)
        with tempfile.TemporaryDirectory(prefix="mlenv-project-") as scratch:
            wheel = self._build_wheel(Path(scratch), editable=editable)  # first: a failed build keeps the old install
            uninstall_dist(self.prefix, python_version, self.metadata.name)
            scheme = {
                "purelib": str(site),
                "platlib": str(site),
                "headers": str(self.prefix / "include" / f"python{short}"),
                "scripts": str(self.prefix / "bin"),
                "data": str(self.prefix),
            }
            destination = SchemeDictionaryDestination(
                scheme, interpreter=str(self.prefix / "bin" / "python"), script_kind="posix"
            )
            direct_url = {"url": Path(self.root).absolute().as_uri(), "dir_info": {"editable": editable}}
            metadata = {"INSTALLER": b"hatch-mlenv\n", "direct_url.json": json.dumps(direct_url).encode()}
            try:
                with WheelFile.open(wheel) as source:
                    install(source, destination, metadata)
            except Exception as exc:  # installer raises several types for broken wheels
                raise InstallError(f"cannot install {wheel.name} into {self.prefix}: {_first_line(exc)}") from None
            record_addition(self.prefix, self.metadata.name)

    def _build_wheel(self, out: Path, *, editable: bool) -> Path:
        from pyproject_hooks import BackendUnavailable, BuildBackendHookCaller, HookMissing

        from hatch_mlenv.errors import InstallError

        build_system = self.metadata.config.get("build-system", {})
        backend = build_system.get("build-backend") or "setuptools.build_meta:__legacy__"
        hooks = BuildBackendHookCaller(
            str(self.root),
            backend,
            backend_path=build_system.get("backend-path"),
            runner=_captured_runner,
            python_executable=sys.executable,
        )
        kind = "an editable wheel" if editable else "a wheel"
        try:
            extra = hooks.get_requires_for_build_editable() if editable else hooks.get_requires_for_build_wheel()
            missing = _unsatisfied([*build_system.get("requires", []), *extra])
            if missing:
                raise InstallError(
                    f"cannot build {kind} of the project: its build backend needs {', '.join(missing)}, not installed "
                    f"next to hatch ({sys.executable}); install it there"
                )
            name = hooks.build_editable(str(out)) if editable else hooks.build_wheel(str(out))
        except BackendUnavailable:
            raise InstallError(
                f"cannot build {kind} of the project: its build backend {backend!r} is not importable by hatch's "
                f"python ({sys.executable}); install it there"
            ) from None
        except HookMissing:
            raise InstallError(
                f"the build backend {backend!r} cannot build editable wheels (PEP 660); set dev-mode = false "
                f"in {self._config_key('dev-mode')[1]}"
            ) from None
        except _BackendFailed as exc:
            raise InstallError(f"cannot build {kind} of the project with {backend!r}:\n{exc}") from None
        return out / name

    def _write_activation_scripts(self, changes: dict[str, str | None]) -> Path:
        """`activate`, `activate.fish` and `activate.csh` for hatch's ShellManager, in `<prefix>/etc/hatch-mlenv/`.

        They replay what `activation()` changed (the packages' activate.d scripts ran
        once, there), not the scripts themselves: rattler writes no csh, and running
        them again in the shell would prepend their PATH entries twice. PATH gets the
        entries activation added, in front of whatever the startup files made of it.
        Secrets stay in the shell's inherited environment: only what activation changed is written.
        """
        from hatch_mlenv.lockfile import atomic_write

        values = {k: v for k, v in changes.items() if k != "PATH" and v is not None}
        unset = sorted(k for k, v in changes.items() if v is None)
        bin_dir = str(self.prefix / "bin")
        added = [bin_dir] + [e for e in (changes.get("PATH") or "").split(os.pathsep) if e and e != bin_dir]
        directory = self.prefix / "etc" / "hatch-mlenv"
        header = f"# written by hatch-mlenv for `hatch shell {self.name}`: re-applied after the shell's startup files\n"
        posix = [f"export PATH={shlex.quote(os.pathsep.join(added))}:\"$PATH\""]
        posix += [f"export {k}={shlex.quote(v)}" for k, v in values.items()]
        posix += [f"unset {k}" for k in unset]
        posix += ["hash -r 2>/dev/null || true"]
        fish = [f"set -gx PATH {' '.join(map(_fish_quote, added))} $PATH"]
        fish += [f"set -gx {k} {_fish_quote(v)}" for k, v in values.items()]
        fish += [f"set -e {k}" for k in unset]
        csh = [f"setenv PATH {shlex.quote(os.pathsep.join(added))}:\"$PATH\""]
        csh += [f"setenv {k} {shlex.quote(v)}" for k, v in values.items()]
        csh += [f"unsetenv {k}" for k in unset]
        csh += ["rehash"]
        for name, lines in (("activate", posix), ("activate.fish", fish), ("activate.csh", csh)):
            atomic_write(directory / name, header + "\n".join(lines) + "\n")
        return directory


class _BackendFailed(Exception):
    """The build backend's hook process failed; the message is the tail of its output."""


def _captured_runner(cmd: Any, cwd: str | None = None, extra_environ: dict[str, str] | None = None) -> None:
    environ = {**os.environ, **(extra_environ or {})}
    process = subprocess.run(cmd, cwd=cwd, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if process.returncode:
        raise _BackendFailed("\n".join(process.stdout.strip().splitlines()[-15:]))


def _unsatisfied(requirements: list[str]) -> list[str]:
    """The build requirements that hatch's interpreter (where the backend runs) does not satisfy."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import InvalidRequirement, Requirement

    missing = []
    for text in requirements:
        try:
            requirement = Requirement(text)
        except InvalidRequirement:
            continue  # the backend will say what is wrong with it
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        try:
            installed = version(requirement.name)
        except PackageNotFoundError:
            missing.append(text)
            continue
        if requirement.specifier and not requirement.specifier.contains(installed, prereleases=True):
            missing.append(f"{text} (found {installed})")
    return missing


def _fish_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"



