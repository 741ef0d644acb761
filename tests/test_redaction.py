"""Passwords in service URLs never reach the terminal or a log: `fluxstream dev` prints and logs
``scheme://user:***@host``, and every log line (ours or a library's) goes through the redactor."""

from __future__ import annotations

import io
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
import redis
import structlog

from fluxstream.core.logging import configure_logging, get_logger, redact
from fluxstream.stack import EmbeddedServices, free_port

REDIS_PASSWORD = "Redis-Pw-7f3a9c"
PG_PASSWORD = "Pg-Pw-41be08"


@pytest.mark.parametrize(("text", "expected"), [
    ("redis://default:s3cret@127.0.0.1:6379/0", "redis://default:***@127.0.0.1:6379/0"),
    ("rediss://:s3cret@cache:6380/1", "rediss://:***@cache:6380/1"),
    ("postgresql://app:p%40ss@db:5432/x?sslmode=require", "postgresql://app:***@db:5432/x?sslmode=require"),
    ("error connecting to kafka://u:pw@b:9092 and redis://u:pw2@r", "error connecting to kafka://u:***@b:9092 and "
                                                                     "redis://u:***@r"),
    ("host=db password=s3cret user=app", "host=db password=*** user=app"),
    ("redis://cache:6379/0", "redis://cache:6379/0"),  # nothing to hide: unchanged
    ("postgresql://postgres:@localhost:5432/postgres", "postgresql://postgres:@localhost:5432/postgres"),
    ("mail me at someone@example.com", "mail me at someone@example.com"),
])
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_every_log_line_is_redacted(fmt: str) -> None:
    """Our structlog lines (any value, nested or not, exceptions included) and stdlib loggers' lines."""
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level, structlog.get_config()
    configure_logging(fmt, "info")
    root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
    try:
        log = get_logger("test.redaction")
        log.info("connecting", url="redis://app:hunter2@r:6379/0", nested={"urls": ["postgresql://a:hunter3@db/x"]})
        try:
            raise ConnectionError("cannot reach postgresql://a:hunter4@db/x")
        except ConnectionError:
            log.exception("failed")
        logging.getLogger("some.library").warning("dsn is %s", "redis://:hunter5@r/0")
        try:
            raise ValueError("kafka://u:hunter6@b")
        except ValueError:
            logging.getLogger("some.library").exception("boom")
    finally:  # the process's logging as it was
        root.handlers[:], level, config = saved
        root.setLevel(level)
        structlog.configure(**config)
    output = stream.getvalue()
    for secret in ("hunter2", "hunter3", "hunter4", "hunter5", "hunter6"):
        assert secret not in output, output
    assert "redis://app:***@r:6379/0" in output and "redis://:***@r/0" in output


@pytest.fixture
def protected_services(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Valkey that requires a password and PostgreSQL with one: their URLs carry secrets."""
    services = EmbeddedServices(tmp_path / "servers")
    services.state_dir.mkdir(parents=True)
    try:
        services._start_valkey()
        services._start_postgres()
        with psycopg.connect(services.database_url, autocommit=True) as conn:
            conn.execute(f"ALTER USER postgres PASSWORD '{PG_PASSWORD}'")
        redis.Redis.from_url(services.redis_url).config_set("requirepass", REDIS_PASSWORD)
        redis_url = services.redis_url.replace("redis://", f"redis://default:{REDIS_PASSWORD}@")
        database_url = services.database_url.replace("postgres:@", f"postgres:{PG_PASSWORD}@")
        assert REDIS_PASSWORD in redis_url and PG_PASSWORD in database_url
        yield redis_url, database_url
    finally:
        services.stop()


@pytest.mark.slow
def test_dev_stack_never_prints_or_logs_passwords(tmp_path: Path, protected_services: tuple[str, str]) -> None:
    redis_url, database_url = protected_services
    state_dir, port = tmp_path / "state", free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXSTREAM_")}
    env |= {"FLUXSTREAM_REDIS_URL": redis_url, "FLUXSTREAM_DATABASE_URL": database_url,
            "FLUXSTREAM_STATE_DIR": str(state_dir), "FLUXSTREAM_HTTP_PORT": str(port),
            "FLUXSTREAM_WORKER_WEB_PORT": str(free_port()), "FLUXSTREAM_SESSION_TIMEOUT": "6"}
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "fluxstream.cli", "dev"], stdout=stdout, stderr=stderr,
                                env=env, start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while "fluxstream: running" not in out.read_text():
                assert proc.poll() is None, out.read_text()[-3000:] + err.read_text()[-3000:]
                assert time.monotonic() < deadline, out.read_text()[-3000:]
                time.sleep(0.5)
            ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=30).json()
            assert ready["redis"] and ready["postgres"], ready  # both were reached with their passwords
            httpx.post(f"http://127.0.0.1:{port}/v1/search", json={"query": "anything"}, timeout=30)  # logs a line
        finally:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(120)
    printed = out.read_text()
    assert "redis://default:***@" in printed and "postgresql://postgres:***@" in printed, printed
    outputs = {"stdout": printed, "stderr": err.read_text()}
    outputs |= {str(p): p.read_text(errors="replace") for p in state_dir.rglob("*.log")}
    assert len(outputs) > 3, list(outputs)  # the worker's and the query service's logs are there
    for name, text in outputs.items():
        assert REDIS_PASSWORD not in text and PG_PASSWORD not in text, (name, text[-2000:])
