"""What fluxstream asks the source PostgreSQL of a CDC capture: its replication slot's lag (metrics of the
cdc process, `fluxstream status`'s CDC line) and its tables' columns (the mapping `fluxstream dev --cdc`
generates).

One home for these queries, so the engine host, the status report and the dev stack agree on them.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from fluxstream.core.logging import redact
from fluxstream.core.settings import Settings
from fluxstream.schemas.cdc_mapping import CdcMapping

TEXT_TYPES = ("text", "character varying", "character", "json", "jsonb", "xml", "citext")
TITLE_COLUMNS = ("title", "name", "subject", "headline")  # the first present becomes the document title


@dataclass(frozen=True)
class SlotLag:
    """A replication slot's position against the source's WAL: ``lag_bytes`` = pg_current_wal_lsn()
    minus the slot's confirmed_flush_lsn (what the source keeps for it; 0 when capture is caught up)."""

    slot: str
    active: bool
    confirmed_flush_lsn: str | None
    current_lsn: str
    lag_bytes: int | None


def slot_lag(database_url: str, slot: str, *, timeout: float = 5.0) -> SlotLag | None:
    """The slot's lag, or None when the slot does not exist (capture never started, or was dropped)."""
    with psycopg.connect(database_url, connect_timeout=max(1, int(timeout)), autocommit=True) as conn:
        row = conn.execute(
            "SELECT s.active, s.confirmed_flush_lsn::text, pg_current_wal_lsn()::text,"
            " pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::bigint"
            " FROM pg_replication_slots s WHERE s.slot_name = %s", (slot,)).fetchone()
    if row is None:
        return None
    active, confirmed, current, lag = row
    return SlotLag(slot, bool(active), confirmed, current, None if lag is None else max(0, int(lag)))


@dataclass(frozen=True)
class TableColumns:
    schema: str
    table: str
    primary_key: tuple[str, ...]
    text: tuple[str, ...]  # text-like columns, in table order
    other: tuple[str, ...]  # the rest (numbers, dates, arrays, ...), in table order


def captured_tables(database_url: str, tables: Sequence[str] = ()) -> list[TableColumns]:
    """``tables`` (schema.table) as they are in the source, or, when empty, every user table with a
    primary key. A listed table that is missing or has no primary key raises ValueError (one line)."""
    with psycopg.connect(database_url, connect_timeout=10, autocommit=True) as conn:
        if not tables:
            tables = [f"{s}.{t}" for s, t in conn.execute(
                "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " JOIN pg_constraint k ON k.conrelid = c.oid AND k.contype = 'p'"
                " WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
                " AND n.nspname NOT LIKE 'pg_toast%%' ORDER BY 1, 2").fetchall()]
        found = []
        for name in tables:
            schema, _, table = name.partition(".")
            columns = conn.execute(
                "SELECT a.attname, format_type(a.atttypid, NULL), COALESCE(a.attnum = ANY(k.conkey), false)"
                " FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " LEFT JOIN pg_constraint k ON k.conrelid = c.oid AND k.contype = 'p'"
                " WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped"
                " ORDER BY a.attnum", (schema, table)).fetchall()
            if not columns:
                raise ValueError(f"table {name} not found in the source database")
            key = tuple(c for c, _, pk in columns if pk)
            if not key:
                raise ValueError(f"table {name} has no primary key (document ids come from it)")
            rest = [(c, kind) for c, kind, pk in columns if not pk]
            found.append(TableColumns(schema, table, key, tuple(c for c, kind in rest if kind in TEXT_TYPES),
                                      tuple(c for c, kind in rest if kind not in TEXT_TYPES)))
    if not found:
        raise ValueError("the source database has no table with a primary key to capture")
    return found


def generated_mapping(tables: Sequence[TableColumns], topic_prefix: str) -> str:
    """A minimal FLUXSTREAM_CDC_CONFIG for ``tables`` (TOML): collection = the table's name (schema_table
    outside public), id = its primary key, title = its first column named like a title, text = its other
    text-like columns (one paragraph each), metadata = the remaining columns."""

    def quoted(values: Sequence[str]) -> str:
        return "[" + ", ".join(f'"{v}"' for v in values) + "]"

    blocks = []
    for t in tables:
        title = next((c for c in TITLE_COLUMNS if c in t.text), None)
        text = "\\n\\n".join(f"{{{c}}}" for c in t.text if c != title)
        blocks.append("\n".join([
            "[[sources]]",
            f'topics = ["{topic_prefix}.{t.schema}.{t.table}"]',
            f'table = "{t.table}"',
            f'collection = "{t.table if t.schema == "public" else f"{t.schema}_{t.table}"}"',
            f"id_columns = {quoted(t.primary_key)}",
            f'title = "{{{title}}}"' if title else 'title = ""',
            f'text = "{text}"',
            f"metadata = {quoted(t.other)}",
        ]))
    header = "# Generated by `fluxstream dev --cdc` from the source's tables (docs/cdc.md); copy it to adjust.\n"
    text = header + "\n\n".join(blocks) + "\n"
    CdcMapping.from_dict(tomllib.loads(text))  # what the worker will read: fail here, not in the worker
    return text


async def cdc_status(settings: Settings) -> dict[str, Any]:
    """`fluxstream status`'s CDC row: the source's replication slot (lag in bytes, from the source itself)
    and the records the local cdc process captured (its /metrics on FLUXSTREAM_CDC_WEB_PORT; None when it
    does not answer)."""
    import asyncio

    import httpx

    row: dict[str, Any] = {"slot": settings.cdc_slot, "source": redact(settings.cdc_source_url), "exists": False,
                           "active": None, "lag_bytes": None, "records_captured": None, "error": None}
    try:
        lag = await asyncio.to_thread(slot_lag, settings.cdc_source_url, settings.cdc_slot)
    except Exception as exc:  # the source is away: status still reports the rest
        row["error"] = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        lag = None
    if lag is not None:
        row.update(exists=True, active=lag.active, lag_bytes=lag.lag_bytes)
    if settings.cdc_web_port:
        try:
            async with httpx.AsyncClient(timeout=2) as http:
                page = await http.get(f"http://127.0.0.1:{settings.cdc_web_port}/metrics")
            if page.status_code == 200:
                row["records_captured"] = captured_total(page.text)
        except httpx.HTTPError:
            pass
    return row


def captured_total(exposition: str) -> int | None:
    """Sum of ``fluxstream_cdc_records_captured_total`` in a Prometheus text page (None: not a cdc page)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(exposition):
        if family.name == "fluxstream_cdc_records_captured":
            return int(sum(s.value for s in family.samples if s.name.endswith("_total")))
    return None
