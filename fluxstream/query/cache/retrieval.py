"""What a search read, as the cache stores and replays it.

The searcher (``query.search``) fills a ``Retrieval`` as it runs, noting the index positions the
cache validates from (term change stamps, the vector-change log's head); the cache stores it,
not the response. It lives here, below the searcher, so the searcher can use the cache's
records without the cache depending on the searcher.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fluxstream.indexer.postings import CollectionStats, StoredChunk
from fluxstream.indexer.vector_store import VectorHit


@dataclass
class Retrieval:
    """What the retrievers returned for one search, before statistics, filters and fusion.

    Replaying it (``Searcher.search(..., replay=...)``) with the current statistics and chunk
    records gives exactly the answer a fresh search would, as long as no change touched the
    query's terms or could enter or leave the vector candidates: the semantic cache stores
    this, not the response, and is invalidated on exactly those changes.
    """

    postings: dict[str, dict[str, int]] | None = None
    term_versions: dict[str, int] | None = None  # the terms' change counters, read with the postings
    vector_hits: list[VectorHit] | None = None
    vector_log_position: str = "0-0/0"  # the vector-change log's head, read before the k-NN query
    query_vector: np.ndarray | None = None
    answer_docs: list[str] | None = None  # set by the cache: documents the answer depends on directly
    stats: CollectionStats | None = None  # current statistics, when the cache read them with the hit
    records: dict[str, StoredChunk | None] | None = None  # current records the cache read with the hit
