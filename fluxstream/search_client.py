"""``await client.search(...)`` over Kafka: request/reply with the query service.

The client reads its reply topic from the end (no consumer group) and matches replies to
requests by ``request_id``; many requests may be in flight at once. The reply topic must be one
the query service may answer on (FLUXSTREAM_REPLY_TOPIC_PATTERN): it is checked here, since the
service dead-letters a request it cannot answer and the client would only see a timeout.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from aiokafka import TopicPartition

from fluxstream.core.kafka import ReplyTopics, new_consumer, new_producer
from fluxstream.core.settings import Settings
from fluxstream.schemas.api import ErrorResponse, SearchResponse, TopicSearchReply, TopicSearchRequest


class SearchTimeout(TimeoutError):
    """No reply arrived in time (the service may be down or overloaded)."""


class SearchError(Exception):
    """The service answered with a structured error (``.error``: code, message, details)."""

    def __init__(self, error: ErrorResponse) -> None:
        super().__init__(f"{error.error}: {error.message}")
        self.error = error


class CollectionNotFound(SearchError):
    """The searched collection does not exist (``collection_not_found``; an empty one answers no hits)."""


def response_of(reply: TopicSearchReply) -> SearchResponse:
    """The reply's response; raises SearchError (CollectionNotFound for that code) for an error reply."""
    if reply.response is not None:
        return reply.response
    error = reply.error or ErrorResponse(error="internal_error", message="a reply with neither response nor error")
    raise (CollectionNotFound if error.error == "collection_not_found" else SearchError)(error)


class KafkaSearchClient:
    def __init__(self, settings: Settings, reply_to: str | None = None, api_key: str | None = None) -> None:
        self.settings = settings
        self.reply_to = reply_to or settings.search_replies_topic
        refused = ReplyTopics(settings).refusal(self.reply_to)
        if refused is not None:
            raise ValueError(f"the query service will not reply there: {refused[1]}")
        self.headers = [("fluxstream-api-key", api_key.encode())] if api_key else None
        self.producer = new_producer(settings, linger_ms=0)
        self.consumer = new_consumer(settings, group_id=None, enable_auto_commit=False, fetch_max_wait_ms=100)
        self._waiting: dict[str, asyncio.Future[TopicSearchReply]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> KafkaSearchClient:
        await self.producer.start()
        await self.consumer.start()
        await self.consumer.topics()  # refreshes metadata; partitions_for_topic reads the cached copy
        partitions = [TopicPartition(self.reply_to, p)
                      for p in sorted(self.consumer.partitions_for_topic(self.reply_to) or {0})]
        self.consumer.assign(partitions)
        await self.consumer.seek_to_end(*partitions)
        for tp in partitions:  # resolve the end offsets now, before any request is sent
            await self.consumer.position(tp)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        await self.consumer.stop()
        await self.producer.stop()

    async def _read(self) -> None:
        async for record in self.consumer:
            future = self._waiting.pop(record.key.decode(), None) if record.key else None
            if future is not None and not future.done():
                future.set_result(TopicSearchReply.model_validate_json(record.value))

    async def search(self, query: str, *, timeout: float = 30.0, deadline_ms: int | None = None,
                     **fields: Any) -> TopicSearchReply:
        """Send one search (fields as in ``POST /v1/search``) and await its reply."""
        request = TopicSearchRequest(request_id=uuid.uuid4().hex, reply_to=self.reply_to, query=query,
                                     deadline_ms=deadline_ms or int(timeout * 1000), **fields)
        return await self.send_raw(request.request_id, request.model_dump_json(exclude_none=True).encode(), timeout)

    async def search_response(self, query: str, **kwargs: Any) -> SearchResponse:
        """As ``search``, but the response itself; an error reply raises SearchError / CollectionNotFound."""
        return response_of(await self.search(query, **kwargs))

    async def send_raw(self, request_id: str, value: bytes, timeout: float = 30.0) -> TopicSearchReply:
        """Send an already-encoded request (also used to test how bad requests are answered)."""
        future: asyncio.Future[TopicSearchReply] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        await self.producer.send_and_wait(self.settings.search_requests_topic, key=request_id.encode(), value=value,
                                          headers=self.headers)
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError as exc:
            raise SearchTimeout(f"no reply to {request_id} within {timeout}s") from exc
        finally:
            self._waiting.pop(request_id, None)
