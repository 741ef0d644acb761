"""Assertions shared by tests: BM25 statistics recomputed from scratch, compared with Redis."""

from __future__ import annotations

from collections import Counter

import redis.asyncio as aioredis

from fluxstream.settings import Settings
from fluxstream.wiring import build_tokenizer
from indexer.chunking import Chunker, make_chunk_id
from indexer.postings import PostingsStore, pack_posting


async def scan_postings(redis: aioredis.Redis, collection: str) -> dict[str, dict[str, int]]:
    store = PostingsStore(redis)
    prefix = store.posting_key(collection, "")
    postings: dict[str, dict[str, int]] = {}
    async for key in redis.scan_iter(match=prefix.replace("{", "\\{").replace("}", "\\}") + "*", count=1000):
        term = key.decode()[len(prefix):]
        postings[term] = {k.decode(): int(v) for k, v in (await redis.hgetall(key)).items()}
    return postings


def recompute(settings: Settings, documents: dict[str, tuple[str, str]]) -> tuple[dict[str, dict[str, int]], int, int]:
    """Postings, N and total length for live documents {doc_id: (title, text)}, from nothing."""
    tokenizer = build_tokenizer(settings)
    chunker = Chunker(settings.chunk_size, settings.chunk_overlap, tokenizer)
    postings: dict[str, dict[str, int]] = {}
    n_chunks = total = 0
    for doc_id, (title, text) in documents.items():
        for chunk in chunker.split(title, text):
            tf = Counter(tokenizer.tokenize(chunk.text))
            dl = sum(tf.values())
            n_chunks += 1
            total += dl
            for term, count in tf.items():
                postings.setdefault(term, {})[make_chunk_id(doc_id, chunk.chunk_no)] = pack_posting(count, dl)
    return postings, n_chunks, total


async def assert_stats_match(redis: aioredis.Redis, settings: Settings, collection: str,
                             documents: dict[str, tuple[str, str]]) -> None:
    expected, n_chunks, total = recompute(settings, documents)
    assert await scan_postings(redis, collection) == expected
    stats = await PostingsStore(redis).stats(collection)
    assert (stats.chunks, stats.total_len, stats.docs) == (n_chunks, total, len(documents))
