"""Event schemas carried on Kafka topics (version 1).

Every event carries ``schema_version`` so consumers can reject or upgrade payloads
they do not understand; the JSON Schemas in ``schemas/json/`` are generated from
these models (``fluxstream schemas --write``) and a test keeps them in sync.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

SCHEMA_VERSION: Literal[1] = 1

NO_NUL = r"^[^\x00]*$"
"""Strings every store can hold: PostgreSQL text and jsonb refuse NUL (U+0000), so no string may carry one."""
Text = Annotated[str, StringConstraints(pattern=NO_NUL)]
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
Int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]
"""Integers PostgreSQL (bigint, jsonb comparisons) and orjson (cache keys) all take."""
Number64 = Annotated[float, Field(ge=INT64_MIN + 1024, le=INT64_MAX - 1023, allow_inf_nan=False)]
"""Finite numbers strictly inside that range (to the nearest floats), so an integer too large for ``Int64``
is refused rather than stored as a float."""
Version = Annotated[int, Field(ge=0, le=INT64_MAX, strict=True)]
"""A document version: a PostgreSQL bigint; strict, so ``"7"`` and ``true`` are refused as the JSON Schema says."""


def _no_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected the integer 1, not a boolean")  # JSON Schema's const 1 is not true
    return value


SchemaVersion = Annotated[Literal[1], BeforeValidator(_no_bool)]
CollectionName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")]
IndexName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}(@g[1-9][0-9]{0,8})?$")]
"""A collection generation's index: the collection name, or ``<collection>@g<N>`` after a rebuild."""
DocId = Annotated[str, StringConstraints(min_length=1, max_length=512, pattern=NO_NUL)]
MetadataScalar = Text | Int64 | Number64 | bool
MetadataValue = MetadataScalar | None | list[MetadataScalar]
# patternProperties alone would still allow any other key: propertyNames refuses them
NUL_FREE_KEYS = Field(json_schema_extra={"propertyNames": {"pattern": NO_NUL}})
Metadata = Annotated[dict[Text, MetadataValue], NUL_FREE_KEYS]
"""Metadata every store holds as given: no NUL in keys or strings, numbers within 64 bits."""
StoredMetadataValue = str | int | float | bool | None | list[str | int | float | bool]
"""Metadata as read back from the stores (responses): whatever was accepted, including before these limits."""


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

    schema_version: SchemaVersion = SCHEMA_VERSION
    op: Literal["upsert", "delete"]
    doc_id: DocId
    collection: CollectionName = "default"
    version: Version
    title: Text = ""
    text: Text = ""
    metadata: Metadata = Field(default_factory=dict)
    occurred_at: datetime | None = None


class SourcePosition(_Event):
    """Where an event was read: the read-your-writes token and audit trail."""

    topic: Text
    partition: Annotated[int, Field(ge=0, le=2**31 - 1)]
    offset: Annotated[int, Field(ge=0, le=INT64_MAX)]
    timestamp_ms: Int64 | None = None
    """The record's Kafka timestamp, when known: event-to-searchable latency is measured from it."""


class Stages(_Event):
    """Which index stages reflect the change."""

    bm25: bool
    vectors: bool


class IndexUpdate(_Event):
    """Published on the index-updates topic after a stage applied a change."""

    schema_version: SchemaVersion = SCHEMA_VERSION
    doc_id: DocId
    collection: IndexName
    version: Version
    op: Literal["upsert", "delete"]
    chunk_ids: list[Text]
    stages: Stages
    source: SourcePosition
    terms: list[Text] = Field(default_factory=list)
    """BM25 stage: index terms the change removed or added (the document's old and new terms)."""
    incomplete_columns: list[Text] = Field(default_factory=list)
    """CDC: source columns indexed without a value known to be current (an unchanged TOAST column whose
    value the index could not find, e.g. a key change's new key before its old key was indexed)."""
    applied_at: datetime = Field(default_factory=utc_now)


class EmbedChunk(_Event):
    """One chunk waiting for its vector."""

    chunk_id: Text
    chunk_no: Annotated[int, Field(ge=0)]
    text: Text
    content_hash: Text


class EmbedJob(_Event):
    """Internal event from the BM25 stage to the vector stage (keyed by doc_id).

    It carries the chunk texts so the vector stage never reads Redis, and keeps
    per-document order because it uses the same key as the change event.
    """

    schema_version: SchemaVersion = SCHEMA_VERSION
    op: Literal["upsert", "delete"]
    doc_id: DocId
    collection: IndexName
    version: Version
    metadata: Metadata = Field(default_factory=dict)
    chunks: list[EmbedChunk] = Field(default_factory=list)
    source: SourcePosition


class DeadLetter(_Event):
    """A record that could not be applied.

    On the dead-letter topic the record keeps its original key and its original
    bytes as value (so it can be replayed as is); these fields travel as headers
    named ``fluxstream.<field>``. A dead letter is always publishable: when the
    original does not fit ``FLUXSTREAM_DEAD_LETTER_MAX_BYTES`` (or the producer's
    request limit) its value is cut to fit, and ``original_size`` and
    ``original_sha256`` describe the whole original (absent: the value is whole).
    """

    schema_version: SchemaVersion = SCHEMA_VERSION
    reason: str
    detail: str
    source: SourcePosition
    failed_at: datetime = Field(default_factory=utc_now)
    original_size: Annotated[int, Field(ge=0)] | None = None
    """Bytes of the original value, when the dead letter carries only its beginning."""
    original_sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")] | None = None
    """SHA-256 (hex) of the whole original value, when the dead letter carries only its beginning."""

    HEADER_PREFIX: ClassVar[str] = "fluxstream."

    def headers(self) -> list[tuple[str, bytes]]:
        p = self.HEADER_PREFIX
        return [
            (p + "schema_version", str(self.schema_version).encode()),
            (p + "reason", self.reason.encode()),
            (p + "detail", self.detail[:4000].encode()),
            (p + "source", self.source.to_json()),
            (p + "failed_at", self.failed_at.isoformat().encode()),
        ] + ([] if self.original_size is None else [
            (p + "original_size", str(self.original_size).encode()),
            (p + "original_sha256", (self.original_sha256 or "").encode()),
        ])

    @classmethod
    def from_headers(cls, headers: list[tuple[str, bytes]]) -> DeadLetter:
        p = cls.HEADER_PREFIX
        fields = {k[len(p):]: v for k, v in headers if k.startswith(p)}
        size = fields.get("original_size")
        return cls(reason=fields["reason"].decode(), detail=fields["detail"].decode(),
                   source=SourcePosition.model_validate_json(fields["source"]),
                   failed_at=datetime.fromisoformat(fields["failed_at"].decode()),
                   original_size=int(size) if size is not None else None,
                   original_sha256=fields["original_sha256"].decode() if size is not None else None)


EVENT_MODELS: dict[str, type[BaseModel]] = {
    "document-change": DocumentChange,
    "index-update": IndexUpdate,
    "embed-job": EmbedJob,
    "dead-letter": DeadLetter,
}
