"""hatch-mlenv's benchmarks: `python -m bench` runs them (see bench/README.md)."""
