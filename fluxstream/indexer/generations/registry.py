"""Index generations: a collection is served from one physical index while the next one builds.

A collection's data (Redis keys, pgvector rows, cache entries) lives under an *index
name*: generation 1 uses the collection name itself (so collections created before
any rebuild need no migration), generation N > 1 uses ``<collection>@g<N>``. The
registry hash ``fx:generations:<collection>`` is the alias:

``serving``       generation queries read (absent: 1)
``building``      generation a rebuild is filling (absent: none)
``state``         ``building`` while a rebuild runs, ``failed`` after it gave up
``retiring``      the generation replaced by the last switch; dropped after ``retire_after``
``progress``      JSON written by the rebuild (phase, records done/total)

Live writers apply every change to each *write target*: the serving generation and,
while a rebuild runs, the building one. A switch is one HSET of the alias hash, so
a query resolves either the old or the new generation, never a mix.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from fluxstream.core import keyspace, lua
from fluxstream.core.replies import text

_INDEX_NAME = re.compile(r"^(?P<collection>.+?)(?:@g(?P<generation>[1-9][0-9]*))?$")


def index_name(collection: str, generation: int) -> str:
    """Where generation ``generation`` of ``collection`` keeps its data."""
    return collection if generation == 1 else f"{collection}@g{generation}"


def parse_index_name(name: str) -> tuple[str, int]:
    """(collection, generation) of an index name."""
    match = _INDEX_NAME.match(name)
    assert match is not None
    return match["collection"], int(match["generation"] or 1)


@dataclass(frozen=True)
class IndexTarget:
    """The index one request reads or one change is written to: a collection at one generation,
    resolved once (``GenerationRegistry.serving``, ``write_targets``) and carried as a value, never
    folded into a collection string."""

    collection: str
    generation: int = 1

    @property
    def index(self) -> str:
        """The physical index name its Redis keys, pgvector rows and cache entries live under."""
        return index_name(self.collection, self.generation)


class RebuildConflict(RuntimeError):
    """A rebuild of this collection is already running (or failed and was not aborted)."""


@dataclass(frozen=True)
class GenerationState:
    collection: str
    serving: int = 1
    building: int | None = None
    state: str = "idle"  # idle | building | failed
    retiring: int | None = None
    retire_after: float | None = None
    progress: dict[str, Any] = field(default_factory=dict)

    @property
    def write_generations(self) -> list[int]:
        """Generations live changes must reach."""
        if self.building is not None and self.state == "building":
            return [self.serving, self.building]
        return [self.serving]

    def keeps(self, generation: int) -> bool:
        """Whether data of ``generation`` must be kept (serving, building or failed-but-inspectable, retiring)."""
        return generation in (self.serving, self.building, self.retiring)

    def to_json(self) -> dict[str, Any]:
        return {"serving": self.serving, "serving_index": index_name(self.collection, self.serving),
                "building": self.building, "state": self.state, "retiring": self.retiring,
                "retire_after": self.retire_after, "progress": self.progress}


def _decode(collection: str, raw: dict[bytes | str, bytes | str]) -> GenerationState:
    fields = {text(k): text(v) for k, v in raw.items()}

    def number(name: str) -> int | None:
        return int(fields[name]) if fields.get(name) else None

    return GenerationState(
        collection=collection,
        serving=number("serving") or 1,
        building=number("building"),
        state=fields.get("state") or "idle",
        retiring=number("retiring"),
        retire_after=float(fields["retire_after"]) if fields.get("retire_after") else None,
        progress=json.loads(fields.get("progress") or "{}"),
    )


class GenerationRegistry:
    """Reads and changes the alias records; dropping data is ``generations.retirement``'s job."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._begin = lua.register(redis, "begin_rebuild")
        self._switch = lua.register(redis, "switch_generation")

    @staticmethod
    def key(collection: str) -> str:
        return keyspace.generation_registry(collection)

    async def get(self, collection: str) -> GenerationState:
        return _decode(collection, await self.redis.hgetall(self.key(collection)))

    async def get_many(self, collections: Iterable[str]) -> dict[str, GenerationState]:
        names = sorted(set(collections))
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(self.key(name))
            rows = await pipe.execute()
        return {name: _decode(name, row) for name, row in zip(names, rows, strict=True)}

    async def all(self) -> list[GenerationState]:
        prefix = keyspace.GENERATIONS_PREFIX
        names = [k.decode()[len(prefix):] async for k in self.redis.scan_iter(match=prefix + "*")]
        return list((await self.get_many(names)).values())

    async def serving(self, collection: str) -> IndexTarget:
        """The index queries of ``collection`` read now."""
        value = await self.redis.hget(self.key(collection), "serving")
        return IndexTarget(collection, int(value) if value else 1)

    async def write_targets(self, collections: Iterable[str]) -> dict[str, list[IndexTarget]]:
        """The indexes each collection's live changes go to (the serving generation first)."""
        states = await self.get_many(collections)
        return {c: [IndexTarget(c, g) for g in s.write_generations] for c, s in states.items()}

    async def accepts_vectors(self, names: Iterable[str]) -> dict[str, bool]:
        """Whether the vector stage should still write an index (not one dropped or about to be)."""
        parsed = {name: parse_index_name(name) for name in set(names)}
        states = await self.get_many(c for c, _ in parsed.values())
        return {name: g in states[c].write_generations for name, (c, g) in parsed.items()}

    async def begin(self, collection: str, progress: dict[str, Any]) -> int:
        generation = int(await self._begin(keys=[self.key(collection)], args=[json.dumps(progress)]))
        if generation < 0:
            state = await self.get(collection)
            raise RebuildConflict(
                f"collection {collection!r} has generation {state.building} in state {state.state!r}; "
                "wait for it, or run `fluxstream rebuild --abort` first"
            )
        # The new index exists even if its source turns out empty: once serving, it answers no hits, not 404.
        await self.redis.sadd(keyspace.COLLECTIONS, index_name(collection, generation))
        return generation

    async def report(self, collection: str, generation: int, progress: dict[str, Any]) -> None:
        """Progress of the rebuild of ``generation`` (ignored once it is no longer the building one)."""
        building = await self.redis.hget(self.key(collection), "building")
        if building is not None and int(building) == generation:
            await self.redis.hset(self.key(collection), "progress", json.dumps(progress))

    async def switch(self, collection: str, generation: int, grace_seconds: float) -> bool:
        retire_after = time.time() + grace_seconds
        return bool(await self._switch(keys=[self.key(collection)], args=[str(generation), repr(retire_after)]))

    async def fail(self, collection: str, generation: int, reason: str) -> None:
        """Live writers stop feeding ``generation``; it stays until ``abort`` removes it."""
        state = await self.get(collection)
        if state.building == generation:
            progress = {**state.progress, "error": reason[:1000]}
            await self.redis.hset(self.key(collection), mapping={"state": "failed", "progress": json.dumps(progress)})

    async def forget_building(self, collection: str) -> int | None:
        """Detach the building (or failed) generation; returns it so its data can be dropped."""
        state = await self.get(collection)
        if state.building is None:
            return None
        await self.redis.hset(self.key(collection), mapping={"state": "idle", "progress": "{}"})
        await self.redis.hdel(self.key(collection), "building")
        return state.building

    async def forget_retiring(self, collection: str, generation: int) -> None:
        state = await self.get(collection)
        if state.retiring == generation:
            await self.redis.hdel(self.key(collection), "retiring", "retire_after")
