"""`mlenv serve` at 10,000 registered versions: the server time of the environments page and of a
version page (target, issue 26: p95 ≤ 50 ms), how long registering 10,000 versions takes, and
how long Chromium takes to draw a ~590-package dependency graph (target: under a second).

Build, in this process, through the registry API (`LocalRegistry.register`, each its own
transaction, as `mlenv register` does): 100 environments, `env-000` with a history of 9,901
versions and `env-001` … `env-099` with one each: 10,000 versions of a small lock (one variable
tells them apart). Then `numpy` (conda-lock's numpy sample: 254 packages on linux-64) and
`robostack` (593 on linux-64), one version each.

Measure: a fresh `mlenv serve` process on loopback, asked round-robin (after one unmeasured
round) for the environments page, env-000's versions page (first and a deep page), a small
version page in the middle of its history, the two large version pages (linux-64), and the
JSON twins of the first ones. "server" is the `Server-Timing` the page reports (its whole work,
from the request to its first byte); "wall" is the client's request-to-last-byte on loopback.
Then, when `chromium` and `chromedriver` are installed, the robostack page in headless Chromium:
from navigation to the first frame painted after `load`, and from the last byte to it.

"""

from __future__ import annotations

import json
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from bench._harness import SHARED_DATA, Figure, Options, bench_env, benchmark, p95, print_table, progress, scratch_dir
from hatch_mlenv import sealed
from hatch_mlenv.reference import image_reference_for
from hatch_mlenv.lockfile import lock_digest, parse_lock
from hatch_mlenv.manifest import lock_manifest
from hatch_mlenv.registry import Reference, provenance, register_lockfile
from hatch_mlenv.registry.local import LocalRegistry
from tests.registry_helpers import small_lock

SAMPLES = SHARED_DATA / "conda-lock-samples"
LONG_HISTORY = 9_901
OTHERS = 99
TARGET_MS = 50.0
BROWSER_TARGET_MS = 1000.0
MARK = "@@TAG@@"


def build(path: Path) -> tuple[float, int]:
    """10,000 versions through the registry API, then the two large locks; (seconds, versions).
    Each version is small_lock's text with its own TAG; `register` parses and hashes each text
    itself, as for any registration. The caches are left alone (`sealed.read_only`): 10,000 parsed
    locks have no business in the user's cache."""
    sealed.read_only()
    registry = LocalRegistry(path)
    prov = provenance(None, spec_hash=None, project=None)
    template = small_lock(MARK)
    base = parse_lock(template.replace(MARK, "x"), "small_lock")
    start = time.perf_counter()
    count = 0

    shape = lock_manifest("x", base, image="x")  # what differs between versions is set below

    def register(name: str, tag: str) -> None:
        nonlocal count
        digest = lock_digest(base.packages, {"TAG": tag}, base.base_image)
        manifest = shape | {"name": name, "digest": f"sha256:{digest}", "variables": {"TAG": tag},
                            "image": image_reference_for(name, digest)}
        registry.register(name, template.replace(MARK, tag), manifest, prov, description=f"benchmark environment {name}")
        count += 1

    for version in range(1, LONG_HISTORY + 1):
        register("env-000", f"env-000-v{version}")
    for index in range(1, OTHERS + 1):
        register(f"env-{index:03d}", f"env-{index:03d}-v1")
    seconds = time.perf_counter() - start
    register_lockfile(registry, SAMPLES / "numpy-conda-lock.yml", "numpy")
    register_lockfile(registry, SAMPLES / "robostack-turtlesim-conda-lock.yml", "robostack")
    check = registry.get(Reference("env-000", LONG_HISTORY // 2))  # the shortcut digest is the lock's own
    if check.manifest["digest"] != f"sha256:{check.digest}":
        raise SystemExit("benchmark setup is wrong: the manifest's digest is not the lock's")
    registry.close()
    return seconds, count


class Served:
    """`mlenv serve --port 0` in a fresh process, stopped with Ctrl-C."""

    def __init__(self, database: Path, home: Path) -> None:
        env = bench_env(MLENV_HOME=str(home))
        self.process = subprocess.Popen([sys.executable, "-m", "hatch_mlenv", "serve", "--registry",
                                         f"sqlite://{database}", "--port", "0"], env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()  # type: ignore[union-attr]
        match = re.search(r"http://\S+/", line)
        if not match:
            self.process.kill()
            raise SystemExit(f"mlenv serve did not start: {line!r} {self.process.stderr.read()}")  # type: ignore[union-attr]
        self.url = match.group(0).rstrip("/")
        threading.Thread(target=self.process.stderr.read, daemon=True).start()  # type: ignore[union-attr]

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=30)


def ask(url: str) -> tuple[float, float, int]:
    """(server ms, wall ms, bytes) of one GET."""
    start = time.perf_counter()
    response = requests.get(url, timeout=60)
    wall = (time.perf_counter() - start) * 1000
    if response.status_code != 200:
        raise SystemExit(f"{url}: {response.status_code} {response.text[:300]}")
    server = float(response.headers["server-timing"].split("dur=")[1])
    return server, wall, len(response.content)


def browser(url: str, runs: int) -> list[tuple[float, float]] | None:
    """(navigation → painted after load, last byte → painted) in headless Chromium, ms; None without it."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        return None
    if chromium is None or driver is None:
        return None
    options = Options()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,1000", f"--user-data-dir={tempfile.mkdtemp()}"):
        options.add_argument(flag)
    session = webdriver.Chrome(service=Service(driver), options=options)
    painted = ("const done = arguments[arguments.length - 1];"
               "requestAnimationFrame(() => requestAnimationFrame(() => {"
               "  const n = performance.getEntriesByType('navigation')[0];"
               "  done([performance.now(), n.responseEnd, document.querySelectorAll('#graph a.node').length]); }));")
    results = []
    try:
        session.get(url)  # warm-up: the server renders and keeps the page's packages part
        for _ in range(runs):
            session.get("about:blank")
            session.get(url)
            now, response_end, nodes = session.execute_async_script(painted)
            if nodes < 500:
                raise SystemExit(f"{url}: only {nodes} graph nodes drawn")
            results.append((now, now - response_end))
    finally:
        session.quit()
    return results


@benchmark
def web(options: Options) -> list[Figure]:
    requests_each, browser_runs = options.n(100, quick=10), options.n(5, quick=2)
    progress("web: registering 10,000 versions")
    root = scratch_dir("web")
    database = root / "registry.sqlite3"
    seconds, count = build(database)
    print(f"\nbuild: {count:,} versions registered through LocalRegistry.register in {seconds:.1f} s "
          f"({seconds / count * 1000:.2f} ms each); database {database.stat().st_size / 1e6:.1f} MB")

    pages = {
        "environments page (/)": "/",
        "versions of env-000, page 1 (9,901)": "/environments/env-000",
        "versions of env-000, page 150": "/environments/env-000?page=150",
        "version page env-000:5000 (1 package)": "/environments/env-000/5000",
        "version page numpy:1 (254 packages)": "/environments/numpy/1?platform=linux-64",
        "version page robostack:1 (593 packages)": "/environments/robostack/1?platform=linux-64",
        "diff env-000:4999 → 5000": "/environments/env-000/diff/4999/5000",
        "API /api/environments": "/api/environments",
        "API versions of env-000, page 1": "/api/environments/env-000",
        "API version env-000:5000 (show)": "/api/environments/env-000/5000",
    }
    home = root / "home"
    home.mkdir()
    served = Served(database, home)
    try:
        first = {label: ask(served.url + path) for label, path in pages.items()}  # cold: first request of each
        samples: dict[str, list[tuple[float, float, int]]] = {label: [] for label in pages}
        for _ in range(requests_each):
            for label, path in pages.items():
                samples[label].append(ask(served.url + path))
        rows = []
        for label, values in samples.items():
            server = [s for s, _, _ in values]
            wall = [w for _, w, _ in values]
            target = "≤ 50 met" if p95(server) <= TARGET_MS else "> 50 MISSED"
            rows.append([label, first[label][0], statistics.median(server), p95(server), statistics.median(wall),
                         f"{values[0][2] / 1024:.0f}", target])
        print_table(f"server time, ms ({requests_each} requests each, round-robin, after one cold request)",
                    ["page", "cold", "median", "p95", "wall med", "KiB", "p95 target"], rows)
        drawn = browser(served.url + pages["version page robostack:1 (593 packages)"], browser_runs)
    finally:
        served.stop()
    if drawn is None:
        print("\nbrowser: chromium, chromedriver or selenium not installed; not measured")
    else:
        navigation = [n for n, _ in drawn]
        after = [a for _, a in drawn]
        verdict = "met" if statistics.median(navigation) < BROWSER_TARGET_MS else "MISSED"
        print_table(f"headless Chromium, robostack:1 on linux-64 (593 nodes, 4,385 edges), {len(drawn)} runs, ms",
                    ["measure", "median", "max"],
                    [["navigation → first frame after load", statistics.median(navigation), max(navigation)],
                     ["last byte → first frame after load", statistics.median(after), max(after)]])
        print(f"  under a second from navigation: {verdict}")
    written = sorted(str(p.relative_to(home)) for p in home.rglob("*"))
    print(f"\nMLENV_HOME of the server after the run: {json.dumps(written)} (it writes nothing)")
    return [*(Figure(f"`mlenv serve` at 10,000 versions: {label}, p95 server time", p95([v[0] for v in samples[label]]),
                     "ms", TARGET_MS) for label in pages if not label.startswith(("API", "diff", "versions"))),
            Figure("Chromium: robostack:1 graph, navigation -> painted",
                   statistics.median(n for n, _ in drawn) if drawn else float("nan"), "ms", BROWSER_TARGET_MS)]
