"""The RAG layer: /v1/answer offline and with a chat model (whole, streamed, retried, failing),
HyDE and QuOTE, feedback and stats. Chat runs against a local OpenAI-wire-format server; the
index, Kafka, Redis and PostgreSQL are the session's real servers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from fluxstream.core.settings import Settings
from fluxstream.query.answering import HYDE_PROMPT, QUOTE_PROMPT
from fluxstream.stack import free_port
from tests.conftest import TopicReader, change, send
from tests.helpers import query_service
from tests.openai_server import ChatServerState, chat_server

DOCS = {
    "volcano": "Volcanic eruptions eject ash and lava; magma rises through vents in the crust.",
    "glacier": "Glaciers carve valleys as ice flows slowly downhill under its own weight.",
    "reef": "Coral reefs are built by colonies of tiny animals in warm shallow seas.",
}


def reply(messages: list[dict[str, str]]) -> str:
    system = messages[0]["content"]
    if system == HYDE_PROMPT:
        return "Magma rising through vents in the crust erupts as lava and ash."
    if system.startswith(QUOTE_PROMPT.split("{")[0]):
        return "What comes out of a volcano?\nHow does magma reach the surface?\nWhy do volcanoes erupt?"
    return "Magma rises through vents and erupts [1]."


@pytest.fixture(scope="module")
async def indexed(stack: Settings) -> str:
    collection = f"rag-{uuid.uuid4().hex[:8]}"
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_url, acks="all", enable_idempotence=False)
    await producer.start()
    try:
        async with TopicReader(stack, stack.index_updates_topic) as updates:
            for doc_id, text in DOCS.items():
                await send(producer, stack.documents_topic, change(doc_id, collection, text, title=doc_id.title()))
            await updates.wait_for(lambda e: e[1]["collection"] == collection and e[1]["stages"]["vectors"], count=3)
    finally:
        await producer.stop()
    return collection


@pytest.fixture(scope="module")
async def with_chat(stack: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, ChatServerState]]:
    with chat_server(reply) as (base_url, chat):
        settings = replace(stack, chat_model="test-chat", chat_base_url=base_url, chat_api_key="k",
                           http_port=free_port(), search_requests_topic=f"rag-req-{uuid.uuid4().hex[:6]}",
                           app_id="rag-tests")  # its own consumer group: never rebalances the session service
        async with query_service(settings) as client:
            yield client, chat


async def test_offline_answer_returns_cited_prompt_and_sources(http: httpx.AsyncClient, indexed: str) -> None:
    resp = await http.post("/v1/answer", json={"query": "how does magma erupt from a volcano",
                                               "collection": indexed, "k": 2})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["answer"] is None and body["model"] is None and body["transform"] == "none"
    assert body["sources"][0]["doc_id"] == "volcano" and body["sources"][0]["n"] == 1
    user = body["prompt"][1]["content"]
    assert "[1] doc: volcano | chunk: volcano#0" in user and "Question: how does magma erupt" in user
    assert body["context_tokens"] > 0 and resp.headers["x-request-id"] == body["request_id"]
    small = await http.post("/v1/answer", json={"query": "volcano", "collection": indexed, "k": 3,
                                                "context_tokens": 100})
    assert small.json()["context_tokens"] <= 100
    refused = await http.post("/v1/answer", json={"query": "volcano", "collection": indexed, "transform": "hyde"})
    assert refused.status_code == 400 and refused.json()["error"] == "transform_unavailable"


async def test_answer_with_chat_model_retries_and_streams(
    with_chat: tuple[httpx.AsyncClient, ChatServerState], indexed: str
) -> None:
    client, chat = with_chat
    chat.failures[:] = [429, 503]  # rate-limited, then unavailable, then fine
    before = len(chat.requests)
    resp = await client.post("/v1/answer", json={"query": "how does magma erupt", "collection": indexed})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["answer"] == "Magma rises through vents and erupts [1]." and body["model"] == "test-chat"
    assert len(chat.requests) - before == 3
    assert "[1] doc: volcano" in chat.requests[-1]["messages"][1]["content"]

    events = []
    async with client.stream("POST", "/v1/answer", json={"query": "how does magma erupt", "collection": indexed,
                                                          "stream": True}) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        async for block in _sse(stream):
            events.append(block)
    names = [name for name, _ in events]
    assert names[0] == "sources" and names[-1] == "done" and names.count("delta") >= 3
    streamed = "".join(data["text"] for name, data in events if name == "delta")
    assert streamed == events[-1][1]["answer"] == "Magma rises through vents and erupts [1]."

    chat.failures[:] = [400]  # a permanent error: no retry, a clear 502
    failed = await client.post("/v1/answer", json={"query": "magma", "collection": indexed})
    assert failed.status_code == 502 and failed.json()["error"] == "chat_failed"


async def test_hyde_and_quote_transforms(with_chat: tuple[httpx.AsyncClient, ChatServerState], indexed: str) -> None:
    client, _ = with_chat
    hyde = (await client.post("/v1/answer", json={"query": "what happens in an eruption", "collection": indexed,
                                                  "transform": "hyde", "k": 1})).json()
    assert hyde["transform"] == "hyde" and hyde["transformed_queries"][0].startswith("Magma rising")
    assert hyde["sources"][0]["doc_id"] == "volcano"
    quote = (await client.post("/v1/answer", json={"query": "eruptions", "collection": indexed,
                                                   "transform": "quote", "k": 2})).json()
    assert quote["transform"] == "quote" and len(quote["transformed_queries"]) == 3
    assert quote["sources"][0]["doc_id"] == "volcano"


async def test_feedback_and_stats(with_chat: tuple[httpx.AsyncClient, ChatServerState], indexed: str) -> None:
    client, _ = with_chat
    answered = (await client.post("/v1/answer", json={"query": "glaciers and valleys", "collection": indexed})).json()
    rated = await client.post("/v1/feedback", json={"request_id": answered["request_id"], "score": 1,
                                                    "comment": "spot on"})
    assert rated.status_code == 201 and rated.json()["collection"] == indexed
    await client.post("/v1/search", json={"query": "coral", "collection": indexed})
    bad = await client.post("/v1/feedback", json={"request_id": "x", "score": 5})
    assert bad.status_code == 422
    stats = (await client.get("/v1/stats", params={"hours": 1})).json()
    [row] = [r for r in stats["collections"] if r["collection"] == indexed]
    assert row["answers"] >= 1 and row["queries"] > row["answers"]
    assert row["feedback"] == 1 and row["positive_rate"] == 1.0 and row["latency_ms"]["p50"] > 0


async def _sse(response: httpx.Response) -> AsyncIterator[tuple[str, dict]]:
    buffer = ""
    async for text in response.aiter_text():
        buffer += text
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
            yield fields["event"], orjson.loads(fields["data"])


def test_prompt_budget_keeps_best_sources_whole() -> None:
    from fluxstream.query.prompting import build_prompt, estimate_tokens
    from fluxstream.schemas.api import SearchHit

    def hit(n: int, words: int) -> SearchHit:
        return SearchHit(doc_id=f"d{n}", chunk_id=f"d{n}#0", chunk_no=0, title="", text="word " * words,
                         metadata={}, score=1.0 / n)

    prompt = build_prompt("q", [hit(1, 150), hit(2, 150), hit(3, 150)], budget_tokens=450)
    assert [h.doc_id for h in prompt.sources] == ["d1", "d2"] and prompt.context_tokens <= 450
    alone = build_prompt("q", [hit(1, 3000)], budget_tokens=300)
    assert [h.doc_id for h in alone.sources] == ["d1"] and alone.context_tokens <= 300
    assert estimate_tokens(alone.messages[1]["content"]) < 400


async def test_eval_command_scores_the_live_service(stack: Settings, indexed: str, tmp_path) -> None:
    from tests.test_replay import cli

    (tmp_path / "qrels").write_text("q1 0 volcano 1\nq2 0 glacier 1\nq3 0 reef 2\nq3 0 volcano 0\n")
    (tmp_path / "queries.tsv").write_text("q1\tmagma and lava eruptions\nq2\tice carving valleys\n"
                                          "q3\tcoral colonies in warm seas\nq9\tunjudged query\n")
    result = await asyncio.to_thread(cli, stack, "eval", str(tmp_path / "qrels"), str(tmp_path / "queries.tsv"),
                                     "--collection", indexed, "--mode", "bm25", "--k", "1", "--json")
    assert result.returncode == 0, result.stderr
    scores = orjson.loads(result.stdout)
    assert scores["queries"] == 3
    assert scores["ndcg@1"] == scores["mrr@1"] == scores["p@1"] == 1.0  # each query's judged doc ranks first
    assert scores["recall@1"] == 1.0 and scores["f1@1"] == 1.0
