"""``/v1/answer`` (retrieval-augmented answers, optionally streamed) and ``/v1/feedback`` on them."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from fluxstream.core.logging import get_logger
from fluxstream.indexer.chat import ChatError
from fluxstream.query.answering import TransformUnavailable
from fluxstream.query.http.dependencies import SearchKey, Services
from fluxstream.query.http.errors import error, refusal
from fluxstream.schemas.api import AnswerRequest, AnswerResponse, ErrorResponse, FeedbackRequest

log = get_logger("fluxstream.query")
router = APIRouter(tags=["answer"])


@router.post("/v1/answer", response_model=AnswerResponse,
             responses={200: {"content": {"text/event-stream": {}}}, 404: {"model": ErrorResponse},
                        409: {"model": ErrorResponse},
                        502: {"model": ErrorResponse}})
async def answer(req: AnswerRequest, request: Request, principal: SearchKey, services: Services) -> Any:
    """Retrieve, cite and answer; ``stream: true`` answers with server-sent events."""
    started = time.perf_counter()
    target = await services.target(req.collection)
    if (problem := await services.position_problem(req, target)) is not None:
        return refusal(problem)
    request_id = request.state.request_id
    answerer, usage = services.answerer, services.usage
    try:
        if req.stream:
            found, prompt = await answerer.prepare(req, target)
            usage.record(request_id, req.collection, "answer", req.mode, (time.perf_counter() - started) * 1000,
                         len(found.hits))
            return StreamingResponse(answerer.stream(req, request_id, found, prompt),
                                     media_type="text/event-stream", headers={"cache-control": "no-cache"})
        result = await answerer.answer(req, target, request_id)
    except TransformUnavailable as exc:
        return error(400, "transform_unavailable", str(exc))
    except ChatError as exc:
        log.warning("chat_failed", error=str(exc))
        return error(502, "chat_failed", str(exc))
    usage.record(request_id, req.collection, "answer", req.mode, (time.perf_counter() - started) * 1000,
                 len(result.sources))
    return result


@router.post("/v1/feedback", status_code=201)
async def feedback(item: FeedbackRequest, principal: SearchKey, services: Services) -> dict[str, Any]:
    """A rating of an answer or search, stored durably before this returns."""
    return await services.usage.feedback(item)
