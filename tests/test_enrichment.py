"""Chunk enrichment: metrics, structure and keywords computed by the worker's enrich stage and
filterable in search (BM25 and vector), plus LLM entities/topics from an OpenAI-wire chat server."""

from __future__ import annotations

import json
from collections import Counter

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from fluxstream.core.retry import RetryPolicy
from fluxstream.core.settings import Settings
from fluxstream.indexer.chat import ChatModel
from fluxstream.indexer.enrichment import keywords, llm_tags, structure, syllables, text_metrics
from fluxstream.indexer.postings import StoredChunk
from fluxstream.indexer.tokenizer import Tokenizer
from tests.conftest import change, eventually, send
from tests.openai_server import chat_server


def stored(chunk_id: str, text: str) -> StoredChunk:
    return StoredChunk(chunk_id, "d", int(chunk_id.split("#")[1]), "", text, "h", {}, 1)


def test_text_metrics_and_readability() -> None:
    easy = text_metrics("The cat sat. The dog ran.", Tokenizer())
    hard = text_metrics("Electromagnetic interoperability considerations necessitate comprehensive "
                        "standardisation methodologies.", Tokenizer())
    assert (easy["sentences"], easy["chars"], easy["tokens"]) == (2, 25, 4)
    assert easy["readability"] > 90 > 0 > hard["readability"]
    assert [syllables(w) for w in ("cat", "table", "make", "beautiful")] == [1, 2, 1, 3]


def test_structure_follows_headings_across_chunks() -> None:
    chunks = [stored("d#0", "# Guide\nintro text\n## Install\nsteps"), stored("d#1", "more install steps"),
              stored("d#2", "<h2>Usage</h2> run it"), stored("d#3", "### Flags\n--fast")]
    shape = structure(chunks)
    assert [s["section"] for s in shape] == ["Guide", "Install", "Usage", "Flags"]
    assert shape[1]["heading_path"] == "Guide > Install"
    assert shape[3]["heading_path"] == "Guide > Usage > Flags"
    assert (shape[0]["prev_chunk"], shape[0]["next_chunk"], shape[3]["next_chunk"]) == (None, "d#1", None)


def test_keywords_prefer_rare_terms() -> None:
    weights = keywords(Counter({"the": 5, "kafka": 2, "offset": 1}), {"the": 900, "kafka": 10, "offset": 40}, 1000)
    assert list(weights)[:2] == ["kafka", "offset"]


async def test_enrichment_is_filterable(stack: Settings, producer: AIOKafkaProducer, http: httpx.AsyncClient,
                                        collection: str) -> None:
    filler = " ".join(f"word{i}" for i in range(180))
    text = (f"# Manual\n\n## Installation\n\nInstall the streaming indexer with pip. {filler}\n\n"
            f"## Operation\n\nOperate the streaming indexer with care. {filler}")
    await send(producer, stack.documents_topic, change("manual", collection, text))

    async def search(query: str, mode: str, section: str) -> list[dict]:
        body = {"query": query, "collection": collection, "mode": mode, "k": 10,
                "filters": {"enrich_section": section}}
        resp = await http.post("/v1/search", json=body)
        return [] if resp.status_code == 404 else resp.json()["hits"]  # 404: not indexed yet

    async def enriched() -> list | None:
        return await search("word130", "bm25", "Operation") or None  # word130 is in both sections

    hits = await eventually(enriched, timeout=60, interval=0.5)
    assert [h["chunk_id"] for h in hits] == ["manual#2"]  # the chunk after "## Operation"
    meta = hits[0]["metadata"]
    assert meta["enrich_heading_path"] == "Manual > Operation" and meta["enrich_tokens"] > 0
    assert meta["enrich_prev_chunk"] == "manual#1" and isinstance(meta["enrich_readability"], float)
    assert len(meta["enrich_keywords"]) == len(meta["enrich_keyword_weights"]) == 5
    installation = await search("word130", "bm25", "Installation")
    assert {h["chunk_id"] for h in installation} <= {"manual#0", "manual#1"} and installation
    assert installation[0]["metadata"]["enrich_heading_path"] == "Manual > Installation"
    # Vectors land after the BM25 write and its enrichment (embedding is the slow stage): wait for them.
    vector = await eventually(lambda: search("how do I install it", "vector", "Installation"), timeout=60)
    assert vector and {h["metadata"]["enrich_section"] for h in vector} == {"Installation"}


@pytest.mark.parametrize(("reply", "expected"), [
    ('Here you go: {"entities": ["Kafka", "Redis"], "topics": ["streaming"]}',
     {"entities": ["Kafka", "Redis"], "topics": ["streaming"]}),
    ("no JSON at all", {}),
])
async def test_llm_tags(reply: str, expected: dict) -> None:
    with chat_server(lambda messages: reply) as (base_url, state):
        import openai

        chat = ChatModel(openai.AsyncOpenAI(base_url=base_url, api_key="k", max_retries=0), "tagger",
                         policy=RetryPolicy(1, 0.01, 0.05), max_tokens=100)
        assert await llm_tags(chat, "Kafka feeds Redis in a streaming indexer.") == expected
    assert json.dumps(state.requests[0]["messages"]).count("entities") >= 1
