"""The spec stage's public face: `[tool.mlenv]` read and validated into a typed `Spec`.

The work is done in `hatch_mlenv.definition` (one job a module) and, for what is about a host
rather than a definition, `hatch_mlenv.platforms`; this module hands their names on, so that
`from hatch_mlenv.spec import Spec, load_spec, parse_spec` keeps working.

Loading a spec must stay cheap (it runs on every command, including the no-op `mlenv lock`), so
the definition imports only the standard library and `packaging`; match specs are checked with
rattler by `Spec.check_match_specs` just before a solve.
"""

from __future__ import annotations

from hatch_mlenv.definition._channels import CONDA_CHANNEL_ALIAS, DEFAULT_CHANNELS, Channel
from hatch_mlenv.definition._checks import (
    MAX_NAME_LENGTH,
    MAX_VARIABLE_BYTES,
    OCI_LAYOUT_SCHEME,
    check_locked_values,
    image_reference_problem,
    prefix_problem,
    registry_problem,
    repository_problem,
    split_oci_layout,
    url_reference_problem,
    variable_value_problem,
)
from hatch_mlenv.definition._extends import merge_specs, merge_tables
from hatch_mlenv.definition._model import (
    BASE_DOCKERFILE_KEY,
    DEFAULT_LOCKFILE,
    DEFAULT_PREFIX,
    DEFAULT_SOLVER,
    LOCK_POLICIES,
    ONLY_BINARY_ALL,
    PYPROJECT,
    DockerSpec,
    SparkSpec,
    Spec,
    Variable,
    public_variables,
    python_match_spec,
)
from hatch_mlenv.definition._read import environment_names, load_spec, parse_spec
from hatch_mlenv.definition._sections import LOCKFILE_SUFFIXES
from hatch_mlenv.platforms import (
    KNOWN_PLATFORMS,
    REQUIREMENT_KEYS,
    SYSTEM_REQUIREMENTS,
    current_platform,
    default_virtual_packages,
    system_virtual_packages,
)

__all__ = [
    "BASE_DOCKERFILE_KEY",
    "CONDA_CHANNEL_ALIAS",
    "DEFAULT_CHANNELS",
    "DEFAULT_LOCKFILE",
    "DEFAULT_PREFIX",
    "DEFAULT_SOLVER",
    "KNOWN_PLATFORMS",
    "LOCKFILE_SUFFIXES",
    "LOCK_POLICIES",
    "MAX_NAME_LENGTH",
    "MAX_VARIABLE_BYTES",
    "OCI_LAYOUT_SCHEME",
    "ONLY_BINARY_ALL",
    "PYPROJECT",
    "REQUIREMENT_KEYS",
    "SYSTEM_REQUIREMENTS",
    "Channel",
    "DockerSpec",
    "SparkSpec",
    "Spec",
    "Variable",
    "check_locked_values",
    "current_platform",
    "default_virtual_packages",
    "environment_names",
    "image_reference_problem",
    "load_spec",
    "merge_specs",
    "merge_tables",
    "parse_spec",
    "prefix_problem",
    "public_variables",
    "python_match_spec",
    "registry_problem",
    "repository_problem",
    "split_oci_layout",
    "system_virtual_packages",
    "url_reference_problem",
    "variable_value_problem",
]
