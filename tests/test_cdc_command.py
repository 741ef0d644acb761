"""`fluxstream cdc`: Debezium's embedded engine in the command's own process, capturing a real source
PostgreSQL into the session broker (topic prefix `cli`, mapped to collection `cdc-cli` in conftest);
a SIGTERM stops it with exit status 0 and a second run resumes from the stored offsets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fluxstream.core.settings import Settings
from fluxstream.stack import free_port, spawn, stop_process
from tests.conftest import eventually
from tests.debezium_harness import REPO, STREAMING, SourcePostgres

COLLECTION = "cdc-cli"


def _env(state_dir: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "FLUXSTREAM_STATE_DIR": str(state_dir), **extra}


@pytest.fixture
def source(tmp_path: Path) -> Iterator[SourcePostgres]:
    pg = SourcePostgres(tmp_path / "source-pg").start()
    pg.execute("CREATE TABLE notes (id int PRIMARY KEY, title text, body text)")
    yield pg
    pg.stop()


def _start(source: SourcePostgres, stack: Settings, state_dir: Path, run: int) -> subprocess.Popen[bytes]:
    """`fluxstream cdc` as a child; returns once Debezium streams (its snapshot, if any, is done)."""
    log = state_dir / "cdc" / "debezium.log"
    seen = log.read_text(errors="replace").count(STREAMING) if log.exists() else 0
    state_dir.mkdir(parents=True, exist_ok=True)
    out = state_dir / f"cdc-{run}.out"
    proc = spawn([sys.executable, "-m", "fluxstream.cli", "cdc", "--source", source.url, "--tables", "public.notes",
                  "--topic-prefix", "cli", "--slot", "fluxstream_cli"], out,
                 env=_env(state_dir, FLUXSTREAM_KAFKA_URL=stack.kafka_url, FLUXSTREAM_CDC_WEB_PORT=str(free_port())))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"fluxstream cdc exited with {proc.returncode}: {out.read_text()[-3000:]}")
        if log.exists() and log.read_text(errors="replace").count(STREAMING) > seen:
            return proc
        time.sleep(0.2)
    stop_process(proc)
    raise AssertionError("fluxstream cdc not streaming after 120 s")


async def _found(http: httpx.AsyncClient, query: str) -> set[str]:
    resp = await http.post("/v1/search", json={"query": query, "collection": COLLECTION, "mode": "bm25", "k": 20})
    if resp.status_code == 404:  # the collection does not exist until its first record is applied
        return set()
    resp.raise_for_status()
    return {hit["doc_id"] for hit in resp.json()["hits"]}


async def _searchable(http: httpx.AsyncClient, query: str, ids: set[str]) -> None:
    async def check() -> bool:
        return await _found(http, query) == ids

    await eventually(check, timeout=60, interval=0.3)


@pytest.mark.debezium
async def test_cdc_command_captures_stops_cleanly_and_resumes(stack: Settings, http: httpx.AsyncClient,
                                                              source: SourcePostgres, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    insert = "INSERT INTO notes VALUES (%s, %s, %s)"
    source.execute((insert, [1, "before", "snapshotted note about walruses"]))
    proc = _start(source, stack, state_dir, 1)
    source.execute(*[(insert, [i, f"note {i}", f"streamed note {i} about walruses"]) for i in range(2, 5)])
    await _searchable(http, "walruses", {"1", "2", "3", "4"})
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, (state_dir / "cdc-1.out").read_text()[-3000:]
    assert (state_dir / "cdc" / "offsets.dat").exists()

    # written while stopped: the next run starts from the stored offsets, not a new snapshot, and misses nothing
    source.execute((insert, [5, "while down", "written while capture was stopped, narwhals"]),
                   "DELETE FROM notes WHERE id = 2")
    proc = _start(source, stack, state_dir, 2)
    try:
        source.execute((insert, [6, "after", "after the restart, narwhals too"]))
        await _searchable(http, "narwhals", {"5", "6"})
        await _searchable(http, "walruses", {"1", "3", "4"})
    finally:
        stop_process(proc, timeout=60)
    assert proc.returncode == 0
    log = (state_dir / "cdc" / "debezium.log").read_text(errors="replace")
    assert log.count("Snapshot completed") <= 1, "the restart took a new snapshot instead of resuming"


def test_cdc_command_without_java_is_one_line_and_hides_the_password(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "fluxstream.cli", "cdc", "--source",
                          "postgresql://capture:s3cret-pw@127.0.0.1:1/db", "--tables", "public.notes"],
                         capture_output=True, text=True, timeout=60,
                         env=_env(tmp_path, PATH="", JAVA_HOME="", FLUXSTREAM_KAFKA_URL="127.0.0.1:1"))
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert lines[-1] == "the Debezium engine needs Java 17 or later (java not found on PATH, JAVA_HOME unset)"
    assert "Traceback" not in run.stderr and "s3cret-pw" not in run.stderr + run.stdout
    assert "capture:***@127.0.0.1:1/db" in run.stderr


def test_cdc_command_needs_a_source_and_tables(tmp_path: Path) -> None:
    env = _env(tmp_path, FLUXSTREAM_KAFKA_URL="127.0.0.1:1")
    env.pop("FLUXSTREAM_CDC_SOURCE_URL", None)
    run = subprocess.run([sys.executable, "-m", "fluxstream.cli", "cdc", "--tables", "public.notes"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert run.returncode == 2
    assert run.stderr.strip().startswith("fluxstream: cdc: give --source") and "Traceback" not in run.stderr
    run = subprocess.run([sys.executable, "-m", "fluxstream.cli", "cdc", "--tables", "notes"], capture_output=True,
                         text=True, timeout=60, env={**env, "FLUXSTREAM_CDC_SOURCE_URL": "postgresql://u@h/db"})
    assert run.returncode == 2 and "cdc: --tables notes: expected schema.table" in run.stderr
