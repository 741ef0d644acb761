"""Golden records captured from real Debezium 3.6.3 (tests/data/debezium/capture.py re-records them).

Variants: ``postgres`` (JSON converter, schemas.enable=false), ``postgres-schemas`` (true),
``postgres-settings`` (false, with decimal.handling.mode=string, time.precision.mode=connect,
hstore.handling.mode=map, binary.handling.mode=hex), ``postgres-unwrap`` (the ExtractNewRecordState
SMT: flattened rows with ``__`` fields; it drops truncates). Steps: see capture.py's ``steps``.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import orjson

from fluxstream.schemas.cdc_mapping import CdcMapping
from fluxstream.streams.cdc_engine import ConnectRecord

FIXTURES = Path(__file__).resolve().parent / "data" / "debezium"
VARIANTS = ("postgres", "postgres-schemas", "postgres-settings", "postgres-unwrap")
TOASTED = frozenset({"body", "tags", "scores", "data", "doc", "attrs", "blob"})  # unchanged in update_title_toasted
METADATA = ["tags", "scores", "price", "amount", "rating", "data", "doc", "attrs", "blob", "created", "updated", "day"]


@cache
def recorded(variant: str = "postgres") -> dict[str, tuple[ConnectRecord, ...]]:
    """Records per capture step, in the order Debezium emitted them."""
    steps: dict[str, list[ConnectRecord]] = {}
    for line in (FIXTURES / f"{variant}.ndjson").read_bytes().splitlines():
        raw = orjson.loads(line)
        steps.setdefault(raw["step"], []).append(ConnectRecord.from_json(raw))
    return {step: tuple(records) for step, records in steps.items()}


def mapping(collection: str = "golden", full_collection: str | None = None) -> CdcMapping:
    """Both captured tables, every column indexed (body as text, the rest as metadata)."""
    return CdcMapping.from_dict({"sources": [
        {"topics": ["pg.public.articles"], "collection": collection, "id_columns": ["id"], "title": "{title}",
         "text": "{body}", "metadata": METADATA},
        {"topics": ["pg.public.articles_full"], "collection": full_collection or f"{collection}-full",
         "id_columns": ["id"], "title": "{title}", "text": "{body}", "metadata": METADATA},
    ]})
