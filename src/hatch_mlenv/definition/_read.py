"""Reading `[tool.mlenv]` from pyproject.toml into a validated `Spec`: every error names the file
and the key path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hatch_mlenv._compat import tomllib
from hatch_mlenv.definition._channels import DEFAULT_CHANNELS, parse_channel, parse_find_links, parse_index_urls
from hatch_mlenv.definition._checks import (
    MAX_NAME_LENGTH,
    NAME_RE,
    PYPI_NAME_RE,
)
from hatch_mlenv.definition._extends import merge_tables, resolve_extends
from hatch_mlenv.definition._keys import Reader, printable, type_name
from hatch_mlenv.definition._model import (
    DEFAULT_LOCKFILE,
    DEFAULT_SOLVER,
    LOCK_POLICIES,
    PYPROJECT,
    TARGET_KEYS,
    TOP_KEYS,
    Spec,
)
from hatch_mlenv.definition._packages import check_python, check_requirement, match_spec_problem
from hatch_mlenv.definition._sections import (
    parse_docker,
    parse_lockfile,
    parse_only_binary,
    parse_spark,
    parse_system_requirements,
    parse_variables,
    parse_virtual_packages,
)
from hatch_mlenv.errors import ConfigError, did_you_mean
from hatch_mlenv.platforms import KNOWN_PLATFORMS, current_platform


def load_spec(project_dir: Path | str, env: str | None = None) -> Spec:
    """Read `<project_dir>/pyproject.toml` and return the validated spec of `env`
    (a `[tool.mlenv.envs.NAME]` table), or of the default environment."""
    pyproject = Path(project_dir).resolve() / PYPROJECT
    if not pyproject.is_file():
        raise ConfigError(pyproject, None, "file not found (is this a Python project directory?)")
    try:
        document = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(pyproject, None, f"invalid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(pyproject, None, f"cannot read: {exc}") from None
    return parse_spec(document, pyproject, env)


def environment_names(pyproject: Path | dict[str, Any]) -> list[str]:
    """The named environments of a project (its pyproject.toml, or that file already parsed), for
    listings and error messages; none when the file cannot be read."""
    if isinstance(pyproject, dict):
        document = pyproject
    else:
        try:
            document = tomllib.loads(pyproject.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            return []
    tool = document.get("tool", {})
    mlenv = tool.get("mlenv", {}) if isinstance(tool, dict) else {}
    envs = mlenv.get("envs", {}) if isinstance(mlenv, dict) else {}
    return sorted(envs) if isinstance(envs, dict) else []


def parse_spec(document: dict[str, Any], pyproject: Path, env: str | None = None) -> Spec:
    """Validate a parsed pyproject document; every error names `pyproject` and a key path."""
    reader = Reader(pyproject)
    project = document.get("project", {})
    if not isinstance(project, dict):
        raise ConfigError(pyproject, "project", "must be a table")
    table = document.get("tool", {}).get("mlenv")
    if table is None:
        raise ConfigError(pyproject, "tool.mlenv", "missing table (add a [tool.mlenv] section)")
    if not isinstance(table, dict):
        raise ConfigError(pyproject, "tool.mlenv", f"must be a table, not {type_name(table)}")
    reader.check_keys(table, "tool.mlenv", TOP_KEYS)
    envs = reader.table(table, "envs")
    for env_name, env_table in envs.items():
        env_key = f"tool.mlenv.envs.{printable(env_name)}"
        if not NAME_RE.match(env_name):
            raise ConfigError(pyproject, env_key, "invalid environment name: use letters, digits, '.', '_' and '-'")
        if not isinstance(env_table, dict):
            raise ConfigError(pyproject, env_key, f"must be a table, not {type_name(env_table)}")
        reader.check_keys(env_table, env_key, tuple(k for k in TOP_KEYS if k != "envs"))
    base = resolve_extends({k: v for k, v in table.items() if k != "envs"}, pyproject, "tool.mlenv.extends", ())
    if env is not None:
        if env not in envs:
            known = ", ".join(sorted(envs)) or "none defined"
            raise ConfigError(pyproject, f"tool.mlenv.envs.{env}", f"unknown environment (known: {known})"
                              + did_you_mean(env, sorted(envs)).replace("; did", ". Did"))
        own = resolve_extends(envs[env], pyproject, f"tool.mlenv.envs.{env}.extends", ())
        if "name" not in own:
            own = {**own, "name": f"{base.get('name') or project.get('name')}-{env}"}
        if "lockfile" not in own:
            own = {**own, "lockfile": f"conda-lock.{env}.yml"}
        table = merge_tables(base, own)
    else:
        table = base

    project_name = project.get("name")
    if project_name is not None and not isinstance(project_name, str):
        raise ConfigError(pyproject, "project.name", "must be a string")
    project_version = project.get("version")
    if project_version is not None and not isinstance(project_version, str):
        raise ConfigError(pyproject, "project.version", "must be a string")

    name = reader.string(table, "name", project_name)
    if name is None:
        raise ConfigError(pyproject, "tool.mlenv.name", "missing (and there is no project.name to default to)")
    if not NAME_RE.match(name):
        raise ConfigError(
            pyproject, "tool.mlenv.name",
            f"invalid name {name[:40]!r}{'...' if len(name) > 40 else ''}: use letters, digits, '.', '_' and '-', "
            f"at most {MAX_NAME_LENGTH} characters",
        )

    channels = tuple(
        parse_channel(pyproject, f"tool.mlenv.channels[{i}]", raw)
        for i, raw in enumerate(reader.string_list(table, "channels", list(DEFAULT_CHANNELS)))
    )
    if not channels:
        raise ConfigError(pyproject, "tool.mlenv.channels", "must name at least one channel")

    platforms = reader.string_list(table, "platforms", [current_platform()])
    if not platforms:
        raise ConfigError(pyproject, "tool.mlenv.platforms", "must name at least one platform")
    for i, plat in enumerate(platforms):
        if plat not in KNOWN_PLATFORMS:
            raise ConfigError(
                pyproject,
                f"tool.mlenv.platforms[{i}]",
                f"unknown platform {plat!r}{did_you_mean(plat, KNOWN_PLATFORMS)}",
            )
    platforms = list(dict.fromkeys(platforms))

    python = reader.string(table, "python", None)
    if python is not None:
        check_python(pyproject, python)

    conda = reader.string_list(table, "conda", [])
    for i, text in enumerate(conda):
        problem = match_spec_problem(text)
        if problem is not None:
            raise ConfigError(pyproject, f"tool.mlenv.conda[{i}]", f"invalid match spec {text!r}: {problem}")

    pip = reader.string_list(table, "pip", [])
    for i, text in enumerate(pip):
        check_requirement(pyproject, f"tool.mlenv.pip[{i}]", text)
    build_constraints = reader.string_list(table, "pip-build-constraints", [])
    for i, text in enumerate(build_constraints):
        check_requirement(pyproject, f"tool.mlenv.pip-build-constraints[{i}]", text)
    if reader.boolean(table, "include-project-dependencies", False):
        deps = project.get("dependencies", [])
        if "dependencies" in project.get("dynamic", []):
            raise ConfigError(
                pyproject,
                "tool.mlenv.include-project-dependencies",
                "project.dependencies is dynamic; list the pip requirements in tool.mlenv.pip instead",
            )
        if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
            raise ConfigError(pyproject, "project.dependencies", "must be an array of strings")
        for i, text in enumerate(deps):
            check_requirement(pyproject, f"project.dependencies[{i}]", text)
        pip = pip + [d for d in deps if d not in pip]

    # a named environment inherits the targets of the platforms it has; it may declare only those
    declared = (own if env is not None else table).get("target")
    targets = parse_targets(reader, table, platforms, set(declared) if isinstance(declared, dict) else set())

    pip_index_url, extra_urls = parse_index_urls(reader, table)
    find_links = parse_find_links(reader, table)
    pypi_names = reader.table(table, "pypi-names")
    for conda_name, pypi_name in pypi_names.items():
        key = f"tool.mlenv.pypi-names.{printable(conda_name)}"
        if not NAME_RE.match(conda_name):
            raise ConfigError(pyproject, key, f"invalid conda package name {conda_name!r}")
        if not isinstance(pypi_name, str):
            raise ConfigError(pyproject, key, f"must be a PyPI distribution name (a string), not {type_name(pypi_name)}")
        if not PYPI_NAME_RE.match(pypi_name):
            raise ConfigError(pyproject, key, f"invalid PyPI distribution name {pypi_name!r}")

    lockfile = parse_lockfile(pyproject, reader.string(table, "lockfile", DEFAULT_LOCKFILE))
    lock_policy = reader.string(table, "lock", None)
    if lock_policy is not None and lock_policy not in LOCK_POLICIES:
        raise ConfigError(pyproject, "tool.mlenv.lock", f"must be one of {', '.join(map(repr, LOCK_POLICIES))}, "
                          f"not {lock_policy[:40]!r}")

    managed = reader.boolean(table, "managed", True)
    interpreter = reader.string(table, "interpreter", None)
    if not managed and interpreter is None:
        raise ConfigError(pyproject, "tool.mlenv.interpreter", "missing: a user-managed environment (managed = false) "
                          "names the python it records, e.g. interpreter = \"/usr/bin/python3\"")
    if managed and interpreter is not None:
        raise ConfigError(pyproject, "tool.mlenv.interpreter", "only for user-managed environments (managed = false)")

    solver = reader.string(table, "solver", DEFAULT_SOLVER)
    if not solver.strip():
        raise ConfigError(pyproject, "tool.mlenv.solver", f"must name a solver, such as {DEFAULT_SOLVER!r}")

    variables = parse_variables(reader, table)
    system_requirements = parse_system_requirements(reader, table, platforms)
    virtual_packages = parse_virtual_packages(reader, table, platforms, system_requirements)
    docker = parse_docker(reader, table)

    return Spec(
        pyproject=pyproject,
        project_name=project_name or name,
        project_version=project_version,
        name=name,
        channels=channels,
        platforms=tuple(platforms),
        python=python,
        conda=tuple(conda),
        pip=tuple(pip),
        pip_index_url=pip_index_url,
        pip_extra_index_urls=tuple(extra_urls),
        lockfile=lockfile,
        variables=variables,
        virtual_packages=virtual_packages,
        docker=docker,
        registry=reader.string(table, "registry", None),
        description=reader.string(table, "description", None),
        env=env,
        managed=managed,
        interpreter=interpreter,
        spark=parse_spark(reader, table),
        pip_find_links=tuple(find_links),
        pypi_names=dict(sorted(pypi_names.items())),
        solver=solver,
        system_requirements=system_requirements,
        pip_only_binary=parse_only_binary(pyproject, table.get("pip-only-binary")),
        pip_build_constraints=tuple(build_constraints),
        lock_policy=lock_policy,
        targets=targets,
    )


def parse_targets(reader: Reader, table: dict[str, Any], platforms: list[str],
                  declared: set[str]) -> dict[str, dict[str, tuple[str, ...]]]:
    """`[tool.mlenv.target.PLATFORM]`: conda specs and pip requirements one platform adds (pixi's
    `[target.PLATFORM]`), each checked as the top-level lists are. A target inherited for a
    platform the environment does not have is not its concern; one it `declared` must be one of its."""
    pyproject = reader.path
    targets: dict[str, dict[str, tuple[str, ...]]] = {}
    for platform, body in reader.table(table, "target").items():
        key = f"tool.mlenv.target.{printable(platform)}"
        if platform not in platforms and platform not in declared:
            continue
        if platform not in platforms:
            raise ConfigError(pyproject, key, f"{platform!r} is not one of the environment's platforms "
                              f"({', '.join(platforms)}){did_you_mean(platform, platforms)}")
        if not isinstance(body, dict):
            raise ConfigError(pyproject, key, f"must be a table with conda and/or pip, not {type_name(body)}")
        reader.check_keys(body, key, TARGET_KEYS)
        conda = reader.string_list(body, "conda", [], base=key)
        for i, text in enumerate(conda):
            problem = match_spec_problem(text)
            if problem is not None:
                raise ConfigError(pyproject, f"{key}.conda[{i}]", f"invalid match spec {text!r}: {problem}")
        pip = reader.string_list(body, "pip", [], base=key)
        for i, text in enumerate(pip):
            check_requirement(pyproject, f"{key}.pip[{i}]", text)
        lists = {name: tuple(values) for name, values in (("conda", conda), ("pip", pip)) if values}
        if lists:
            targets[platform] = lists
    return dict(sorted(targets.items()))
