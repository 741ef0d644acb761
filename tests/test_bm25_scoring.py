"""BM25 through the whole path (Kafka -> worker -> Redis -> query service) against hand-computed values.

Corpus (stop words not involved): d1 = "cat cat dog" (dl 3), d2 = "dog bird" (dl 2),
d3 = "cat fish fish fish" (dl 4); N = 3, avgdl = 3, k1 = 1.2, b = 0.75.
idf(cat) = ln(1 + (3 - 2 + 0.5) / (2 + 0.5)) = ln(1.6)        = 0.470003629245736
idf(fish) = ln(1 + (3 - 1 + 0.5) / (1 + 0.5)) = ln(2.666...) = 0.980829253011726
cat in d1:  0.470003629 * 2 * 2.2 / (2 + 1.2 * (0.25 + 0.75 * 3/3)) = 0.470003629 * 1.375 = 0.646254990212887
cat in d3:  0.470003629 * 1 * 2.2 / (1 + 1.2 * (0.25 + 0.75 * 4/3)) = 0.470003629 * 0.88  = 0.413603193736247
fish in d3: 0.980829253 * 3 * 2.2 / (3 + 1.2 * 1.25)               = 0.980829253 * 1.4666 = 1.438549571083866
"""

from __future__ import annotations

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from fluxstream.core.settings import Settings
from fluxstream.indexer.bm25 import idf
from tests.conftest import TopicReader, change, send


@pytest.fixture
async def small_corpus(stack: Settings, producer: AIOKafkaProducer, collection: str) -> str:
    async with TopicReader(stack, stack.index_updates_topic) as updates:
        for doc_id, text in (("d1", "cat cat dog"), ("d2", "dog bird"), ("d3", "cat fish fish fish")):
            await send(producer, stack.documents_topic, change(doc_id, collection, text, version=1))
        await updates.wait_for(lambda e: e[1]["collection"] == collection, count=3)
    return collection


async def scores(http: httpx.AsyncClient, collection: str, query: str) -> dict[str, float]:
    resp = await http.post("/v1/search", json={"query": query, "collection": collection, "mode": "bm25"})
    assert resp.status_code == 200, resp.text
    return {h["doc_id"]: h["score"] for h in resp.json()["hits"]}


def test_idf_lucene_form() -> None:
    assert idf(3, 2) == pytest.approx(0.470003629245736, abs=1e-12)
    assert idf(3, 1) == pytest.approx(0.980829253011726, abs=1e-12)


async def test_single_term(http: httpx.AsyncClient, small_corpus: str) -> None:
    got = await scores(http, small_corpus, "cat")
    assert list(got) == ["d1", "d3"]
    assert got["d1"] == pytest.approx(0.646254990212887, abs=1e-6)
    assert got["d3"] == pytest.approx(0.413603193736247, abs=1e-6)


async def test_two_terms_sum(http: httpx.AsyncClient, small_corpus: str) -> None:
    got = await scores(http, small_corpus, "Cat FISH")  # case-folded like the index
    assert list(got) == ["d3", "d1"]
    assert got["d3"] == pytest.approx(0.413603193736247 + 1.438549571083866, abs=1e-6)
    assert got["d1"] == pytest.approx(0.646254990212887, abs=1e-6)


async def test_absent_term_and_stopword_only(http: httpx.AsyncClient, small_corpus: str) -> None:
    assert await scores(http, small_corpus, "unicorn") == {}
    assert await scores(http, small_corpus, "the of and") == {}
