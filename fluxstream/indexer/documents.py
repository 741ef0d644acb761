"""The records of the BM25 stage: what the index holds for a document (and the posting value format).

Plain data, no I/O: ``indexer.fold`` computes them from a batch of changes, ``indexer.postings``
reads and writes them (its module docstring has the Redis layout they map to).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

# A posting value packs a chunk's length above its term frequency: dl * 2**16 + tf.
TF_BITS = 16
TF_MASK = (1 << TF_BITS) - 1
MAX_CHUNK_TERMS = TF_MASK  # a chunk's length must fit the bits above tf (chunks are far shorter)


def pack_posting(tf: int, dl: int) -> int:
    return (dl << TF_BITS) | min(tf, TF_MASK)


def unpack_posting(value: int) -> tuple[int, int]:
    """(tf, dl) from a stored posting value."""
    return value & TF_MASK, value >> TF_BITS


class DocRef(NamedTuple):
    """One document of one index (a collection generation's name)."""

    collection: str
    doc_id: str


class TableRef(NamedTuple):
    """A CDC source table feeding one index: the unit of truncation floors."""

    collection: str
    table: str


@dataclass(slots=True)
class ChunkState:
    """A chunk as the index holds it; ``tf`` is kept so removal knows which postings to drop.

    ``text`` is empty in states read back from a document record (texts live in the chunk
    records): the stage fills it when it needs it (a redelivered document's embed job).
    """

    chunk_id: str
    chunk_no: int
    content_hash: str
    dl: int
    tf: dict[str, int]
    text: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"id": self.chunk_id, "no": self.chunk_no, "hash": self.content_hash, "dl": self.dl, "tf": self.tf}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ChunkState:
        return cls(raw["id"], raw["no"], raw["hash"], raw["dl"], raw["tf"])


@dataclass(slots=True)
class DocumentState:
    """What the index holds for one document (absent documents have version None).

    ``collection``: the index it lives in, a collection generation's name (``IndexTarget.index``)."""

    collection: str
    doc_id: str
    version: int | None = None
    deleted: bool = False
    title: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    chunks: list[ChunkState] = field(default_factory=list)
    source: dict[str, Any] | None = None
    row: dict[str, Any] | None = None  # CDC source columns, to fill TOAST placeholders later
    table: str | None = None  # the CDC source (schemas.cdc_mapping) it comes from; None for native events

    @property
    def live(self) -> bool:
        return self.version is not None and not self.deleted

    @property
    def ref(self) -> DocRef:
        return DocRef(self.collection, self.doc_id)


@dataclass(frozen=True, slots=True)
class DocumentWrite:
    """Replace ``before`` (what the writer read; the write expects it still) by ``after``."""

    before: DocumentState
    after: DocumentState


@dataclass(frozen=True, slots=True)
class PendingMark:
    """A change at ``offset`` whose vectors are visible once a job at ``clear_at`` or later is handled
    (indexer.positions); with ``only_if``, recorded only while an entry clearing at it is pending."""

    collection: str
    topic: str
    partition: int
    doc_id: str
    offset: int
    clear_at: int
    only_if: int | None = None
