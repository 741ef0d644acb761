"""Embeddings from an OpenAI-compatible ``/v1/embeddings`` endpoint (OpenAI, vLLM, Ollama, TEI...).

Retries follow ``fluxstream.core.provider_calls``: transient failures back off and retry, permanent
ones (400 "input too long") raise at once so the caller can dead-letter; the caller sees a
single :class:`EmbeddingError` type.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import openai
from openai.types import CreateEmbeddingResponse

from fluxstream.core.provider_calls import call_with_retries, provider_policy

from .base import EmbeddingError, as_text_list, l2_normalize

__all__ = ["OpenAICompatibleEmbedder"]

class OpenAICompatibleEmbedder:
    """Batches texts to an OpenAI-compatible server; returns unit float32 rows in input order.

    ``dimensions`` is sent only when set (text-embedding-3 models can shorten vectors; other
    servers may reject the field).  When it is not set, the size is learnt from the first
    response; pgvector tables need it up front, so set it or call :meth:`probe_dimensions`.
    """

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        dimensions: int | None = None,
        batch_size: int = 64,
        max_retries: int = 5,
        timeout: float = 30.0,
        *,
        backoff_base: float = 0.5,
        backoff_max: float = 20.0,
    ) -> None:
        if batch_size < 1 or max_retries < 0 or (dimensions is not None and dimensions < 1):
            raise ValueError("need batch_size >= 1, max_retries >= 0 and dimensions >= 1 when set")
        api_key = api_key or os.environ.get("OPENAI_API_KEY")
        if not api_key:
            if not base_url:
                raise ValueError("api.openai.com needs an API key: set FLUXSTREAM_OPENAI_API_KEY")
            api_key = "unused"  # local servers (vLLM, Ollama, TEI) usually ignore it
        self.model = model
        self.requested_dimensions = dimensions
        self.dimensions: int = dimensions or 0  # 0 until the first response when not configured
        self.model_id: str = f"openai:{model}" + (f"@{dimensions}" if dimensions else "")
        self.batch_size = batch_size
        self.retry_policy = provider_policy(max_retries, backoff_base, backoff_max)
        self._client = openai.AsyncOpenAI(
            api_key=api_key, base_url=base_url or None, timeout=timeout, max_retries=0
        )

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed with one request per ``batch_size`` texts, sent one after another."""
        items = as_text_list(texts)
        if not items:
            return np.empty((0, self.dimensions), dtype=np.float32)
        parts = [
            await self._embed_batch(items[start : start + self.batch_size])
            for start in range(0, len(items), self.batch_size)
        ]
        return np.concatenate(parts)

    async def probe_dimensions(self) -> int:
        """Learn the vector size with one tiny request (for creating the pgvector column)."""
        if not self.dimensions:
            await self._embed_batch(["dimension probe"])
        return self.dimensions

    async def aclose(self) -> None:
        """Close the HTTP connection pool."""
        await self._client.close()

    async def _embed_batch(self, batch: list[str]) -> np.ndarray:
        kwargs: dict = {"model": self.model, "input": batch, "encoding_format": "float"}
        if self.requested_dimensions:
            kwargs["dimensions"] = self.requested_dimensions
        response = await call_with_retries(
            lambda: self._client.embeddings.create(**kwargs), self.retry_policy, self._error)
        return self._to_matrix(response, len(batch))

    def _error(self, message: str, permanent: bool, status: int | None) -> EmbeddingError:
        return EmbeddingError(f"{self.model_id}: {message}", permanent=permanent, status_code=status)

    def _to_matrix(self, response: CreateEmbeddingResponse, expected: int) -> np.ndarray:
        """Rows in request order (servers may reorder; ``index`` says where each belongs)."""
        try:
            data = response.data
            indices = sorted(item.index for item in data)
            if indices != list(range(expected)):
                raise ValueError(f"indices {indices[:10]} do not match {expected} inputs")
            matrix = np.empty((expected, len(data[0].embedding)), dtype=np.float32)
            for item in data:
                matrix[item.index] = item.embedding  # ValueError on ragged rows
        except (AttributeError, TypeError, ValueError) as exc:
            raise EmbeddingError(f"{self.model_id}: malformed response: {exc}", permanent=True) from exc
        width = matrix.shape[1]
        if self.dimensions and width != self.dimensions:
            raise EmbeddingError(
                f"{self.model_id}: got {width}-d vectors, expected {self.dimensions} "
                "(does the model support the dimensions parameter?)",
                permanent=True,
            )
        self.dimensions = width
        return l2_normalize(matrix)
