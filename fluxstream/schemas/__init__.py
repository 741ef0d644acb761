"""Versioned event and API schemas: pydantic models plus the committed JSON Schemas generated from them."""

from fluxstream.schemas.api import (
    DocumentResponse,
    ErrorResponse,
    FusionWeights,
    SearchHit,
    SearchRequest,
    SearchResponse,
)
from fluxstream.schemas.events import (
    DeadLetter,
    DocumentChange,
    EmbedJob,
    IndexUpdate,
    SourcePosition,
    Stages,
)

__all__ = [
    "DeadLetter",
    "DocumentChange",
    "DocumentResponse",
    "EmbedJob",
    "ErrorResponse",
    "FusionWeights",
    "IndexUpdate",
    "SearchHit",
    "SearchRequest",
    "SearchResponse",
    "SourcePosition",
    "Stages",
]
