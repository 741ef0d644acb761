"""The semantic cache's validity rules and its vector-change log, one module each (fluxstream/query/cache/).

The rules are pure and tested without Redis; the log against the session's Valkey (its trimming check
is what refuses an entry whose validity can no longer be proven).
"""

from __future__ import annotations

import numpy as np
import redis.asyncio as aioredis

from fluxstream.core import keyspace
from fluxstream.indexer.vector_stage import VectorChange
from fluxstream.indexer.vector_store import VectorHit
from fluxstream.query.cache.retrieval import Retrieval
from fluxstream.query.cache.validity import SIMILARITY_SLACK, answer_docs, candidate_threshold, could_enter
from fluxstream.query.cache.vector_log import VectorLog
from fluxstream.schemas.api import RetrieverScore, SearchHit, SearchRequest, SearchResponse


def _hit(doc_id: str, vector_score: float) -> SearchHit:
    return SearchHit(doc_id=doc_id, chunk_id=f"{doc_id}#0", chunk_no=0, title="", text="", metadata={}, score=1.0,
                     vector=RetrieverScore(rank=1, score=vector_score))


def _response(req: SearchRequest, hits: list[SearchHit]) -> SearchResponse:
    return SearchResponse(query=req.query, collection=req.collection, mode=req.mode, fusion=None, hits=hits,
                          timings_ms={})


CANDIDATES = [VectorHit(f"{d}#0", d, "h", s) for d, s in (("a", 0.9), ("b", 0.8), ("c", 0.7), ("d", 0.6))]


def test_a_full_vector_answer_depends_on_its_hits_and_its_kth_score() -> None:
    req = SearchRequest(query="q", collection="c", mode="vector", k=2)
    response = _response(req, [_hit("a", 0.9), _hit("b", 0.8)])
    retrieval = Retrieval(vector_hits=CANDIDATES)
    assert answer_docs(req, retrieval, response) == ["a", "b"]
    assert candidate_threshold(req, retrieval, response, pool=4) == 0.8


def test_a_hybrid_answer_depends_on_every_candidate_and_any_chunk_below_a_full_pool() -> None:
    req = SearchRequest(query="q", collection="c", mode="hybrid", k=2)
    response = _response(req, [_hit("a", 0.9), _hit("b", 0.8)])
    retrieval = Retrieval(vector_hits=CANDIDATES)
    assert answer_docs(req, retrieval, response) == ["a", "b", "c", "d"]
    assert candidate_threshold(req, retrieval, response, pool=4) == 0.6  # the last candidate of a full pool
    assert candidate_threshold(req, retrieval, response, pool=10) == -1.0  # fewer than the pool: any chunk


def test_a_chunk_could_enter_from_the_threshold_less_the_float32_slack() -> None:
    similarities = np.asarray([0.5, 0.8 - SIMILARITY_SLACK / 2, 0.8 - 2 * SIMILARITY_SLACK], dtype=np.float32)
    assert could_enter(similarities, 0.8).tolist() == [False, True, False]
    assert could_enter(similarities, [0.4, 0.9, 0.1]).tolist() == [True, False, True]  # per entry


async def test_the_log_returns_what_was_recorded_since_a_head(redis_client: aioredis.Redis, collection: str) -> None:
    log = VectorLog(redis_client)
    assert await log.head(collection) == "0-0/0"
    assert await log.changes_since(collection, "0-0/0") == []  # no stream yet: nothing logged
    await log.record([VectorChange(collection, "x", b"\x01\x02"), VectorChange("elsewhere-" + collection, "y", b"")])
    head = await log.head(collection)
    assert head.endswith("/1")
    await log.record([VectorChange(collection, "z", b"\x03")])
    assert await log.changes_since(collection, "0-0/0") == [("x", b"\x01\x02"), ("z", b"\x03")]
    assert await log.changes_since(collection, head) == [("z", b"\x03")]
    assert await redis_client.xlen(keyspace.vector_log("elsewhere-" + collection)) == 1


async def test_a_head_trimmed_away_is_refused(redis_client: aioredis.Redis, collection: str) -> None:
    """Trimming drops records a reader at an older head needs: it gets None (cannot prove validity)."""
    log = VectorLog(redis_client, maxlen=10)
    await log.record([VectorChange(collection, "first", b"")])
    head = await log.head(collection)
    for start in range(0, 1000, 100):  # approximate trimming drops whole stream nodes (100 entries)
        await log.record([VectorChange(collection, f"d{i}", b"") for i in range(start, start + 100)])
    assert await redis_client.xlen(keyspace.vector_log(collection)) < 1000
    assert await log.changes_since(collection, head) is None
    assert await log.changes_since(collection, await log.head(collection)) == []
