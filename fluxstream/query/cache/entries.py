"""How a cache entry's retrieval and query embedding are stored in its hash."""

from __future__ import annotations

import base64

import numpy as np
import orjson

from fluxstream.indexer.vector_store import VectorHit
from fluxstream.query.cache.retrieval import Retrieval


def encode_embedding(vector: np.ndarray) -> str:
    return base64.b64encode(np.asarray(vector, dtype=np.float32).tobytes()).decode()


def embedding_of(raw: bytes | str | None) -> np.ndarray | None:
    """An entry's stored query embedding (None for BM25-only entries)."""
    return np.frombuffer(base64.b64decode(raw), dtype=np.float32) if raw else None


def encode_retrieval(retrieval: Retrieval) -> bytes:
    hits = None if retrieval.vector_hits is None else [
        [h.chunk_id, h.doc_id, h.content_hash, h.score] for h in retrieval.vector_hits]
    return orjson.dumps({"postings": retrieval.postings, "term_versions": retrieval.term_versions,
                         "vector_hits": hits, "vector_log_position": retrieval.vector_log_position,
                         "answer_docs": retrieval.answer_docs})


def decode_retrieval(raw: bytes | str, query_vector: np.ndarray | None) -> Retrieval:
    data = orjson.loads(raw)
    hits = None if data["vector_hits"] is None else [VectorHit(*h) for h in data["vector_hits"]]
    return Retrieval(postings=data["postings"], term_versions=data["term_versions"], vector_hits=hits,
                     vector_log_position=data["vector_log_position"], answer_docs=data.get("answer_docs"),
                     query_vector=query_vector)
