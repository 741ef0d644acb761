"""Hand-written Debezium change events (JSON converter), only for what a running connector cannot produce
here: MySQL's envelope, keyless deletes, crafted orderings and malformed input. Records of the PostgreSQL
connector come from real Debezium: tests/debezium_records.py (golden) and tests/test_debezium_real.py.

PostgreSQL connector envelope: ``{"before", "after", "source", "op", "ts_ms", "transaction"}``
with ``source`` carrying ``version, connector, name, ts_ms, snapshot, db, sequence, schema,
table, txId, lsn, xmin``; MySQL's ``source`` has ``file``/``pos``/``gtid`` and no ``lsn``.
With ``schemas.enable=true`` key and value are wrapped as ``{"schema": ..., "payload": ...}``.
"""

from __future__ import annotations

from typing import Any

import orjson


def _schema(name: str, fields: list[str]) -> dict[str, Any]:
    return {"type": "struct", "optional": False, "name": name,
            "fields": [{"type": "string", "optional": True, "field": f} for f in fields]}


def pg_source(lsn: int, table: str, *, snapshot: str = "false", ts_ms: int = 1_763_800_000_000,
              tx_id: int = 771) -> dict[str, Any]:
    return {"version": "2.7.3.Final", "connector": "postgresql", "name": "pg", "ts_ms": ts_ms,
            "snapshot": snapshot, "db": "app", "sequence": f'[null,"{lsn}"]', "schema": "public",
            "table": table, "txId": tx_id, "lsn": lsn, "xmin": None}


def mysql_source(table: str, ts_ms: int, pos: int) -> dict[str, Any]:
    return {"version": "2.7.3.Final", "connector": "mysql", "name": "mysql", "ts_ms": ts_ms, "snapshot": "false",
            "db": "shop", "sequence": None, "table": table, "server_id": 223344, "gtid": None,
            "file": "mysql-bin.000003", "pos": pos, "row": 0, "thread": 7, "query": None}


def envelope(op: str, source: dict[str, Any], before: dict[str, Any] | None = None,
             after: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"before": before, "after": after, "source": source, "op": op, "ts_ms": source["ts_ms"] + 5,
            "transaction": None}


def record(key: dict[str, Any] | None, value: dict[str, Any] | None, *,
           with_schema: bool = False, table: str = "t") -> tuple[bytes | None, bytes | None]:
    """(key bytes, value bytes) as the JSON converter writes them; None value = tombstone."""
    def wrap(payload: dict[str, Any] | None, name: str) -> bytes | None:
        if payload is None:
            return None
        if with_schema:
            return orjson.dumps({"schema": _schema(name, list(payload)), "payload": payload})
        return orjson.dumps(payload)

    return wrap(key, f"pg.public.{table}.Key"), wrap(value, f"pg.public.{table}.Envelope")
