"""A failed `uv pip compile` in hatch-mlenv's words: the deepest cause on the first line, conda's
versions labelled as conda's, the target python named, uv's derivation below."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Mapping

from hatch_mlenv import credentials
from hatch_mlenv.pypi_names import canonical
from hatch_mlenv.spec import ONLY_BINARY_ALL

if TYPE_CHECKING:
    from hatch_mlenv.spec import Spec


def explain(
    stderr: str, spec: Spec, installed: Mapping[str, str], with_extras: set[str], platform: str,
    python_version: str, indexes: list[str],
) -> str:
    """A failed pip resolution in hatch-mlenv's words: the first line is the deepest cause uv
    found (the first premise of its derivation, or the build that failed), with conda's versions
    labelled as conda's and the target python named; uv's derivation follows, without the hints
    that name uv's own command-line options."""
    text = credentials.redact(stderr, indexes).rstrip()
    for name, version in installed.items():  # what conda provides is not what the user asked for
        pattern = "[-_.]".join(re.escape(part) for part in re.split(r"[-_.]", name))
        text = re.sub(rf"you\s+require\s+({pattern})=={re.escape(version)}\b", rf"conda provides \1 {version}",
                      text, flags=re.IGNORECASE)
        text = re.sub(rf"\s+and\s+({pattern})=={re.escape(version)}\b", rf", but conda provides \1 {version}",
                      text, flags=re.IGNORECASE)
        text = re.sub(rf"\b({pattern})=={re.escape(version)}\b", rf"\1 {version} (from conda)", text,
                      flags=re.IGNORECASE)
    text = re.sub(r"the\s+(?:current|requested)\s+Python\s+version\s+\([^)]*\)", f"the environment's python {python_version}", text)
    # uv's hints that name its own options (`--python-version`, `--no-build`) are not for our users
    lines = [line for line in text.splitlines()
             if line.strip() and not line.startswith("warning: The requested Python version")
             and not (line.startswith("hint:") and "--" in line)]
    short = ".".join(python_version.split(".")[:2])
    only_binary = set(spec.pip_only_binary)
    cause, hint = _first_cause(lines), None
    built = re.search(r"Failed to (?:download and )?build `([^`]+)`", text)
    if built:
        failure = _build_error(lines) or (cause or "").replace("you require", "its build requires")
        cause = f"{built.group(1)} has no wheel for {platform} and its source release does not build here" + (
            f" ({failure})" if failure else "")
        hint = ("constrain what its build installs with tool.mlenv.pip-build-constraints (as uv's build "
                "constraints), or refuse source releases with tool.mlenv.pip-only-binary = true")
    elif cause is None:
        cause = lines[0].removeprefix("error: ") if lines else "uv gave no reason"
    for name in sorted(with_extras):  # extras need the distribution's metadata at conda's version
        if re.search(rf"no\s+versions?\s+of\s+{re.escape(name)}\b", text, flags=re.IGNORECASE):
            cause = (f"the extras asked of {name} need its metadata at conda's version {installed.get(name)}, "
                     f"which the index does not have; {cause}")
            hint = f"ask conda for what the extra needs instead, or drop the extras from {name}"
    refused = re.search(r"An index URL \((\S+)\) could not be queried due to a lack of valid authentication "
                        r"credentials \(([^)]*)\)", text)
    if refused:  # what looks like a missing package is a refused login
        cause = f"the index {refused.group(1)} refused the credentials ({refused.group(2)}); {cause}"
    # the word before each " has no usable wheels" (split, not a regex: a 70,000-character
    # requirement must not make this quadratic)
    for name in [(part.rsplit(None, 1) or [""])[-1].split("==")[0] for part in cause.split(" has no usable wheels")[:-1]]:
        if ONLY_BINARY_ALL in only_binary or canonical(name) in only_binary:
            cause = cause.replace("has no usable wheels", f"has no wheel for {platform} (python {short}) and "
                                  "tool.mlenv.pip-only-binary forbids building it from source", 1)
            hint = "allow its source release: remove it from tool.mlenv.pip-only-binary (or set it to false)"
        else:
            cause = cause.replace("has no usable wheels", f"has no wheel for {platform} (python {short}) "
                                  "and no source release", 1)
    asked = re.search(r",?\s+and you require ([^,]+?)$", cause)
    if asked and re.split(r"[=<>!~\[; ]", asked.group(1))[0] in cause[:asked.start()]:  # named already
        cause = cause[:asked.start()]
    # "python X does not satisfy Python>=V and P depends on Python>=V": the package first
    cause = re.sub(r"^(the environment's python \S+) does not satisfy (\S+) and (\S+) depends on \2$",
                   r"\3 depends on \2, which \1 does not satisfy", cause)
    cause = cause.replace("you require", "the spec asks for")
    cause = cause.replace("was not found in the package registry", f"is not on the index {credentials.strip(indexes[0])}"
                          if indexes else "is not on the index")
    if "the environment's python" in cause and "does not satisfy" in cause:
        hint = "the python comes from the conda side: set tool.mlenv.python to a version the package supports"
    if len(cause) > 600:  # the first line stays a line; the whole derivation follows below
        cause = cause[:600] + " …"
    head = f"cannot resolve the pip requirements for {platform} (python {python_version}): {cause}"
    if built:  # a build's traceback is the package's, not ours: its last word is on the first line
        lines = _without_build_output(lines)
    below = ["  " + (f"uv: {line[7:]}" if line.startswith("error: ") else line) for line in lines]
    if hint:
        below.append(f"  hint: {hint}")
    return "\n".join([head, *below])


def _first_cause(lines: list[str]) -> str | None:
    """The first premise of uv's derivation: `Because A and B, we can conclude ...` gives `A and B`."""
    for index, line in enumerate(lines):
        body = line.strip().removeprefix("cause:").strip()
        if body.startswith("Because "):
            # uv wraps its sentences at the terminal's width: the rest of the paragraph follows
            text = " ".join([body, *(rest.strip() for rest in lines[index + 1:index + 8])])
            return " ".join(text[len("Because "):].split(", we can conclude")[0].split()).rstrip(".")
    return None


def _without_build_output(lines: list[str]) -> list[str]:
    kept, inside = [], False
    for line in lines:
        if line.strip() == "[stderr]" or line.strip() == "[stdout]":
            inside = True
            continue
        if inside and line.startswith((" ", "\t")) and not line.lstrip().startswith("cause:"):
            continue
        inside = False
        kept.append(line)
    return kept


def _build_error(lines: list[str]) -> str | None:
    """The build's own last word: the last line of its stderr (an exception, usually)."""
    inside = False
    last = None
    for line in lines:
        stripped = line.strip()
        if stripped == "[stderr]":
            inside = True
            continue
        if stripped.startswith("hint:"):
            inside = False
        if inside and stripped and not stripped.startswith(("^", "~")):
            last = stripped
    return last
