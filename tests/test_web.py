"""`mlenv serve` over HTTP: a real server on loopback, asked what a browser and a script ask.
Its JSON is what the CLI's --json prints, its pages escape what registries hold, it answers
nothing but its routes, and it reads an OCI registry as it reads the local one. The browser's
view is tests/test_web_browser.py."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from tests.conftest import LOCK_SAMPLES, assert_clean_error, tree_hashes
from tests.web_helpers import (
    EVIL_DESCRIPTION,
    EVIL_LABELS,
    EVIL_PACKAGE,
    EVIL_VALUE,
    ONERROR,
    SCRIPT,
    Home,
    Server,
    home_at,
    register_demo,
    register_hostile,
    register_samples,
    serving,
)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, channel: Path, pip_index: str, shared_data: Path) -> Home:
    root = tmp_path_factory.mktemp("web")
    home = home_at(root / "home")
    register_demo(home, root, channel, pip_index)
    register_hostile(home, root, channel)
    register_samples(home)
    return home


@pytest.fixture(scope="module")
def server(home: Home):  # -> Iterator[Server]
    with serving(home) as running:
        yield running


def get(server: Server, path: str, **kwargs: object) -> requests.Response:
    return requests.get(server.url + path, timeout=60, **kwargs)


def test_the_api_says_what_the_cli_prints(home: Home, server: Server) -> None:
    same = {
        "/api/environments": ["list", "--json"],
        "/api/environments/fraud-train/2": ["show", "fraud-train:2", "--json"],
        "/api/environments/fraud-train/diff/1/2": ["diff", "fraud-train:1", "fraud-train:2", "--json"],
        "/api/environments/fraud-train/2/tree?platform=osx-arm64": ["tree", "fraud-train:2", "--platform", "osx-arm64",
                                                                     "--json"],
        "/api/environments/fraud-train/1/tree?platform=linux-64&depth=1&invert=python": [
            "tree", "fraud-train:1", "--platform", "linux-64", "--depth", "1", "--invert", "python", "--json"],
        "/api/environments/samples/2/why/python?platform=linux-64&limit=5": [
            "why", "python", "samples:2", "--platform", "linux-64", "--limit", "5", "--json"],
    }
    for path, args in same.items():
        response = get(server, path)
        assert response.status_code == 200, (path, response.text)
        assert response.headers["content-type"] == "application/json"
        assert response.text == home.mlenv(*args).stdout, path
    # a page of `mlenv history NAME --json`, newest first
    history = json.loads(home.mlenv("history", "fraud-train", "--json").stdout)
    assert get(server, "/api/environments/fraud-train").json() == history[::-1]
    assert [v["labels"] for v in history] == [[], ["latest", "prod"]]
    assert history[1]["image"] == "fraud-train:" + history[1]["digest"].removeprefix("sha256:")[:12]


def test_pages_show_what_a_team_lead_looks_for(server: Server) -> None:
    front = get(server, "/").text
    assert '<a class="env" href="/environments/fraud-train">fraud-train</a>' in front
    assert "prod → v2" in front and "Training environment of the fraud model" in front

    versions = get(server, "/environments/fraud-train").text
    assert versions.index('href="/environments/fraud-train/2"') < versions.index('href="/environments/fraud-train/1"')
    assert 'href="/environments/fraud-train/diff/1/2"' in versions

    page = get(server, "/environments/fraud-train/2?platform=linux-64").text
    for seen in ("OMP_NUM_THREADS", "<code>8</code>", "WANDB_API_KEY", "secret: its value is never stored",
                 "mlenv install fraud-train:2", "fraud-train:v2", 'id="graph"', 'id="p-conda-numpy"',
                 "1.26.4", "BSD-3-Clause", "mlenv-util", "numpy 1.26.*", "fraud-model 1.4.0",
                 'href="/environments/fraud-train/diff/1/2"', "conda-lock.yml", "pylock.toml"):
        assert seen in page, seen
    osx = get(server, "/environments/fraud-train/2?platform=osx-arm64").text
    assert 'aria-current="page">osx-arm64<' in osx

    diff = get(server, "/environments/fraud-train/diff/1/2").text
    assert "<td>numpy</td><td>changed</td><td><code>1.25.2 py311h0_0</code></td><td><code>1.26.4 py311h0_0</code></td>" in diff
    assert "<code>&#34;4&#34;</code> → <code>&#34;8&#34;</code>" in diff  # OMP_NUM_THREADS
    chooser = get(server, "/environments/fraud-train/diff?old=2&new=1", allow_redirects=False)
    assert chooser.status_code == 303 and chooser.headers["location"] == "/environments/fraud-train/diff/2/1"

    assert get(server, "/environments/fraud-train/2?platform=win-64").status_code == 400


def test_lists_come_a_page_at_a_time(server: Server) -> None:
    first = get(server, "/api/environments/samples?per_page=1")
    assert [v["version"] for v in first.json()] == [2] and first.headers["x-total-count"] == "2"
    assert '</api/environments/samples?per_page=1&page=2>; rel="next"' in first.headers["link"]
    assert [v["version"] for v in get(server, "/api/environments/samples?per_page=1&page=2").json()] == [1]
    assert get(server, "/api/environments/samples?per_page=1&page=3").status_code == 404
    assert get(server, "/api/environments?per_page=201").status_code == 400
    assert get(server, "/api/environments?page=0").status_code == 400
    assert [e["name"] for e in get(server, "/api/environments?per_page=2&page=2").json()] == ["samples"]
    html = get(server, "/environments/samples?per_page=1").text
    assert 'rel="next" href="/environments/samples?page=2&amp;per_page=1"' in html
    assert "v1" in get(server, "/environments/samples?page=2&per_page=1").text


def test_everything_from_a_registry_is_escaped(server: Server) -> None:
    pages = {path: get(server, path) for path in (
        "/", "/environments/hostile", "/environments/hostile/1", "/environments/hostile/2",
        "/environments/hostile/diff/1/2")}
    for path, response in pages.items():
        assert response.status_code == 200, (path, response.text)
        body = response.text
        for raw in (SCRIPT, ONERROR, EVIL_DESCRIPTION, *EVIL_LABELS, EVIL_PACKAGE, "onerror=\"", "<svg onload"):
            assert raw not in body, (path, raw)
        assert "<script" not in body.replace('<script src="/static/graph.js"></script>', "")
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp
        assert response.headers["x-content-type-options"] == "nosniff"
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&#34;onerror=alert(2)" in pages["/environments/hostile/1"].text
    assert "&lt;img src=x onerror=&#34;alert(3)&#34;&gt;" in pages["/"].text
    assert "&lt;script&gt;alert(4)&lt;/script&gt;" in pages["/"].text
    assert "x&#34;onerror=alert(5)" in pages["/environments/hostile/1"].text
    assert "&#34;&gt;&lt;svg onload=alert(6)&gt;" in pages["/environments/hostile/2"].text
    # the API carries the same values as JSON, never as a page
    api = get(server, "/api/environments/hostile/1")
    assert api.json()["variables"]["EVIL"] == EVIL_VALUE
    assert api.headers["content-type"] == "application/json"


def _raw_get(server: Server, path: str, method: str = "GET", host: str | None = None) -> tuple[int, bytes]:
    """A request sent as written: no client normalises its `..` or its host."""
    parts = urlsplit(server.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.putrequest(method, path, skip_host=host is not None)
        if host is not None:
            connection.putheader("Host", host)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_paths_outside_the_routes_are_404_never_a_file(server: Server) -> None:
    for path in ("/etc/passwd", "/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2fapp.py",
                 "/static/app.py", "/static/templates/base.html", "/templates/base.html", "/hatch_mlenv/web/app.py",
                 "/environments/..%2f..%2fetc%2fpasswd", "/environments/nosuch", "/environments/fraud-train/99",
                 "/environments/fraud-train/0", "/environments/fraud-train/2/download/passwd",
                 "/environments/fraud-train/2/download/..%2f..%2fregistry.sqlite3", "/api/environments/nosuch",
                 "/api/nosuch", "/environments/fraud-train/diff/1/99", "//etc/passwd",
                 "/api/environments/fraud-train/2/why/nosuch", "/api/environments/fraud-train/2/tree?invert=nosuch"):
        status, body = _raw_get(server, path)
        assert status == 404, (path, status, body[:200])
        assert b"import " not in body and b"root:" not in body and b"SQLite" not in body, path
    assert _raw_get(server, "/", method="POST")[0] == 405
    assert _raw_get(server, "/api/environments", method="DELETE")[0] == 405
    assert _raw_get(server, "/static/style.css")[0] == 200
    # only its own names: a page elsewhere cannot point a name of its own at it (DNS rebinding)
    assert _raw_get(server, "/api/environments", host="attacker.example")[0] == 400
    assert _raw_get(server, "/api/environments", host=f"localhost:{urlsplit(server.url).port}")[0] == 200


def test_downloads(home: Home, server: Server, tmp_path: Path) -> None:
    home.mlenv("get", "fraud-train:2", "-o", str(tmp_path / "got"))
    lock = get(server, "/environments/fraud-train/2/download/conda-lock.yml")
    assert lock.content == (tmp_path / "got" / "conda-lock.yml").read_bytes()
    assert lock.headers["content-disposition"] == 'attachment; filename="fraud-train-v2-conda-lock.yml"'
    sbom = get(server, "/environments/fraud-train/2/download/sbom.cdx.json").json()
    assert sbom["bomFormat"] == "CycloneDX" and any(c["name"] == "mlenv-util" for c in sbom["components"])
    yml = get(server, "/environments/fraud-train/2/download/environment.yml?platform=osx-arm64").text
    assert "numpy=1.26.4=py311h0_0" in yml and "mlenv-util==1.0.0" in yml
    assert yml == home.mlenv("export", "fraud-train:2", "--format", "environment-yml", "--platform", "osx-arm64").stdout
    assert "mlenv-util" in get(server, "/environments/fraud-train/2/download/pylock.toml?platform=linux-64").text


def test_a_host_that_is_not_loopback_is_said_on_stderr(home: Home) -> None:
    with serving(home, "--host", "0.0.0.0") as server:
        deadline = time.monotonic() + 30
        while "not a loopback address" not in "".join(server.stderr) and time.monotonic() < deadline:
            time.sleep(0.05)  # stderr is read by a thread
        assert "mlenv: warning: serving on 0.0.0.0, which is not a loopback address" in "".join(server.stderr)
        port = urlsplit(server.url).port
        assert requests.get(f"http://127.0.0.1:{port}/api/environments", timeout=30).status_code == 200
    with serving(home) as quiet:
        assert "warning" not in "".join(quiet.stderr)


def test_ctrl_c_right_after_the_address_stops_it_even_when_started_with_sigint_ignored(home: Home) -> None:
    """A process started in the background of a script inherits SIGINT ignored; uvicorn takes SIGINT
    over only once it runs, so a Ctrl-C just after the address was said used to be lost (8 hangs in
    10 here), and one raised as an exception inside the event loop was swallowed (a hang in CI). Each
    run: the address, Ctrl-C at once, exit 0 within 30 s, nothing on stderr."""
    import signal

    for _ in range(5):
        process = subprocess.Popen([sys.executable, "-m", "hatch_mlenv", "serve", "--port", "0"], env=home.env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
        assert "serving" in process.stdout.readline()
        process.send_signal(signal.SIGINT)
        try:
            _, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            raise AssertionError(f"mlenv serve did not stop on Ctrl-C: {process.communicate()[1]}") from None
        assert (process.returncode, stderr) == (0, "")  # nothing swallowed and logged on the way out


def test_refusals_before_listening(home: Home) -> None:
    assert_clean_error(home.mlenv("serve", "--registry", "oci://user:secret@127.0.0.1:9/ns", "--port", "0", check=False),
                       2, "the registry URL holds credentials")
    assert_clean_error(home.mlenv("serve", "--registry", "oci://127.0.0.1:9/envs", "--port", "0", check=False),
                       1, "oci://127.0.0.1:9/envs is unreachable")
    busy = home.mlenv("serve", "--port", "0", "--host", "256.0.0.1", check=False)
    assert busy.returncode != 0 and "Traceback" not in busy.stderr


def test_an_oci_registry(oci_registry, tmp_path: Path, shared_data: Path) -> None:  # noqa: ANN001
    url = oci_registry.url(f"web{uuid.uuid4().hex[:8]}")
    home = home_at(tmp_path / "home", MLENV_REGISTRY_USERNAME=oci_registry.user,
                   MLENV_REGISTRY_PASSWORD=oci_registry.password)
    home.mlenv("register", "--registry", url, "--lockfile", str(LOCK_SAMPLES / "numpy-conda-lock.yml"), "--name", "np")
    home.mlenv("register", "--registry", url, "--lockfile", str(LOCK_SAMPLES / "robostack-turtlesim-conda-lock.yml"),
               "--name", "np", "--label", "prod")
    before = tree_hashes(tmp_path / "home")
    bodies = []
    with serving(home, "--registry", url) as server:
        assert get(server, "/api/environments").text == home.mlenv("list", "--registry", url, "--json").stdout
        assert get(server, "/api/environments/np/2").text == home.mlenv("show", "np:2", "--registry", url,
                                                                         "--json").stdout
        for path in ("/", "/environments/np", "/environments/np/1", "/environments/np/2?platform=linux-64",
                     "/environments/np/diff/1/2", "/api/environments/np", "/api/environments/np/diff/1/2"):
            response = get(server, path)
            assert response.status_code == 200, (path, response.text)
            bodies.append(response.text)
        assert "prod → v2" in bodies[0] and url in bodies[0]
        assert "mlenv install np:2 --registry " + url in bodies[3] and "ros-humble-desktop" in bodies[3]
    # the registry's credentials reach no page
    assert not any(oci_registry.password in body for body in bodies)
    assert tree_hashes(tmp_path / "home") == before


def test_serve_help_and_the_module_imports_without_a_server() -> None:
    result = subprocess.run([sys.executable, "-m", "hatch_mlenv", "serve", "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and "--host" in result.stdout and "127.0.0.1" in result.stdout
