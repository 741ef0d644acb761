"""Embedding providers behind one protocol: offline NumPy MiniLM (default) or OpenAI-compatible."""

from .base import Embedder, EmbeddingError
from .factory import EMBEDDER_KINDS, create_embedder, embedder_from_settings

__all__ = ["EMBEDDER_KINDS", "Embedder", "EmbeddingError", "create_embedder", "embedder_from_settings"]
