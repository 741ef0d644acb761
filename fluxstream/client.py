"""Producing change events: validated, keyed by doc_id, with the position of every write returned.

The returned SourcePositions are the read-your-writes tokens of the API.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from fluxstream.kafka import new_producer
from fluxstream.settings import Settings
from schemas.events import DocumentChange, SourcePosition


def to_change(doc: Mapping[str, Any]) -> DocumentChange:
    """Validate a change; ``op`` defaults to upsert and ``version`` to the current time in ms."""
    payload = {"op": "upsert", "version": time.time_ns() // 1_000_000, **doc}
    return DocumentChange.model_validate(payload)


async def publish_documents(settings: Settings, docs: Iterable[Mapping[str, Any]]) -> list[SourcePosition]:
    changes = [to_change(doc) for doc in docs]  # validate everything before sending anything
    producer = new_producer(settings)
    await producer.start()
    try:
        futures = [
            await producer.send(settings.documents_topic, key=c.doc_id.encode(), value=c.to_json())
            for c in changes
        ]
        positions = []
        for future in futures:
            meta = await future
            positions.append(SourcePosition(topic=meta.topic, partition=meta.partition, offset=meta.offset))
        return positions
    finally:
        await producer.stop()
