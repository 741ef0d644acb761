"""What the benchmarks share: an embedded (or configured) stack, percentiles, the Vaswani collection."""

from __future__ import annotations

import asyncio
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import redis.asyncio as aioredis

from fluxstream.core.settings import Settings
from fluxstream.indexer.postings import PostingsStore
from fluxstream.stack import Stack, free_port

VASWANI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "vaswani"


@contextmanager
def running_stack(workers: int = 1, **overrides: Any) -> Iterator[Settings]:
    """The embedded stack (or FLUXSTREAM_*_URL services) with worker(s) and query service, for one run."""
    with tempfile.TemporaryDirectory() as state_dir:
        base = replace(Settings.from_env(), state_dir=state_dir, session_timeout=6.0, http_port=free_port(),
                       worker_web_port=free_port(), log_format="console", **overrides)
        stack = Stack(base, workers=workers)
        settings = stack.start()
        try:
            yield settings
        finally:
            stack.stop()


def percentiles(samples: list[float]) -> dict[str, float]:
    p50, p95, p99 = np.percentile(samples, [50, 95, 99]) if samples else (float("nan"),) * 3
    return {"p50": round(float(p50), 3), "p95": round(float(p95), 3), "p99": round(float(p99), 3)}


def load_vaswani_corpus(root: Path = VASWANI) -> dict[str, str]:
    """docno -> text from the TREC file."""
    text = (root / "corpus" / "doc-text.trec").read_text(errors="replace")
    docs = {}
    for block in re.findall(r"<DOC>(.*?)</DOC>", text, flags=re.S):
        docno = re.search(r"<DOCNO>\s*(\S+?)\s*</DOCNO>", block)
        if docno:
            docs[docno.group(1)] = " ".join(block[docno.end():].split())
    return docs


async def wait_until_indexed(settings: Settings, collection: str, documents: int, timeout: float = 3600,
                             vectors: bool = True) -> dict[str, float]:
    """Poll until the collection holds ``documents`` documents in Redis and a vector for every chunk.

    Returns when each stage got there (seconds from the call).
    """
    started = time.monotonic()
    done: dict[str, float] = {}
    redis = aioredis.from_url(settings.redis_url)
    store = PostingsStore(redis)
    try:
        async with await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True) as conn:
            while time.monotonic() - started < timeout:
                stats = await store.stats(collection)
                if "bm25" not in done and stats.docs >= documents:
                    done["bm25"] = time.monotonic() - started
                if "bm25" in done and not vectors:
                    return done
                if "bm25" in done:
                    cur = await conn.execute("SELECT count(*) FROM fluxstream_chunks WHERE collection = %s",
                                             (collection,))
                    (rows,) = await cur.fetchone()
                    if rows >= stats.chunks:
                        done["vectors"] = time.monotonic() - started
                        return done
                await asyncio.sleep(0.25)
    finally:
        await redis.aclose()
    raise TimeoutError(f"{collection} not indexed within {timeout} s: {done}")
