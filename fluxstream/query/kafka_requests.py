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
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError, KafkaTimeoutError, UnknownTopicOrPartitionError
from pydantic import ValidationError

from fluxstream.core import metrics
from fluxstream.core.kafka import ReplyTopics, new_consumer, new_producer
from fluxstream.core.logging import get_logger
from fluxstream.core.settings import Settings
from fluxstream.query.services import QueryServices
from fluxstream.schemas.api import ErrorResponse, SearchRequest, TopicSearchReply, TopicSearchRequest
from fluxstream.schemas.events import SourcePosition
from fluxstream.streams.decoding import Rejected, dead_letter_record
from fluxstream.streams.topics import topic_names

log = get_logger("fluxstream.search_requests")

API_KEY_HEADER = "fluxstream-api-key"
BACKOFF = (0.25, 2.0)  # first and longest pause between two attempts to send a record
COMMIT_ATTEMPTS = 3


def _error(code: str, message: str, details: list[dict[str, Any]] | None = None) -> ErrorResponse:
    return ErrorResponse(error=code, message=message, details=details)


def transient(error: BaseException) -> bool:
    """Whether sending again may succeed (a timeout, a broker that is moving or unreachable)."""
    return isinstance(error, TimeoutError | KafkaTimeoutError) or getattr(error, "retriable", False)


async def send_within(producer: AIOKafkaProducer, topic: str, key: bytes | None, value: bytes | None,
                      budget: float, headers: list[tuple[str, bytes]] | None = None) -> Exception | None:
    """Send one record, retrying transient failures with backoff for at most ``budget`` seconds.

    None once the broker acknowledged it; otherwise the last error (a permanent one at once). Each
    attempt is bounded too: a producer waits out its whole metadata timeout (40 s) for a topic it
    cannot find. A reply whose attempt timed out may still arrive later: replies are at least once.
    """
    deadline = time.monotonic() + budget
    pause = BACKOFF[0]
    while True:
        remaining = deadline - time.monotonic()
        try:
            async with asyncio.timeout(max(min(remaining, budget / 2), 0.1)):
                await (await producer.send(topic, key=key, value=value, headers=headers))
            return None
        except Exception as exc:  # whatever a send raises, the caller decides from it
            if not transient(exc) or time.monotonic() + pause >= deadline:
                return exc
            error = exc
        log.warning("send_retry", topic=topic, error=repr(error), pause_s=pause)
        await asyncio.sleep(pause)
        pause = min(pause * 2, BACKOFF[1])


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
        pause = BACKOFF[0]
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            try:
                assert self.consumer is not None
                await self.consumer.commit(offsets)
                return
            except Exception as exc:  # logged; the next commit covers these offsets
                log.warning("search_request_commit_failed", attempt=attempt, error=repr(exc))
                if attempt < COMMIT_ATTEMPTS:
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, BACKOFF[1])

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
        """Publish the record's dead letter (cut to FLUXSTREAM_DEAD_LETTER_MAX_BYTES, see
        ``dead_letter_record``), retried until the broker takes it: its offset is not committed
        meanwhile. One the broker refuses for good (a lower broker limit) goes again with the payload
        cut away, its size and SHA-256 kept; only if even that is refused is it given up, logged."""
        source = SourcePosition(topic=record.topic, partition=record.partition, offset=record.offset)
        limit = self.settings.dead_letter_max_bytes
        assert self.producer is not None
        while True:
            key, value, headers = dead_letter_record(rejected, source, record.key, record.value, limit)
            error = await send_within(self.producer, self.settings.dead_letters_topic, key, value,
                                      self.settings.reply_timeout, headers)
            if error is None:
                metrics.DEAD_LETTERS.labels(rejected.reason).inc()
                log.warning("search_request_dead_lettered", reason=rejected.reason, detail=rejected.detail[:300],
                            partition=record.partition, offset=record.offset)
                return
            if transient(error):
                log.warning("dead_letter_retry", reason=rejected.reason, error=repr(error))
            elif limit > 0:
                log.warning("dead_letter_refused", reason=rejected.reason, error=repr(error), size=len(value or b""))
                limit = 0
            else:
                log.error("dead_letter_lost", reason=rejected.reason, detail=rejected.detail[:300], error=repr(error),
                          partition=record.partition, offset=record.offset)
                return
