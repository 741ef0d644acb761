"""Generation and loading of the committed JSON Schemas (schemas/json/<name>.v1.json)."""

from __future__ import annotations

from pathlib import Path

import orjson
from pydantic import BaseModel

from fluxstream.schemas.api import (
    AnswerRequest,
    AnswerResponse,
    BatchSearchRequest,
    BatchSearchResponse,
    DocumentResponse,
    ErrorResponse,
    FeedbackRequest,
    SearchRequest,
    SearchResponse,
    TopicSearchReply,
    TopicSearchRequest,
)
from fluxstream.schemas.events import EVENT_MODELS, SCHEMA_VERSION

JSON_DIR = Path(__file__).parent / "json"

ALL_MODELS: dict[str, type[BaseModel]] = {
    **EVENT_MODELS,
    "search-request": SearchRequest,
    "search-response": SearchResponse,
    "batch-search-request": BatchSearchRequest,
    "topic-search-request": TopicSearchRequest,
    "topic-search-reply": TopicSearchReply,
    "batch-search-response": BatchSearchResponse,
    "document-response": DocumentResponse,
    "error-response": ErrorResponse,
    "answer-request": AnswerRequest,
    "answer-response": AnswerResponse,
    "feedback-request": FeedbackRequest,
}


def schema_path(name: str) -> Path:
    return JSON_DIR / f"{name}.v{SCHEMA_VERSION}.json"


def render(name: str) -> bytes:
    """The JSON Schema of one model, as committed (sorted keys, indented)."""
    schema = ALL_MODELS[name].model_json_schema()
    schema["$id"] = f"https://fluxstream.dev/schemas/{name}.v{SCHEMA_VERSION}.json"
    return orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def write_all() -> list[Path]:
    JSON_DIR.mkdir(exist_ok=True)
    written = []
    for name in ALL_MODELS:
        path = schema_path(name)
        path.write_bytes(render(name))
        written.append(path)
    return written
