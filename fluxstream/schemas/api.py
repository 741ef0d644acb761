"""Query-service request and response schemas (HTTP and, later, Kafka request/reply)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from fluxstream.schemas.events import (
    NO_NUL,
    NUL_FREE_KEYS,
    CollectionName,
    MetadataScalar,
    SourcePosition,
    StoredMetadataValue,
    Text,
)

FilterValue = MetadataScalar | None
"""What a filter may compare with: what metadata may hold (no NUL, numbers within 64 bits)."""
Filters = Annotated[dict[Text, FilterValue], NUL_FREE_KEYS]
QueryText = Annotated[str, Field(min_length=1, max_length=4096, pattern=NO_NUL)]


class FusionWeights(BaseModel):
    """Weights of the min-max-normalised retriever scores in weighted fusion."""

    model_config = ConfigDict(extra="forbid")
    bm25: Annotated[float, Field(ge=0)] = 0.5
    vector: Annotated[float, Field(ge=0)] = 0.5


class RetrievalRequest(BaseModel):
    """What every retrieving request (a search, an answer) says: what to find, where, how, and after
    which write. Not a wire type of its own: ``SearchRequest`` and ``AnswerRequest`` add their fields."""

    model_config = ConfigDict(extra="forbid")
    query: QueryText
    collection: CollectionName = "default"
    mode: Literal["bm25", "vector", "hybrid"] = "hybrid"
    fusion: Literal["rrf", "weighted", "product", "max", "harmonic", "auto"] = "weighted"
    """How hybrid mode fuses: normalised scores (weighted sum, the measured best on Vaswani; weighted
    product, maximum, harmonic mean), reciprocal ranks (rrf), or ``auto`` (weighted, weights chosen from
    the query's shape)."""
    filters: Filters = Field(default_factory=dict)
    cache: bool = True
    """Use the semantic cache (when the service has it enabled); false forces a fresh search."""
    min_position: SourcePosition | None = None
    """Read-your-writes token (from producing a change): wait until the index has applied it."""
    wait_timeout_ms: Annotated[int, Field(ge=0, le=60_000)] | None = None


class SearchRequest(RetrievalRequest):
    """``POST /v1/search`` body."""

    k: Annotated[int, Field(ge=1, le=100)] = 10
    rrf_k: Annotated[int, Field(ge=1, le=10_000)] | None = None
    weights: FusionWeights | None = None
    ef_search: Annotated[int, Field(ge=1, le=1000)] | None = None
    """HNSW candidate list for this query (higher: better recall, slower); default from the preset."""


class RetrieverScore(BaseModel):
    rank: int
    score: float


class SearchHit(BaseModel):
    doc_id: str
    chunk_id: str
    chunk_no: int
    title: str
    text: str
    metadata: dict[str, StoredMetadataValue]
    score: float
    bm25: RetrieverScore | None = None
    vector: RetrieverScore | None = None


class CacheInfo(BaseModel):
    status: Literal["exact", "semantic", "miss", "bypass"]
    cached_query: str | None = None
    """For a semantic hit: the cached query whose (freshly re-scored) results are returned."""
    similarity: float | None = None


class SearchResponse(BaseModel):
    query: str
    collection: str
    mode: str
    fusion: str | None
    hits: list[SearchHit]
    timings_ms: dict[str, float]
    cache: CacheInfo | None = None
    strategy: str | None = None
    """With ``fusion: auto``: the strategy chosen for this query (sparse-first, balanced, vector-first)."""
    generation: int = 1
    """The collection's index generation that answered (it changes when a rebuild switches)."""
    degraded: list[Literal["vectors"]] = Field(default_factory=list)
    """Retrievers that could not be asked: ``["vectors"]`` while PostgreSQL is unreachable, when a hybrid
    search answers from BM25 alone. Such answers are never cached."""


class ChunkView(BaseModel):
    chunk_id: str
    chunk_no: int
    text: str
    content_hash: str
    has_vector: bool


class DocumentResponse(BaseModel):
    doc_id: str
    collection: str
    version: int
    deleted: bool
    title: str
    metadata: dict[str, StoredMetadataValue]
    chunks: list[ChunkView]


class ErrorResponse(BaseModel):
    """Every 4xx/5xx body: a machine-readable code, a message, and optional details."""

    error: str
    message: str
    details: list[dict] | None = None


class BatchSearchRequest(BaseModel):
    """``POST /v1/search/batch``: many searches, embedded together and run concurrently."""

    model_config = ConfigDict(extra="forbid")
    requests: Annotated[list[SearchRequest], Field(min_length=1, max_length=100)]


class BatchSearchResponse(BaseModel):
    responses: list[SearchResponse]
    strategies: list[str]
    timings_ms: dict[str, float]


class TopicSearchRequest(SearchRequest):
    """A search request on ``fluxstream.search-requests``; the reply goes to ``reply_to`` keyed by ``request_id``."""

    request_id: Annotated[str, Field(min_length=1, max_length=200)]
    reply_to: Annotated[str, Field(min_length=1, max_length=249, pattern=r"^[a-zA-Z0-9._-]+$")]
    """The reply topic: a legal Kafka topic name (not "." or "..") the service allows (by default
    ``fluxstream.search-replies`` or ``fluxstream.search-replies.<name>``; FLUXSTREAM_REPLY_TOPIC_PATTERN);
    a request that names another is dead-lettered, unanswered."""
    deadline_ms: Annotated[int, Field(ge=1, le=300_000)] = 10_000
    """Counted from the request record's timestamp: a request that waited too long is not run."""


class TopicSearchReply(BaseModel):
    request_id: str
    status: Literal["ok", "error"]
    response: SearchResponse | None = None
    error: ErrorResponse | None = None


class AnswerRequest(RetrievalRequest):
    """``POST /v1/answer``: retrieve, build a cited prompt, and (with a chat model) answer."""

    k: Annotated[int, Field(ge=1, le=50)] = 5
    transform: Literal["none", "hyde", "quote"] = "none"
    """hyde: search with the embedding of a generated hypothetical answer; quote: search the query and
    generated related questions, fuse with RRF. Both need a chat model."""
    stream: bool = False
    """Server-sent events: ``sources``, then ``delta`` events with answer text, then ``done``."""
    context_tokens: Annotated[int, Field(ge=100, le=100_000)] | None = None


class AnswerSource(BaseModel):
    n: int
    """The citation number used in the prompt and the answer: [n]."""
    doc_id: str
    chunk_id: str
    title: str
    score: float


class AnswerResponse(BaseModel):
    request_id: str
    query: str
    collection: str
    answer: str | None
    """None without a configured chat model: ``prompt`` and ``sources`` are still returned."""
    model: str | None
    transform: str
    transformed_queries: list[str] = Field(default_factory=list)
    """What the transform searched with (the hypothetical passage, or the generated questions)."""
    sources: list[AnswerSource]
    prompt: list[dict[str, str]]
    context_tokens: int
    timings_ms: dict[str, float]
    degraded: list[Literal["vectors"]] = Field(default_factory=list)
    """As in a search response: ``["vectors"]`` when the sources come from BM25 alone (PostgreSQL unreachable)."""


class FeedbackRequest(BaseModel):
    """``POST /v1/feedback`` about an answered request (its ``request_id``, or the X-Request-ID of a search)."""

    model_config = ConfigDict(extra="forbid")
    request_id: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\x00]+$")]
    score: Annotated[int, Field(ge=-1, le=1)]
    """1: helpful, 0: neutral, -1: not helpful."""
    comment: Annotated[str, Field(max_length=4000, pattern=r"^[^\x00]*$")] = ""
    """Free text (NUL characters are refused: PostgreSQL cannot store them)."""
    collection: CollectionName | None = None
