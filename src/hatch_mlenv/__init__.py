"""hatch-mlenv: named, locked, versioned ML environments for Python projects."""

__version__ = "0.1.0"
