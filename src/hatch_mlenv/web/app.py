"""The web application of `mlenv serve` (Starlette, served by uvicorn): routes, errors, headers.

Routes, each page with its JSON twin under `/api/` (the body is what the CLI's `--json`
prints; lists are paged with `?page=N&per_page=M`, the links to the other pages in a `Link`
header and the count in `X-Total-Count`):

    /                                          /api/environments                  mlenv list --json
    /environments/NAME                         /api/environments/NAME             mlenv history NAME --json (newest first)
    /environments/NAME/VERSION                 /api/environments/NAME/VERSION     mlenv show NAME:VERSION --json
                                               /api/environments/NAME/VERSION/tree         mlenv tree NAME:VERSION --json
                                               /api/environments/NAME/VERSION/why/PKG      mlenv why PKG NAME:VERSION --json
    /environments/NAME/diff/OLD/NEW            /api/environments/NAME/diff/OLD/NEW         mlenv diff NAME:OLD NAME:NEW --json
    /environments/NAME/VERSION/download/FILE   (conda-lock.yml, sbom.cdx.json, environment.yml, explicit.txt,
                                                requirements.txt, pylock.toml; ?platform=)

Anything else is a 404. Only GET (and HEAD) are answered.
"""

from __future__ import annotations

import ipaddress
import json
import signal
import socket
import threading
import time
from collections import OrderedDict
from importlib import resources
from typing import Any, Callable
from urllib.parse import quote, urlencode, urlsplit

import jinja2
import uvicorn
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

import hatch_mlenv.sealed as sealed
import hatch_mlenv.web.pages as pages
from hatch_mlenv._version import __version__
from hatch_mlenv.errors import MlenvError, NotFoundError, NotInLockError, RegistryError, UsageError
from hatch_mlenv.graph import tree_report, why_report
from hatch_mlenv.reference import check_name
from hatch_mlenv.web.pages import Source

PACKAGES_KEPT = 16
STATIC = {  # the only files it serves: its own, from the package
    "style.css": "text/css; charset=utf-8",
    "graph.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; "
                                 b"connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-resource-policy", b"same-origin"),
]


class JSON(Response):
    """JSON as the CLI prints it (`indent=2, sort_keys=True`, a final newline)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return (json.dumps(content, indent=2, sort_keys=True) + "\n").encode("utf-8")


class Headers:
    """Security headers on every response, and `Server-Timing: app;dur=MS`: the time from the
    request to the response's first line, all of the work for a page (bench/web.py reads it)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                took = f"app;dur={(time.perf_counter() - start) * 1000:.2f}".encode()
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS,
                                                  (b"server-timing", took)]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def href(*parts: Any, **query: Any) -> str:
    """A path within the site: each part quoted whole (a name is never read as a path)."""
    path = "/" + "/".join(quote(str(part), safe="") for part in parts)
    wanted = {k: v for k, v in query.items() if v is not None}
    return f"{path}?{urlencode(wanted)}" if wanted else path


def _size(count: Any) -> str:
    if not isinstance(count, int):
        return ""
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{count} B"


def _templates() -> Jinja2Templates:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("hatch_mlenv.web", "templates"),
        autoescape=True,  # every value, whatever the template's name
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["href"] = href
    env.globals["definition_changes"] = pages.definition_changes
    env.filters["size"] = _size
    env.filters["short"] = lambda digest: (digest or "").removeprefix("sha256:")[:12]
    env.filters["json"] = pages.value_text
    return Jinja2Templates(env=env)


def create_app(source: Source, *, allowed_hosts: list[str] | None = None) -> Starlette:
    """The application over `source`; `allowed_hosts`: the Host headers answered (a page on
    loopback answers only its own names, so that a web page elsewhere cannot rebind a name of
    its own to it and read the registry)."""
    templates = _templates()
    # A version's packages part (graph and table) follows from its lock and definition alone:
    # rendered once per version (by its entry hash) and platform, the last PACKAGES_KEPT of them.
    packages_cache: OrderedDict[tuple[Any, ...], tuple[list[str], Markup]] = OrderedDict()
    packages_lock = threading.Lock()
    assets = {name: resources.files("hatch_mlenv.web").joinpath("static", name).read_bytes() for name in STATIC}

    def html(request: Request, template: str, code: int = 200, **context: Any) -> Response:
        context |= {"registry_url": source.shown_url, "version": __version__}
        return templates.TemplateResponse(request, template, context, status_code=code)

    def api(request: Request) -> bool:
        return request.url.path.startswith("/api/")

    def name_of(request: Request) -> str:
        name = request.path_params["name"]
        try:
            return check_name(name)
        except UsageError:
            raise HTTPException(404, f"no environment named {name!r}") from None

    def paged(request: Request, items: list[Any], page: pages.Paging) -> JSON:
        links = []
        for rel, number in (("first", 1), ("prev", page.page - 1), ("next", page.page + 1), ("last", page.pages)):
            if 1 <= number <= page.pages and (rel in ("first", "last") or number != page.page):
                query = dict(request.query_params) | {"page": str(number), "per_page": str(page.per_page)}
                links.append(f'<{request.url.path}?{urlencode(query)}>; rel="{rel}"')
        return JSON(items, headers={"Link": ", ".join(links), "X-Total-Count": str(page.total)})

    def asked(request: Request) -> pages.Paging:
        return pages.paging(request.query_params.get("page"), request.query_params.get("per_page"))

    # -- the environments
    def environments(request: Request) -> Response:
        include_archived = request.query_params.get("all") in ("1", "true", "yes")
        found, page = pages.environments(source, asked(request), include_archived=include_archived)
        if api(request):
            return paged(request, [summary.as_dict() for summary in found], page)
        return html(request, "environments.html", rows=pages.environment_rows(source, found), page=page,
                    include_archived=include_archived)

    def environment(request: Request) -> Response:
        name = name_of(request)
        found, page = pages.versions(source, name, asked(request))
        if api(request):
            return paged(request, [version.summary() for version in found], page)
        return html(request, "environment.html", name=name, versions=[v.summary() for v in found], page=page,
                    summary=next((s for s in source.registry().list(include_archived=True) if s.name == name), None))

    # -- a version
    def version(request: Request) -> Response:
        name, number = name_of(request), request.path_params["version"]
        stored, env = pages.load(source, name, number)
        if api(request):
            return JSON(pages.show(env))
        platform = pages.default_platform(env.lock, request.query_params.get("platform"))
        key = (stored.name, stored.version, stored.entry_hash, platform)
        with packages_lock:
            cached = packages_cache.get(key)
        if cached is None:
            view = pages.packages_view(env, platform)
            fragment = Markup(templates.get_template("_packages.html").render(name=name, number=number, p=view,
                                                                              open_rows=pages.OPEN_ROWS))
            cached = (view["platform_downloads"], fragment)
            with packages_lock:
                packages_cache[key] = cached
                while len(packages_cache) > PACKAGES_KEPT:
                    packages_cache.popitem(last=False)
        return html(request, "version.html", name=name, number=number, v=pages.version_page(source, stored, env),
                    platform=platform, platform_downloads=cached[0], packages=cached[1])

    def tree(request: Request) -> Response:
        name, number = name_of(request), request.path_params["version"]
        env = pages.load(source, name, number)[1]
        depth = request.query_params.get("depth")
        if depth is not None and not depth.isdecimal():
            raise UsageError("depth must be a whole number")
        return JSON(tree_report(env, request.query_params.get("platform"), depth=int(depth) if depth else None,
                                invert=request.query_params.get("invert")))

    def why(request: Request) -> Response:
        name, number = name_of(request), request.path_params["version"]
        env = pages.load(source, name, number)[1]
        limit = request.query_params.get("limit", "100")
        if not limit.isdecimal() or not 1 <= int(limit) <= 1000:
            raise UsageError("limit must be a whole number from 1 to 1000")
        return JSON(why_report(env, request.path_params["package"], request.query_params.get("platform"),
                               limit=int(limit)))

    def download(request: Request) -> Response:
        name, number = name_of(request), request.path_params["version"]
        stored, env = pages.load(source, name, number)
        text, filename, media_type = pages.download(env, stored, request.path_params["file"],
                                                    request.query_params.get("platform"))
        # an attachment, never rendered: the file name is built from checked names only
        return Response(text, media_type=media_type,
                        headers={"Content-Disposition": f'attachment; filename="{filename}"'})

    # -- a diff
    def choose(request: Request) -> Response:
        name = name_of(request)
        numbers = [request.query_params.get(k, "") for k in ("old", "new")]
        if not all(n.isdecimal() for n in numbers):
            raise UsageError("choose two version numbers to compare")
        return RedirectResponse(href("environments", name, "diff", *numbers), status_code=303)

    def diff(request: Request) -> Response:
        name = name_of(request)
        old, new = request.path_params["old"], request.path_params["new"]
        result = pages.diff(source, name, old, new)
        if api(request):
            return JSON(result)
        rows, more = pages.diff_rows(result)
        return html(request, "diff.html", name=name, old=old, new=new, diff=result, rows=rows, more=more)

    def static(request: Request) -> Response:
        asset = request.path_params["asset"]
        if asset not in STATIC:
            raise HTTPException(404, "not found")
        return Response(assets[asset], media_type=STATIC[asset], headers={"Cache-Control": "max-age=3600"})

    # -- errors: a page (or JSON under /api/) naming what went wrong, escaped like everything else
    def error(request: Request, status: int, message: str) -> Response:
        if api(request):
            return JSON({"error": message, "status": status}, status_code=status)
        return html(request, "error.html", code=status, status=status, message=message)

    def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = exc.detail if exc.status_code != 404 or exc.detail != "Not Found" else "no such page"
        return error(request, exc.status_code, str(message))

    def mlenv_error(request: Request, exc: Exception) -> Response:
        status = (404 if isinstance(exc, (NotFoundError, NotInLockError)) else 400 if isinstance(exc, UsageError)
                  else 502 if isinstance(exc, RegistryError) else 500)
        return error(request, status, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)

    def internal_error(request: Request, exc: Exception) -> Response:
        return error(request, 500, "internal error (the server's log has the details)")

    get = ["GET"]
    routes = [
        Route("/", environments, methods=get),
        Route("/environments/{name}", environment, methods=get),
        Route("/environments/{name}/diff", choose, methods=get),
        Route("/environments/{name}/diff/{old:int}/{new:int}", diff, methods=get),
        Route("/environments/{name}/{version:int}", version, methods=get),
        Route("/environments/{name}/{version:int}/download/{file}", download, methods=get),
        Route("/api/environments", environments, methods=get),
        Route("/api/environments/{name}", environment, methods=get),
        Route("/api/environments/{name}/diff/{old:int}/{new:int}", diff, methods=get),
        Route("/api/environments/{name}/{version:int}", version, methods=get),
        Route("/api/environments/{name}/{version:int}/tree", tree, methods=get),
        Route("/api/environments/{name}/{version:int}/why/{package}", why, methods=get),
        Route("/static/{asset}", static, methods=get),
    ]
    middleware = [
        Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts or ["*"]),
        Middleware(Headers),
        # level 5: a 590-package page (1.2 MB) in 10 ms and 126 KB; level 9 takes 57 ms for 120 KB
        Middleware(GZipMiddleware, minimum_size=1024, compresslevel=5),
    ]
    return Starlette(routes=routes, middleware=middleware, exception_handlers={
        HTTPException: http_error, MlenvError: mlenv_error, Exception: internal_error})


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(url: str, host: str, port: int, *, say: Callable[[str], None], warn: Callable[[str], None]) -> None:
    """Serve the registry `url` on `host`:`port` (0: any free port) until Ctrl-C or SIGTERM.
    `say` gets the address once listening; `warn` the warning for a host that is not loopback."""
    if urlsplit(url).password or urlsplit(url).username:
        raise UsageError("the registry URL holds credentials; give them in MLENV_REGISTRY_USERNAME and "
                         "MLENV_REGISTRY_PASSWORD (or the Docker config) instead, so that no page shows them")
    sealed.read_only()  # it reads caches, never writes them
    source = Source(url)
    loopback = is_loopback(host)
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        source.registry().list()  # an unreachable or damaged registry fails now, not on the first page
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host.strip("[]"), port))
        listener.listen(128)
    except BaseException as exc:
        listener.close()
        source.close()
        if isinstance(exc, UnicodeError):
            raise UsageError(f"invalid --host {host!r}") from None
        if isinstance(exc, OSError):
            raise MlenvError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        raise
    bound = listener.getsockname()[1]
    shown_host = f"[{host.strip('[]')}]" if ":" in host else host
    main = threading.current_thread() is threading.main_thread()

    server: uvicorn.Server | None = None
    stopping = False

    def stop(signum: int, frame: Any) -> None:
        # a flag, never an exception: one raised while asyncio runs a callback (the main task's first
        # step, before uvicorn takes the signals over) is logged and swallowed by the loop, and the
        # server went on serving: a Ctrl-C lost (once in CI)
        nonlocal stopping
        stopping = True
        if server is not None:
            server.should_exit = True  # before uvicorn takes the signals over: it starts, then stops

    # Ctrl-C too: a process started in the background of a script inherits SIGINT ignored, and
    # uvicorn only takes SIGINT over once it runs: a Ctrl-C just after the address was said was lost
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)} if main else {}
    try:  # from here on Ctrl-C or SIGTERM, whenever it comes, stops it cleanly
        allowed = [host.strip("[]"), "localhost", "127.0.0.1", shown_host] if loopback else None
        app = create_app(source, allowed_hosts=allowed)
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", ws="none",
                                server_header=False, proxy_headers=False, timeout_keep_alive=5,
                                limit_concurrency=64, h11_max_incomplete_event_size=16 * 1024)
        server = uvicorn.Server(config)
        server.should_exit = stopping
        if not loopback:
            warn(f"serving on {host}, which is not a loopback address: anyone who can reach port {bound} of "
                 "this machine can read the registry (the page has no login)")
        say(f"serving {source.shown_url} read-only on http://{shown_host}:{bound}/ (Ctrl-C stops it)")
        if not stopping:
            server.run(sockets=[listener])
    except KeyboardInterrupt:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        listener.close()
        source.close()
