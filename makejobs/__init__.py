"""makejobs: share the GNU Make jobserver token pool with Python code."""

__version__ = "0.1.0"
