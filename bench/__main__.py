"""Run the benchmarks: `python -m bench [NAME ...] [--quick] [--runs N] [--no-readme] [--real-pypi]`.

Every bench/*.py not starting with `_` is a case file: its @benchmark function measures its
subjects against baselines in the same run and returns its figures. The runner prints each
case's own tables as it goes, then one table of every figure (subject, baseline, figure,
target, met), and writes that table between the `bench:start`/`bench:end` markers of
bench/README.md (rows of benchmarks not run this time are kept). Progress goes to stderr.
A benchmark that fails is reported in the table; the others still run.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import traceback

from bench._harness import BENCH_DIR, BENCHMARKS, RESULTS_DIR, Figure, Options, print_table, progress

README = BENCH_DIR / "README.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
COLUMNS = ["benchmark", "case", "subject", "baseline", "figure", "target", "met", "measured"]


def discover(names: list[str]) -> dict[str, str]:
    """Import the case files named, or all (each registers its benchmark); the ones that fail, and why."""
    failed = {}
    for path in sorted(BENCH_DIR.glob("*.py")):
        if not path.name.startswith("_") and (not names or path.stem in names):
            try:
                importlib.import_module(f"bench.{path.stem}")
            except Exception as exc:  # noqa: BLE001 - a case whose imports moved must not stop the others
                failed[path.stem] = f"import failed: {type(exc).__name__}: {exc}"
    return failed


def _amount(value: float | None, unit: str) -> str:
    if value is None:
        return ""
    if value != value:
        return "-"
    if unit == "x":
        return f"{value:.2f}×"
    if unit == "s":
        return f"{value:.3f} s" if value >= 0.01 else f"{value * 1000:.3f} ms"
    return f"{value:.3g} {unit}" if unit == "%" else f"{value:.1f} {unit}"


def rows(name: str, result: list[Figure] | str, when: str) -> list[list[str]]:
    if isinstance(result, str):
        return [[name, f"({result})", "", "", "", "", "no figure", when]]
    return [[name, f.case, _amount(f.subject, "s"), _amount(f.baseline, "s"), _amount(f.value, f.unit),
             "" if f.target is None else f"≤ {_amount(f.target, f.unit)}", f.verdict, when] for f in result]


def update_readme(table: list[list[str]], ran: set[str]) -> None:
    """Rewrite the region between the markers: this run's rows, and the kept rows of the others."""
    text = README.read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise SystemExit(f"{README}: no {START} ... {END} region")
    head, _, rest = text.partition(START)
    old, _, tail = rest.partition(END)
    kept = [line for line in old.splitlines() if line.startswith("| ")
            and line.split("|")[1].strip() not in (*ran, "benchmark", "---")]  # not the header, not the rule
    order = {name: index for index, name in enumerate(sorted({*ran, *(k.split("|")[1].strip() for k in kept)}))}
    lines = [*kept, *("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in table)]
    lines.sort(key=lambda line: order[line.split("|")[1].strip()])  # stable: a benchmark's rows keep their order
    body = ["| " + " | ".join(COLUMNS) + " |", "| " + " | ".join(["---"] * len(COLUMNS)) + " |", *lines]
    README.write_text(head + START + "\n" + "\n".join(body) + "\n" + END + tail, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="the fewest runs that still give each figure")
    parser.add_argument("--runs", type=int, help="runs of every measured command (overrides each default)")
    parser.add_argument("--no-readme", action="store_true", help="do not write the table into bench/README.md")
    parser.add_argument("--real-pypi", action="store_true", help="also run the cases that use pypi.org (network)")
    args = parser.parse_args()
    sys.pycache_prefix = str(RESULTS_DIR / "pycache")  # in-process imports of hatch_mlenv too
    cases = sorted(p.stem for p in BENCH_DIR.glob("*.py") if not p.name.startswith("_"))
    unknown = [n for n in args.names if n not in cases]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(cases)}")
    failed = discover(args.names)
    names = args.names or sorted({*BENCHMARKS, *failed})
    options = Options(args.runs, args.quick, args.real_pypi)
    print(f"# python -m bench {' '.join(sys.argv[1:])}\n  python {sys.version.split()[0]}, {os.cpu_count()} cores, "
          f"{time.strftime('%Y-%m-%d %H:%M')}, load average {os.getloadavg()[0]:.2f}")
    mode = "quick" if args.quick else f"{args.runs} runs" if args.runs else "default runs"
    results: dict[str, list[Figure] | str] = {}
    when: dict[str, str] = {}
    for name in names:
        if name in failed:
            results[name] = failed[name]
            progress(f"{name}: {failed[name]}")
            continue
        progress(f"{name}: started")
        print(f"\n## {name}")
        started, start_load = time.perf_counter(), os.getloadavg()[0]
        try:
            results[name] = BENCHMARKS[name](options)
        except Exception as exc:  # noqa: BLE001 - reported in the table; the other benchmarks still run
            traceback.print_exc()
            results[name] = f"failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        when[name] = f"{time.strftime('%Y-%m-%d %H:%M')}, {mode}, load {start_load:.1f}–{os.getloadavg()[0]:.1f}"
        progress(f"{name}: done in {time.perf_counter() - started:.0f} s")
    table = [row for name in names for row in rows(name, results[name], when.get(name, ""))]
    print_table("every figure (met: figure ≤ target; ratios are subject / baseline, medians of the same run)",
                COLUMNS, table, left=2)
    if not args.no_readme:
        update_readme(table, set(names))
        print(f"\n  {README.relative_to(BENCH_DIR.parent)}: table updated")


if __name__ == "__main__":
    main()
