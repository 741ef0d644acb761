"""fluxstream: event-driven streaming indexer for retrieval (RAG)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fluxstream")  # the installed distribution's version (pyproject.toml)
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0.0.0+unknown"
