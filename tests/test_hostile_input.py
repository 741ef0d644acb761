"""Input the stores cannot hold is refused at the boundary (dead letter / 422), never half-indexed.

PostgreSQL refuses NUL in text and jsonb and holds versions as bigint; the cache key (orjson) takes
64-bit integers only. Events and requests that break those limits used to pass the schema, be applied
by the BM25 stage and then fail the vector stage for good (or answer 500).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from jsonschema import Draft202012Validator
from pydantic import ValidationError

from fluxstream.core import keyspace
from fluxstream.core.settings import Settings
from fluxstream.indexer.documents import DocumentState, DocumentWrite
from fluxstream.indexer.postings import PostingsStore
from fluxstream.indexer.write_plan import plan_writes
from fluxstream.schemas.api import SearchRequest
from fluxstream.schemas.decoding import decode
from fluxstream.schemas.events import DeadLetter, DocumentChange
from fluxstream.schemas.registry import schema_path
from tests.conftest import TopicReader, change, eventually

# name -> a document-change event (as JSON text: stdlib json writes integers of any size)
UNSTORABLE: dict[str, dict[str, Any]] = {
    "nul-text": {"text": "before\u0000after"},
    "nul-title": {"title": "a\u0000title", "text": "fine"},
    "nul-metadata-key": {"text": "fine", "metadata": {"k\u0000": "v"}},
    "nul-metadata-value": {"text": "fine", "metadata": {"k": "v\u0000"}},
    "nul-metadata-list": {"text": "fine", "metadata": {"k": ["ok", "v\u0000"]}},
    "nul-doc-id": {"doc_id": "nul\u0000id", "text": "fine"},
    "version-2^63": {"version": 2**63, "text": "fine"},
    "version-2^64-1": {"version": 2**64 - 1, "text": "fine"},
    "version-string": {"version": "7", "text": "fine"},
    "version-true": {"version": True, "text": "fine"},
    "metadata-int-2^64": {"text": "fine", "metadata": {"n": 2**64}},
    "metadata-int-2^70": {"text": "fine", "metadata": {"n": 2**70}},
}


def _event(name: str, collection: str, overrides: dict[str, Any]) -> dict[str, Any]:
    return {**change(f"bad-{name}", collection, version=3), **overrides}


async def test_unstorable_events_are_dead_lettered_not_half_indexed(
        stack: Settings, producer: AIOKafkaProducer, redis_client: Any, collection: str) -> None:
    async with TopicReader(stack, stack.dead_letters_topic) as letters, \
            TopicReader(stack, stack.index_updates_topic) as updates:
        for name, overrides in UNSTORABLE.items():
            raw = json.dumps(_event(name, collection, overrides)).encode()
            await producer.send(stack.documents_topic, key=f"{collection}/{name}".encode(), value=raw)
        # A version beyond bigint used to pin the document: a later ordinary version must still apply.
        pinned = change("pinned", collection, "pinned heron text", version=2**63)
        await producer.send(stack.documents_topic, key=b"pinned", value=json.dumps(pinned).encode())
        await producer.send(stack.documents_topic, key=b"pinned",
                            value=orjson.dumps(change("pinned", collection, "a heron at the river", version=5)))
        largest = change("largest", collection, "the largest version a bigint holds", version=2**63 - 1,
                         metadata={"n": 2**63 - 1, "m": -(2**63)})
        await producer.send(stack.documents_topic, key=b"largest", value=json.dumps(largest).encode())
        await producer.flush()
        dead = await letters.wait_for_records(
            lambda r: r.key is not None and r.key.decode().startswith(f"{collection}/"), count=len(UNSTORABLE))
        reasons = {r.key.decode().split("/", 1)[1]: DeadLetter.from_headers(list(r.headers)).reason for r in dead}
        assert reasons == dict.fromkeys(UNSTORABLE, "schema_violation")
        # Both kept documents reach the vector stage (the BM25-only half-state no longer exists).
        done = await updates.wait_for(lambda e: e[1]["collection"] == collection and e[1]["stages"]["vectors"],
                                      count=2, timeout=90)
    assert {e["doc_id"]: e["version"] for _, e in done} == {"pinned": 5, "largest": 2**63 - 1}
    store = PostingsStore(redis_client)
    for name, overrides in UNSTORABLE.items():
        doc_id = overrides.get("doc_id", f"bad-{name}")
        assert (await store.get_document(collection, doc_id)).version is None, name
    assert (await store.get_document(collection, "pinned")).version == 5


@pytest.mark.parametrize("mode", ["bm25", "vector", "hybrid"])
async def test_unstorable_requests_get_422(http: httpx.AsyncClient, collection: str, mode: str) -> None:
    base = {"query": "heron", "collection": collection, "mode": mode}
    for body in ({**base, "filters": {"k\u0000": "v"}}, {**base, "filters": {"k": "v\u0000"}},
                 {**base, "filters": {"n": 2**64}}, {**base, "filters": {"n": 2**70}, "cache": True},
                 {**base, "filters": {"n": -(2**63) - 1}}, {**base, "query": "he\u0000ron"}):
        resp = await http.post("/v1/search", content=json.dumps(body), headers={"content-type": "application/json"})
        assert resp.status_code == 422, (body, resp.status_code, resp.text[:300])
        assert resp.json()["error"] == "invalid_request"
    ok = await http.post("/v1/search", json={**base, "filters": {"n": 2**63 - 1, "m": -(2**63)}})
    # Accepted: it reached the index, where this test's collection was never written.
    assert ok.status_code == 404 and ok.json()["error"] == "collection_not_found", ok.text[:300]


async def test_document_id_with_nul_is_a_client_error(http: httpx.AsyncClient, redis_client: Any,
                                                       collection: str) -> None:
    # As the BM25 stage wrote such a document before these limits (PostgreSQL then refused the id).
    written = DocumentState(collection, "nul\u0000id", version=1, title="half-indexed", source={})
    await PostingsStore(redis_client).write_documents(
        plan_writes([DocumentWrite(DocumentState(collection, "nul\u0000id"), written)]),
        updated_at="2026-12-01T00:00:00+00:00")
    resp = await http.get(f"/v1/documents/nul%00id?collection={collection}")
    assert 400 <= resp.status_code < 500, resp.text[:300]
    assert "error" in resp.json()


# (JSON text, accepted?): the verdicts the issue asks for; the schema and the decoders must agree on each.
CHANGE_CASES = [
    ('{"op": "upsert", "doc_id": "d", "version": 7}', True),
    ('{"op": "upsert", "doc_id": "d", "version": "7"}', False),
    ('{"op": "upsert", "doc_id": "d", "version": true}', False),
    ('{"op": "upsert", "doc_id": "d", "version": 9223372036854775807}', True),
    ('{"op": "upsert", "doc_id": "d", "version": 9223372036854775808}', False),
    ('{"op": "upsert", "doc_id": "d", "version": 18446744073709551615}', False),
    ('{"op": "upsert", "doc_id": "d", "version": -1}', False),
    ('{"op": "upsert", "doc_id": "d\\u0000", "version": 1}', False),
    ('{"op": "upsert", "doc_id": "d", "version": 1, "text": "a\\u0000"}', False),
    ('{"op": "upsert", "doc_id": "d", "version": 1, "title": "a\\u0000"}', False),
    ('{"op": "upsert", "doc_id": "d", "version": 1, "metadata": {"a\\u0000": 1}}', False),
    ('{"op": "upsert", "doc_id": "d", "version": 1, "metadata": {"a": "b\\u0000"}}', False),
    ('{"op": "upsert", "doc_id": "d", "version": 1, "metadata": {"a": ["b", "c\\u0000"]}}', False),
    ('{"op": "upsert", "doc_id": "d", "version": 1, "metadata": {"a": 9223372036854775807}}', True),
    ('{"op": "upsert", "doc_id": "d", "version": 1, "metadata": {"a": -9223372036854775808}}', True),
    ('{"op": "upsert", "doc_id": "d", "version": 1, "metadata": {"a": 9223372036854775808}}', False),
    ('{"op": "upsert", "doc_id": "d", "version": 1, "metadata": {"a": 18446744073709551616}}', False),
    ('{"op": "upsert", "doc_id": "d", "version": 1, "metadata": {"a": 1.5, "b": true, "c": null, "d": [1, "x"]}}',
     True),
    ('{"op": "upsert", "doc_id": "d", "version": 1, "metadata": {"a": 1e300}}', False),
    ('{"schema_version": true, "op": "upsert", "doc_id": "d", "version": 1}', False),
    ('{"schema_version": 1, "op": "upsert", "doc_id": "d", "version": 1}', True),
]
REQUEST_CASES = [
    ('{"query": "q"}', True),
    ('{"query": "q\\u0000"}', False),
    ('{"query": "q", "filters": {"a\\u0000": 1}}', False),
    ('{"query": "q", "filters": {"a": "\\u0000"}}', False),
    ('{"query": "q", "filters": {"a": 9223372036854775807}}', True),
    ('{"query": "q", "filters": {"a": 9223372036854775808}}', False),
    ('{"query": "q", "filters": {"a": -9223372036854775809}}', False),
    ('{"query": "q", "filters": {"a": 1180591620717411303424}}', False),
    ('{"query": "q", "filters": {"a": 2.5, "b": false, "c": null}}', True),
]


def _schema_accepts(name: str, text: str) -> bool:
    return Draft202012Validator(orjson.loads(schema_path(name).read_bytes())).is_valid(json.loads(text))


@pytest.mark.parametrize(("text", "accepted"), CHANGE_CASES)
def test_document_change_schema_and_worker_decoding_agree(text: str, accepted: bool) -> None:
    """The worker decodes as the published JSON Schema says (orjson then the model, as on the topic)."""
    decoded = isinstance(decode(text.encode(), DocumentChange), DocumentChange)
    assert (decoded, _schema_accepts("document-change", text)) == (accepted, accepted)


@pytest.mark.parametrize(("text", "accepted"), REQUEST_CASES)
def test_search_request_schema_and_api_decoding_agree(text: str, accepted: bool) -> None:
    try:
        SearchRequest.model_validate(json.loads(text))  # FastAPI decodes bodies with the json module
        decoded = True
    except ValidationError:
        decoded = False
    assert (decoded, _schema_accepts("search-request", text)) == (accepted, accepted)


async def test_nul_is_refused_before_any_store(stack: Settings, producer: AIOKafkaProducer,
                                               http: httpx.AsyncClient, collection: str) -> None:
    """A refused event is in no stage (it was keyword-searchable without vectors), and its valid
    neighbour is searchable in every mode."""
    async with TopicReader(stack, stack.index_updates_topic) as updates:
        await producer.send(stack.documents_topic, key=b"x",
                            value=json.dumps(change("x", collection, "kingfisher\u0000dive")).encode())
        await producer.send(stack.documents_topic, key=b"y",
                            value=orjson.dumps(change("y", collection, "kingfisher dive")))
        await producer.flush()
        await updates.wait_for(lambda e: e[1]["collection"] == collection and e[1]["stages"]["vectors"], timeout=90)

    async def found(mode: str) -> list[str]:
        resp = await http.post("/v1/search", json={"query": "kingfisher", "collection": collection,
                                                   "mode": mode, "cache": False})
        return sorted(h["doc_id"] for h in resp.json()["hits"])

    for mode in ("bm25", "vector", "hybrid"):  # x is in no stage: it used to be in BM25 only
        assert await found(mode) == ["y"], mode


async def test_unreadable_index_updates_are_dead_lettered_and_clear_their_cache(
        stack: Settings, producer: AIOKafkaProducer, http: httpx.AsyncClient, redis_client: Any,
        collection: str) -> None:
    """The cache agent cannot tell what an unreadable update touched: it dead-letters the record and
    drops that collection's cache (no entry can be trusted), instead of skipping it silently."""
    async with TopicReader(stack, stack.index_updates_topic) as updates:
        await producer.send_and_wait(stack.documents_topic, key=b"h",
                                     value=orjson.dumps(change("h", collection, "heron wading")))
        await updates.wait_for(lambda e: e[1]["collection"] == collection and e[1]["stages"]["vectors"], timeout=90)
    body = {"query": "heron", "collection": collection, "mode": "bm25"}
    assert (await http.post("/v1/search", json=body)).status_code == 200
    cached = keyspace.cache_prefix(collection) + "*"
    assert await redis_client.keys(cached)
    # JSON objects naming the collection: other tests' readers of the shared topic decode every record.
    partial = {"collection": collection, "doc_id": "h", "version": 2, "stages": {"bm25": True, "vectors": False}}
    unreadable = {"partial": orjson.dumps(partial), "wrong": orjson.dumps({**partial, "version": "7"})}
    async with TopicReader(stack, stack.dead_letters_topic) as letters:
        for name, value in unreadable.items():
            await producer.send_and_wait(stack.index_updates_topic, key=f"{collection}/{name}".encode(), value=value)
        dead = await letters.wait_for_records(
            lambda r: r.key is not None and r.key.decode().startswith(f"{collection}/"), count=2)
    reasons = {r.key.decode().split("/", 1)[1]: DeadLetter.from_headers(list(r.headers)).reason for r in dead}
    assert reasons == {"partial": "schema_violation", "wrong": "schema_violation"}
    assert all(DeadLetter.from_headers(list(r.headers)).source.topic == stack.index_updates_topic for r in dead)
    assert await eventually(lambda: _none_left(redis_client, cached))
    assert (await http.post("/v1/search", json=body)).json()["cache"]["status"] == "miss"


async def _none_left(redis: Any, pattern: str) -> bool:
    return not await redis.keys(pattern)
