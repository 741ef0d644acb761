"""Overlapping batches (streams.batching): a batch is recorded only after every earlier one is applied."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, MessageSizeTooLargeError
from faust.exceptions import ProducerSendError

from fluxstream.core.retry import is_transient as is_outage
from fluxstream.streams.batching import (
    NON_OUTAGE_ATTEMPTS,
    BatchHealth,
    Retries,
    applied_in_order,
    handle_batches,
    handle_then_ack,
    until_handled,
)


def test_a_fast_batch_is_recorded_only_after_the_slow_batch_before_it() -> None:
    events: list[str] = []

    def handler(delays: dict[str, float]):
        async def handle(messages: list[str]) -> None:
            await asyncio.sleep(delays[messages[0]])
            events.append(f"applied {messages[0]}")
        return handle

    async def record(messages: list[str]) -> None:
        events.append(f"recorded {messages[0]}")

    async def run() -> None:
        handle = handler({"first": 0.2, "second": 0.0})
        first = asyncio.ensure_future(applied_in_order(handle, ["first"], None, record))
        second = asyncio.ensure_future(applied_in_order(handle, ["second"], first, record))
        await asyncio.gather(first, second)

    asyncio.run(run())
    # The second batch applied first (they overlap), but its position was not claimed before the first's.
    assert events == ["applied second", "applied first", "recorded first", "recorded second"]


def test_an_abandoned_batch_abandons_the_ones_after_it() -> None:
    recorded: list[str] = []

    async def handle(messages: list[str]) -> None:
        if messages[0] == "first":
            await asyncio.sleep(10)

    async def record(messages: list[str]) -> None:
        recorded.append(messages[0])

    async def run() -> None:
        first = asyncio.ensure_future(applied_in_order(handle, ["first"], None, record))
        second = asyncio.ensure_future(applied_in_order(handle, ["second"], first, record))
        await asyncio.sleep(0.05)
        first.cancel()  # shutdown gave up on it
        with pytest.raises(asyncio.CancelledError):
            await second

    asyncio.run(run())
    assert recorded == []


def test_a_failing_batch_is_retried_until_it_applies() -> None:
    attempts: list[int] = []

    async def handle(messages: list[str]) -> None:
        attempts.append(len(attempts))
        if len(attempts) < 3:
            raise ConnectionError("broker away")

    asyncio.run(applied_in_order(handle, ["only"], None, None))
    assert len(attempts) == 3


class RecordingStream:
    """Stands in for a Faust stream's ``ack`` only: records the order of acks."""

    def __init__(self) -> None:
        self.acked: list[str] = []

    async def ack(self, event: str) -> None:
        await asyncio.sleep(0)
        self.acked.append(event)


def test_acks_follow_batch_order_even_when_a_later_batch_applies_first() -> None:
    """Faust commits past a lower unacked offset when acks come out of order: they must not."""
    stream = RecordingStream()

    async def run() -> None:
        loop = asyncio.get_running_loop()
        slow_work, fast_work = loop.create_future(), loop.create_future()
        first_acked, second_acked = loop.create_future(), loop.create_future()
        first = asyncio.ensure_future(handle_then_ack(stream, ["a1", "a2"], slow_work, first_acked, None))
        second = asyncio.ensure_future(handle_then_ack(stream, ["b1"], fast_work, second_acked, first_acked))
        fast_work.set_result(None)  # the later batch is applied first
        await asyncio.sleep(0.05)
        assert stream.acked == []
        slow_work.set_result(None)
        await asyncio.gather(first, second)

    asyncio.run(run())
    assert stream.acked == ["a1", "a2", "b1"]


class Event:
    """A Faust event's ``message`` only."""

    def __init__(self, message: int) -> None:
        self.message = message


@pytest.mark.parametrize("in_flight", [1, 2, 4])
def test_batches_overlap_up_to_the_limit_yet_ack_and_record_in_order(in_flight: int) -> None:
    stream = RecordingStream()
    applied: list[int] = []
    recorded: list[int] = []
    now_running = most_at_once = 0

    async def handle(messages: list[int]) -> None:
        nonlocal now_running, most_at_once
        now_running += 1
        most_at_once = max(most_at_once, now_running)
        await asyncio.sleep(0.03 if messages[0] % 4 == 0 else 0.005)  # batches finish out of order
        now_running -= 1
        applied.append(messages[0])

    async def record(messages: list[int]) -> None:
        recorded.append(messages[0])

    async def batches():
        for first in range(0, 24, 2):
            yield [Event(first), Event(first + 1)]

    asyncio.run(handle_batches(stream, batches(), handle, record, in_flight))
    assert most_at_once == in_flight
    assert [event.message for event in stream.acked] == list(range(24))
    assert recorded == list(range(0, 24, 2))
    assert sorted(applied) == list(range(0, 24, 2))
    assert (applied == sorted(applied)) == (in_flight == 1)  # overlapping batches applied out of order


def test_a_batch_failing_for_one_record_is_split_and_the_record_given_up() -> None:
    """A record that fails on its own (not an outage) never holds its partition: the batch is tried a
    few times, then record by record, and the culprit is handed to ``give_up`` (the dead-letter topic)."""
    handled: list[str] = []
    given_up: list[tuple[str, str]] = []
    health = BatchHealth()
    seen_stuck: list[dict[str, int]] = []

    async def handle(messages: list[str]) -> None:
        seen_stuck.append(health.stuck())
        if "poison" in messages:
            raise MessageSizeTooLargeError("the dead letter is too large")
        handled.extend(messages)

    async def give_up(message: str, error: str) -> None:
        given_up.append((message, error))

    asyncio.run(until_handled(handle, ["a", "poison", "b"], Retries("index-documents", health, give_up)))
    assert handled == ["a", "b"]
    assert [m for m, _ in given_up] == ["poison"] and "MessageSizeTooLargeError" in given_up[0][1]
    assert {"index-documents": 1} in seen_stuck  # not ready while it retried ...
    assert health.stuck() == {}  # ... and ready again once the culprit is out


def test_an_outage_is_waited_out_not_blamed_on_a_record() -> None:
    attempts: list[int] = []
    given_up: list[str] = []

    async def handle(messages: list[str]) -> None:
        attempts.append(len(attempts))
        if len(attempts) <= NON_OUTAGE_ATTEMPTS + 1:
            raise ProducerSendError("broker away") from KafkaConnectionError("no broker")

    async def give_up(message: str, error: str) -> None:
        given_up.append(message)

    asyncio.run(until_handled(handle, ["a", "b"], Retries("embed-chunks", BatchHealth(), give_up)))
    assert given_up == [] and len(attempts) == NON_OUTAGE_ATTEMPTS + 2
    assert is_outage(KafkaTimeoutError()) and not is_outage(ValueError("bad record"))
