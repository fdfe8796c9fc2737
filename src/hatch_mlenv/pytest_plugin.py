"""pytest plugin: `pytest --mlenv-verify[=ENV|REF]` checks the running interpreter's environment
against the project's lock (or a registered version's) before any test is collected, and fails
the session on drift, or when this machine cannot run the lock (a CUDA driver, glibc or macOS it
needs; `--mlenv-ignore-system-requirements` or MLENV_IGNORE_SYSTEM_REQUIREMENTS=1 warns instead)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

NOT_GIVEN = "__mlenv_not_given__"


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("mlenv")
    group.addoption(
        "--mlenv-verify",
        action="store",
        nargs="?",
        const="",
        default=NOT_GIVEN,
        metavar="ENV|REF",
        help="verify this interpreter's environment (sys.prefix) against the project's conda-lock.yml, "
        "that of [tool.mlenv.envs.ENV], or a registered version (NAME:VERSION, NAME@LABEL) before collecting tests",
    )
    group.addoption(
        "--mlenv-ignore-system-requirements",
        action="store_true",
        default=False,
        help="with --mlenv-verify: warn, instead of failing, when this machine lacks the CUDA driver, glibc "
        "or macOS the lock needs",
    )


def pytest_sessionstart(session: Any) -> None:
    import pytest

    option = session.config.getoption("--mlenv-verify")
    if option == NOT_GIVEN:
        return
    from hatch_mlenv.environment import Environment, registered_option
    from hatch_mlenv.errors import HostError, MlenvError
    from hatch_mlenv.system import ignored_by_environment, require_host
    from hatch_mlenv.verify import verify_environment

    root = Path(session.config.rootpath)
    ignore = session.config.getoption("--mlenv-ignore-system-requirements") or ignored_by_environment()
    try:
        env = registered_option(option, root) or Environment.load(root, option or None, default_policy="report")
        for line in require_host(env, ignore=ignore, bypass="--mlenv-ignore-system-requirements"):
            session.config.issue_config_time_warning(
                pytest.PytestWarning(f"mlenv: ignoring system requirements: {line}"), stacklevel=2
            )
        drift = verify_environment(env, Path(sys.prefix))
    except HostError as exc:
        pytest.exit(f"mlenv: error: {exc}", returncode=pytest.ExitCode.TESTS_FAILED)
    except MlenvError as exc:
        raise pytest.UsageError(f"--mlenv-verify: {exc}") from None
    if not drift.clean:
        lines = "\n".join(f"  {kind}: {what}" for kind, what in drift.rows())
        pytest.exit(
            f"mlenv: {sys.prefix} does not match {env.reference or env.spec.lockfile.name} (sha256:{env.digest[:12]}):\n{lines}",
            returncode=pytest.ExitCode.TESTS_FAILED,
        )
    session.config._mlenv_verified = env.digest  # noqa: SLF001 - shown in the header


def pytest_report_header(config: Any) -> str | None:
    digest = getattr(config, "_mlenv_verified", None)
    return f"mlenv: {sys.prefix} matches the lock (sha256:{digest[:12]})" if digest else None
