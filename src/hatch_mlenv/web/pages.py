"""What each page of `mlenv serve` shows, read through the library functions the CLI calls
(`Registry.list`, `registry.base.history_page`, `registry.describe`, `graph.tree_report` and
`graph.why_report`, `diff.diff_environments`, `export`, `sbom`): a page, its `/api/` twin and
the CLI's `--json` say the same thing.

Everything here is bounded: lists come a page at a time, a platform's package table and a diff
stop at `MAX_ROWS` rows, the graph is drawn up to `MAX_GRAPH` packages."""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from hatch_mlenv.diff import diff_environments
from hatch_mlenv.environment import from_version
from hatch_mlenv.errors import NotFoundError, UsageError
from hatch_mlenv.graph import dependency_graph, platform_of
from hatch_mlenv.platforms import current_platform
from hatch_mlenv.reference import MAX_VERSION, Reference, check_name
from hatch_mlenv.registry import describe
from hatch_mlenv.registry.base import history_page
from hatch_mlenv.repodata import local_records
from hatch_mlenv.web.picture import layout

PER_PAGE = 50
MAX_PER_PAGE = 200
MAX_ROWS = 5000
MAX_GRAPH = 2000
OPEN_ROWS = 200  # a package table longer than this starts closed: laying it out is what costs a browser most

# what a version offers to download: file name -> (export format or None, media type, per platform)
DOWNLOADS = {
    "conda-lock.yml": (None, "application/yaml", False),
    "sbom.cdx.json": (None, "application/json", False),
    "environment.yml": ("environment-yml", "application/yaml", True),
    "explicit.txt": ("explicit", "text/plain", True),
    "requirements.txt": ("requirements", "text/plain", True),
    "pylock.toml": ("pylock", "application/toml", True),
}


class Source:
    """The registry a server reads, opened read-only: one open registry per worker thread (an
    SQLite connection belongs to one thread; the OCI client keeps a session)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._held = threading.local()
        self._opened: list[Any] = []
        self._lock = threading.Lock()

    def registry(self) -> Any:
        held = getattr(self._held, "registry", None)
        if held is not None:
            return held
        registry, keep = _open_read_only(self.url)
        if keep:  # a local registry not created yet reads as empty until it is: not kept
            self._held.registry = registry
            with self._lock:
                self._opened.append(registry)
        return registry

    @property
    def shown_url(self) -> str:
        """The registry's URL, as the page names it."""
        return self.registry().url

    def close(self) -> None:
        """Close what was opened (the last SQLite connection to close removes its -wal and -shm)."""
        with self._lock:
            opened, self._opened = self._opened, []
        for registry in opened:
            close = getattr(registry, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # noqa: BLE001 - closing at shutdown: nothing left to do about it
                    pass


def _open_read_only(url: str) -> tuple[Any, bool]:
    if url == "local" or url.startswith("sqlite://"):
        from hatch_mlenv.registry.local import LocalBackend, database_path

        return LocalBackend().open(url, read_only=True), database_path(url).exists()
    from hatch_mlenv.registry import open_registry

    return open_registry(url), True


@dataclass(frozen=True)
class Paging:
    page: int
    per_page: int
    total: int

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.per_page

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))

    def link(self, number: int, query: dict[str, str] | None = None) -> str:
        """The query string of page `number` of the same list (`per_page` kept when it is not the default)."""
        wanted = dict(query or {}) | {"page": str(number)}
        if self.per_page != PER_PAGE:
            wanted["per_page"] = str(self.per_page)
        return urlencode(wanted)

    def check(self) -> Paging:
        if self.page > self.pages:
            raise NotFoundError(f"there is no page {self.page} (pages: {self.pages})")
        return self


def paging(page: str | None, per_page: str | None, total: int = 0) -> Paging:
    """`?page=N&per_page=M` (1-based; at most MAX_PER_PAGE a page); anything else is a usage error."""
    def number(text: str | None, default: int, what: str, top: int) -> int:
        if text is None:
            return default
        if not re.fullmatch(r"[0-9]{1,9}", text) or not 1 <= int(text) <= top:
            raise UsageError(f"{what} must be a whole number from 1 to {top}")
        return int(text)

    return Paging(number(page, 1, "page", 10**9), number(per_page, PER_PAGE, "per_page", MAX_PER_PAGE), total)


# -- the environments ---------------------------------------------------------------------------

def environments(source: Source, asked: Paging, *, include_archived: bool = False) -> tuple[list[Any], Paging]:
    """A page of `Registry.list()` (what `mlenv list --json` prints), by name."""
    summaries = source.registry().list(include_archived=include_archived)
    page = Paging(asked.page, asked.per_page, len(summaries)).check()
    return summaries[page.offset:page.offset + page.per_page], page


def environment_rows(source: Source, summaries: list[Any]) -> list[dict[str, Any]]:
    """The environments page's rows: each summary with its newest version (when it was registered)."""
    rows = []
    for summary in summaries:
        try:
            newest = history_page(source.registry(), summary.name, 0, 1)[0]
        except NotFoundError:
            newest = []
        rows.append(summary.as_dict() | {"newest": newest[0].summary() if newest else None})
    return rows


def versions(source: Source, name: str, asked: Paging) -> tuple[list[Any], Paging]:
    """A page of `name`'s versions, newest first (the items of `mlenv history NAME --json`)."""
    check_name(name)
    found, total = history_page(source.registry(), name, asked.offset, asked.per_page)
    return found, Paging(asked.page, asked.per_page, total).check()


def load(source: Source, name: str, number: int) -> tuple[Any, Any]:
    """A registered version, verified as every read is, and its Environment (written nowhere)."""
    check_name(name)
    if not 1 <= number <= MAX_VERSION:
        raise NotFoundError(f"{name} has no version {number}")
    registry = source.registry()
    stored = registry.get(Reference(name, number))
    return stored, from_version(stored, registry.url)


def show(env: Any) -> dict[str, Any]:
    """What `mlenv show NAME:VERSION --json` prints."""
    return describe(env)


def diff(source: Source, name: str, old: int, new: int) -> dict[str, Any]:
    """What `mlenv diff NAME:OLD NAME:NEW --json` prints."""
    before, after = load(source, name, old)[1], load(source, name, new)[1]
    return {"old": f"{name}:{old}", "new": f"{name}:{new}"} | diff_environments(before, after)


def download(env: Any, stored: Any, what: str, platform: str | None) -> tuple[str, str, str]:
    """(text, file name, media type) of one of DOWNLOADS."""
    if what not in DOWNLOADS:
        raise NotFoundError(f"no download {what!r}")
    fmt, media_type, per_platform = DOWNLOADS[what]
    stem = f"{stored.name}-v{stored.version}"
    if what == "conda-lock.yml":
        return stored.lockfile, f"{stem}-conda-lock.yml", media_type
    if what == "sbom.cdx.json":
        from hatch_mlenv.sbom import cyclonedx

        return json.dumps(cyclonedx(env), indent=2, sort_keys=True) + "\n", f"{stem}.cdx.json", media_type
    from hatch_mlenv.export import export

    chosen = platform_of(env.lock, platform)
    return export(env, chosen, fmt), f"{stem}-{chosen}-{what}", media_type


# -- a version's page ---------------------------------------------------------------------------

def default_platform(lock: Any, asked: str | None) -> str | None:
    """`?platform=`, else this machine's when locked, else the first locked one."""
    if asked is not None or not lock.platforms:
        return platform_of(lock, asked) if asked is not None else None
    here = current_platform()
    return here if here in lock.platforms else sorted(lock.platforms)[0]


def version_page(source: Source, stored: Any, env: Any) -> dict[str, Any]:
    """What the version page shows above its packages: `show`, the version's summary, its
    definition and variables, the commands that use it, its downloads."""
    data = show(env)
    return {
        "show": data,
        "summary": stored.summary(),
        "ref": stored.ref,
        "definition": definition_rows(env.definition),
        "variables": [(k, v) for k, v in sorted(data.get("variables", {}).items())],
        "secret_variables": data.get("secret_variables", []),
        "commands": commands(source, stored),
        "images": images(stored),
        "channels": list(env.lock.channels),
        "downloads": [name for name, (_, _, per_platform) in DOWNLOADS.items() if not per_platform],
    }


def packages_view(env: Any, platform: str | None) -> dict[str, Any]:
    """A version's packages on `platform` (a `default_platform`): the table's rows, the graph's
    layout, the downloads for that platform. Depends on the lock and definition alone, so the
    page keeps it by the version's entry hash."""
    view: dict[str, Any] = {"platforms": sorted(env.lock.platforms), "platform": platform, "platform_downloads": [],
                            "packages": [], "more_packages": 0, "picture": None, "graph_too_big": False,
                            "unmatched": []}
    if platform is None:
        return view
    graph = dependency_graph(env.lock, platform, env.definition)
    has_pip = any(p.manager == "pip" for p in graph.packages.values())
    view["platform_downloads"] = [name for name, (fmt, _, per_platform) in DOWNLOADS.items()
                                  if per_platform and (has_pip or fmt not in ("requirements", "pylock"))]
    anchors = _anchors(graph)
    view["packages"], view["more_packages"] = package_rows(graph, anchors)
    view["unmatched"] = list(graph.unmatched)
    if len(graph.packages) <= MAX_GRAPH:
        view["picture"] = layout(graph, anchors)
    else:
        view["graph_too_big"] = True
    return view


_SAFE_ID = re.compile(r"[A-Za-z0-9._-]{1,120}")


def _anchors(graph: Any) -> dict[str, str]:
    """Each package's id in the page: `p-conda-numpy`, or by position for an odd name."""
    anchors = {}
    for index, (key, package) in enumerate(graph.packages.items()):
        anchors[key] = f"p-{package.manager}-{package.name}" if _SAFE_ID.fullmatch(package.name) else f"p-{index}"
    return anchors


def package_rows(graph: Any, anchors: dict[str, str]) -> tuple[list[dict[str, Any]], int]:
    """The platform's packages (at most MAX_ROWS) and how many more there are."""
    packages = list(graph.packages.items())
    shown, more = packages[:MAX_ROWS], max(0, len(packages) - MAX_ROWS)
    records = local_records(p for _, p in shown)
    ids = {key: f"g{index}" for index, key in enumerate(graph.packages)}
    rows = []
    for key, package in shown:
        record = records.get(package.url, {})
        rows.append({
            "id": anchors[key], "node": ids[key], "name": package.name, "version": package.version,
            "build": package.build or _build_from_url(package), "manager": package.manager,
            "source": source_of(package), "url": package.url,
            "license": record.get("license") if isinstance(record.get("license"), str) else None,
            "size": record.get("size") if isinstance(record.get("size"), int) else None,
            "requested": key in graph.requested_set,
            "dependencies": [(graph.packages[child].name, anchors[child], how) for child, how in graph.dependencies[key]],
            "dependents": [(graph.packages[parent].name, anchors[parent]) for parent, _ in graph.dependents[key]],
        })
    return rows, more


def _build_from_url(package: Any) -> str | None:
    """conda-lock's older files have no `build`: the archive's name has it (NAME-VERSION-BUILD)."""
    if package.manager != "conda":
        return None
    filename = package.url.rsplit("/", 1)[-1]
    for suffix in (".tar.bz2", ".conda"):
        if filename.endswith(suffix):
            stem = filename[: -len(suffix)]
            prefix = f"{package.name}-{package.version}-"
            return stem[len(prefix):] or None if stem.startswith(prefix) else None
    return None


def source_of(package: Any) -> str:
    """Where a package comes from, shortly: the conda channel's name, or the pip index's host."""
    url = package.url
    if package.manager == "pip":
        scheme, _, rest = url.partition("://")
        return rest.split("/", 1)[0].rsplit("@", 1)[-1] or scheme or "?"
    channel = url.rsplit("/", 2)[0]
    return channel.rstrip("/").rsplit("/", 1)[-1] or channel


def definition_rows(definition: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The definition's settings as (key, text) rows, variables aside (shown from the manifest,
    secrets by name only)."""
    if not definition:
        return []
    rows = []
    for key, value in definition.items():
        if key in ("variables", "name"):
            continue
        if isinstance(value, dict):
            for inner, item in value.items():
                rows.append((f"{key}.{inner}", _text(item)))
        else:
            rows.append((key, _text(value)))
    return rows


def _text(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(_text(v) for v in value) if value else "(none)"
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True)


def commands(source: Source, stored: Any) -> list[str]:
    """The commands that use this version, with the registry they need."""
    option = "" if source.url == "local" else f" --registry {source.url}"
    ref = stored.ref
    return [f"mlenv install {ref}{option}", f"mlenv run {ref}{option} -- python",
            f"mlenv export {ref}{option} --format environment-yml", f"mlenv image build {ref}{option}"]


def images(stored: Any) -> list[str]:
    """The image references: by content (`repo:<digest12>`) and by version (`repo:v<N>`)."""
    image = stored.manifest.get("image")
    if not isinstance(image, str) or ":" not in image:
        return []
    return [image, f"{image.rsplit(':', 1)[0]}:v{stored.version}"]


# -- a diff's page ------------------------------------------------------------------------------

def diff_rows(result: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
    """The package changes of a diff as rows (platform, manager, name, change, old, new), at most
    MAX_ROWS, and how many more there are."""
    rows = []
    for platform, managers in result["packages"].items():
        for manager, section in managers.items():
            for kind in ("added", "removed", "changed"):
                for item in section[kind]:
                    old = item["old"] if kind == "changed" else (item if kind == "removed" else None)
                    new = item["new"] if kind == "changed" else (item if kind == "added" else None)
                    rows.append({"platform": platform, "manager": manager, "name": item["name"], "change": kind,
                                 "old": _version_text(old), "new": _version_text(new)})
    return rows[:MAX_ROWS], max(0, len(rows) - MAX_ROWS)


def _version_text(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return ""
    return f"{entry['version']} {entry['build'] or ''}".rstrip()


def definition_changes(changes: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The definition keys a diff changed, variables aside (the page shows those on their own):
    each `{key, kind, old, new, removed, added}`, where a list that changed says which items left
    and which came."""
    rows = []
    for kind in ("added", "removed", "changed"):
        for key, value in (changes or {}).get(kind, {}).items():
            if key.startswith("variables."):
                continue
            old, new = (value if kind == "changed" else (value if kind == "removed" else None,
                                                         value if kind == "added" else None))
            row = {"key": key, "kind": kind, "old": old, "new": new, "removed": None, "added": None}
            if kind == "changed" and isinstance(old, list) and isinstance(new, list):
                row["removed"] = [item for item in old if item not in new]
                row["added"] = [item for item in new if item not in old]
            rows.append(row)
    return rows


def value_text(value: Any) -> str:
    """A definition or variable value in a diff, as JSON (None: a secret, or not set)."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False)
