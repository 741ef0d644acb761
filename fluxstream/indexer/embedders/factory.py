"""Builds the configured embedder, so callers depend on the Embedder protocol only."""

from __future__ import annotations

from fluxstream.core.settings import EMBEDDER_KINDS, Settings

from .base import Embedder

__all__ = ["EMBEDDER_KINDS", "create_embedder", "embedder_from_settings"]


def create_embedder(
    kind: str,
    *,
    batch_size: int = 32,
    openai_base_url: str = "",
    openai_api_key: str = "",
    openai_model: str = "text-embedding-3-small",
    dimensions: int = 0,
    max_retries: int = 5,
    child_processes: int | None = None,
) -> Embedder:
    """``local`` (offline all-MiniLM-L6-v2, 384-d) or ``openai`` (any OpenAI-compatible server).

    Empty strings / 0 mean "not set", matching the FLUXSTREAM_* defaults.  ``dimensions`` only
    applies to ``openai``; the local model is always 384-d.  ``child_processes``: run the local
    model in that many child processes (0: one per usable core; the indexing worker's choice, see
    ``child_process``); None keeps it in this process, as the query service does.
    """
    name = kind.strip().lower()
    if name == "local" and child_processes is not None:
        from .child_process import ChildProcessEmbedder

        return ChildProcessEmbedder(batch_size=batch_size, processes=child_processes)
    if name == "local":
        from .minilm import LocalMiniLMEmbedder  # imported here: loads tokenizers/safetensors

        return LocalMiniLMEmbedder(batch_size=batch_size)
    if name == "openai":
        from .openai_compat import OpenAICompatibleEmbedder

        return OpenAICompatibleEmbedder(
            openai_model,
            base_url=openai_base_url or None,
            api_key=openai_api_key or None,
            dimensions=dimensions or None,
            batch_size=batch_size,
            max_retries=max_retries,
        )
    raise ValueError(f"unknown embedder {kind!r}; choose one of: {', '.join(EMBEDDER_KINDS)}")


def embedder_from_settings(settings: Settings, *, child_process: bool = False) -> Embedder:
    """The embedder the FLUXSTREAM_EMBEDDER* / FLUXSTREAM_OPENAI_* variables describe; ``child_process``:
    the local model in ``FLUXSTREAM_EMBED_PROCESSES`` child processes (see ``create_embedder``)."""
    return create_embedder(
        settings.embedder,
        batch_size=settings.embed_batch_size,
        openai_base_url=settings.openai_base_url,
        openai_api_key=settings.openai_api_key,
        openai_model=settings.openai_model,
        dimensions=settings.embedding_dimensions,
        max_retries=settings.embed_max_retries,
        child_processes=settings.embed_processes if child_process else None,
    )
