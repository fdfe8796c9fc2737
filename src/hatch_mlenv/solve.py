"""The conda solve: match specs in, pinned packages per platform out.

The built-in solver runs py-rattler in-process (no conda, mamba or micromamba
executable) and is registered through the same `mlenv_register_solvers` hook a
third-party solver would use.
"""

from __future__ import annotations

import asyncio

# difflib here, not where it is used: a failed solve explains itself while conda-lock's models
# load in another thread, and imports nothing meanwhile (_compat.SOLVE_IMPORTS says why).
import difflib
import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import rattler
from rattler.exceptions import SolverError

import hatch_mlenv.progress as progress
from hatch_mlenv._compat import settle_rattler_at_exit
from hatch_mlenv.credentials import channel_client, public, redact
from hatch_mlenv.errors import SolveError
from hatch_mlenv.hookspecs import Solver, SolveRequest, hookimpl  # the interface lives with the hooks
from hatch_mlenv.lockfile import LockedPackage, split_dependency
from hatch_mlenv.platforms import REQUIREMENT_KEYS

if TYPE_CHECKING:
    import rattler


class RattlerSolver:
    """Solve with py-rattler's resolvo solver over the channels' repodata."""

    name = "rattler"

    def solve(self, request: SolveRequest) -> dict[str, list[LockedPackage]]:
        settle_rattler_at_exit()
        with progress.step(f"fetching channel metadata and solving the conda packages for {', '.join(request.platforms)}"):
            return asyncio.run(self._solve_all(request))

    async def _solve_all(self, request: SolveRequest) -> dict[str, list[LockedPackage]]:

        # rattler gets the public URLs (its repodata cache records them) and the credentials
        # in its client's memory; the gateway's own default client would not even read
        # rattler's authentication storage (py-rattler 0.28).
        access = channel_client(request.channels)
        gateway = rattler.Gateway(client=access.client)
        channels = [rattler.Channel(url) for url in access.urls]
        results = await asyncio.gather(*(
            self._solve_one(gateway, channels, [rattler.MatchSpec(s, strict=False) for s in request.specs_for(plat)],
                            plat, request)
            for plat in request.platforms
        ))
        return dict(zip(request.platforms, results))

    async def _solve_one(
        self,
        gateway: rattler.Gateway,
        channels: list[rattler.Channel],
        specs: list[rattler.MatchSpec],
        platform: str,
        request: SolveRequest,
    ) -> list[LockedPackage]:
        subdirs = [platform, "noarch"]
        virtual = [
            rattler.GenericVirtualPackage(
                rattler.PackageName(name), rattler.Version(version), rattler.BuildString(build)
            )
            for name, (version, build) in request.virtual_packages.get(platform, {}).items()
        ]
        locked = await self._preferred_records(gateway, channels, subdirs, platform, request.preferred)
        try:
            records = await rattler.solve(
                channels,
                specs,
                gateway=gateway,
                platforms=subdirs,
                virtual_packages=virtual,
                locked_packages=locked,
            )
        except SolverError as exc:
            # every cause on the first line, rattler's derivation below it
            why = await _why_unsolvable(gateway, channels, subdirs, platform, request, str(exc))
            message = f"cannot solve the environment for {platform}: {why}\n{exc}"
            raise SolveError(redact(message, request.channels)) from None
        except Exception as exc:  # gateway errors: unreadable or missing repodata
            raise SolveError(redact(f"cannot read the channels for {platform}: {exc}", request.channels)) from None
        return [_locked(record, platform) for record in records]

    @staticmethod
    async def _preferred_records(
        gateway: rattler.Gateway,
        channels: list[rattler.Channel],
        subdirs: list[str],
        platform: str,
        preferred: tuple[LockedPackage, ...],
    ) -> list[rattler.RepoDataRecord]:
        wanted = {p.url: p for p in preferred if p.platform == platform and p.manager == "conda"}
        if not wanted:
            return []
        specs = sorted({f"{p.name}=={p.version}" for p in wanted.values()})
        found = await gateway.query(channels, subdirs, specs, recursive=False)
        return [record for batch in found for record in batch if public(str(record.url)) in wanted]


# --- why a solve failed: every cause on the error's first line -----------------------

# rattler (py-rattler 0.28.0, resolvo's DisplayUnsat) explains a failure as an indented tree and
# names only the first requested spec without candidates. The records say which requested specs
# cannot be had at all, and why; the tree's leaves say the rest (a missing dependency or virtual
# package, a conflict). tests/test_solve_errors.py fails when rattler changes these phrases.
_RATTLER_PREFIX = "Cannot solve the request because of: "
_INCOMPATIBLE = "The following packages are incompatible"
_ROOT_MISSING = re.compile(r"^No candidates were found for (.+)\.$")
_OPTIONS = r"be installed (?:with any of the following options|because there are no viable options):$"
_ROOT_REQUIREMENT = re.compile(r"^(.+) can(not)? " + _OPTIONS)  # group 2: cannot
_REQUIREMENT = re.compile(r"^(.+), which can(?:not)? " + _OPTIONS)
_NO_CANDIDATES = re.compile(r"^(.+), for which no candidates were found\.$")
_CONFLICTS = re.compile(
    r"^(.+), which conflicts with (?:the versions reported above\.|any installable versions previously reported)$"
)
_EXCLUDED = re.compile(r"^(.+?) is excluded because (.+)$")
_STRICT_PRIORITY = re.compile(r"^due to strict channel priority not using this option from: '(.+)'$")
_MAX_CAUSES = 5
_MAX_ALTERNATIVES = 3


@dataclass
class _Step:
    """One line of rattler's derivation and the lines indented below it."""

    text: str
    below: list[_Step] = field(default_factory=list)


@dataclass(frozen=True)
class _Wanted:
    text: str  # as the spec wrote it
    spec: rattler.MatchSpec
    name: str


@dataclass
class _Context:
    platform: str
    channels: list[str]  # public base URLs, without the trailing slash
    wanted: list[_Wanted]
    records: dict[str, list[rattler.RepoDataRecord]]  # every record of a name, whatever its version
    virtual: dict[str, tuple[str, str]]


async def _why_unsolvable(
    gateway: rattler.Gateway,
    channels: list[rattler.Channel],
    subdirs: list[str],
    platform: str,
    request: SolveRequest,
    explanation: str,
) -> str:
    """What cannot be had and why, in one line: every requested spec that no record of the
    channels matches, then the causes rattler's derivation names for the others."""
    try:
        return await _causes(gateway, channels, subdirs, platform, request, explanation)
    except Exception:  # explaining a failure must never replace it; rattler's own words remain
        return _headline(explanation)


async def _causes(
    gateway: rattler.Gateway,
    channels: list[rattler.Channel],
    subdirs: list[str],
    platform: str,
    request: SolveRequest,
    explanation: str,
) -> str:
    roots = _derivation(explanation)
    wanted = [_wanted(text) for text in request.specs_for(platform)]
    names = {w.name for w in wanted} | {_name(d) for d in _missing_dependencies(roots)}
    context = _Context(
        platform=platform,
        channels=[_base(c.base_url) for c in channels],
        wanted=wanted,
        records=await _records(gateway, channels, subdirs, names),
        virtual=request.virtual_packages.get(platform, {}),
    )
    causes: list[str] = []
    explained: set[str] = set()
    unknown: dict[str, tuple[int, list[str]]] = {}  # channels -> (place in causes, names none has)
    for w in wanted:
        cause = _unavailable(w, context)
        if cause is None:
            continue
        explained.add(w.name)
        if isinstance(cause, tuple):
            if cause[0] not in unknown:
                unknown[cause[0]] = (len(causes), [])
                causes.append("")  # filled below, in the order of the request
            unknown[cause[0]][1].append(w.name)
        else:
            causes.append(cause)
    if unknown:
        known = [n.normalized for n in await gateway.names(channels, subdirs)]
        for where, (place, missing) in unknown.items():
            shown = []
            for name in missing:
                close = difflib.get_close_matches(name, [k for k in known if k != name], n=1, cutoff=0.8)
                shown.append(f"{name} (did you mean {close[0]}?)" if close else name)
            plural = "s" if len(shown) > 1 else ""
            causes[place] = f"no package{plural} {_listed(shown, 'and', 5)} in {where}"
    for root in roots:
        causes.extend(_root_causes(root, context, explained))
    if not causes:
        return _headline(explanation)
    causes = list(dict.fromkeys(causes))
    if len(causes) > _MAX_CAUSES:
        causes = [*causes[:_MAX_CAUSES], f"and {len(causes) - _MAX_CAUSES} more"]
    return "; ".join(causes)


def _derivation(explanation: str) -> list[_Step]:
    """rattler's text as a tree: one step per line, under the line it is indented below."""
    top: list[_Step] = []
    open_steps: list[tuple[int, _Step]] = []
    for number, line in enumerate(explanation.splitlines()):
        if number == 0:
            line = line.removeprefix(_RATTLER_PREFIX)
        text = line.lstrip("│├└─ ")
        if not text.strip():
            continue
        depth = (len(line) - len(text)) // 3  # each level is three characters: "├─ ", "│  ", "   "
        step = _Step(text.rstrip())
        while open_steps and open_steps[-1][0] >= depth:
            open_steps.pop()
        (open_steps[-1][1].below if open_steps else top).append(step)
        open_steps.append((depth, step))
    return top


def _headline(explanation: str) -> str:
    lines = [line for line in explanation.splitlines() if line.strip()]
    return lines[0].removeprefix(_RATTLER_PREFIX).rstrip(":.") if lines else "the solver gave no reason"


def _wanted(text: str) -> _Wanted:
    spec = rattler.MatchSpec(text, strict=False)
    return _Wanted(text=" ".join(text.split()), spec=spec, name=spec.name.as_package_name().normalized)


def _name(requirement: str) -> str:
    """The package name a line of rattler's derivation starts with: `libbar 1.*` -> `libbar`."""
    return requirement.split()[0].split("[")[0].lower()


def _shown(requirement: str) -> str:
    """A requirement as rattler prints it, without its "any version" star: `cuda-thing *` -> `cuda-thing`."""
    return requirement[:-2] if requirement.endswith(" *") else requirement


def _as_requested(requirement: str, context: _Context) -> str:
    """A requested spec in the words of the spec, when rattler's rendering names one of them."""
    same = [w.text for w in context.wanted if w.name == _name(requirement)]
    return same[0] if len(same) == 1 else _shown(requirement)


def _base(url: object) -> str:
    return public(str(url)).rstrip("/")


def _listed(items: list[str], word: str = "or", limit: int = _MAX_ALTERNATIVES) -> str:
    """`a`, `a or b`, `a, b or c`, `a, b, c or 2 more`."""
    if len(items) > limit:
        return f"{', '.join(items[:limit])} {word} {len(items) - limit} more"
    if len(items) == 1:
        return items[0]
    return f"{', '.join(items[:-1])} {word} {items[-1]}"


async def _records(
    gateway: rattler.Gateway, channels: list[rattler.Channel], subdirs: list[str], names: set[str]
) -> dict[str, list[rattler.RepoDataRecord]]:
    # Names, not match specs: a match spec would return only the records it matches.
    real = sorted(n for n in names if not n.startswith("__"))
    found = await gateway.query(channels, subdirs, real, recursive=False) if real else []
    by_name: dict[str, list[rattler.RepoDataRecord]] = {name: [] for name in real}
    for batch in found:
        for record in batch:
            by_name.setdefault(record.name.normalized, []).append(record)
    return by_name


def _unavailable(wanted: _Wanted, context: _Context) -> str | tuple[str] | None:
    """Why no record of the channels matches a requested spec; None when some record does, and
    `(channels,)` when they have no package of its name at all."""
    if wanted.name.startswith("__"):
        return None  # virtual packages come from the platform; the derivation explains them
    spec = wanted.spec
    records = context.records.get(wanted.name, [])
    where = context.channels
    shown = wanted.text
    if spec.channel is not None:
        asked = _base(spec.channel.base_url)
        shown = shown.split("::", 1)[-1].strip()
        if asked not in context.channels:
            return f"{shown} is asked from {asked}, which is not one of the channels ({', '.join(context.channels)})"
        elsewhere = list(dict.fromkeys(_base(r.channel) for r in records if _base(r.channel) != asked))
        records = [r for r in records if _base(r.channel) == asked]
        where = [asked]
        if not records and elsewhere:
            return f"no package {wanted.name} in {asked} (it is in {', '.join(elsewhere)})"
    channels = ", ".join(where)
    if not records:
        return (channels,)
    if any(spec.matches(r) for r in records):
        return None
    version = rattler.VersionSpec(spec.version) if spec.version else None
    of_version = [r for r in records if version is None or version.matches(r.version)]
    if not of_version:
        return f"no {shown} in {channels}, newest is {max(r.version for r in records)}"
    if spec.build:
        newest_first = sorted(of_version, key=lambda r: (r.version, r.build_number, str(r.build)), reverse=True)
        builds = list(dict.fromkeys(str(r.build) for r in newest_first))
        return f"no {shown} in {channels}, builds there: {_listed(builds, 'and')}"
    return f"no {shown} in {channels}"


def _missing_dependencies(steps: list[_Step]) -> list[str]:
    found: list[str] = []
    for step in steps:
        match = _NO_CANDIDATES.match(step.text) or _ROOT_MISSING.match(step.text)
        if match:
            found.append(match.group(1))
        found.extend(_missing_dependencies(step.below))
    return found


def _root_causes(root: _Step, context: _Context, explained: set[str]) -> list[str]:
    """The causes one top-level statement of rattler's derivation gives."""
    if root.text == _INCOMPATIBLE:
        members = [s for s in root.below if _ROOT_REQUIREMENT.match(s.text)]
        members = [s for s in members if _name(s.text) not in explained]
        others = [s.text for s in root.below if not _ROOT_REQUIREMENT.match(s.text)]
        if len(members) < 2:
            return [cause for s in members for cause in _requirement_causes(s, context)] + others
        return [_conflict(members, context), *others]
    missing = _ROOT_MISSING.match(root.text)
    if missing:
        if _name(missing.group(1)) in explained:
            return []
        return [f"no candidates for {_dependency(missing.group(1), '', context)[1]}"]
    if _ROOT_REQUIREMENT.match(root.text):
        return [] if _name(root.text) in explained else _requirement_causes(root, context)
    return []


def _conflict(members: list[_Step], context: _Context) -> str:
    """`conflict-a conflicts with conflict-b over libbar`, in the order of the request."""
    exact = {w.text: i for i, w in reversed(list(enumerate(context.wanted)))}
    by_name = {w.name: i for i, w in reversed(list(enumerate(context.wanted)))}
    shown = [_as_requested(_requirement(s), context) for s in members]
    shown.sort(key=lambda req: exact.get(req, by_name.get(_name(req), len(exact))))
    over: list[str] = []
    also: list[str] = []
    for step in members:
        conflicts, needs, fought = _walk(step.below, _shown(_requirement(step)), _name(step.text), context)
        over.extend(n for n in fought if n not in {_name(req) for req in shown})
        if conflicts or needs:
            also.extend(_requirement_causes(step, context))
    if len(shown) == 2:
        text = f"{shown[0]} conflicts with {shown[1]}"
    else:
        text = f"{_listed(shown, 'and')} cannot be installed together"
    over = list(dict.fromkeys(over))
    return "; ".join([text + (f" over {', '.join(over)}" if over else ""), *also])


def _requirement(step: _Step) -> str:
    match = _ROOT_REQUIREMENT.match(step.text)
    return match.group(1) if match else step.text


def _requirement_causes(step: _Step, context: _Context) -> list[str]:
    match = _ROOT_REQUIREMENT.match(step.text)
    if match is None or not match.group(2):
        return []  # installable: the other side of a conflict says why
    requirement = _as_requested(match.group(1), context)
    conflicts, needs, over = _walk(step.below, requirement, _name(requirement), context)
    phrases = [f"conflicts with {against} (needs {_alternatives(deps)})" for against, deps in conflicts.items()]
    if needs:
        phrases.append(f"needs {_listed(needs)}")
    if not phrases and over:
        phrases.append(f"cannot be installed: its dependencies conflict over {', '.join(over)}")
    return [f"{requirement} {', or '.join(phrases)}"] if phrases else []


def _walk(
    steps: list[_Step], parent: str, root: str, context: _Context
) -> tuple[dict[str, list[str]], list[str], list[str]]:
    """Below requirement `parent` of requested package `root`: the requested specs its
    dependencies conflict with (and those dependencies), the dependencies that cannot be had
    (and why), the packages fought over."""
    conflicts: dict[str, list[str]] = {}
    needs: list[str] = []
    over: list[str] = []
    for step in steps:
        text = step.text
        if match := _NO_CANDIDATES.match(text):
            against, why = _dependency(match.group(1), root, context)
            if against:
                conflicts.setdefault(against, []).append(match.group(1))
            else:
                needs.append(why if _name(parent) == root else f"{_shown(parent)}, which needs {why}")
        elif match := _CONFLICTS.match(text):
            over.append(_name(match.group(1)))
        elif match := _EXCLUDED.match(text):
            needs.append(_excluded(parent, match.group(1), match.group(2)))
        else:
            below = _REQUIREMENT.match(text)
            inner = _walk(step.below, below.group(1) if below else parent, root, context)
            for against, deps in inner[0].items():
                conflicts.setdefault(against, []).extend(deps)
            needs.extend(inner[1])
            over.extend(inner[2])
    return (
        {k: list(dict.fromkeys(v)) for k, v in conflicts.items()},
        list(dict.fromkeys(needs)),
        list(dict.fromkeys(over)),
    )


def _dependency(requirement: str, root: str, context: _Context) -> tuple[str | None, str]:
    """For a dependency rattler found no candidates for: the requested spec it conflicts with,
    or (None, the dependency and why it cannot be had)."""
    name = _name(requirement)
    shown = _shown(requirement)
    if name.startswith("__"):
        declared = context.virtual.get(name)
        if declared is None:
            key = REQUIREMENT_KEYS.get(name)
            hint = f": set [tool.mlenv.system-requirements] {key}" if key else ""
            return None, f"{shown} ({context.platform} declares no {name}{hint})"
        return None, f"{shown} ({context.platform} is solved for {name} {declared[0]})"
    records = context.records.get(name, [])
    if not records:
        return None, f"{shown} (no package {name} in the channels)"
    try:
        spec = rattler.MatchSpec(requirement, strict=False)
    except Exception:  # rattler printed something it does not parse back: say no more than it did
        return None, shown
    matching = [r for r in records if spec.matches(r)]
    if not matching:
        return None, f"{shown} (newest {name} is {max(r.version for r in records)})"
    against = [w.text for w in context.wanted
               if w.name == name != root and not any(w.spec.matches(r) for r in matching)]
    if against:
        return ", ".join(against), shown
    return None, f"{shown} (not installable with the rest of the request)"


def _excluded(requirement: str, version: str, reason: str) -> str:
    strict = _STRICT_PRIORITY.match(reason)
    if strict:
        reason = f"it is in {_base(strict.group(1))}, which strict channel priority passes over"
    return f"{requirement} ({version} is excluded: {reason})"


def _alternatives(dependencies: list[str]) -> str:
    """`python >=3.6,<3.7.0a0, >=3.5,<3.6.0a0 or >=2.7,<2.8.0a0`: the name once."""
    name = dependencies[0].split()[0]
    if all(d.startswith(f"{name} ") for d in dependencies):
        return f"{name} {_listed([d[len(name) + 1:] for d in dependencies])}"
    return _listed(dependencies)


def _locked(record: rattler.RepoDataRecord, platform: str) -> LockedPackage:
    # py-rattler 0.28 has no `purls` attribute; the record's JSON carries them.
    purls = json.loads(record.to_json()).get("purls") or ()
    return LockedPackage(
        platform=platform,
        manager="conda",
        name=record.name.normalized,
        version=str(record.version),
        build=str(record.build),
        url=public(str(record.url)),  # the channel's credentials are for fetching, never for the lock
        md5=record.md5.hex() if record.md5 else None,
        sha256=record.sha256.hex() if record.sha256 else None,
        dependencies=dict(split_dependency(d) for d in record.depends),
        purls=tuple(purls),
    )


@hookimpl
def mlenv_register_solvers() -> list[Solver]:
    return [RattlerSolver()]
