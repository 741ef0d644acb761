"""A worker whose configuration fails only once its pipeline opens stops with one clear line, not a loop.

Outages are waited out (tests/test_faults.py); a failure that waiting cannot fix (the database refuses
the HNSW parameters, the embeddings table was made for another model) must surface: the real
``fluxstream worker`` process exits non-zero naming the cause, without a traceback.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from fluxstream.core.settings import Settings
from fluxstream.indexer.vector_store import VectorStore
from fluxstream.stack import free_port

CLI = [sys.executable, "-m", "fluxstream.cli"]
REPO = Path(__file__).resolve().parents[1]
EXIT_WITHIN = 120.0  # seconds; the old worker retried for ever


def fresh_database(stack: Settings) -> str:
    """The URL of a new, empty database on the stack's PostgreSQL (no chunks table, no HNSW index yet)."""
    name = f"worker_failure_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return make_conninfo(**{**conninfo_to_dict(stack.database_url), "dbname": name})


def worker_env(stack: Settings, tmp_path: Path, **settings: str) -> dict[str, str]:
    tag = uuid.uuid4().hex[:8]
    env = {**os.environ, **stack.to_env(), "PYTHONPATH": str(REPO), "FLUXSTREAM_STATE_DIR": str(tmp_path),
           "FLUXSTREAM_CDC_CONFIG": "", "FLUXSTREAM_APP_ID": f"failing-{tag}",
           "FLUXSTREAM_EMBED_IN_CHILD_PROCESS": "false", "FLUXSTREAM_WORKER_WEB_PORT": str(free_port())}
    for topic in ("documents", "index_updates", "dead_letters", "embed_jobs"):
        env[f"FLUXSTREAM_{topic.upper()}_TOPIC"] = f"failing-{tag}.{topic}"
    return env | settings


def run_worker(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run([*CLI, "worker"], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=EXIT_WITHIN)
    except subprocess.TimeoutExpired as exc:
        output = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else str(exc.stderr)
        pytest.fail(f"the worker kept running for {EXIT_WITHIN:.0f} s instead of failing: {output[-2000:]}")


def assert_fails_in_one_line(done: subprocess.CompletedProcess[str], *expected: str) -> None:
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("fluxstream worker: ") and all(e in last for e in expected), output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert output.count("worker_failed") == 1, output[-3000:]  # said once, not in a loop


def test_a_worker_with_hnsw_parameters_the_database_refuses_exits(stack: Settings, tmp_path: Path) -> None:
    """pgvector takes m in 2..100: the setting passes validation, the index creation refuses it."""
    env = worker_env(stack, tmp_path, FLUXSTREAM_DATABASE_URL=fresh_database(stack), FLUXSTREAM_HNSW_M="1000")
    assert_fails_in_one_line(run_worker(env, tmp_path), "InvalidParameterValue", "m")


def test_a_worker_whose_embeddings_table_has_other_dimensions_exits(stack: Settings, tmp_path: Path) -> None:
    url = fresh_database(stack)

    async def made_for_another_model() -> None:
        store = await VectorStore.connect(url, dimensions=64, model_id="another-model")
        await store.close()

    asyncio.run(made_for_another_model())
    env = worker_env(stack, tmp_path, FLUXSTREAM_DATABASE_URL=url)
    assert_fails_in_one_line(run_worker(env, tmp_path), "SchemaMismatch", "64")
