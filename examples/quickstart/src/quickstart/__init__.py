"""A stand-in for a training package."""

__version__ = "0.1.0"
