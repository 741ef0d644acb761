"""Event schemas carried on Kafka topics (version 1).

Every event carries ``schema_version`` so consumers can reject or upgrade payloads
they do not understand; the JSON Schemas in ``schemas/json/`` are generated from
these models (``fluxstream schemas --write``) and a test keeps them in sync.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

SCHEMA_VERSION = 1

CollectionName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")]
IndexName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}(@g[1-9][0-9]{0,8})?$")]
"""A collection generation's index: the collection name, or ``<collection>@g<N>`` after a rebuild."""
DocId = Annotated[str, StringConstraints(min_length=1, max_length=512)]
MetadataValue = str | int | float | bool | None | list[str | int | float | bool]


def utc_now() -> datetime:
    return datetime.now(UTC)


@cache
def _field_names(model: type[BaseModel]) -> dict[str, None]:
    """A model's field names in declaration order (an ordered set)."""
    return dict.fromkeys(model.model_fields)


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_json(self) -> bytes:
        """JSON bytes of the event, the wire format on every topic (pydantic-core's serializer, in Rust)."""
        return self.__pydantic_serializer__.to_json(self)

    @classmethod
    def trusted(cls, **values: Any) -> Self:
        """The event from values that are already valid, every field given: no validation.

        For events the worker builds from its own validated state, one or two per document.
        ``model_construct`` resolves defaults field by field in Python, which showed in the
        worker's profile (12 us per index update); this sets the same attributes directly.
        """
        names = _field_names(cls)
        if values.keys() != names.keys():
            raise TypeError(f"{cls.__name__}.trusted needs exactly its fields; got {sorted(values)}")
        event = cls.__new__(cls)
        setattr_ = object.__setattr__  # the models are frozen
        setattr_(event, "__dict__", {name: values[name] for name in names})  # serialized in this order
        setattr_(event, "__pydantic_fields_set__", set(values))
        setattr_(event, "__pydantic_extra__", None)
        setattr_(event, "__pydantic_private__", None)
        return event


class DocumentChange(_Event):
    """A change to one document, keyed by ``doc_id`` on the documents topic.

    ``version`` orders changes of one document: a change at or below the version
    already applied is skipped, so duplicates and replays are harmless.
    """

    schema_version: Literal[1] = SCHEMA_VERSION
    op: Literal["upsert", "delete"]
    doc_id: DocId
    collection: CollectionName = "default"
    version: Annotated[int, Field(ge=0)]
    title: str = ""
    text: str = ""
    metadata: dict[str, MetadataValue] = Field(default_factory=dict)
    occurred_at: datetime | None = None


class SourcePosition(_Event):
    """Where an event was read: the read-your-writes token and audit trail."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = None
    """The record's Kafka timestamp, when known: event-to-searchable latency is measured from it."""


class Stages(_Event):
    """Which index stages reflect the change."""

    bm25: bool
    vectors: bool


class IndexUpdate(_Event):
    """Published on the index-updates topic after a stage applied a change."""

    schema_version: Literal[1] = SCHEMA_VERSION
    doc_id: DocId
    collection: IndexName
    version: int
    op: Literal["upsert", "delete"]
    chunk_ids: list[str]
    stages: Stages
    source: SourcePosition
    terms: list[str] = Field(default_factory=list)
    """BM25 stage: index terms the change removed or added (the document's old and new terms)."""
    applied_at: datetime = Field(default_factory=utc_now)


class EmbedChunk(_Event):
    """One chunk waiting for its vector."""

    chunk_id: str
    chunk_no: int
    text: str
    content_hash: str


class EmbedJob(_Event):
    """Internal event from the BM25 stage to the vector stage (keyed by doc_id).

    It carries the chunk texts so the vector stage never reads Redis, and keeps
    per-document order because it uses the same key as the change event.
    """

    schema_version: Literal[1] = SCHEMA_VERSION
    op: Literal["upsert", "delete"]
    doc_id: DocId
    collection: IndexName
    version: int
    metadata: dict[str, MetadataValue] = Field(default_factory=dict)
    chunks: list[EmbedChunk] = Field(default_factory=list)
    source: SourcePosition


class DeadLetter(_Event):
    """A record that could not be applied.

    On the dead-letter topic the record keeps its original key and its original
    bytes as value (so it fits wherever the original fitted and can be replayed
    as is); these fields travel as headers named ``fluxstream.<field>``.
    """

    schema_version: Literal[1] = SCHEMA_VERSION
    reason: str
    detail: str
    source: SourcePosition
    failed_at: datetime = Field(default_factory=utc_now)

    HEADER_PREFIX: ClassVar[str] = "fluxstream."

    def headers(self) -> list[tuple[str, bytes]]:
        p = self.HEADER_PREFIX
        return [
            (p + "schema_version", str(self.schema_version).encode()),
            (p + "reason", self.reason.encode()),
            (p + "detail", self.detail[:4000].encode()),
            (p + "source", self.source.to_json()),
            (p + "failed_at", self.failed_at.isoformat().encode()),
        ]

    @classmethod
    def from_headers(cls, headers: list[tuple[str, bytes]]) -> DeadLetter:
        p = cls.HEADER_PREFIX
        fields = {k[len(p):]: v for k, v in headers if k.startswith(p)}
        return cls(reason=fields["reason"].decode(), detail=fields["detail"].decode(),
                   source=SourcePosition.model_validate_json(fields["source"]),
                   failed_at=datetime.fromisoformat(fields["failed_at"].decode()))


EVENT_MODELS: dict[str, type[BaseModel]] = {
    "document-change": DocumentChange,
    "index-update": IndexUpdate,
    "embed-job": EmbedJob,
    "dead-letter": DeadLetter,
}
