"""The one exceptions module. Each error's first line names what failed and where."""

from __future__ import annotations

# Exit codes, one table in the README: 0 done; 1 the thing failed, is not there or drifted;
# 2 the request or the configuration is wrong (and nothing was touched).
EXIT_FAILURE = 1
EXIT_USAGE = 2


class MlenvError(Exception):
    """Base class: `str()` is the message shown to the user, first line first."""

    exit_code = EXIT_FAILURE


class ConfigError(MlenvError):
    """The `[tool.mlenv]` spec (or the file holding it) is missing or invalid."""

    exit_code = EXIT_USAGE

    def __init__(self, path: object, key: str | None, message: str) -> None:
        self.path = str(path)
        self.key = key
        self.message = message
        where = f"{self.path}: {key}" if key else self.path
        super().__init__(f"{where}: {message}")


class LockfileError(MlenvError):
    """An existing lockfile cannot be read: corrupted, truncated, unknown version."""

    exit_code = EXIT_USAGE

    def __init__(self, path: object, message: str) -> None:
        self.path = str(path)
        super().__init__(f"{self.path}: {message}")


class MissingLockError(LockfileError):
    """A project has no lockfile yet (`mlenv lock` writes it): not there, like a stale lock under
    `lock --check` (1), not a broken file (2). A path the user names that does not exist is a
    usage error before it gets here."""

    exit_code = EXIT_FAILURE


class SolveError(MlenvError):
    """The specs cannot be satisfied; the message carries the solver's explanation."""


class StaleLockError(MlenvError):
    """`mlenv lock --check` found the lock missing, stale or unsatisfiable."""


class UsageError(MlenvError):
    """A malformed argument: a reference, a label, an unknown registry URL."""

    exit_code = EXIT_USAGE


class RegistryError(MlenvError):
    """A registry cannot be reached, refuses us, or holds a corrupted entry."""


class NotFoundError(RegistryError):
    """No such environment, version or label in the registry."""


class InstallError(MlenvError):
    """A package could not be fetched, verified or linked."""


class NotInstalledError(MlenvError):
    """A command needs the environment installed in a prefix that does not hold it (`mlenv install`)."""


class NotInLockError(MlenvError):
    """A package a command names (`mlenv why PKG`, `tree --invert PKG`) is not in the lock."""


class ImageError(MlenvError):
    """The image cannot be built or pushed; the message names the cause."""


class PackError(MlenvError):
    """The environment cannot be packed."""


class RuntimeEnvError(MlenvError):
    """A Ray runtime_env's `mlenv` field names an environment that cannot run Ray work on this node."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (another library's, usually), or its type."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def did_you_mean(word: str, choices: list[str] | tuple[str, ...], *, known: bool = False) -> str:
    """`; did you mean X?` for the closest choice; with `known`, the list of choices otherwise."""
    import difflib  # lazy: every command imports this module, `mlenv --version` included

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    if close:
        return f"; did you mean {close[0]}?"
    return f" (known: {', '.join(choices)})" if known else ""


class HostError(MlenvError):
    """This machine cannot run the lock: a CUDA driver, glibc or macOS it needs is missing or too old."""


class MissingToolError(MlenvError):
    """A program or library hatch-mlenv runs is not installed: the message says what to install."""


def missing_tool(tool: str, needed_for: str, install: str | None = None) -> MissingToolError:
    """The error for a missing `tool`, one line: what it is needed for and how to install it.

    `install` defaults to `pip install '<requirement>'` with the requirement hatch-mlenv
    declares for a distribution named `tool` (its version range stays in pyproject.toml
    only), else the bare name. Raise it `from None`: the ImportError or FileNotFoundError
    behind it says nothing more to the user.
    """
    if install is None:
        install = f"pip install '{_declared_requirement(tool) or tool}'"
    return MissingToolError(f"{tool} is not installed; hatch-mlenv needs it {needed_for}: {install}")


def _declared_requirement(name: str) -> str | None:
    """hatch-mlenv's own requirement on distribution `name` (`uv<0.14,>=0.13`), without extras' ones."""
    from importlib import metadata  # lazy (as above): only for a missing tool

    from packaging.requirements import InvalidRequirement, Requirement  # lazy (as above)
    from packaging.utils import canonicalize_name  # lazy (as above)

    try:
        declared = metadata.requires("hatch-mlenv") or []
    except metadata.PackageNotFoundError:
        return None
    for text in declared:
        try:
            requirement = Requirement(text)
        except InvalidRequirement:
            continue
        if requirement.marker is not None and "extra" in str(requirement.marker):
            continue
        if canonicalize_name(requirement.name) == canonicalize_name(name):
            return f"{requirement.name}{requirement.specifier}"
    return None
