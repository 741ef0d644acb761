"""The contract every embedding provider meets, so the pipeline can swap them freely.

Vectors are stored in pgvector next to ``model_id``; rows are L2-normalised so the query
service can rank by inner product (cosine == dot) whatever the provider.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["Embedder", "EmbeddingError", "as_text_list", "close_embedder", "l2_normalize", "model_input"]


class EmbeddingError(Exception):
    """An embedding call failed; ``permanent`` tells the caller whether a retry can help.

    ``permanent=True``: the input or configuration is wrong (400, input too long, auth),
    so the job should be dead-lettered.  ``permanent=False``: the provider was down or
    throttling and the provider's own retries were exhausted, so the job may be retried.
    """

    def __init__(self, message: str, *, permanent: bool, status_code: int | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.status_code = status_code

    def __reduce__(self) -> tuple[object, ...]:  # keyword-only fields survive pickling (child processes)
        return (_rebuild_embedding_error, (str(self), self.permanent, self.status_code))


def _rebuild_embedding_error(message: str, permanent: bool, status_code: int | None) -> EmbeddingError:
    return EmbeddingError(message, permanent=permanent, status_code=status_code)


async def close_embedder(embedder: object) -> None:
    """Release what an embedder holds (child processes, an HTTP pool): those that hold something have
    ``aclose``; the in-process model holds nothing to release."""
    close = getattr(embedder, "aclose", None)
    if close is not None:
        await close()


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors of a fixed size."""

    model_id: str
    """Stable id stored with every vector, e.g. ``local:all-MiniLM-L6-v2``."""
    dimensions: int
    """Vector size (0 only while an OpenAI-compatible model's size is still unknown)."""

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Return a float32 array of shape ``(len(texts), dimensions)`` with unit rows."""
        ...


def model_input(embedder: object, text: str) -> bytes:
    """What the model actually receives for ``text``: two texts with equal values embed identically.

    An embedder that normalises its input itself says how with a ``model_input(text)`` method (the
    local model: its tokenizer's ids, after lower-casing, accent stripping and truncation); any
    other is taken to see the raw text, so only identical texts compare equal. The semantic cache
    keys vector searches on this, never on a normalisation of its own.
    """
    own = getattr(embedder, "model_input", None)
    return own(text) if own is not None else b"text:" + text.encode()


def as_text_list(texts: Sequence[str]) -> list[str]:
    """Copy the input to a list, rejecting a bare ``str`` (it would embed each character)."""
    if isinstance(texts, str):
        raise TypeError("embed() takes a sequence of strings, not a single string")
    items = list(texts)
    for i, text in enumerate(items):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is {type(text).__name__}, expected str")
    return items


def l2_normalize(vectors: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Scale rows to unit length as float32 (zero rows stay zero, like torch's F.normalize)."""
    out = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, np.float32(eps))
