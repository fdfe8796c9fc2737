"""The layout of a dependency graph, for the version page's SVG: drawn on the server, so the
page needs no script library and no network to show it.

A layered drawing, left to right: the roots in the first column, each package one column right
of the furthest package that depends on it (longest path, cycles broken where a depth-first
walk from the roots meets them again), packages within a column ordered by where the packages
that depend on them are (one barycenter pass down, one up) so that edges cross less.
"""

from __future__ import annotations

from typing import Any

from hatch_mlenv.graph import Graph

NODE_WIDTH = 190
NODE_HEIGHT = 18
COLUMN = NODE_WIDTH + 70
ROW = 24
MARGIN = 8
LABEL_CHARACTERS = 26


def layout(graph: Graph, anchors: dict[str, str]) -> dict[str, Any]:
    """Boxes and edges with coordinates: `nodes` ({id, key, label, title, href, x, y, requested,
    manager}), `edges` ({source, target, d}: an SVG path), `width`, `height`. `anchors`: each
    package's id in the page (where its node links to)."""
    columns = _columns(graph)
    layers: dict[int, list[str]] = {}
    for key in graph.packages:  # sorted by manager and name
        layers.setdefault(columns[key], []).append(key)
    position = _order(graph, layers)

    ids = {key: f"g{index}" for index, key in enumerate(graph.packages)}
    nodes = []
    where: dict[str, tuple[int, int]] = {}
    for column, keys in sorted(layers.items()):
        for key in keys:
            x, y = MARGIN + column * COLUMN, MARGIN + int(position[key]) * ROW
            where[key] = (x, y)
            package = graph.packages[key]
            text = f"{package.name} {package.version}"
            nodes.append({
                "id": ids[key], "key": key, "x": x, "y": y, "href": f"#{anchors[key]}",
                "label": text if len(text) <= LABEL_CHARACTERS else text[:LABEL_CHARACTERS - 1] + "…",
                "title": f"{text} ({package.manager})", "requested": key in graph.requested_set,
                "manager": package.manager, "dependencies": len(graph.dependencies[key]),
                "dependents": len(graph.dependents[key]),
            })
    edges = []
    for key, children in graph.dependencies.items():
        x1, y1 = where[key]
        x1, y1 = x1 + NODE_WIDTH, y1 + NODE_HEIGHT // 2
        for child, _ in children:
            x2, y2 = where[child]
            y2 += NODE_HEIGHT // 2
            bend = max(30, (x2 - x1) // 2) if x2 > x1 else 60
            edges.append({"source": ids[key], "target": ids[child],
                          "d": f"M{x1},{y1} C{x1 + bend},{y1} {x2 - bend},{y2} {x2},{y2}"})
    width = MARGIN * 2 + (max(layers) + 1) * COLUMN - (COLUMN - NODE_WIDTH) if layers else 0
    height = MARGIN * 2 + max((len(keys) for keys in layers.values()), default=0) * ROW
    return {"nodes": nodes, "edges": edges, "width": width, "height": height,
            "node_width": NODE_WIDTH, "node_height": NODE_HEIGHT}


def _columns(graph: Graph) -> dict[str, int]:
    """Longest-path layering over the edges a depth-first walk from the roots keeps (an edge back
    to a package on the walk's current path closes a cycle and is left out)."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    postorder: list[str] = []
    forward: dict[str, list[str]] = {key: [] for key in graph.packages}
    for root in graph.roots:
        if root in state:
            continue
        state[root] = 1
        stack = [(root, iter(graph.dependencies[root]))]
        while stack:
            key, children = stack[-1]
            for child, _ in children:
                if state.get(child) == 1:
                    continue  # a cycle
                forward[key].append(child)
                if child not in state:
                    state[child] = 1
                    stack.append((child, iter(graph.dependencies[child])))
                    break
            else:
                state[key] = 2
                postorder.append(key)
                stack.pop()
    column = {key: 0 for key in graph.packages}
    for key in reversed(postorder):  # a topological order of the kept edges
        for child in forward[key]:
            column[child] = max(column[child], column[key] + 1)
    return column


def _order(graph: Graph, layers: dict[int, list[str]]) -> dict[str, float]:
    """Each package's row in its column: by the mean row of what depends on it (down), then of
    what it depends on (up), ties by name."""
    position = {key: float(index) for keys in layers.values() for index, key in enumerate(keys)}

    def sweep(columns: list[int], neighbours: dict[str, list[tuple[str, str]]]) -> None:
        for column in columns:
            keys = layers[column]

            def centre(key: str) -> float:
                rows = [position[other] for other, _ in neighbours[key]]
                return sum(rows) / len(rows) if rows else position[key]

            keys.sort(key=lambda k: (centre(k), k))
            for index, key in enumerate(keys):
                position[key] = float(index)

    ordered = sorted(layers)
    sweep(ordered[1:], graph.dependents)
    sweep(ordered[-2::-1], graph.dependencies)
    return position
