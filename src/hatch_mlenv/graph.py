"""The dependency graph of a lock, for one platform: what depends on what, read from the lock
alone (no solve, no network), over conda and pip packages alike.

Edges are the `dependencies` conda-lock records for each package. A conda package's name conda
packages (virtual packages such as `__glibc` are not in the lock and are left out); a pip
package's name PyPI distributions, which lead to the pip package of that name, else to the conda
package that provides that distribution (the names the lock records in `mlenv.pypi-names`, the
community table, or a conda package of the same name that depends on python).

The roots are what the definition asked for: its `python`, its conda requests and its pip
requests, matched by name. Packages that nothing requested leads to (and every package of a
lock that has no definition, such as one conda-lock wrote) hang from the packages nothing else
depends on, which are roots too, marked as not requested.

`tree` and `why` return JSON-ready values; their shapes are documented in the README
("Why is this package here") and are what `mlenv tree --json`, `mlenv why --json` and the web
page's API print.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Iterator

from packaging.requirements import InvalidRequirement, Requirement

from hatch_mlenv.errors import NotInLockError, UsageError, did_you_mean
from hatch_mlenv.lockfile import Lock, LockedPackage
from hatch_mlenv.platforms import current_platform
from hatch_mlenv.pypi_names import canonical, provided_distributions

# A conda match spec's name: after an optional `channel::`, up to the first space, operator or bracket.
_MATCH_SPEC_NAME = re.compile(r"^\s*(?:[^\s:]+::)?([A-Za-z0-9_][A-Za-z0-9_.+\-]*)")
# how many paths `why` counts before it says "more than" (it lists at most `limit` of them)
COUNT_LIMIT = 10_000


@dataclass(frozen=True)
class Graph:
    """One platform of a lock as a graph. Keys are `manager:name` (`conda:numpy`, `pip:six`)."""

    platform: str
    packages: dict[str, LockedPackage]
    # key -> [(dependency key, constraint as the package states it)], sorted by key
    dependencies: dict[str, list[tuple[str, str]]]
    dependents: dict[str, list[tuple[str, str]]]
    requested: tuple[str, ...]  # keys the definition asked for, in its order
    roots: tuple[str, ...]  # the requested ones, then the packages nothing leads to
    # requests of the definition that match no package of this platform (`pip:NAME`, `conda:NAME`)
    unmatched: tuple[str, ...] = ()

    def node(self, key: str) -> dict[str, Any]:
        package = self.packages[key]
        return {"name": package.name, "version": package.version, "build": package.build,
                "manager": package.manager, "requested": key in self.requested_set}

    @cached_property
    def requested_set(self) -> frozenset[str]:
        return frozenset(self.requested)

    @cached_property
    def depth(self) -> dict[str, int]:
        """Each package's shortest distance from a root (roots are 0)."""
        depth = {key: 0 for key in self.roots}
        queue = deque(self.roots)
        while queue:
            key = queue.popleft()
            for child, _ in self.dependencies[key]:
                if child not in depth:
                    depth[child] = depth[key] + 1
                    queue.append(child)
        return depth

    def find(self, name: str) -> list[str]:
        """The keys a user's PKG names: `NAME` (conda or pip, PyPI names compared canonically),
        or `conda:NAME` / `pip:NAME` for one of them."""
        manager, _, bare = name.partition(":") if name.startswith(("conda:", "pip:")) else ("", "", name)
        found = []
        for key, package in self.packages.items():
            if manager and package.manager != manager:
                continue
            if package.name == bare or package.name.lower() == bare.lower() or (
                    package.manager == "pip" and canonical(package.name) == canonical(bare)):
                found.append(key)
        return sorted(found)


def of_environment(env: Any, platform: str | None = None) -> Graph:
    """The graph of an `Environment`'s lock for `platform` (see `platform_of`), rooted at its definition."""
    return dependency_graph(env.lock, platform_of(env.lock, platform), env.definition)


def tree_report(env: Any, platform: str | None = None, *, depth: int | None = None,
                invert: str | None = None) -> dict[str, Any]:
    """What `mlenv tree --json` prints (and the web API serves): the environment, the platform,
    what was asked for and matched nothing, and `tree`'s nodes under `roots`."""
    graph = of_environment(env, platform)
    return {
        "name": env.name,
        "digest": f"sha256:{env.digest}",
        "platform": graph.platform,
        "packages": len(graph.packages),
        "requested": [graph.node(key) for key in graph.requested],
        "unmatched": list(graph.unmatched),
        "depth": depth,
        "invert": invert,
        "roots": tree(graph, depth=depth, invert=invert),
    }


def why_report(env: Any, package: str, platform: str | None = None, *, limit: int = 100) -> dict[str, Any]:
    """What `mlenv why --json` prints: `why`, with the environment's name and digest."""
    graph = of_environment(env, platform)
    return {"name": env.name, "digest": f"sha256:{env.digest}"} | why(graph, package, limit=limit)


def platform_of(lock: Lock, asked: str | None) -> str:
    """`--platform`, else this machine's when the lock has it, else the lock's only platform."""
    locked = sorted(lock.platforms)
    if asked is not None:
        if asked not in locked:
            raise UsageError(f"the lock has no platform {asked!r} (locked: {', '.join(locked) or 'none'})")
        return asked
    here = current_platform()
    if here in locked:
        return here
    if len(locked) == 1:
        return locked[0]
    raise UsageError(f"the lock has no packages for this machine's platform {here}; choose one with "
                     f"--platform ({', '.join(locked)})")


def requests_of(definition: dict[str, Any] | None) -> tuple[list[str], list[str]]:
    """The conda names and the canonical pip names a definition asks for, in its order."""

    if not definition:
        return [], []
    conda: list[str] = ["python"] if definition.get("python") else []
    for text in definition.get("conda") or []:
        match = _MATCH_SPEC_NAME.match(str(text))
        if match and match.group(1).lower() not in conda:
            conda.append(match.group(1).lower())
    pip: list[str] = []
    for text in definition.get("pip") or []:
        try:
            name = canonical(Requirement(str(text)).name)
        except InvalidRequirement:
            continue
        if name not in pip:
            pip.append(name)
    return conda, pip


def dependency_graph(lock: Lock, platform: str, definition: dict[str, Any] | None = None) -> Graph:
    """The graph of `lock` for `platform`, rooted at what `definition` (an Environment's
    `definition`) asks for; without one, at the packages nothing depends on."""
    packages = {f"{p.manager}:{p.name}": p for p in sorted(lock.for_platform(platform), key=lambda p: (p.manager, p.name))}
    conda = {p.name.lower(): key for key, p in packages.items() if p.manager == "conda"}
    pip = {canonical(p.name): key for key, p in packages.items() if p.manager == "pip"}
    # a PyPI name -> the conda package that provides it; the names the lock recorded win
    provides = {name: f"conda:{p.name}" for name, p in provided_distributions(
        [p for p in packages.values() if p.manager == "conda"]).items()}
    for conda_name, names in lock.pypi_names.items():
        if f"conda:{conda_name}" in packages:
            provides |= {canonical(n): f"conda:{conda_name}" for n in names}

    def pypi(name: str) -> str | None:
        name = canonical(name)
        return pip.get(name) or provides.get(name) or conda.get(name)

    dependencies: dict[str, list[tuple[str, str]]] = {}
    dependents: dict[str, list[tuple[str, str]]] = {key: [] for key in packages}
    for key, package in packages.items():
        edges = {}
        for name, constraint in package.dependencies.items():
            target = conda.get(name.lower()) if package.manager == "conda" else pypi(name)
            if target is not None and target != key:
                edges[target] = constraint
        dependencies[key] = sorted(edges.items())
        for target, constraint in dependencies[key]:
            dependents[target].append((key, constraint))
    for edges in dependents.values():
        edges.sort()

    asked_conda, asked_pip = requests_of(definition)
    requested: list[str] = []
    unmatched: list[str] = []
    for name in asked_conda:
        key = conda.get(name)
        (requested if key else unmatched).append(key or f"conda:{name}")
    for name in asked_pip:
        key = pypi(name)
        (requested if key else unmatched).append(key or f"pip:{name}")
    requested = list(dict.fromkeys(requested))
    roots = list(requested) + _tops(packages, dependencies, dependents, requested)
    return Graph(platform, packages, dependencies, dependents, tuple(requested), tuple(roots), tuple(unmatched))


def _tops(packages: dict[str, LockedPackage], dependencies: dict[str, list[tuple[str, str]]],
          dependents: dict[str, list[tuple[str, str]]], requested: list[str]) -> list[str]:
    """Roots for what the requests do not reach: the packages nothing among the rest depends on,
    then, for cycles nothing enters, the first of each by name."""
    reached = _reach(requested, dependencies)
    rest = [key for key in packages if key not in reached]
    tops = [key for key in rest if not any(parent not in reached for parent, _ in dependents[key])]
    reached |= _reach(tops, dependencies)
    for key in rest:  # in the packages' order: by manager, then name
        if key not in reached:
            tops.append(key)
            reached |= _reach([key], dependencies)
    return tops


def _reach(start: list[str], dependencies: dict[str, list[tuple[str, str]]]) -> set[str]:
    seen = set(start)
    stack = list(start)
    while stack:
        for child, _ in dependencies[stack.pop()]:
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return seen


def tree(graph: Graph, *, depth: int | None = None, invert: str | None = None) -> list[dict[str, Any]]:
    """The tree as nested nodes: each `{name, version, build, manager, requested, constraint,
    repeated, truncated, dependencies}` (`dependents` with `invert`). A package is expanded
    once; later it appears with `repeated: true` and no children (uv's `(*)`). `depth` cuts
    below that many levels (`truncated: true` where children were left out). With `invert`
    (a PKG as `Graph.find` reads it) the tree goes up from PKG to the roots."""
    children_of = graph.dependencies
    starts = list(graph.roots)
    if invert is not None:
        starts = _found(graph, invert)
        children_of = graph.dependents
    kind = "dependents" if invert is not None else "dependencies"
    expanded: set[str] = set()
    top: list[dict[str, Any]] = []
    # an explicit stack: a chain of thousands of packages must not hit Python's recursion limit
    stack: list[tuple[str, str | None, int, list[dict[str, Any]]]] = [(k, None, 0, top) for k in reversed(starts)]
    while stack:
        key, constraint, level, siblings = stack.pop()
        children = children_of[key]
        node = graph.node(key) | {"constraint": constraint, "repeated": False, "truncated": False, kind: []}
        siblings.append(node)
        if not children:
            continue
        if key in expanded:
            node["repeated"] = True
        elif depth is not None and level >= depth:
            node["truncated"] = True
        else:
            expanded.add(key)
            stack.extend((child, how, level + 1, node[kind]) for child, how in reversed(children))
    return top


def tree_lines(nodes: list[dict[str, Any]], kind: str = "dependencies") -> Iterator[str]:
    """`tree` as text, the way `uv tree` draws it: `(*)` marks a package shown above."""
    stack: list[tuple[dict[str, Any], str, str, str | None]] = [(n, "", "", None) for n in reversed(nodes)]
    while stack:
        node, lead, rest, below = stack.pop()
        yield f"{lead}{describe(node, below)}"
        children = node[kind]
        for index in range(len(children) - 1, -1, -1):
            last = index == len(children) - 1
            stack.append((children[index], rest + ("└── " if last else "├── "), rest + ("    " if last else "│   "),
                          node["name"] if kind == "dependents" else None))


def describe(node: dict[str, Any], below: str | None = None) -> str:
    """`numpy 1.26.4 [>=1.26]`: the package, how its parent asks for it (in an inverted tree,
    how it asks for the package `below` it), and marks for what is left out."""
    text = f"{node['name']} {node['version']}"
    if node["manager"] == "pip":
        text += " (pip)"
    if below is not None:
        text += f" (requires {below}{'' if node['constraint'] in (None, '*', '') else ' ' + node['constraint']})"
    elif node.get("constraint") not in (None, "*", ""):
        text += f" [{node['constraint']}]"
    if node.get("requested"):
        text += " (requested)"
    if node.get("repeated"):
        text += " (*)"
    if node.get("truncated"):
        text += " (...)"
    return _printable(text)


def why_lines(report: dict[str, Any]) -> Iterator[str]:
    """`why_report` as text: a line saying how many paths, then one path a line, root first."""
    matches = " and ".join(f"{m['name']} {m['version']} ({m['manager']})" for m in report["matches"])
    total = report["total"]
    counted = f"{total} path{'' if total == 1 else 's'}" if total is not None else f"more than {COUNT_LIMIT} paths"
    shown = "" if report["complete"] else f"; the {len(report['paths'])} shortest found"
    yield _printable(f"{matches} is in {report['name']} for {report['platform']} through {counted}{shown}:")
    for path in report["paths"]:
        steps = []
        for step in path:
            text = f"{step['name']} {step['version']}"
            if step["constraint"] not in (None, "", "*"):
                text += f" [{step['constraint']}]"
            steps.append(text)
        first = path[0]
        why_first = "requested" if first["requested"] else "nothing depends on it"
        yield _printable(f"{steps[0]} ({why_first})" + "".join(f" → {s}" for s in steps[1:]))


def _printable(text: str) -> str:
    """What a lock says, as one line for a terminal: control characters shown as escapes."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _found(graph: Graph, name: str) -> list[str]:
    keys = graph.find(name)
    if not keys:
        names = sorted({p.name for p in graph.packages.values()})
        raise NotInLockError(f"{name} is not in the lock for {graph.platform}{did_you_mean(name, names)}")
    return keys


def why(graph: Graph, name: str, *, limit: int = 100) -> dict[str, Any]:
    """Every path from a root down to PKG (`Graph.find`), shortest first: at most `limit` are
    listed, up to `COUNT_LIMIT` counted (`total` is None beyond that). Each path is a list of
    nodes from the root to PKG, each with the `constraint` by which the one before asks for it."""
    targets = _found(graph, name)
    roots = set(graph.roots)
    depth = graph.depth
    found: list[list[tuple[str, str | None]]] = []
    count = 0
    for target in targets:
        for path in _paths_up(graph, target, roots, depth):
            count += 1
            if len(found) < limit:
                found.append(path)
            if count > COUNT_LIMIT:
                break
        if count > COUNT_LIMIT:
            break
    found.sort(key=lambda p: (len(p), [k for k, _ in p]))
    return {
        "platform": graph.platform,
        "package": name,
        "matches": [graph.node(key) for key in targets],
        "paths": [[graph.node(key) | {"constraint": how} for key, how in path] for path in found],
        "total": None if count > COUNT_LIMIT else count,
        "complete": count <= limit,
    }


def _paths_up(graph: Graph, target: str, roots: set[str], depth: dict[str, int]
              ) -> Iterator[list[tuple[str, str | None]]]:
    """Simple paths from a root down to `target`, found by walking up from it; parents nearer a
    root first, so that the first paths found are the short ones."""
    order = {key: sorted(graph.dependents[key], key=lambda e: (depth.get(e[0], 1 << 30), e[0]))
             for key in graph.packages}
    # path: from target up, as (key, constraint by which the next one up asks for it)
    path: list[tuple[str, str | None]] = [(target, None)]
    on_path = {target}
    iterators = [iter(order[target])]
    if target in roots:
        yield [(target, None)]
    while iterators:
        step = next(iterators[-1], None)
        if step is None:
            iterators.pop()
            on_path.discard(path.pop()[0])
            continue
        parent, constraint = step
        if parent in on_path:
            continue
        path[-1] = (path[-1][0], constraint)
        path.append((parent, None))
        on_path.add(parent)
        if parent in roots:
            yield path[::-1]  # root first; the root's constraint is None
        iterators.append(iter(order[parent]))

