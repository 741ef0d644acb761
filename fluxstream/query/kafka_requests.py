"""Search request/reply over Kafka: the query service answers ``fluxstream.search-requests``.

Every record of a fetched batch is settled on its own, with bounded concurrency: answered on its
``reply_to`` topic (the response, or a structured error such as ``invalid_request`` or
``deadline_exceeded``), or, when it cannot be answered, sent to the dead-letter topic with the
reason and its original bytes: bad JSON (``invalid_json``), no ``request_id``/``reply_to``
(``invalid_request``), a ``reply_to`` that is not a legal topic name (``invalid_reply_to``) or not
allowed by FLUXSTREAM_REPLY_TOPIC_PATTERN (``reply_to_not_allowed``), a reply the broker did not
take within FLUXSTREAM_REPLY_TIMEOUT, retried with backoff (``reply_failed``).

One record's fault never holds the others: fetching goes on while earlier batches settle (up to
``4 x FLUXSTREAM_SEARCH_CONCURRENCY`` records in flight), so a slow reply delays only the commit.
Batches commit in fetch order, each once its records and every earlier batch's are settled (reply or
dead letter acknowledged by the broker): no offset passes an unsettled request, and a restart
resumes past a dead-lettered poison, never meets it again.

The clients connect in the background, retrying with capped backoff: the query service serves HTTP
without Kafka and topic search joins once a broker is reachable (``status`` says which).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError, UnknownTopicOrPartitionError
from pydantic import ValidationError

from fluxstream.core import metrics
from fluxstream.core.kafka import ReplyTopics, new_consumer, new_producer
from fluxstream.core.logging import get_logger
from fluxstream.core.retry import RetryPolicy, retrying
from fluxstream.core.settings import Settings
from fluxstream.query.services import QueryServices
from fluxstream.schemas.api import ErrorResponse, SearchRequest, TopicSearchReply, TopicSearchRequest
from fluxstream.schemas.decoding import DeadLetters, Rejected
from fluxstream.schemas.events import SourcePosition
from fluxstream.schemas.topics import topic_names

log = get_logger("fluxstream.search_requests")

API_KEY_HEADER = "fluxstream-api-key"
SEND_RETRIES = RetryPolicy(None, 0.25, 2.0)
"""A record (reply or dead letter) the broker did not take: tried again within its budget."""
COMMIT_RETRIES = RetryPolicy(2, 0.25, 2.0)


def _error(code: str, message: str, details: list[dict[str, Any]] | None = None) -> ErrorResponse:
    return ErrorResponse(error=code, message=message, details=details)


async def send_within(producer: AIOKafkaProducer, topic: str, key: bytes | None, value: bytes | None,
                      budget: float, headers: list[tuple[str, bytes]] | None = None) -> Exception | None:
    """Send one record, retrying transient failures (``SEND_RETRIES``) for at most ``budget`` seconds.

    None once the broker acknowledged it; otherwise the last error (a permanent one at once). Each
    attempt is bounded too: a producer waits out its whole metadata timeout (40 s) for a topic it
    cannot find. A reply whose attempt timed out may still arrive later: replies are at least once.
    """
    deadline = time.monotonic() + budget

    async def attempt() -> None:
        async with asyncio.timeout(max(min(deadline - time.monotonic(), budget / 2), 0.1)):
            await (await producer.send(topic, key=key, value=value, headers=headers))

    try:
        await retrying(attempt, SEND_RETRIES, deadline=deadline, on_retry=lambda exc, pause: log.warning(
            "send_retry", topic=topic, error=repr(exc), pause_s=round(pause, 2)))
    except Exception as exc:  # whatever a send raises, the caller decides from it
        return exc
    return None


class SearchRequestServer:
    """Answers the request topic with the HTTP app's own ``QueryServices`` (same search path, same keys)."""

    def __init__(self, settings: Settings, services: QueryServices) -> None:
        self.settings = settings
        self.services = services
        self.reply_topics = ReplyTopics(settings, protected=topic_names(settings))
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.status = "connecting"  # then "connected"; for /readyz
        self.gate = asyncio.Semaphore(settings.search_concurrency)
        self.max_in_flight = settings.search_concurrency * 4
        self._in_flight = 0
        self._settled = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._batches: set[asyncio.Task[None]] = set()
        self.dead_letters: DeadLetters  # once connected

    async def start(self) -> None:
        """Returns at once: the clients connect (and reconnect until they do) in the background."""
        self._task = asyncio.create_task(self._connect_and_run(), name="search-requests")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._batches) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._close_clients()

    async def _connect_and_run(self) -> None:
        last_error = ""

        def unreachable(exc: BaseException, pause: float) -> None:
            """Not reachable (yet): HTTP search goes on without topic search. Said once per distinct
            reason (then at debug level); /readyz shows topic_search meanwhile."""
            nonlocal last_error
            (log.debug if str(exc) == last_error else log.warning)(
                "search_requests_kafka_unreachable", error=str(exc), retry_in_s=round(pause, 2))
            last_error = str(exc)

        try:
            await retrying(self._connect, RetryPolicy(None, 0.5, self.settings.retry_max_backoff),
                           on_retry=unreachable)
        except Exception as exc:  # permanent (refused credentials, a bad setting): said, not retried for ever
            self.status = f"failed: {type(exc).__name__}"
            log.error("search_requests_kafka_failed", error=f"{type(exc).__name__}: {exc}")
            return
        # Joined with positions resolved (bounded: a replica beyond the topic's partitions gets none) ...
        with contextlib.suppress(TimeoutError, KafkaError):
            await asyncio.wait_for(self._joined(self.consumer), self.settings.session_timeout)
        self.status = "connected"  # ... so a request produced from now on is answered
        log.info("search_requests_connected", topic=self.settings.search_requests_topic)
        await self._run()

    async def _connect(self) -> None:
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
        except BaseException:
            await self._close_clients()
            raise
        self.dead_letters = DeadLetters(self._send_dead_letter, s.dead_letters_topic, s.dead_letter_max_bytes,
                                        retry=SEND_RETRIES)

    async def _send_dead_letter(self, topic: str, key: bytes | None, value: bytes | None,
                                headers: list[tuple[str, bytes]]) -> Awaitable[object]:
        """One dead letter sent within the reply budget (``DeadLetters`` retries and cuts it)."""
        assert self.producer is not None
        error = await send_within(self.producer, topic, key, value, self.settings.reply_timeout, headers)
        if error is not None:
            raise error
        return asyncio.sleep(0)  # already acknowledged

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
        assert self.consumer is not None
        previous: asyncio.Task[None] | None = None
        while True:
            while self._in_flight >= self.max_in_flight:
                self._settled.clear()
                await self._settled.wait()
            batches = await self.consumer.getmany(timeout_ms=1000, max_records=self.max_in_flight - self._in_flight)
            records = [r for rs in batches.values() for r in rs]
            if not records:
                continue
            self._in_flight += len(records)
            offsets = {tp: rs[-1].offset + 1 for tp, rs in batches.items() if rs}
            previous = asyncio.create_task(self._settle_batch(records, offsets, previous))
            self._batches.add(previous)
            previous.add_done_callback(self._batches.discard)

    async def _settle_batch(self, records: list[ConsumerRecord], offsets: dict[TopicPartition, int],
                            previous: asyncio.Task[None] | None) -> None:
        """Settle a batch's records, then commit its offsets once every earlier batch has committed."""
        await asyncio.gather(*(self._settle_counted(r) for r in records))
        if previous is not None:
            await asyncio.wait([previous])  # its outcome is its own: only its turn matters here
        await self._commit(offsets)

    async def _settle_counted(self, record: ConsumerRecord) -> None:
        try:
            await self._settle(record)
        finally:
            self._in_flight -= 1
            self._settled.set()

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit settled records. A commit that keeps failing (a rebalance took the partition, the
        coordinator is away) is left to the next batch's: its records are answered, and any that come
        back after a restart are answered again (the client keeps the first reply per request_id)."""
        assert self.consumer is not None
        consumer = self.consumer
        try:
            await retrying(lambda: consumer.commit(offsets), COMMIT_RETRIES, on_retry=lambda exc, _: log.warning(
                "search_request_commit_failed", error=repr(exc), retrying=True))
        except Exception as exc:  # logged; the next commit covers these offsets
            log.warning("search_request_commit_failed", error=repr(exc), retrying=False)

    async def _settle(self, record: ConsumerRecord) -> None:
        """Answer ``record`` or dead-letter it; never raises, so one record never fails its batch."""
        try:
            outcome = await self._reply(record)
            if isinstance(outcome, Rejected):
                await self._dead_letter(record, outcome)
                return
            topic, key, value = outcome
            assert self.producer is not None
            error = await send_within(self.producer, topic, key, value, self.settings.reply_timeout)
            if error is not None:
                await self._dead_letter(record, Rejected("reply_failed", (
                    f"request {key.decode(errors='replace')!r}: no reply delivered to {topic!r} within "
                    f"{self.settings.reply_timeout:g} s: {type(error).__name__}: {error}")))
        except Exception as exc:  # a bug must not stop the other requests
            log.exception("search_request_failed", topic=record.topic, partition=record.partition,
                          offset=record.offset)
            await self._dead_letter(record, Rejected("internal_error", f"{type(exc).__name__}: {exc}"))

    async def _reply(self, record: ConsumerRecord) -> Rejected | tuple[str, bytes, bytes]:
        """(reply topic, key, reply) for ``record``, or why it cannot be answered."""
        try:
            payload = orjson.loads(record.value) if record.value is not None else None
        except orjson.JSONDecodeError as exc:
            return Rejected("invalid_json", str(exc))
        if not isinstance(payload, dict) or not payload.get("request_id") or not payload.get("reply_to"):
            return Rejected("invalid_request", "request_id and reply_to are required")
        request_id, reply_to = str(payload["request_id"]), payload["reply_to"]
        refused = self.reply_topics.refusal(reply_to)
        if refused is not None:  # no topic to answer on: the refusal itself is the dead letter
            reason, detail = refused
            return Rejected(reason, f"request {request_id[:200]!r}: {detail}")
        key = next((v.decode(errors="replace") for k, v in record.headers or () if k == API_KEY_HEADER), None)
        refusal = self.services.gate.for_topic(key, 1)
        if refusal is not None:
            reply = TopicSearchReply(request_id=request_id, status="error", error=refusal)
        else:
            reply = await self._reply_for(payload, record.timestamp)
        metrics.SEARCHES.labels(payload.get("mode", "hybrid"), reply.status if reply.error is None
                                else reply.error.error).inc()
        return reply_to, request_id.encode(), reply.model_dump_json().encode()

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
                result = await asyncio.wait_for(self.services.search(search), remaining)
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

    async def _dead_letter(self, record: ConsumerRecord, rejected: Rejected) -> None:
        """Publish the record's dead letter (``DeadLetters``: cut to FLUXSTREAM_DEAD_LETTER_MAX_BYTES, retried
        until the broker takes it, its payload cut away if the broker refuses it for good): its offset is not
        committed meanwhile."""
        source = SourcePosition(topic=record.topic, partition=record.partition, offset=record.offset)
        await (await self.dead_letters.reject(rejected, source, record.key, record.value))
