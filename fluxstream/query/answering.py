"""``/v1/answer``: retrieve (optionally through a query transform), cite, and answer.

Transforms (FluxIndex): **HyDE** asks the chat model for a short hypothetical passage answering
the question and searches with that passage's embedding (BM25 keeps the original words); **QuOTE**
asks for related questions, searches the original and each of them, and fuses the hit lists with
RRF. Without a chat model the answer is None and the response still carries the cited prompt and
its sources, which is useful to callers with their own model (and testable offline).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

import orjson

from fluxstream.indexer.chat import ChatError, ChatModel
from fluxstream.indexer.generations import IndexTarget
from fluxstream.query.cached_search import CachedSearcher
from fluxstream.query.fusion import rrf
from fluxstream.query.prompting import Prompt, build_prompt
from fluxstream.schemas.api import AnswerRequest, AnswerResponse, AnswerSource, SearchHit, SearchRequest

HYDE_PROMPT = ("Write a short passage (at most 120 words) that answers the question as a reference text "
               "would. Do not mention that it is hypothetical.")
QUOTE_PROMPT = ("Write {n} different questions that someone looking for the same information might ask, "
                "one per line, without numbering or any other text.")


class TransformUnavailable(Exception):
    """A transform was asked for but no chat model is configured."""


@dataclass
class Retrieved:
    hits: list[SearchHit]
    transformed: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    # Retrievers a search could not ask (see query.search).
    degraded: list[Literal["vectors"]] = field(default_factory=list)


class Answerer:
    def __init__(self, search: CachedSearcher, chat: ChatModel | None, *, context_tokens: int,
                 quote_questions: int = 3) -> None:
        self.search, self.chat = search, chat
        self.context_tokens, self.quote_questions = context_tokens, quote_questions

    def _search_request(self, req: AnswerRequest, query: str, *, cache: bool) -> SearchRequest:
        return SearchRequest(query=query, collection=req.collection, k=req.k, mode=req.mode, fusion=req.fusion,
                             filters=req.filters, cache=cache)

    async def retrieve(self, req: AnswerRequest, target: IndexTarget) -> Retrieved:
        started = time.perf_counter()
        if req.transform != "none" and self.chat is None:
            raise TransformUnavailable(f"transform {req.transform!r} needs a chat model (FLUXSTREAM_CHAT_MODEL)")
        if req.transform == "hyde":
            found = await self._hyde(req, target)
        elif req.transform == "quote":
            found = await self._quote(req, target)
        else:
            response = await self.search.search(self._search_request(req, req.query, cache=req.cache), target)
            found = Retrieved(response.hits, degraded=response.degraded)
        found.timings["retrieve"] = round((time.perf_counter() - started) * 1000, 3)
        return found

    async def _hyde(self, req: AnswerRequest, target: IndexTarget) -> Retrieved:
        assert self.chat is not None
        passage = (await self.chat.complete([{"role": "system", "content": HYDE_PROMPT},
                                             {"role": "user", "content": req.query}], max_tokens=200)).text.strip()
        searcher = self.search.searcher
        if req.mode == "bm25":  # no vectors to steer: search the passage's words
            response = await searcher.search(self._search_request(req, passage or req.query, cache=False), target)
        else:
            vector = (await searcher.embedder.embed([passage or req.query]))[0]
            response = await searcher.search(self._search_request(req, req.query, cache=False), target,
                                             query_vector=vector)
        return Retrieved(response.hits, [passage], degraded=response.degraded)

    async def _quote(self, req: AnswerRequest, target: IndexTarget) -> Retrieved:
        assert self.chat is not None
        reply = await self.chat.complete([
            {"role": "system", "content": QUOTE_PROMPT.format(n=self.quote_questions)},
            {"role": "user", "content": req.query}], max_tokens=200)
        questions = [q.strip(" -*\t") for q in reply.text.splitlines() if q.strip(" -*\t")][: self.quote_questions]
        queries = [req.query, *questions]
        responses = await self.search.searcher.search_many([(self._search_request(req, q, cache=False), target)
                                                            for q in queries])
        by_chunk: dict[str, SearchHit] = {}
        for response in responses:
            for hit in response.hits:
                by_chunk.setdefault(hit.chunk_id, hit)
        fused = rrf({str(i): [(h.chunk_id, h.score) for h in r.hits] for i, r in enumerate(responses)})
        hits = [by_chunk[chunk_id].model_copy(update={"score": score}) for chunk_id, score in fused[: req.k]]
        return Retrieved(hits, questions, degraded=sorted({d for r in responses for d in r.degraded}))

    async def prepare(self, req: AnswerRequest, target: IndexTarget) -> tuple[Retrieved, Prompt]:
        found = await self.retrieve(req, target)
        return found, build_prompt(req.query, found.hits, req.context_tokens or self.context_tokens)

    def response(self, req: AnswerRequest, request_id: str, found: Retrieved, prompt: Prompt,
                 answer: str | None, model: str | None, started: float) -> AnswerResponse:
        sources = [AnswerSource(n=i, doc_id=h.doc_id, chunk_id=h.chunk_id, title=h.title, score=h.score)
                   for i, h in enumerate(prompt.sources, start=1)]
        timings = {**found.timings, "total": round((time.perf_counter() - started) * 1000, 3)}
        return AnswerResponse(request_id=request_id, query=req.query, collection=req.collection, answer=answer,
                              model=model, transform=req.transform, transformed_queries=found.transformed,
                              sources=sources, prompt=prompt.messages, context_tokens=prompt.context_tokens,
                              timings_ms=timings, degraded=found.degraded)

    async def answer(self, req: AnswerRequest, target: IndexTarget, request_id: str) -> AnswerResponse:
        started = time.perf_counter()
        found, prompt = await self.prepare(req, target)
        answer = model = None
        if self.chat is not None:
            generated = time.perf_counter()
            completion = await self.chat.complete(prompt.messages)
            answer, model = completion.text, completion.model
            found.timings["generate"] = round((time.perf_counter() - generated) * 1000, 3)
        return self.response(req, request_id, found, prompt, answer, model, started)

    async def stream(self, req: AnswerRequest, request_id: str, found: Retrieved,
                     prompt: Prompt) -> AsyncIterator[bytes]:
        """Server-sent events; retrieval already ran, so its errors were answered as plain HTTP errors."""
        started = time.perf_counter()
        sources = self.response(req, request_id, found, prompt, None, None, started).sources
        yield _event("sources", {"request_id": request_id, "sources": [s.model_dump() for s in sources]})
        parts: list[str] = []
        if self.chat is not None:
            try:
                async for delta in self.chat.stream(prompt.messages):
                    parts.append(delta)
                    yield _event("delta", {"text": delta})
            except ChatError as exc:
                yield _event("error", {"error": "chat_failed", "message": str(exc)})
                return
        model = self.chat.model if self.chat is not None else None
        final = self.response(req, request_id, found, prompt, "".join(parts) if self.chat else None, model, started)
        yield _event("done", final.model_dump())


def _event(name: str, data: object) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
