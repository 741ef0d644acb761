"""Dead-letter tooling: read the dead-letter topic back, and redrive records to their source topic.

The record format is schemas.events.DeadLetter (headers) around the original key and value bytes,
built by schemas.decoding.dead_letter_record. Reading a topic range is core.topic_range's.
Redriving is safe because the apply is versioned: what is already applied is skipped.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import ConsumerRecord

from fluxstream.core.kafka import new_producer
from fluxstream.core.settings import Settings
from fluxstream.core.topic_range import TopicRange, read_range
from fluxstream.schemas.events import DeadLetter, SourcePosition

PREVIEW_CHARS = 80


@dataclass(frozen=True)
class Letter:
    """One record of the dead-letter topic; ``letter`` is None when its headers are not a dead letter's."""

    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    letter: DeadLetter | None
    problem: str = ""

    @classmethod
    def of(cls, record: ConsumerRecord) -> Letter:
        try:
            letter, problem = DeadLetter.from_headers(list(record.headers or [])), ""
        except (KeyError, ValueError, UnicodeDecodeError) as exc:
            letter, problem = None, f"not a dead letter: {type(exc).__name__}: {exc}"
        return cls(record.partition, record.offset, record.timestamp, record.key, record.value, letter, problem)

    @property
    def position(self) -> str:
        return f"{self.partition}:{self.offset}"

    @property
    def reason(self) -> str:
        return self.letter.reason if self.letter else "unknown"

    @property
    def size(self) -> int:
        return len(self.value or b"")

    @property
    def cut(self) -> bool:
        """Only the beginning of the original value is here (it did not fit the dead-letter limit)."""
        return (self.letter is not None and self.letter.original_size is not None
                and self.letter.original_size != self.size)

    def preview(self, chars: int = PREVIEW_CHARS) -> str:
        if self.value is None:
            return "(tombstone)"
        text = self.value[: chars * 4].decode("utf-8", "backslashreplace")[:chars]
        return text.encode("unicode_escape").decode("ascii")

    def summary(self) -> dict[str, Any]:
        """The machine-readable listing line."""
        source = self.letter.source if self.letter else None
        return {"position": self.position, "partition": self.partition, "offset": self.offset,
                "timestamp_ms": self.timestamp_ms, "reason": self.reason,
                "source": source.model_dump(mode="json") if source else None,
                "size": self.size, "cut": self.cut, "preview": self.preview()}

    def detail(self) -> dict[str, Any]:
        """Everything: decoded headers, key, and the payload (parsed JSON when it is JSON)."""
        body = self.summary()
        del body["preview"]
        if self.letter:
            body.update(self.letter.model_dump(mode="json", exclude={"source"}))
        else:
            body["problem"] = self.problem
        body["key"] = None if self.key is None else self.key.decode("utf-8", "backslashreplace")
        try:
            body["payload"] = None if self.value is None else orjson.loads(self.value)
        except orjson.JSONDecodeError:
            body["payload_text"] = self.value.decode("utf-8", "backslashreplace") if self.value else None
        return body


def parse_position(text: str) -> tuple[int, int]:
    """'PARTITION:OFFSET' -> (partition, offset); ValueError with a readable message otherwise."""
    partition, sep, offset = text.partition(":")
    if not sep or not partition.isdigit() or not offset.isdigit():
        raise ValueError(f"expected PARTITION:OFFSET (e.g. 0:42), got {text!r}")
    return int(partition), int(offset)


async def read_letters(settings: Settings, window: TopicRange, reason: str | None = None,
                       limit: int | None = None) -> AsyncIterator[Letter]:
    """Dead letters in ``window`` (of the dead-letter topic), optionally of one reason, at most ``limit``."""
    if limit is not None and limit <= 0:
        return
    found = 0
    async for batch in read_range(settings, window):
        for record in batch:
            letter = Letter.of(record)
            if reason is not None and letter.reason != reason:
                continue
            yield letter
            found += 1
            if limit is not None and found >= limit:
                return


async def fetch_letters(settings: Settings, positions: Sequence[tuple[int, int]]) -> dict[tuple[int, int], Letter]:
    """The dead letters at these (partition, offset) positions; absent ones are missing from the answer."""
    found: dict[tuple[int, int], Letter] = {}
    for partition, offset in dict.fromkeys(positions):
        window = TopicRange(settings.dead_letters_topic, [partition], start=offset, end=offset + 1)
        async for letter in read_letters(settings, window):
            if letter.offset == offset:
                found[(partition, offset)] = letter
    return found


class MissingLetters(LookupError):
    """Positions named by the user at which the dead-letter topic has no record."""

    def __init__(self, positions: Sequence[str]) -> None:
        super().__init__(f"no record at {', '.join(positions)}")
        self.positions = list(positions)


async def select_letters(settings: Settings, positions: Sequence[tuple[int, int]], window: TopicRange,
                         reason: str | None = None, limit: int | None = None) -> list[Letter]:
    """The letters at ``positions`` in that order (MissingLetters if one is absent), or with none named,
    those in ``window``; only of ``reason`` when given."""
    if not positions:
        return [letter async for letter in read_letters(settings, window, reason, limit)]
    found = await fetch_letters(settings, positions)
    if missing := [f"{p}:{o}" for p, o in positions if (p, o) not in found]:
        raise MissingLetters(missing)
    return [found[p] for p in positions if reason is None or found[p].reason == reason]


@dataclass(frozen=True)
class Redriven:
    letter: Letter
    to: SourcePosition | None  # where it was republished; None: refused (or a dry run)
    refused: str = ""


async def redrive(settings: Settings, letters: Sequence[Letter], *, dry_run: bool = False) -> list[Redriven]:
    """Republish each letter's original key and value bytes to its source topic.

    A cut value (not the whole original) or a record without dead-letter headers is refused, not sent.
    """
    refusals = {id(letter): _refusal(letter) for letter in letters}
    producer = None
    if not dry_run and not all(refusals.values()):
        producer = new_producer(settings)
        await producer.start()
    results: list[Redriven] = []
    try:
        for letter in letters:
            if refusals[id(letter)] or producer is None or letter.letter is None:
                results.append(Redriven(letter, None, refusals[id(letter)]))
                continue
            topic = letter.letter.source.topic
            meta = await producer.send_and_wait(topic, key=letter.key, value=letter.value)
            results.append(Redriven(letter, SourcePosition(topic=topic, partition=meta.partition,
                                                           offset=meta.offset)))
    finally:
        if producer is not None:
            await producer.stop()
    return results


def _refusal(letter: Letter) -> str:
    """Why ``letter`` cannot be redriven ('' when it can)."""
    if letter.letter is None:
        return letter.problem
    if letter.cut:
        return (f"payload was cut to {letter.size} of {letter.letter.original_size} bytes "
                "(the whole original is not on the dead-letter topic)")
    return ""
