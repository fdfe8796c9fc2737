"""Import an environment into `[tool.mlenv]`: from environment.yml, requirements.txt or a conda prefix.

The result is merged into pyproject.toml with tomlkit, so everything else in
the file (comments, order, formatting) stays byte for byte. What cannot be
mapped is reported, never silently dropped.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomlkit
import yaml
from packaging.requirements import InvalidRequirement, Requirement

from hatch_mlenv._compat import tomllib
from hatch_mlenv.credentials import references_only
from hatch_mlenv.errors import ConfigError
from hatch_mlenv.lockfile import atomic_write, source_of
from hatch_mlenv.spec import PYPROJECT, merge_specs, parse_spec

# environment.yml sections we read, and those we know but do not map.
_ENV_YML_KEYS = ("name", "channels", "dependencies", "variables")
_ENV_YML_IGNORED = ("prefix",)


@dataclass
class Imported:
    """What an import found, as [tool.mlenv] values, plus what it could not map."""

    source: str
    name: str | None = None
    channels: list[str] = field(default_factory=list)
    python: str | None = None
    conda: list[str] = field(default_factory=list)
    pip: list[str] = field(default_factory=list)
    pip_index_url: str | None = None
    pip_extra_index_urls: list[str] = field(default_factory=list)
    variables: dict[str, Any] = field(default_factory=dict)
    unmapped: list[str] = field(default_factory=list)
    other: dict[str, Any] = field(default_factory=dict)  # further [tool.mlenv] keys, set as they are

    def table(self) -> dict[str, Any]:
        table: dict[str, Any] = {}
        for key, value in (
            ("channels", self.channels),
            ("python", self.python),
            ("conda", self.conda),
            ("pip", self.pip),
            ("pip-index-url", self.pip_index_url),
            ("pip-extra-index-urls", self.pip_extra_index_urls),
            ("variables", self.variables),
        ):
            if value:
                table[key] = value
        return table | self.other


def from_registered(env: Any) -> Imported:
    """The `[tool.mlenv]` definition a registered version was locked from (see `Spec.definition`)."""
    definition = env.definition
    if not definition:
        raise ConfigError(env.reference, None, "this version was registered without its definition "
                          "(registered from a lockfile, or by hatch-mlenv before 0.2); nothing to import")
    rest = {k: v for k, v in definition.items()
            if k not in ("name", "channels", "python", "conda", "pip", "pip-index-url", "pip-extra-index-urls",
                         "variables")}
    return Imported(
        source=str(env.reference),
        name=definition.get("name"),
        channels=list(definition.get("channels", [])),
        python=definition.get("python"),
        conda=list(definition.get("conda", [])),
        pip=list(definition.get("pip", [])),
        pip_index_url=definition.get("pip-index-url"),
        pip_extra_index_urls=list(definition.get("pip-extra-index-urls", [])),
        variables=dict(definition.get("variables", {})),
        other=rest,
    )


def _conda_spec(text: str) -> tuple[str | None, str]:
    """A conda environment.yml dependency as a match spec; `python=3.11` also gives the python key."""
    spec = text.strip()
    match = re.match(r"^python\s*(?:=|==)?\s*([0-9][0-9.]*)\*?$", spec)
    if match:
        return match.group(1).rstrip("."), spec
    return None, spec


def from_environment_yml(path: Path) -> Imported:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(path, None, "file not found") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(path, None, f"not a readable environment.yml: {str(exc).splitlines()[0]}") from None
    if not isinstance(document, dict):
        raise ConfigError(path, None, "not an environment.yml: expected a mapping with `dependencies`")
    if {"version", "metadata", "package"} <= document.keys():  # a lock holds packages, not a definition
        raise ConfigError(path, None, "a conda-lock.yml, not an environment.yml: a lock carries no definition to "
                          "import; use it as a REF (`mlenv install PATH`, `mlenv show PATH`), or import the "
                          "environment.yml it was locked from")
    for key in document:
        if key not in _ENV_YML_KEYS + _ENV_YML_IGNORED:
            from hatch_mlenv.errors import did_you_mean

            hint = did_you_mean(str(key), _ENV_YML_KEYS, known=True)
            raise ConfigError(path, str(key), f"unknown environment.yml section{hint}")
    result = Imported(str(path), name=document.get("name"))
    if "prefix" in document:
        result.unmapped.append(f"prefix: {document['prefix']} (machine-specific; environments live in .mlenv/envs)")
    channels = document.get("channels") or []
    if not isinstance(channels, list):
        raise ConfigError(path, "channels", "must be a list")
    for channel in channels:
        if channel == "defaults":
            result.unmapped.append("channels: defaults (name the channel explicitly, e.g. conda-forge)")
        else:
            result.channels.append(str(channel))
    dependencies = document.get("dependencies") or []
    if not isinstance(dependencies, list):
        raise ConfigError(path, "dependencies", "must be a list")
    for index, dependency in enumerate(dependencies):
        if isinstance(dependency, dict) and set(dependency) == {"pip"}:
            _pip_lines(dependency["pip"] or [], result, f"dependencies[{index}].pip", path)
        elif isinstance(dependency, str):
            python, spec = _conda_spec(dependency)
            if python is not None:
                result.python = python
            else:
                result.conda.append(spec)
        else:
            raise ConfigError(path, f"dependencies[{index}]", f"expected a match spec or a `pip:` list, not {dependency!r}")
    variables = document.get("variables") or {}
    if not isinstance(variables, dict):
        raise ConfigError(path, "variables", "must be a mapping")
    result.variables = {str(k): str(v) for k, v in variables.items()}
    return result


def from_requirements(path: Path) -> Imported:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ConfigError(path, None, "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, None, f"cannot read: {exc}") from None
    result = Imported(str(path))
    _pip_lines(lines, result, None, path)
    return result


def _pip_lines(lines: list[Any], result: Imported, key: str | None, path: Path) -> None:
    for number, raw in enumerate(lines, 1):
        line = str(raw).split(" #")[0].strip()
        where = f"{key}[{number - 1}]" if key else f"line {number}"
        if not line or line.startswith("#"):
            continue
        if line.startswith(("-e", "--editable")) or re.match(r"^(git|hg|svn|bzr)\+", line) or " @ git+" in line:
            raise ConfigError(path, where, f"editable or VCS requirement {line!r} cannot be locked; "
                              "publish it to an index or build a wheel first")
        if line.startswith(("--index-url", "-i ", "--extra-index-url")):
            url = line.split(None, 1)[1].strip() if " " in line else line.split("=", 1)[1]
            kept = references_only(url)  # pyproject.toml is committed: credentials only as ${VAR}
            if kept != url:
                result.unmapped.append(f"{where}: the credentials in the index URL (write them as ${{VAR}} "
                                       "references or use ~/.netrc)")
            if line.startswith("--extra-index-url"):
                result.pip_extra_index_urls.append(kept)
            else:
                result.pip_index_url = kept
            continue
        if line.startswith("-"):
            result.unmapped.append(f"{where}: {line} (pip option)")
            continue
        try:
            Requirement(line)
        except InvalidRequirement as exc:
            raise ConfigError(path, where, f"invalid requirement {line!r}: {str(exc).splitlines()[0]}") from None
        result.pip.append(line)


def from_prefix(prefix: Path) -> Imported:
    """The packages of an existing conda prefix, pinned, from its conda-meta records."""
    meta = prefix / "conda-meta"
    if not meta.is_dir():
        raise ConfigError(prefix, None, "not a conda prefix (no conda-meta directory)")
    result = Imported(str(prefix), name=prefix.name)
    conda_names: set[str] = set()
    for record_path in sorted(meta.glob("*.json")):
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
            name, version = record["name"], record["version"]
        except (OSError, ValueError, KeyError):
            result.unmapped.append(f"{record_path.name} (unreadable conda-meta record)")
            continue
        channel = (record.get("channel") or source_of(record.get("url") or "")).rstrip("/")
        if channel and channel not in result.channels:
            result.channels.append(channel)
        if name == "python":
            result.python = version
        else:
            result.conda.append(f"{name} =={version}")
        conda_names.add(name)
    from hatch_mlenv.pypi_names import canonical
    from hatch_mlenv.verify import pip_distributions

    provided = {canonical(n) for n in conda_names}
    for name, (version, dist_info) in pip_distributions(prefix).items():
        if name not in provided:
            result.pip.append(f"{_dist_name(dist_info) or name}=={version}")
    return result


def _dist_name(dist_info: Path) -> str:
    """The project name as its METADATA spells it."""
    for line in (dist_info / "METADATA").read_text(errors="replace").splitlines()[:30]:
        if line.startswith("Name: "):
            return line[len("Name: "):].strip()
    return ""


def read_document(pyproject: Path) -> tomlkit.TOMLDocument:
    """pyproject.toml as tomlkit reads it, to be edited and written back with every other byte kept."""
    try:
        return tomlkit.parse(pyproject.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:  # as load_spec says it of the same file
        raise ConfigError(pyproject, None, f"cannot read: {exc}") from None
    except Exception as exc:  # tomlkit's ParseError and kin
        raise ConfigError(pyproject, None, f"invalid TOML: {exc}") from None


def merge_into_pyproject(pyproject: Path, imported: Imported, env: str | None = None) -> str:
    """Merge `imported` into `[tool.mlenv]` (or `[tool.mlenv.envs.ENV]`); returns the new text."""

    document = read_document(pyproject) if pyproject.exists() else tomlkit.document()
    tool = document.setdefault("tool", tomlkit.table(is_super_table=True))
    table = tool.setdefault("mlenv", tomlkit.table())
    if env is not None:
        envs = table.setdefault("envs", tomlkit.table(is_super_table=True))
        table = envs.setdefault(env, tomlkit.table())
    new = imported.table()
    if "name" not in table and imported.name and env is None and "name" not in document.get("project", {}):
        table["name"] = re.sub(r"[^A-Za-z0-9._-]+", "-", imported.name)
    for key, value in new.items():
        if key in ("conda", "pip") and key in table:
            table[key] = merge_specs(list(table[key]), value)
        elif key == "channels" and key in table:
            table[key] = list(table[key]) + [c for c in value if c not in table[key]]
        elif key == "pip-extra-index-urls" and key in table:
            table[key] = list(table[key]) + [u for u in value if u not in table[key]]
        elif key == "variables" and key in table:
            for name, text in value.items():
                table[key][name] = text
        elif key == "variables":
            inline = tomlkit.inline_table()
            inline.update(value)
            table[key] = inline
        else:
            table[key] = value
    return tomlkit.dumps(document)


def from_file(path: Path) -> Imported:
    """An environment.yml (by its suffix) or else a requirements.txt."""
    return from_environment_yml(path) if path.suffix in (".yml", ".yaml") else from_requirements(path)


def import_into_project(
    project: Path, *, file: Path | None = None, prefix: Path | None = None, env: str | None = None,
    registered: Any = None,
) -> tuple[Path, Imported]:
    """Read `file` (environment.yml by suffix, else requirements.txt), the conda `prefix` or the
    definition of a `registered` Environment, merge it into the project's pyproject.toml, and write
    that only if the result is a valid spec."""
    if registered is not None:
        imported = from_registered(registered)
    elif prefix is not None:
        imported = from_prefix(prefix)
    elif file is not None:
        imported = from_file(file)
    else:
        raise ValueError("a file or a prefix to import from")
    pyproject = project.resolve() / PYPROJECT
    text = merge_into_pyproject(pyproject, imported, env)
    parse_spec(tomllib.loads(text), pyproject, env)  # the result must be a valid spec before it is written
    atomic_write(pyproject, text)
    return pyproject, imported
