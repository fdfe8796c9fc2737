"""Registry latencies: the local SQLite registry from 100 to 10,000 versions, and a loopback OCI registry.

Local (in-process, the Python API): 100 names are registered round-robin, one
version of every name per round, up to 100 versions each (10,000 versions).
At 100 (100 names x 1), 1,000 (x 10) and 10,000 (x 100) versions it times
`get(NAME:V)`, `register` of an existing lock (idempotent), `history(NAME)` and
`list()` against a raw `sqlite3` SELECT of one lockfile by primary key on the
same database (the baseline), round-robin, 200 times each. "register new"
at a size is the next two rounds of the build (200 new versions, the registry
growing from N to N+200). Then a ~430 KB lock (the numpy conda-lock sample,
one variable changed per version) is registered and read 20 times each,
against `parse_lock` of the same text; then fresh `mlenv get` / `mlenv list
--json` / `mlenv history` processes with MLENV_REGISTRY=sqlite:///PATH against
`mlenv --version`.

OCI: Debian's docker-registry on 127.0.0.1 with htpasswd auth (the test
fixture). Push (register of one new version), idempotent push, pull (get of a
version) 10 times each, round-robin with an authenticated
`requests.get` of /v2/ (the baseline); HTTP requests per operation are counted;
`history` is timed and counted at 1 and at 2 x (runs + 1) versions, `list` at 2
names and at 102 (distribution's catalog endpoint pages at 100 repositories).

No targets: growth with the registry's size, and ratios to the raw reads.
"""

from __future__ import annotations

import os
import random
import sqlite3
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import requests

from bench._harness import (MLENV, SHARED_DATA, Command, Figure, Options, bench_env, benchmark, median_rss,
                            median_seconds, p95, print_table, progress, round_robin, scratch_dir)
from fixtures.oci_registry import run_registry
from hatch_mlenv.reference import image_reference_for
from hatch_mlenv.lockfile import _PARSED, lock_digest, parse_lock
from hatch_mlenv.manifest import lock_manifest
from hatch_mlenv.registry import Reference, provenance
from hatch_mlenv.registry.local import LocalRegistry
from hatch_mlenv.registry.oci import OciRegistry
from tests.registry_helpers import small_lock

BIG_SAMPLE = SHARED_DATA / "conda-lock-samples" / "numpy-conda-lock.yml"
NAMES = 100
VERSIONS = 100
CHECKPOINTS = (1, 10, 100)  # versions per name at which reads are timed: 100, 1,000, 10,000 versions
BIG_VERSIONS = 20
MARK = "@@TAG@@"


# -- timing ---------------------------------------------------------------------------------
def ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f}" if seconds < 0.1 else f"{seconds * 1000:.1f}"


def rounds(n: int, ops: dict[str, Callable[[int], Any]], *, warmup: int = 1) -> dict[str, list[float]]:
    """`n` timings (seconds) of each op, round-robin (A B C A B C ...) after `warmup` rounds.
    Each op gets the round number (0-based, counting warm-up) to pick its own prepared input."""
    samples: dict[str, list[float]] = {label: [] for label in ops}
    for index in range(warmup + n):
        for label, op in ops.items():
            # Each op parses its own text: no op may find the text another one just parsed
            # (hatch_mlenv.lockfile keeps the last few parsed locks by their sha256).
            _PARSED.clear()
            start = time.perf_counter()
            op(index)
            elapsed = time.perf_counter() - start
            if index >= warmup:
                samples[label].append(elapsed)
    return samples


# -- locks ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    name: str
    text: str
    digest: str
    manifest: dict[str, Any]


class Locks:
    """Distinct valid locks from one template: `MARK` is the value of the variable TAG."""

    def __init__(self, template: str, label: str) -> None:
        self.template = template
        self.base = parse_lock(template.replace(MARK, "x"), label)

    def entry(self, name: str, tag: str) -> Entry:
        text = self.template.replace(MARK, tag)
        # Only TAG differs between versions: the digest without re-parsing the text.
        digest = lock_digest(self.base.packages, {**self.base.variables, "TAG": tag}, self.base.base_image)
        manifest = lock_manifest(name, self.base, image=image_reference_for(name, digest))
        manifest.update(digest=f"sha256:{digest}", variables={"TAG": tag})
        return Entry(name, text, digest, manifest)


def small_locks() -> Locks:
    return Locks(small_lock(MARK), "small_lock")


def big_locks() -> Locks:
    text = BIG_SAMPLE.read_text(encoding="utf-8")
    custom = f"  custom_metadata:\n    mlenv.name: big\n    mlenv.variables: '{{\"TAG\": \"{MARK}\"}}'\n"
    return Locks(text.replace("metadata:\n", "metadata:\n" + custom, 1), str(BIG_SAMPLE))


def check_digests(locks: Locks, tag: str) -> None:
    """The shortcut digest must be the one `parse_lock` computes, or every figure is wrong."""
    entry = locks.entry("check", tag)
    actual = parse_lock(entry.text, "check").digest()
    if actual != entry.digest:
        raise SystemExit(f"benchmark setup is wrong: digest shortcut {entry.digest} != parse_lock {actual}")


# -- local registry --------------------------------------------------------------------------
def name_of(i: int) -> str:
    return f"env-{i:03d}"


def tag_of(name: str, version: int) -> str:
    return f"{name}-v{version}"


def local_benchmark(root: Path, ops: int, big_ops: int) -> tuple[Path, dict[int, dict[str, list[float]]]]:
    path = root / "registry.sqlite3"
    registry = LocalRegistry(path)
    raw: Any = None  # a plain sqlite3 connection, once the registry has made the database (it refuses an empty file)
    small = small_locks()
    check_digests(small, "env-000-v1")
    prov = provenance(None, spec_hash=None, project=None)
    rng = random.Random(20261124)
    names = [name_of(i) for i in range(NAMES)]

    build_seconds: list[float] = []  # every registration of the build, in order

    def build_round(version: int) -> None:
        for name in names:
            entry = small.entry(name, tag_of(name, version))
            start = time.perf_counter()
            registration = registry.register(name, entry.text, entry.manifest, prov)
            build_seconds.append(time.perf_counter() - start)
            if not registration.created or registration.version.version != version:
                raise SystemExit(f"benchmark setup is wrong: {name} v{version} -> {registration.version.ref}")

    results: dict[int, dict[str, list[float]]] = {}
    build_start = time.perf_counter()
    build_time = 0.0
    done = 0
    for per_name in CHECKPOINTS:
        while done < per_name:
            done += 1
            build_round(done)
        build_time += time.perf_counter() - build_start
        raw = raw or sqlite3.connect(path)
        total = per_name * NAMES
        picks = [(rng.choice(names), rng.randint(1, per_name)) for _ in range(ops + 1)]
        idem = [small.entry(n, tag_of(n, v)) for n, v in picks]

        def raw_select(i: int) -> None:
            raw.execute("SELECT lockfile FROM versions WHERE name = ? AND version = ?", picks[i]).fetchone()

        def get(i: int) -> None:
            registry.get(Reference(*picks[i]))

        def register_again(i: int) -> None:
            e = idem[i]
            if registry.register(e.name, e.text, e.manifest, prov).created:
                raise SystemExit("benchmark setup is wrong: an idempotent registration created a version")

        def history(i: int) -> None:
            registry.history(picks[i][0])

        def list_(i: int) -> None:
            registry.list()

        results[total] = rounds(ops, {
            "raw sqlite3 SELECT lockfile by PK (baseline)": raw_select,
            "get NAME:V": get,
            "register, idempotent": register_again,
            f"history NAME ({per_name} version{'s' if per_name > 1 else ''})": history,
            f"list ({NAMES} names)": list_,
        })
        # "register new" at this size: the next two rounds of the build (200 new versions).
        build_start = time.perf_counter()
        first = len(build_seconds)
        build_round(done + 1)
        build_round(done + 2)
        done += 2
        results[total]["register, new"] = build_seconds[first:]
    build_time += time.perf_counter() - build_start
    registrations = len(build_seconds)

    sizes = [per_name * NAMES for per_name in CHECKPOINTS]
    order = ["raw sqlite3 SELECT lockfile by PK (baseline)", "get NAME:V", "register, new", "register, idempotent",
             "history NAME", f"list ({NAMES} names)"]

    def series(label: str, total: int) -> list[float]:
        found = [v for k, v in results[total].items() if k == label or k.startswith(label + " (")]
        return found[0]

    base_10k = statistics.median(series(order[0], sizes[-1]))
    table = []
    for label in order:
        row: list[object] = [label]
        for total in sizes:
            values = series(label, total)
            row += [ms(statistics.median(values)), ms(p95(values))]
        growth = statistics.median(series(label, sizes[-1])) / statistics.median(series(label, sizes[0]))
        row += [f"{growth:.2f}", f"{statistics.median(series(label, sizes[-1])) / base_10k:.1f}"]
        table.append(row)
    print(f"\nbuild: {registrations:,} registrations of small_lock ({len(small.entry('x', 'x').text)} B) "
          f"in {build_time:.1f} s ({build_time / registrations * 1000:.2f} ms each, mean); "
          f"database {path.stat().st_size / 1e6:.1f} MB + WAL")
    print_table(
        f"local registry, in-process, {ops} ops each, round-robin; ms (median, p95); "
        f"history at 100/1k/10k has 1/10/100 versions per name",
        ["operation", "100 med", "100 p95", "1k med", "1k p95", "10k med", "10k p95", "10k/100", "x raw @10k"],
        table,
    )
    print("  register parses the lock for the digest it stores (each op uncached); "
          "'register, new' at N = the 200 registrations taking the registry from N to N+200")

    # -- a realistic lock size -------------------------------------------------------------
    big = big_locks()
    check_digests(big, "big-v1")
    big_name = "big-env"
    new_big: list[float] = []
    for version in range(1, BIG_VERSIONS + 1):
        e = big.entry(big_name, tag_of(big_name, version))
        start = time.perf_counter()
        registry.register(big_name, e.text, e.manifest, prov)
        new_big.append(time.perf_counter() - start)
    big_picks = [rng.randint(1, BIG_VERSIONS) for _ in range(big_ops + 1)]
    big_entries = [big.entry(big_name, tag_of(big_name, v)) for v in big_picks]
    small_picks = [(rng.choice(names), rng.randint(1, VERSIONS)) for _ in range(big_ops + 1)]

    def big_raw(i: int) -> None:
        raw.execute("SELECT lockfile FROM versions WHERE name = ? AND version = ?", (big_name, big_picks[i])).fetchone()

    def big_parse(i: int) -> None:
        parse_lock(big_entries[i].text, "bench").digest()

    def big_get(i: int) -> None:
        registry.get(Reference(big_name, big_picks[i]))

    def big_again(i: int) -> None:
        e = big_entries[i]
        registry.register(big_name, e.text, e.manifest, prov)

    def big_history(i: int) -> None:
        registry.history(big_name)

    def small_get(i: int) -> None:
        registry.get(Reference(*small_picks[i]))

    def list_all(i: int) -> None:
        registry.list()

    big_samples = rounds(big_ops, {
        "raw sqlite3 SELECT lockfile by PK (baseline)": big_raw,
        "parse_lock + digest, no registry": big_parse,
        "get NAME:V": big_get,
        "register, idempotent": big_again,
        f"history NAME ({BIG_VERSIONS} versions)": big_history,
        "get NAME:V of a small lock (same db)": small_get,
        f"list ({NAMES + 1} names, same db)": list_all,
    })
    big_samples = {"register, new": new_big, **big_samples}
    parse_median = statistics.median(big_samples["parse_lock + digest, no registry"])
    size = len(big.entry(big_name, "x").text)
    print_table(
        f"~{size / 1000:.0f} KB lock ({BIG_SAMPLE.name} + one variable), {BIG_VERSIONS} versions under one name "
        f"in the same 10k database; {big_ops} ops each (register new: {BIG_VERSIONS}); ms",
        ["operation", "median", "p95", "x parse_lock"],
        [[label, ms(statistics.median(v)), ms(p95(v)), f"{statistics.median(v) / parse_median:.2f}"]
         for label, v in big_samples.items()],
    )
    registry.close()
    raw.close()
    return path, results


def cli_benchmark(path: Path, root: Path, runs: int) -> Figure:
    script = MLENV
    env = bench_env(MLENV_REGISTRY=f"sqlite://{path}")
    out = root / "get-out"
    commands = {
        "mlenv --version (baseline)": Command([script, "--version"], env=env),
        "mlenv get env-042:50 -o DIR (small lock)": Command([script, "get", "env-042:50", "-o", str(out / "small")], env=env),
        "mlenv get big-env:7 -o DIR (430 KB lock)": Command([script, "get", "big-env:7", "-o", str(out / "big")], env=env),
        "mlenv list --json (101 names)": Command([script, "list", "--json"], env=env),
        "mlenv history env-042 --json (102 versions)": Command([script, "history", "env-042", "--json"], env=env),
    }
    samples = round_robin(runs, commands)
    base = median_seconds(samples["mlenv --version (baseline)"])
    print_table(
        f"fresh processes, MLENV_REGISTRY=sqlite://{path.name} (10,200 small + {BIG_VERSIONS} big versions), "
        f"{runs} runs each, round-robin after one warm-up round",
        ["command", "median ms", "p95 ms", "peak RSS MiB", "x --version"],
        [[label, ms(median_seconds(s)), ms(p95([x.seconds for x in s])), f"{median_rss(s):.0f}",
          f"{median_seconds(s) / base:.2f}"] for label, s in samples.items()],
    )
    return Figure("`mlenv get NAME:V` (small lock, 10k versions) vs `mlenv --version`",
                  median_seconds(samples["mlenv get env-042:50 -o DIR (small lock)"]) / base, "x", None,
                  median_seconds(samples["mlenv get env-042:50 -o DIR (small lock)"]), base)


# -- OCI ------------------------------------------------------------------------------------
class Counted:
    """Counts the HTTP requests an OciRegistry makes (wraps its `_request` on the instance)."""

    def __init__(self, registry: Any) -> None:
        self.count = 0
        inner = registry._request

        def request(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return inner(*args, **kwargs)

        registry._request = request


def oci_benchmark(root: Path, runs: int) -> Figure:
    small = small_locks()
    prov = provenance(None, spec_hash=None, project=None)
    with run_registry(root / "oci") as server:
        os.environ["MLENV_REGISTRY_USERNAME"] = server.user or ""
        os.environ["MLENV_REGISTRY_PASSWORD"] = server.password or ""
        registry = OciRegistry(server.url("bench"))
        counter = Counted(registry)
        counts: dict[str, list[int]] = {}
        settle = os.environ.get("MLENV_OCI_SETTLE_MS")

        def counted(label: str, fn: Callable[[], Any]) -> Any:
            before = counter.count
            result = fn()
            counts.setdefault(label, []).append(counter.count - before)
            return result

        pushed: list[int] = []

        def register(name: str, tag: str, label: str) -> Any:
            e = small.entry(name, tag)
            return counted(label, lambda: registry.register(name, e.text, e.manifest, prov))

        def baseline(i: int) -> None:
            requests.get(f"http://{server.host}/v2/", auth=(server.user, server.password), timeout=10).raise_for_status()

        def push(i: int) -> None:
            os.environ.pop("MLENV_OCI_SETTLE_MS", None)
            pushed.append(register("bench-env", f"a{i}", "push (register new)").version.version)

        def push_no_settle(i: int) -> None:
            os.environ["MLENV_OCI_SETTLE_MS"] = "0"
            try:
                register("bench-env", f"b{i}", "push, MLENV_OCI_SETTLE_MS=0")
            finally:
                os.environ.pop("MLENV_OCI_SETTLE_MS", None)

        def push_again(i: int) -> None:
            if register("bench-env", f"a{i}", "push, idempotent").created:
                raise SystemExit("benchmark setup is wrong: an idempotent push created a version")

        def pull(i: int) -> None:
            counted("pull (get NAME:V)", lambda: registry.get(Reference("bench-env", pushed[-1])))

        samples = rounds(runs, {
            "authenticated requests.get /v2/ (baseline)": baseline,
            "push (register new)": push,
            "push, MLENV_OCI_SETTLE_MS=0": push_no_settle,
            "push, idempotent": push_again,
            "pull (get NAME:V)": pull,
        })
        versions = 2 * (runs + 1)
        register("bench-one", "one", "setup")

        def timed(label: str, fn: Callable[[], Any], n: int) -> None:
            values = []
            for _ in range(n):
                start = time.perf_counter()
                counted(label, fn)
                values.append(time.perf_counter() - start)
            samples[label] = values

        timed("history NAME (1 version)", lambda: registry.history("bench-one"), 5)
        timed(f"history NAME ({versions} versions)", lambda: registry.history("bench-env"), 5)
        timed("list (2 names)", lambda: registry.list(), 5)
        # More names: the catalog endpoint of distribution pages at 100 repositories.
        os.environ["MLENV_OCI_SETTLE_MS"] = "0"  # setup only
        for i in range(100):
            register(f"many-{i:03d}", "m", "setup")
        os.environ.pop("MLENV_OCI_SETTLE_MS", None)
        listed: list[Any] = []
        timed("list (102 names)", lambda: listed.append(registry.list()), 3)
        if settle is not None:
            os.environ["MLENV_OCI_SETTLE_MS"] = settle

        catalog = requests.get(f"http://{server.host}/v2/_catalog", auth=(server.user, server.password), timeout=10)
        base = statistics.median(samples["authenticated requests.get /v2/ (baseline)"])
        print_table(
            f"OCI registry on loopback (docker-registry {server.host}, htpasswd), ms; push/pull: {runs} runs each, "
            "round-robin; history/list: 5 (list of 102: 3)",
            ["operation", "median", "p95", "HTTP requests", "x baseline"],
            [[label, ms(statistics.median(v)), ms(p95(v)),
              "1" if label.startswith("authenticated") else _count(counts.get(label, [])),
              f"{statistics.median(v) / base:.0f}"] for label, v in samples.items()],
        )
        names = [s.name for s in listed[-1]]
        page = catalog.json().get("repositories") or []
        print(f"  list with 102 names registered returned {len(names)} "
              f"(GET /v2/_catalog without ?n= returned {len(page)} repositories, "
              f"Link header: {'yes' if catalog.headers.get('Link') else 'no'})")
        print("  push waits MLENV_OCI_SETTLE_MS (default 250 ms) once for the lease; pull = get NAME:V "
              "(manifest, config, lock and manifest blobs, then labels: tags/list + HEAD per label tag, index)")
        pull = statistics.median(samples["pull (get NAME:V)"])
        return Figure("OCI pull (`get NAME:V`) vs an authenticated GET /v2/", pull / base, "x", None, pull, base)


def _count(values: list[int]) -> str:
    if not values:
        return "-"
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low}-{high}"


@benchmark
def registry(options: Options) -> list[Figure]:
    root = scratch_dir("registry")
    progress("registry: local, 100 -> 10,000 versions")
    path, local = local_benchmark(root, options.n(200, quick=20), options.n(20, quick=3))
    figures = []
    for label in ("get NAME:V", "register, idempotent"):
        small, big = (statistics.median(local[n][label]) for n in (100, 10_000))
        figures.append(Figure(f"local `{label}` at 10,000 versions vs at 100", big / small, "x", None, big, small))
    figures.append(cli_benchmark(path, root, options.n(10, quick=3)))
    progress("registry: OCI on loopback")
    figures.append(oci_benchmark(root, options.n(10, quick=3)))
    return figures
