"""What a definition asks to install, checked cheaply when it is read: conda match specs, the
`python` shorthand and PEP 508 requirements (rattler parses match specs before a solve)."""

from __future__ import annotations

import re
from pathlib import Path

from hatch_mlenv.definition._checks import control_problem
from hatch_mlenv.errors import ConfigError, first_line

# One term of a `python` constraint (`>=3.10`, `3.11.*`, `=3.11`, `3.13.0rc1`); terms are joined by `,` and `|`.
_PYTHON_TERM_RE = re.compile(r"^(?:==|!=|>=|<=|~=|>|<|=)?[ ]*[0-9]+(?:\.[0-9]+)*(?:(?:a|b|rc|dev|post)[0-9]*)?(?:\.\*)?\Z")


def match_spec_problem(text: str) -> str | None:
    """What a cheap look finds wrong in a conda match spec (rattler parses it before a solve)."""
    if not text.strip():
        return "empty"
    problem = control_problem(text)
    if problem is not None:
        return problem
    if "::" in text:
        channel, _, rest = text.strip().partition("::")
        if not channel.strip():
            return f"the channel before '::' is empty (write {rest.strip()!r} or CHANNEL::{rest.strip()})"
        if not rest.strip():
            return "no package name after '::'"
    return None


# Marker variables whose values are versions: compared with a version operator, the other side must be
# a version, or packaging compares them as text (`python_version > "3.x"` is False everywhere).
_VERSION_MARKERS = ("python_version", "python_full_version", "implementation_version")
_MARKER_COMPARISON_RE = re.compile(
    r"(?P<variable>\w+)\s*(?P<op>===|==|!=|<=|>=|~=|<|>)\s*(?P<quote>[\"'])(?P<value>[^\"']*)(?P=quote)"
    r"|(?P<quote2>[\"'])(?P<value2>[^\"']*)(?P=quote2)\s*(?P<op2>===|==|!=|<=|>=|~=|<|>)\s*(?P<variable2>\w+)"
)


def _marker_problem(marker: str) -> str | None:
    """A comparison that packaging would not evaluate as written: a version marker against a non-version
    (evaluated as text, so silently false), or `~=` against something that is no version (an error later)."""
    from packaging.specifiers import InvalidSpecifier, Specifier

    for found in _MARKER_COMPARISON_RE.finditer(marker):
        variable = found.group("variable") or found.group("variable2")
        op = found.group("op") or found.group("op2")
        value = found.group("value") if found.group("variable") else found.group("value2")
        if op == "===" or (variable not in _VERSION_MARKERS and op != "~="):
            continue
        try:
            Specifier(f"{op}{value}")
        except InvalidSpecifier:
            return f"{variable} {op} {value!r}: {value!r} is not a version this comparison takes"
    return None


def check_requirement(pyproject: Path, key: str, text: str) -> None:
    # packaging (~15 ms to import: its parser compiles its grammar) only for a spec that has pip requirements
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        requirement = Requirement(text)
    except InvalidRequirement as exc:
        raise ConfigError(pyproject, key, f"invalid PEP 508 requirement {text!r}: {first_line(exc)}") from None
    problem = _marker_problem(str(requirement.marker)) if requirement.marker is not None else None
    if problem is not None:
        raise ConfigError(pyproject, key, f"invalid marker in {text!r}: {problem}")


def check_python(pyproject: Path, python: str) -> None:
    """`python`: a version, a prefix or a constraint, each term as a match spec takes it."""
    if not python.strip():
        raise ConfigError(pyproject, "tool.mlenv.python", "must not be empty")
    if not all(_PYTHON_TERM_RE.match(term.strip()) for term in re.split(r"[,|]", python.strip())):
        raise ConfigError(pyproject, "tool.mlenv.python", f"invalid match spec {python!r}: python takes a version or "
                          "prefix such as \"3.11\" or \"3.11.7\", or a constraint such as \">=3.10,<3.12\"")
