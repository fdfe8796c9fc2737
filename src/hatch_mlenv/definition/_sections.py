"""The sub-tables and typed keys of `[tool.mlenv]`: variables, system requirements, virtual
packages, docker, spark, the lockfile and `pip-only-binary`; every error names the key path."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlparse

from hatch_mlenv.definition._checks import (
    MAX_NAME_LENGTH,
    MAX_VARIABLE_BYTES,
    NAME_RE,
    PYPI_NAME_RE,
    VARIABLE_RE,
    control_problem,
    image_reference_problem,
    prefix_problem,
    registry_problem,
    repository_problem,
    variable_value_problem,
)
from hatch_mlenv.definition._keys import Reader, printable, type_name
from hatch_mlenv.definition._model import (
    BASE_DOCKERFILE_KEY,
    DEFAULT_LOCKFILE,
    DEFAULT_PREFIX,
    ONLY_BINARY_ALL,
    DockerSpec,
    SparkSpec,
    Variable,
)
from hatch_mlenv.errors import ConfigError, did_you_mean
from hatch_mlenv.platforms import (
    KNOWN_PLATFORMS,
    SYSTEM_REQUIREMENTS,
    default_virtual_packages,
    system_virtual_packages,
)

# Every pattern ends in \Z, not $: `$` also matches before a final newline ("demo\n").
_REQUIREMENT_VERSION_RE = re.compile(r"^[0-9]+(\.[0-9]+){0,3}\Z")  # ASCII: \d takes any script's digits
_ARCHSPEC_RE = re.compile(r"^[A-Za-z0-9_]+\Z")
# A virtual package's "VERSION" or "VERSION=BUILD".
_VIRTUAL_VERSION_RE = re.compile(r"^[0-9]{1,9}(?:\.[0-9]{1,9})*\Z")
_VIRTUAL_BUILD_RE = re.compile(r"^[A-Za-z0-9_.]+\Z")
_DOCKER_KEYS = ("base-image", "base-dockerfile", "registry", "repository", "prefix")
_SPARK_KEYS = ("packages", "repositories", "conf")
# groupId:artifactId:version, the form spark.jars.packages takes.
_MAVEN_RE = re.compile(r"^[A-Za-z0-9_.\-]+:[A-Za-z0-9_.\-]+:[A-Za-z0-9_.\-+]+\Z")
_VARIABLE_KEYS = ("value", "secret")
_VCS_DIRECTORIES = (".git", ".hg", ".svn")
LOCKFILE_SUFFIXES = (".yml", ".yaml")


def parse_only_binary(pyproject: Path, value: Any) -> tuple[str, ...]:
    """`pip-only-binary`: true (no source release at all), false, or the PyPI names that must be wheels."""
    key = "tool.mlenv.pip-only-binary"
    if value is None or value is False:
        return ()
    if value is True:
        return (ONLY_BINARY_ALL,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(pyproject, key, f"must be true, false or an array of PyPI names, not {type_name(value)}")
    for i, name in enumerate(value):
        if not PYPI_NAME_RE.match(name):
            raise ConfigError(pyproject, f"{key}[{i}]", f"not a PyPI project name: {name!r}")
    return tuple(sorted({re.sub(r"[-_.]+", "-", v).lower() for v in value}))


def parse_lockfile(pyproject: Path, name: str) -> Path:
    """`lockfile`: a YAML file inside the project directory, outside any version control directory."""
    key = "tool.mlenv.lockfile"
    problem = control_problem(name)
    if problem is not None:
        raise ConfigError(pyproject, key, f"{name!r} {problem}")
    if not name.strip():
        raise ConfigError(pyproject, key, "must not be empty")
    if name.endswith(("/", "\\")):
        raise ConfigError(pyproject, key, f"{name!r} names a directory; name the file, "
                          f"e.g. \"{name}{DEFAULT_LOCKFILE}\"")
    project = pyproject.parent.resolve()
    lockfile = (project / name).resolve()  # through symbolic links too
    if not lockfile.is_relative_to(project):
        raise ConfigError(pyproject, key, f"{name!r} is outside the project directory; a lockfile lives in the project")
    if lockfile == project:
        raise ConfigError(pyproject, key, f"{name!r} is the project directory; name the file, "
                          f"e.g. {DEFAULT_LOCKFILE!r}")
    if any(part in _VCS_DIRECTORIES for part in lockfile.relative_to(project).parts):
        raise ConfigError(pyproject, key, f"{name!r} is inside a version control directory")
    if not lockfile.name.endswith(LOCKFILE_SUFFIXES) or lockfile.name in LOCKFILE_SUFFIXES:
        raise ConfigError(pyproject, key, f"{name!r}: a lockfile is YAML, named *.yml or *.yaml "
                          f"(default {DEFAULT_LOCKFILE!r})")
    if lockfile.is_dir():
        raise ConfigError(pyproject, key, f"{name!r} is a directory; name the file, e.g. \"{name}/{DEFAULT_LOCKFILE}\"")
    return lockfile


def parse_variables(reader: Reader, table: dict[str, Any]) -> tuple[Variable, ...]:
    raw = reader.table(table, "variables")
    variables = []
    for name, value in raw.items():
        key = f"tool.mlenv.variables.{name}"
        if not VARIABLE_RE.match(name) or len(name) > MAX_NAME_LENGTH:
            raise ConfigError(reader.path, printable(key[:80]), f"invalid environment variable name (at most "
                              f"{MAX_NAME_LENGTH} letters, digits and '_', not starting with a digit)")
        if isinstance(value, dict):
            text_value = value.get("value")
        else:
            text_value = value
        if isinstance(text_value, str) and len(text_value.encode()) > MAX_VARIABLE_BYTES:
            raise ConfigError(reader.path, key, f"the value is longer than {MAX_VARIABLE_BYTES // 1024} KiB")
        problem = variable_value_problem(text_value) if isinstance(text_value, str) else None
        if problem is not None:
            raise ConfigError(reader.path, key if isinstance(value, str) else f"{key}.value", problem)
        if isinstance(value, str):
            variables.append(Variable(name, value))
        elif isinstance(value, dict):
            reader.check_keys(value, key, _VARIABLE_KEYS)
            secret = reader.boolean(value, "secret", False, key)
            text = reader.string(value, "value", None, key)
            if text is None and not secret:
                raise ConfigError(reader.path, f"{key}.value", "missing (only a secret may omit its value)")
            variables.append(Variable(name, text, secret))
        else:
            raise ConfigError(
                reader.path, key, f"must be a string or a table {{ value = ..., secret = true }}, not {type_name(value)}"
            )
    return tuple(variables)


def parse_system_requirements(reader: Reader, table: dict[str, Any], platforms: list[str]) -> dict[str, str]:
    base = "tool.mlenv.system-requirements"
    declared = reader.table(table, "system-requirements")
    reader.check_keys(declared, base, tuple(SYSTEM_REQUIREMENTS))
    result = {}
    for key, value in declared.items():
        where = f"{base}.{key}"
        example = "\"x86_64_v3\"" if key == "archspec" else "\"12.2\"" if key == "cuda" else "\"2.28\""
        if value is False:  # a named environment drops an inherited requirement (a CPU env of a GPU project)
            continue
        if not isinstance(value, str):
            raise ConfigError(reader.path, where, f"must be a quoted string such as {key} = {example} "
                              f"(or false to drop an inherited one), not {type_name(value)}")
        text = value.strip()
        pattern = _ARCHSPEC_RE if key == "archspec" else _REQUIREMENT_VERSION_RE
        if not pattern.match(text):
            what = "a microarchitecture name" if key == "archspec" else "a version (digits and dots)"
            raise ConfigError(reader.path, where, f"invalid value {value!r}: must be {what} such as {example}")
        result[key] = text
    result = dict(sorted(result.items()))
    for key in result:
        if not any(system_virtual_packages(p, {key: result[key]}) for p in platforms):
            applies = (
                "to the platforms of its architecture family (x86_64_v3 to linux-64, osx-64, win-64; "
                "aarch64 to linux-aarch64)"
                if key == "archspec"
                else f"to {' and '.join(SYSTEM_REQUIREMENTS[key][1])} platforms"
            )
            raise ConfigError(reader.path, f"{base}.{key}",
                              f"applies to none of the platforms ({', '.join(platforms)}): it applies only {applies}")
    return result


def parse_virtual_packages(
    reader: Reader, table: dict[str, Any], platforms: list[str], system_requirements: Mapping[str, str]
) -> dict[str, dict[str, tuple[str, str]]]:
    overrides = reader.table(table, "virtual-packages")
    for plat in overrides:
        if plat not in KNOWN_PLATFORMS:
            raise ConfigError(
                reader.path,
                f"tool.mlenv.virtual-packages.{plat}",
                f"unknown platform {plat!r}{did_you_mean(plat, KNOWN_PLATFORMS)}",
            )
    result = {}
    for plat in platforms:
        packages = default_virtual_packages(plat) | system_virtual_packages(plat, system_requirements)
        base = f"tool.mlenv.virtual-packages.{plat}"
        for name, value in reader.table(overrides, plat, "tool.mlenv.virtual-packages").items():
            key = f"{base}.{name}"
            if not name.startswith("__") or not NAME_RE.match(name[2:]):
                raise ConfigError(reader.path, printable(key),
                                  "virtual package names start with '__' (e.g. __cuda), then letters, digits, "
                                  "'.', '_', '-'")
            if value is False:  # `__cuda = false`: this platform has no such thing
                packages.pop(name, None)
            elif isinstance(value, str) and value.strip():
                version, _, build = value.strip().partition("=")
                if not _VIRTUAL_VERSION_RE.match(version) or not _VIRTUAL_BUILD_RE.match(build or "0"):
                    raise ConfigError(reader.path, key, f"invalid value {value!r}: must be \"VERSION\" or "
                                      "\"VERSION=BUILD\", the version digits and dots, such as \"12.2\" or "
                                      "\"1=x86_64_v3\"")
                packages[name] = (version, build or "0")
            else:
                raise ConfigError(reader.path, key, "must be a version string such as \"12.2\" (or false to remove it)")
        result[plat] = dict(sorted(packages.items()))
    return result


def parse_spark(reader: Reader, table: dict[str, Any]) -> SparkSpec:
    spark = reader.table(table, "spark")
    key = "tool.mlenv.spark"
    reader.check_keys(spark, key, _SPARK_KEYS)
    packages = reader.string_list(spark, "packages", [], key)
    for index, coordinate in enumerate(packages):
        if not _MAVEN_RE.match(coordinate.strip()):
            raise ConfigError(reader.path, f"{key}.packages[{index}]",
                              f"malformed Maven coordinate {coordinate!r}: use groupId:artifactId:version")
    repositories = reader.string_list(spark, "repositories", [], key)
    for index, url in enumerate(repositories):
        # one line of spark-defaults each: no whitespace or control character may start another
        if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
            raise ConfigError(reader.path, f"{key}.repositories[{index}]",
                              f"a repository URL has no whitespace or control characters: {url!r}")
        if urlparse(url).scheme not in ("http", "https", "file"):
            raise ConfigError(reader.path, f"{key}.repositories[{index}]", f"not an http(s) or file URL: {url!r}")
    conf = reader.table(spark, "conf", key)
    for name, value in conf.items():
        if not name or any(c.isspace() for c in name) or control_problem(name):
            raise ConfigError(reader.path, f"{key}.conf", f"invalid Spark property name {name!r}")
        if not isinstance(value, (str, int, float, bool)):
            raise ConfigError(reader.path, f"{key}.conf.{name}", f"must be a string, number or boolean, not {type_name(value)}")
        problem = control_problem(str(value))
        if problem is not None:
            raise ConfigError(reader.path, f"{key}.conf.{name}", f"the value {problem}: a Spark property is one line")
    return SparkSpec(
        packages=tuple(p.strip() for p in packages),
        repositories=tuple(repositories),
        conf={k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in conf.items()},
    )


def parse_docker(reader: Reader, table: dict[str, Any]) -> DockerSpec:
    docker = reader.table(table, "docker")
    key = "tool.mlenv.docker"
    reader.check_keys(docker, key, _DOCKER_KEYS)
    prefix = reader.string(docker, "prefix", DEFAULT_PREFIX, key)
    problem = prefix_problem(prefix)
    if problem is not None:
        raise ConfigError(reader.path, f"{key}.prefix", f"{prefix!r} {problem}")
    base_image = reader.string(docker, "base-image", None, key)
    problem = image_reference_problem(base_image) if base_image is not None else None
    if problem is not None:
        raise ConfigError(reader.path, f"{key}.base-image", f"{base_image!r} {problem}")
    registry, repository = reader.string(docker, "registry", None, key), reader.string(docker, "repository", None, key)
    problem = registry_problem(registry.rstrip("/")) if registry is not None else None
    if problem is not None:
        raise ConfigError(reader.path, f"{key}.registry", f"{registry!r} {problem}")
    problem = repository_problem(repository) if repository is not None else None
    if problem is not None:
        raise ConfigError(reader.path, f"{key}.repository", f"{repository!r} {problem}")
    dockerfile = reader.string(docker, "base-dockerfile", None, key)
    if dockerfile is not None:
        if not dockerfile.strip():
            raise ConfigError(reader.path, BASE_DOCKERFILE_KEY, "must name a Dockerfile, e.g. \"docker/base.Dockerfile\"")
        if base_image is not None:
            raise ConfigError(reader.path, BASE_DOCKERFILE_KEY, f"and base-image ({base_image!r}) are both set: the "
                              "Dockerfile's FROM names what the base is built on; keep one of the two")
    return DockerSpec(
        base_image=base_image,
        # Relative to the project; it must exist only when its content is needed (lock, build).
        base_dockerfile=(reader.path.parent / Path(dockerfile).expanduser()).resolve() if dockerfile else None,
        registry=registry,
        repository=repository,
        prefix=prefix.rstrip("/"),
    )
