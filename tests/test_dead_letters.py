"""A batch mixing valid and malformed events: every valid one is indexed, every bad one dead-lettered."""

from __future__ import annotations

import hashlib

import httpx
import orjson
from aiokafka import AIOKafkaProducer

from fluxstream.core.settings import Settings
from fluxstream.schemas.events import DeadLetter
from tests.conftest import TopicReader, change, send


async def test_mixed_batch(stack: Settings, producer: AIOKafkaProducer, http: httpx.AsyncClient,
                           collection: str) -> None:
    topic = stack.documents_topic
    bad: dict[str, tuple[bytes, str]] = {
        "bad-json": (b'{"op": "upsert", "doc_id": ', "invalid_json"),
        "missing": (orjson.dumps({"op": "upsert", "collection": collection, "version": 1}), "schema_violation"),
        "wrong-type": (orjson.dumps(change("w", collection, "x", version=1) | {"version": "seven"}),
                       "schema_violation"),
        "bad-op": (orjson.dumps(change("o", collection, "x", version=1) | {"op": "merge"}), "schema_violation"),
        "not-object": (b"[1, 2, 3]", "invalid_event"),
        "oversized": (orjson.dumps(change("big", collection, "word " * (stack.max_text_bytes // 5 + 10),
                                          version=1)), "oversized"),
    }
    good = [change(f"g{i}", collection, f"valid document number {i} about herons", version=1) for i in range(6)]
    async with TopicReader(stack, stack.dead_letters_topic) as letters, \
            TopicReader(stack, stack.index_updates_topic) as updates:
        # Interleave so the worker sees them in the same batches.
        for i, (key, (payload, _reason)) in enumerate(bad.items()):
            await producer.send(topic, key=key.encode(), value=payload)
            await producer.send(topic, key=good[i]["doc_id"].encode(), value=orjson.dumps(good[i]))
        await producer.flush()
        dead = await letters.wait_for_records(lambda r: r.key is not None and r.key.decode() in bad,
                                              count=len(bad))
        await updates.wait_for(lambda e: e[1]["collection"] == collection and e[1]["stages"]["bm25"],
                               count=len(good))
    by_key = {record.key.decode(): record for record in dead}
    for key, (payload, reason) in bad.items():
        record = by_key[key]
        letter = DeadLetter.from_headers(list(record.headers))
        if len(payload) < stack.dead_letter_max_bytes // 2:
            assert record.value == payload and letter.original_size is None  # the original bytes, untouched
        else:  # over the dead-letter limit: its beginning, with the whole original's size and hash
            assert payload.startswith(record.value) and letter.original_size == len(payload)
            assert letter.original_sha256 == hashlib.sha256(payload).hexdigest()
        assert letter.reason == reason, (key, letter)
        assert letter.source.topic == topic and letter.detail
    resp = await http.post("/v1/search", json={"query": "herons", "collection": collection, "mode": "bm25",
                                               "k": 20})
    assert sorted(h["doc_id"] for h in resp.json()["hits"]) == sorted(g["doc_id"] for g in good)


async def test_worker_survives_and_keeps_indexing(stack: Settings, producer: AIOKafkaProducer,
                                                  http: httpx.AsyncClient, collection: str) -> None:
    async with TopicReader(stack, stack.index_updates_topic) as updates:
        await producer.send_and_wait(stack.documents_topic, key=b"junk", value=b"\xff\xfe not json")
        await send(producer, stack.documents_topic, change("after", collection, "still alive", version=1))
        await updates.wait_for(lambda e: e[1]["collection"] == collection)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack.worker_web_port}") as worker:
        ready = await worker.get("/readyz")
        assert ready.status_code == 200 and ready.json()["ready"] is True
        metrics = await worker.get("/metrics")
        assert metrics.status_code == 200
        assert 'fluxstream_dead_letters_total{reason="invalid_json"}' in metrics.text
