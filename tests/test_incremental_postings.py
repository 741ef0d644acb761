"""Incremental BM25 state stays exact: random upserts, deletes, duplicates and stale events, in batches,
compared with a from-scratch recomputation of the final documents."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
import redis.asyncio as aioredis

from fluxstream.core.settings import Settings
from fluxstream.indexer.apply import BM25Stage, split_by_document
from fluxstream.indexer.chunking import Chunker
from fluxstream.indexer.fold import DocumentBuilder, SourcedChange
from fluxstream.indexer.postings import PostingsStore
from fluxstream.indexer.wiring import build_tokenizer
from fluxstream.schemas.events import DocumentChange, SourcePosition
from tests.helpers import assert_stats_match

VOCAB = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota",
         "kappa", "lambda", "mu", "nu", "xi", "omicron", "pi", "rho", "sigma"]


def random_text(rng: random.Random) -> str:
    return " ".join(rng.choice(VOCAB) for _ in range(rng.randint(0, 30)))


@pytest.mark.parametrize("group_size", [64, 3], ids=["one-group", "concurrent-groups"])
async def test_random_change_sequence(stack: Settings, redis_client: aioredis.Redis, collection: str,
                                      group_size: int) -> None:
    rng = random.Random(20261122)
    settings = stack
    small_chunks = Chunker(size=8, overlap=2, tokenizer=build_tokenizer(settings))  # many chunks per document
    stage = BM25Stage(PostingsStore(redis_client), DocumentBuilder(small_chunks, build_tokenizer(settings)),
                      group_size=group_size)
    versions: dict[str, int] = {}
    final: dict[str, tuple[str, str] | None] = {}
    offset = 0
    for _round in range(40):
        batch = []
        for _ in range(rng.randint(1, 12)):
            doc_id = f"d{rng.randint(0, 24)}"
            roll = rng.random()
            current = versions.get(doc_id, 0)
            if roll < 0.1 and current:  # a stale or duplicate delivery: must change nothing
                version, op = rng.randint(1, current), rng.choice(["upsert", "delete"])
            else:
                version, op = current + rng.randint(1, 3), "delete" if roll < 0.3 else "upsert"
                versions[doc_id] = version
            title, text = random_text(rng), random_text(rng)
            if version > current:
                final[doc_id] = (title, text) if op == "upsert" else None
            change = DocumentChange(op=op, doc_id=doc_id, collection=collection, version=version,
                                    title=title, text=text)
            batch.append(SourcedChange(change, SourcePosition(topic="t", partition=0, offset=offset)))
            offset += 1
        await stage.apply(batch)
    live = {doc_id: doc for doc_id, doc in final.items() if doc is not None}
    await assert_stats_match(redis_client, replace(settings, chunk_size=8, chunk_overlap=2), collection, live)
    # Every document record holds the latest version, tombstones included.
    store = PostingsStore(redis_client)
    for doc_id, version in versions.items():
        state = await store.get_document(collection, doc_id)
        assert state.version == version
        assert state.deleted == (final[doc_id] is None)


async def test_replaying_the_same_batch_is_a_no_op(stack: Settings, redis_client: aioredis.Redis,
                                                   collection: str) -> None:
    tokenizer = build_tokenizer(stack)
    stage = BM25Stage(PostingsStore(redis_client), DocumentBuilder(Chunker(tokenizer=tokenizer), tokenizer))
    batch = [
        SourcedChange(DocumentChange(op="upsert", doc_id=f"r{i}", collection=collection, version=1,
                                     text=f"replay safety document {i}"),
                      SourcePosition(topic="t", partition=0, offset=i))
        for i in range(5)
    ]
    first = await stage.apply(batch)
    second = await stage.apply(batch)
    assert (first.applied, first.skipped) == (5, 0)
    assert (second.applied, second.skipped) == (0, 5)
    # The redelivery re-emits embed jobs and index updates, in case a crash lost them after the Redis write.
    assert sorted(u.doc_id for u in second.index_updates) == [f"r{i}" for i in range(5)]
    assert sorted(j.doc_id for j in second.embed_jobs) == [f"r{i}" for i in range(5)]
    assert all(j.chunks[0].text == f"replay safety document {j.doc_id[1:]}" for j in second.embed_jobs)
    await assert_stats_match(redis_client, stack, collection,
                             {f"r{i}": ("", f"replay safety document {i}") for i in range(5)})


def test_groups_keep_each_documents_changes_together_and_in_order() -> None:
    order = ["a", "b", "a", "c", "d", "b", "e", "a"]
    batch = [SourcedChange(DocumentChange(op="upsert", doc_id=doc, collection="c", version=n),
                           SourcePosition(topic="t", partition=0, offset=n)) for n, doc in enumerate(order, 1)]
    groups = split_by_document(batch, group_size=2)
    assert [[(s.change.doc_id, s.change.version) for s in g] for g in groups] == [
        [("a", 1), ("b", 2), ("a", 3), ("b", 6), ("a", 8)], [("c", 4), ("d", 5)], [("e", 7)]]
    assert split_by_document(batch, group_size=5) == [batch]
