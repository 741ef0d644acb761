"""Read-your-writes: the position a produce returns, passed as min_position, always finds the change."""

from __future__ import annotations

import httpx
import pytest

from fluxstream.client import publish_documents
from fluxstream.settings import Settings


@pytest.mark.parametrize("mode", ["bm25", "hybrid", "vector"])
async def test_search_with_token_always_finds_the_document(stack: Settings, http: httpx.AsyncClient,
                                                           collection: str, mode: str) -> None:
    for i in range(15):
        word = f"zyx{i}qv"
        [token] = await publish_documents(stack, [{"doc_id": f"ryw-{i}", "collection": collection, "version": 1,
                                                   "text": f"freshly written {word} document"}])
        resp = await http.post("/v1/search", json={
            "query": word if mode != "vector" else f"freshly written {word} document", "collection": collection,
            "mode": mode, "k": 20, "min_position": token.model_dump()})
        assert resp.status_code == 200, resp.text
        ids = [h["doc_id"] for h in resp.json()["hits"]]
        assert f"ryw-{i}" in ids, (mode, i, ids)
        if mode != "bm25":  # vectors were waited for too: the hit carries its vector rank
            hit = next(h for h in resp.json()["hits"] if h["doc_id"] == f"ryw-{i}")
            assert hit["vector"] is not None


async def test_unreached_position_answers_409_with_the_current_one(stack: Settings, http: httpx.AsyncClient,
                                                                  collection: str) -> None:
    [token] = await publish_documents(stack, [{"doc_id": "x", "collection": collection, "text": "anything"}])
    future = token.model_dump() | {"offset": token.offset + 1_000_000}
    resp = await http.post("/v1/search", json={"query": "anything", "collection": collection,
                                               "min_position": future, "wait_timeout_ms": 200})
    assert resp.status_code == 409
    body = resp.json()
    assert body["error"] == "position_not_reached"
    current = body["details"][0]
    assert current["partition"] == token.partition and 0 <= current["bm25_applied_offset"] < future["offset"]
