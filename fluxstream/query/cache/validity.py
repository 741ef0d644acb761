"""When a cache entry stops being right, and the check every hit passes before it is served.

An entry becomes wrong only when a change touches one of its query terms (the postings' term
change stamps, written in the same atomic script as the postings), changes a document its
answer depends on (``answer_docs``), or brings a chunk at least as close to the query as its
``candidate_threshold`` (both read from the vector-change log). ``Validity.invalid_because``
applies these rules on every hit, so correctness never waits for the invalidation agent, which
applies the same rules ahead of time (``invalidation``).
"""

from __future__ import annotations

import numpy as np

from fluxstream.indexer.postings import PostingsStore
from fluxstream.query.cache.retrieval import Retrieval
from fluxstream.query.cache.vector_log import VectorLog
from fluxstream.schemas.api import SearchRequest, SearchResponse

SIMILARITY_SLACK = 1e-5  # float32 rounding between stored candidate scores and recomputed similarities


def could_enter(similarities: np.ndarray, thresholds: float | list[float]) -> np.ndarray:
    """Per similarity (of a changed chunk to an entry's query), whether the chunk could change the
    entry's answer: at least as similar as the entry's ``candidate_threshold`` (compared in float64)."""
    return np.asarray(similarities >= np.asarray(thresholds, dtype=np.float64) - SIMILARITY_SLACK)


def answer_docs(req: SearchRequest, retrieval: Retrieval, response: SearchResponse) -> list[str]:
    """Documents whose vector change could alter the answer by themselves (not by similarity).

    Vector mode: the returned ones (a candidate below the k-th can only matter by rising above
    it, which the similarity rule catches). Hybrid: every candidate, since fusion uses all ranks.
    """
    if req.mode == "vector" and len(response.hits) == req.k:
        return sorted({h.doc_id for h in response.hits})
    return sorted({h.doc_id for h in retrieval.vector_hits or []})


def candidate_threshold(req: SearchRequest, retrieval: Retrieval, response: SearchResponse, pool: int) -> float:
    """The similarity from which a new chunk could change this answer.

    Vector mode returns the best k, so a chunk must beat the k-th hit. Hybrid fusion uses the
    ranks of every vector candidate, so a chunk matters once it would enter the candidates;
    with fewer candidates than the pool (a small collection), any chunk would.
    """
    if req.mode == "vector" and len(response.hits) == req.k:
        return min(h.vector.score for h in response.hits if h.vector is not None)
    hits = retrieval.vector_hits or []
    return min(h.score for h in hits) if len(hits) >= pool else -1.0


class Validity:
    def __init__(self, postings: PostingsStore, vector_log: VectorLog) -> None:
        self.postings = postings
        self.vector_log = vector_log

    async def invalid_because(self, collection: str, retrieval: Retrieval, threshold: float,
                              term_stamps: dict[str, int] | None = None) -> str | None:
        """None when valid: no write changed the postings of the query's terms since they were read,
        and no vector change since the k-NN query concerns a document the answer depends on or
        brings a chunk at least as similar as ``threshold``. Otherwise the reason. ``term_stamps``:
        the terms' current change stamps when the caller already read them.
        """
        if retrieval.term_versions:
            current = term_stamps
            if current is None:
                current = await self.postings.term_versions(collection, list(retrieval.term_versions))
            if current != retrieval.term_versions:
                return "terms"
        if retrieval.vector_hits is None:
            return None
        changes = await self.vector_log.changes_since(collection, retrieval.vector_log_position)
        if changes is None:
            return "log_trimmed"  # cannot prove it valid
        docs = set(retrieval.answer_docs or [h.doc_id for h in retrieval.vector_hits])
        query = retrieval.query_vector
        for doc_id, raw in changes:
            if doc_id in docs:
                return "document"
            if raw and query is not None:
                chunks = np.frombuffer(raw, dtype=np.float32).reshape(-1, query.shape[0])
                if could_enter(chunks @ query, threshold).any():
                    return "similar_chunk"
        return None
