"""Commands packed by hiredis reach real Valkey intact; what hiredis refuses falls back to redis-py."""

from __future__ import annotations

import pytest
from redis.exceptions import DataError

from fluxstream.core.redis_packing import HiredisPacking
from fluxstream.core.settings import Settings
from fluxstream.indexer.wiring import open_redis


async def test_commands_packed_in_c_round_trip(stack: Settings, collection: str) -> None:
    redis = open_redis(stack.redis_url)
    try:
        assert issubclass(redis.connection_pool.connection_class, HiredisPacking)
        key = f"fxtest:{{{collection}}}"
        # Many arguments (as a postings write sends), text, integers, floats and non-ASCII text.
        fields = {f"term{i}": i for i in range(5000)}
        assert await redis.hset(key, mapping=fields) == 5000
        await redis.hset(key, mapping={"text": "Übersicht", "score": 1.5})
        assert await redis.hget(key, "term4999") == b"4999"
        assert (await redis.hget(key, "text")).decode() == "Übersicht"
        assert float(await redis.hget(key, "score")) == 1.5
        # memoryview and bytearray: hiredis refuses them, redis-py's packer sends them.
        await redis.hset(key, mapping={"view": memoryview(b"mv"), "array": bytearray(b"ba")})
        assert await redis.hmget(key, ["view", "array"]) == [b"mv", b"ba"]
        # A two-word command name is split as redis-py splits it.
        assert "appendonly" in await redis.config_get("appendonly")
        with pytest.raises(DataError):
            await redis.set(key + ":flag", True)  # redis-py rejects bools; so does the C path
        await redis.delete(key)
    finally:
        await redis.aclose()
