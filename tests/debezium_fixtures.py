"""Debezium change events shaped as the connectors document them (JSON converter).

PostgreSQL connector envelope: ``{"before", "after", "source", "op", "ts_ms", "transaction"}``
with ``source`` carrying ``version, connector, name, ts_ms, snapshot, db, sequence, schema,
table, txId, lsn, xmin``; MySQL's ``source`` has ``file``/``pos``/``gtid`` and no ``lsn``.
With ``schemas.enable=true`` key and value are wrapped as ``{"schema": ..., "payload": ...}``.
The ExtractNewRecordState SMT (``add.fields=op,lsn,source.ts_ms,table``,
``delete.handling.mode=rewrite``) flattens the value to the row plus ``__`` fields.
"""

from __future__ import annotations

from typing import Any

import orjson

TOAST = "__debezium_unavailable_value"


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


def unwrapped(row: dict[str, Any], *, op: str, lsn: int, table: str, deleted: bool = False) -> dict[str, Any]:
    return {**row, "__op": op, "__lsn": lsn, "__source_ts_ms": 1_763_800_000_000, "__table": table,
            "__deleted": "true" if deleted else "false"}
