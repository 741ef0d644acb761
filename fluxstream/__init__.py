"""fluxstream: event-driven streaming indexer for retrieval (RAG)."""

__version__ = "0.1.0"
