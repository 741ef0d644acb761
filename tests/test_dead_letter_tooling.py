"""`fluxstream dead-letters list|show|redrive` against the live stack: a malformed event the worker
dead-lettered is listed with its reason and shown with its payload; a valid change that was
dead-lettered is redriven to its source topic and gets indexed; a cut payload is refused."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import orjson
from aiokafka import AIOKafkaProducer

from fluxstream.core.settings import Settings
from fluxstream.schemas.decoding import Rejected, dead_letter_record
from fluxstream.schemas.events import SourcePosition
from tests.conftest import TopicReader, change, eventually
from tests.test_replay import cli


async def _dead_letter(producer: AIOKafkaProducer, settings: Settings, value: bytes, key: bytes,
                       max_bytes: int) -> str:
    """Publish the dead letter the worker would write for (key, value); its PARTITION:OFFSET."""
    source = SourcePosition(topic=settings.documents_topic, partition=0, offset=0)
    k, v, headers = dead_letter_record(Rejected("handler_failed", "store was down"), source, key, value, max_bytes)
    meta = await producer.send_and_wait(settings.dead_letters_topic, key=k, value=v, headers=headers)
    return f"{meta.partition}:{meta.offset}"


async def test_list_show_and_redrive(stack: Settings, producer: AIOKafkaProducer, http: httpx.AsyncClient,
                                     collection: str) -> None:
    tag = uuid.uuid4().hex[:8]
    bad_key = f"bad-{tag}".encode()
    async with TopicReader(stack, stack.dead_letters_topic) as letters:
        await producer.send_and_wait(stack.documents_topic, key=bad_key, value=b'{"op": "upsert", "doc_id": ')
        [dead] = await letters.wait_for_records(lambda r: r.key == bad_key)
    bad_at = f"{dead.partition}:{dead.offset}"
    good = change(f"redriven-{tag}", collection, f"a dead lettered heron {tag}", version=1)
    good_at = await _dead_letter(producer, stack, orjson.dumps(good), good["doc_id"].encode(), 1_000_000)
    big = change(f"cut-{tag}", collection, "long text " * 400, version=1)
    cut_at = await _dead_letter(producer, stack, orjson.dumps(big), big["doc_id"].encode(), 2048)

    listed = await asyncio.to_thread(cli, stack, "dead-letters", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {row["position"]: row for row in map(orjson.loads, listed.stdout.splitlines())}
    assert rows[bad_at]["reason"] == "invalid_json" and rows[bad_at]["source"]["topic"] == stack.documents_topic
    assert rows[bad_at]["preview"] == '{"op": "upsert", "doc_id": ' and not rows[bad_at]["cut"]
    assert rows[good_at]["reason"] == "handler_failed" and rows[cut_at]["cut"]
    only = await asyncio.to_thread(cli, stack, "dead-letters", "list", "--reason", "invalid_json")
    starts = [line.split()[0] for line in only.stdout.splitlines()]
    assert bad_at in starts and good_at not in starts and f"{bad_at}  " in only.stdout
    assert all(line.split()[2] == "invalid_json" for line in only.stdout.splitlines())

    shown = await asyncio.to_thread(cli, stack, "dead-letters", "show", good_at, cut_at)
    assert shown.returncode == 0, shown.stderr
    assert f'"doc_id": "{good["doc_id"]}"' in shown.stdout and '"detail": "store was down"' in shown.stdout
    assert f'"original_size": {len(orjson.dumps(big))}' in shown.stdout

    async def hits() -> list[str]:
        resp = await http.post("/v1/search", json={"query": f"heron {tag}", "collection": collection,
                                                   "mode": "bm25", "k": 5})
        return [h["doc_id"] for h in resp.json().get("hits", [])]  # unknown collection: none yet

    assert await hits() == []
    dry = await asyncio.to_thread(cli, stack, "dead-letters", "redrive", good_at, "--dry-run")
    assert dry.returncode == 0 and "dry run" in dry.stdout
    await asyncio.sleep(1)
    assert await hits() == []
    redriven = await asyncio.to_thread(cli, stack, "dead-letters", "redrive", good_at)
    assert redriven.returncode == 0, redriven.stderr
    assert f"{good_at}: redriven to {stack.documents_topic}:" in redriven.stdout
    assert await eventually(hits) == [good["doc_id"]]

    refused = await asyncio.to_thread(cli, stack, "dead-letters", "redrive", cut_at)
    assert refused.returncode == 1 and f"{cut_at}: refused: payload was cut" in refused.stderr
    assert "redriven 0 of 1" in refused.stdout


async def test_mistakes_are_one_line(stack: Settings) -> None:
    for args in (["show", "zero:1"], ["redrive"], ["show", "0:999999999"], ["list", "--from-time", "yesterday"]):
        result = await asyncio.to_thread(cli, stack, "dead-letters", *args)
        assert result.returncode != 0 and "Traceback" not in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)
