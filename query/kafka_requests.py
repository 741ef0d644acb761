"""Search request/reply over Kafka: the query service answers ``fluxstream.search-requests``.

Each fetched batch runs with bounded concurrency; its offsets are committed only after every
reply of the batch has been acknowledged by the broker. A request with a ``request_id`` and
``reply_to`` always gets a reply (the response, or a structured error such as
``invalid_request`` or ``deadline_exceeded``); one without them goes to the dead-letter topic.

The clients connect in the background, retrying with capped backoff: the query service serves HTTP
without Kafka and topic search joins once a broker is reachable (``status`` says which).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.errors import KafkaError, UnknownTopicOrPartitionError
from pydantic import ValidationError

from fluxstream import metrics
from fluxstream.kafka import new_consumer, new_producer
from fluxstream.logging import get_logger
from fluxstream.settings import Settings
from schemas.api import ErrorResponse, SearchRequest, SearchResponse, TopicSearchReply, TopicSearchRequest
from schemas.events import SourcePosition
from streams.decoding import Rejected, dead_letter

log = get_logger("fluxstream.search_requests")

API_KEY_HEADER = "fluxstream-api-key"

SearchFn = Callable[[SearchRequest], Awaitable[SearchResponse | ErrorResponse]]
AuthorizeFn = Callable[[str | None, int], ErrorResponse | None]  # (API key, request count) -> refusal


def _error(code: str, message: str, details: list[dict[str, Any]] | None = None) -> ErrorResponse:
    return ErrorResponse(error=code, message=message, details=details)


class SearchRequestServer:
    def __init__(self, settings: Settings, search: SearchFn, authorize: AuthorizeFn | None = None) -> None:
        self.settings = settings
        self.search = search
        self.authorize = authorize
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.status = "connecting"  # then "connected"; for /readyz
        self.gate = asyncio.Semaphore(settings.search_concurrency)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Returns at once: the clients connect (and reconnect until they do) in the background."""
        self._task = asyncio.create_task(self._connect_and_run(), name="search-requests")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._close_clients()

    async def _connect_and_run(self) -> None:
        delay, last_error = 0.5, ""
        while True:
            s = self.settings
            try:
                self.producer = new_producer(s, linger_ms=0)
                await self.producer.start()
                # Subscribed before the topic exists, the consumer would not see it until its next metadata
                # refresh (minutes): join only once it is there (compose and the topics Job create it late).
                if s.search_requests_topic not in (await self.producer.client.fetch_all_metadata()).topics():
                    raise UnknownTopicOrPartitionError(f"{s.search_requests_topic} does not exist yet")
                self.consumer = new_consumer(
                    s, s.search_requests_topic, group_id=f"{s.app_id}-query",
                    enable_auto_commit=False, auto_offset_reset="latest", fetch_max_wait_ms=s.fetch_max_wait_ms,
                    session_timeout_ms=int(s.session_timeout * 1000),
                    heartbeat_interval_ms=int(max(s.session_timeout / 10, 0.5) * 1000),
                )
                await self.consumer.start()
                break
            except (KafkaError, OSError) as exc:  # not reachable (yet): HTTP search goes on without topic search
                # Said once per distinct reason (then at debug level); /readyz shows topic_search meanwhile.
                (log.debug if str(exc) == last_error else log.warning)(
                    "search_requests_kafka_unreachable", error=str(exc), retry_in_s=delay)
                last_error = str(exc)
                await self._close_clients()
                await asyncio.sleep(delay)
                delay = min(delay * 2, s.retry_max_backoff)
        # Joined with positions resolved (bounded: a replica beyond the topic's partitions gets none) ...
        with contextlib.suppress(TimeoutError, KafkaError):
            await asyncio.wait_for(self._joined(self.consumer), self.settings.session_timeout)
        self.status = "connected"  # ... so a request produced from now on is answered
        log.info("search_requests_connected", topic=self.settings.search_requests_topic)
        await self._run()

    @staticmethod
    async def _joined(consumer: AIOKafkaConsumer) -> None:
        """Wait for the group's assignment and resolve its positions (with ``latest``, a request produced before
        the position is resolved would be skipped)."""
        while not consumer.assignment():
            await asyncio.sleep(0.05)
        for tp in consumer.assignment():
            await consumer.position(tp)

    async def _close_clients(self) -> None:
        for client in (self.consumer, self.producer):
            if client is not None:
                with contextlib.suppress(Exception):  # never started, or half started: nothing more to release
                    await client.stop()
        self.consumer = self.producer = None

    async def _run(self) -> None:
        while True:
            batches = await self.consumer.getmany(timeout_ms=1000, max_records=self.settings.search_concurrency * 4)
            records = [r for rs in batches.values() for r in rs]
            if not records:
                continue
            try:
                deliveries = await asyncio.gather(*(self._answer(r) for r in records))
                await asyncio.gather(*deliveries)
                await self.consumer.commit()
            except Exception:  # Kafka trouble: retry the batch from its committed offsets
                log.exception("search_request_batch_failed", size=len(records))
                for tp in batches:
                    committed = await self.consumer.committed(tp)
                    self.consumer.seek(tp, committed or min(r.offset for r in batches[tp]))
                await asyncio.sleep(1.0)

    async def _answer(self, record: ConsumerRecord) -> Awaitable[Any]:
        try:
            payload = orjson.loads(record.value) if record.value is not None else None
        except orjson.JSONDecodeError as exc:
            return await self._dead_letter(record, Rejected("invalid_json", str(exc)))
        if not isinstance(payload, dict) or not payload.get("request_id") or not payload.get("reply_to"):
            return await self._dead_letter(record, Rejected("invalid_request", "request_id and reply_to are required"))
        request_id, reply_to = str(payload["request_id"]), str(payload["reply_to"])
        key = next((v.decode(errors="replace") for k, v in record.headers or () if k == API_KEY_HEADER), None)
        refusal = self.authorize(key, 1) if self.authorize is not None else None
        if refusal is not None:
            reply = TopicSearchReply(request_id=request_id, status="error", error=refusal)
        else:
            reply = await self._reply_for(payload, record.timestamp)
        metrics.SEARCHES.labels(payload.get("mode", "hybrid"), reply.status if reply.error is None
                                else reply.error.error).inc()
        return await self.producer.send(reply_to, key=request_id.encode(), value=reply.model_dump_json().encode())

    async def _reply_for(self, payload: dict[str, Any], timestamp_ms: int) -> TopicSearchReply:
        request_id = str(payload["request_id"])
        try:
            request = TopicSearchRequest.model_validate(payload)
        except ValidationError as exc:
            details = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
            return TopicSearchReply(request_id=request_id, status="error",
                                    error=_error("invalid_request", "the request is invalid", details))
        remaining = request.deadline_ms / 1000 - (time.time() - timestamp_ms / 1000)
        if remaining <= 0:
            return TopicSearchReply(request_id=request_id, status="error", error=_error(
                "deadline_exceeded", f"the request waited longer than its deadline of {request.deadline_ms} ms"))
        search = SearchRequest.model_validate(request.model_dump(include=set(SearchRequest.model_fields)))
        try:
            async with self.gate:
                result = await asyncio.wait_for(self.search(search), remaining)
        except TimeoutError:
            return TopicSearchReply(request_id=request_id, status="error", error=_error(
                "deadline_exceeded", f"no answer within the deadline of {request.deadline_ms} ms"))
        except Exception as exc:
            log.exception("search_request_failed", request_id=request_id)
            return TopicSearchReply(request_id=request_id, status="error",
                                    error=_error("internal_error", type(exc).__name__))
        if isinstance(result, ErrorResponse):
            return TopicSearchReply(request_id=request_id, status="error", error=result)
        return TopicSearchReply(request_id=request_id, status="ok", response=result)

    async def _dead_letter(self, record: ConsumerRecord, rejected: Rejected) -> Awaitable[Any]:
        source = SourcePosition(topic=record.topic, partition=record.partition, offset=record.offset)
        metrics.DEAD_LETTERS.labels(rejected.reason).inc()
        return await self.producer.send(self.settings.dead_letters_topic, key=record.key, value=record.value,
                                        headers=dead_letter(rejected, source).headers())
