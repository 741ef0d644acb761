"""The embedded stack starts only what is not configured by URL, and cleans up what it started; it refuses
busy ports, trusts only its own children, and tells other commands its URLs."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest

from fluxstream import devenv
from fluxstream.core.settings import Settings
from fluxstream.stack import AppProcesses, EmbeddedServices, Stack, StackError


def test_configured_urls_start_nothing(tmp_path: Path, stack: Settings) -> None:
    services = EmbeddedServices(tmp_path, stack.kafka_url, stack.redis_url, stack.database_url)
    services.start()
    try:
        assert services.started == []
        assert services.settings(Settings()).redis_url == stack.redis_url
    finally:
        services.stop()


def test_embedded_broker_starts_and_stops(tmp_path: Path, stack: Settings) -> None:
    services = EmbeddedServices(tmp_path, "", stack.redis_url, stack.database_url)
    services.start()
    try:
        assert services.started == ["kafka"]
        pid = services._tansu.pid  # type: ignore[union-attr]
        assert psutil.pid_exists(pid)
    finally:
        services.stop()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_a_busy_port_stops_the_start_before_anything_runs(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        stack = Stack(replace(Settings(), state_dir=str(tmp_path / "state"), http_port=port))
        with pytest.raises(StackError) as failure:
            stack.start()
    message = str(failure.value)
    assert f"port {port}" in message and "FLUXSTREAM_HTTP_PORT" in message
    assert f"in use by pid {os.getpid()} (" in message  # this test process holds it
    assert not (tmp_path / "state").exists()  # nothing was started


def test_readiness_counts_only_the_child_holding_the_port(tmp_path: Path) -> None:
    """Another server answering 200 on the child's port (another stack's query service) is not the child."""

    class Ready(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    other = ThreadingHTTPServer(("127.0.0.1", 0), Ready)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    apps = AppProcesses(replace(Settings(), http_port=other.server_address[1]), tmp_path)
    apps.procs["query"] = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with pytest.raises(StackError, match="query not ready"):
            apps.wait_ready(["query"], timeout=2)
        apps.procs["query"].kill()
        apps.procs["query"].wait()
        with pytest.raises(StackError, match="query exited with -9 before it was ready"):
            apps.wait_ready(["query"], timeout=2)
    finally:
        apps.procs["query"].kill()
        other.shutdown()
        other.server_close()


def test_dev_env_file_fills_unset_variables_while_its_stack_runs(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    settings = replace(Settings(), kafka_url="127.0.0.1:1234", redis_url="redis://u:p&q@127.0.0.1:5/0",
                       database_url="postgresql://postgres:@/postgres?host=/tmp/x y", http_port=8123)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; print(flush=True); time.sleep(60)", "fluxstream"],
                               stdout=subprocess.PIPE)
    sleeper.stdout.readline()  # type: ignore[union-attr]  # it runs (its command line is its own)
    try:
        path = devenv.write(tmp_path, settings, pid=sleeper.pid)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        env = devenv.environ_with_dev_stack(tmp_path, {"FLUXSTREAM_KAFKA_URL": "set:9092", "FLUXSTREAM_REDIS_URL": ""})
        assert env["FLUXSTREAM_KAFKA_URL"] == "set:9092"  # a variable that is set wins
        assert Settings.from_env(env).redis_url == settings.redis_url
        assert Settings.from_env(env).database_url == settings.database_url
        assert Settings.from_env(env).http_port == 8123
        assert f"using the dev stack's URLs from {path}" in capsys.readouterr().err
        devenv.remove(tmp_path)  # not ours (another pid wrote it): kept
        assert path.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert devenv.environ_with_dev_stack(tmp_path, {}) == {}  # its stack is gone: stale, ignored
    assert "is not running" in capsys.readouterr().err
    devenv.remove(tmp_path, pid=sleeper.pid)
    assert not path.exists()
