"""Producing change events: validated, keyed by doc_id, with the position of every write returned.

The returned SourcePositions are the read-your-writes tokens of the API.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

from fluxstream.core.kafka import new_producer
from fluxstream.core.settings import Settings
from fluxstream.schemas.events import DocumentChange, SourcePosition

_clock_lock = threading.Lock()
_last_version = 0


def default_version() -> int:
    """The current time in milliseconds, strictly increasing within the process: two changes of one
    document given without versions in the same millisecond still apply in the order they were sent."""
    global _last_version
    with _clock_lock:
        _last_version = max(time.time_ns() // 1_000_000, _last_version + 1)
        return _last_version


def with_defaults(doc: Mapping[str, Any], *, version: bool = True) -> dict[str, Any]:
    """``op`` defaults to upsert and (unless ``version`` is False) ``version`` to ``default_version()``."""
    filled = {"op": "upsert", **doc}
    if version and "version" not in filled:
        filled["version"] = default_version()
    return filled


def to_change(doc: Mapping[str, Any]) -> DocumentChange:
    """Validate a change, with the defaults of ``with_defaults``."""
    return DocumentChange.model_validate(with_defaults(doc))


async def publish_changes(settings: Settings, changes: Iterable[DocumentChange],
                          in_flight: int = 10_000) -> AsyncIterator[SourcePosition]:
    """Send ``changes`` in order, keyed by doc_id, and yield the position of each once it is acknowledged.

    At most ``in_flight`` sends wait for their acknowledgement at once, so a long input streams
    through in bounded memory.
    """
    producer = new_producer(settings)
    try:
        await producer.start()  # inside: a producer that failed to start is closed too
        pending: deque[Any] = deque()
        for change in changes:
            pending.append(await producer.send(settings.documents_topic, key=change.doc_id.encode(),
                                               value=change.to_json()))
            if len(pending) >= in_flight:
                yield _position(await pending.popleft())
        while pending:
            yield _position(await pending.popleft())
    finally:
        await producer.stop()


def _position(meta: Any) -> SourcePosition:
    return SourcePosition(topic=meta.topic, partition=meta.partition, offset=meta.offset)


async def publish_documents(settings: Settings, docs: Iterable[Mapping[str, Any]]) -> list[SourcePosition]:
    changes = [to_change(doc) for doc in docs]  # validate everything before sending anything
    return [position async for position in publish_changes(settings, changes)]
