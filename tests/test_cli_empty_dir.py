"""Every command from an empty directory, as a container or a pod starts it: no state directory yet.

Each runs as a subprocess with a fresh temporary working directory and the session stack's URLs
(own topics, consumer group and ports, so the session's worker and query service are untouched).
A command that cannot work must fail with one clear line, never a traceback.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import orjson
import pytest

from fluxstream.core.settings import Settings
from fluxstream.stack import free_port

CLI = [sys.executable, "-m", "fluxstream.cli"]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def env(stack: Settings) -> dict[str, str]:
    """The stack's settings, minus the state directory (the default, relative ``.fluxstream``, applies)."""
    tag = uuid.uuid4().hex[:8]
    values = {**os.environ, **stack.to_env(), "PYTHONPATH": str(REPO),
              "FLUXSTREAM_CDC_CONFIG": "", "FLUXSTREAM_APP_ID": f"cli-{tag}", "FLUXSTREAM_EMBED_PROCESSES": "1",
              "FLUXSTREAM_HTTP_PORT": str(stack.http_port), "FLUXSTREAM_WORKER_WEB_PORT": str(free_port())}
    for topic in ("documents", "index_updates", "dead_letters", "embed_jobs", "search_requests", "search_replies"):
        values[f"FLUXSTREAM_{topic.upper()}_TOPIC"] = f"cli-{tag}.{topic}"
    del values["FLUXSTREAM_STATE_DIR"]
    return values


def run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*CLI, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in done.stdout + done.stderr, (args, done.stdout[-2000:], done.stderr[-2000:])
    return done


def ok(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = run(args, cwd, env)
    assert done.returncode == 0, (args, done.stdout[-2000:], done.stderr[-2000:])
    return done.stdout


def fails_in_one_line(args: list[str], cwd: Path, env: dict[str, str], expected: str) -> None:
    done = run(args, cwd, env)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert expected in last, done.stderr[-2000:]


def test_one_shot_commands_from_an_empty_directory(tmp_path: Path, env: dict[str, str], stack: Settings) -> None:
    cwd = tmp_path / "empty"
    cwd.mkdir()
    assert "FLUXSTREAM_DEAD_LETTER_MAX_BYTES" in ok(["config"], cwd, env)
    assert "entry:" in ok(["api-key"], cwd, env)
    assert "up to date" in ok(["schemas"], cwd, env)
    assert "created:" in ok(["create-topics"], cwd, env)
    docs = tmp_path / "docs.ndjson"
    docs.write_bytes(orjson.dumps({"doc_id": "d1", "collection": "cli", "text": "a heron by the river"}) + b"\n")
    assert "published 1" in ok(["publish", "--file", str(docs)], cwd, env)
    assert "exported 1" in ok(["export", "--topic", env["FLUXSTREAM_DOCUMENTS_TOPIC"], "--out", "log.ndjson"],
                              cwd, env)
    assert "checked 1 records; 0 bad" in ok(["replay", "log.ndjson", "--dry-run"], cwd, env)
    assert "published 1" in ok(["replay", "log.ndjson"], cwd, env)
    assert "collection" in ok(["status"], cwd, env)
    # This test's topics are read by no worker: collection "cli" never gets a document, and says so.
    fails_in_one_line(["search", "heron", "--collection", "cli"], cwd, env, "collection_not_found")
    (tmp_path / "qrels").write_text("q1 0 d1 1\n")
    (tmp_path / "queries").write_text("q1\theron\n")
    fails_in_one_line(["eval", str(tmp_path / "qrels"), str(tmp_path / "queries"), "--collection", "cli"],
                      cwd, env, "collection_not_found")
    assert "no generation is building" in ok(["rebuild", "cli-none", "--abort"], cwd, env)
    fails_in_one_line(["rebuild", "cli-none", "--promote"], cwd, env, "no generation is ready")
    # What cannot work here says so in one line.
    fails_in_one_line(["search", "heron"], cwd, {**env, "FLUXSTREAM_HTTP_PORT": str(free_port())},
                      "no answer from")
    fails_in_one_line(["status"], cwd, {**env, "FLUXSTREAM_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"},
                      "cannot reach a service")
    fails_in_one_line(["eval", "missing-qrels", "missing-queries"], cwd, env, "No such file or directory")
    fails_in_one_line(["worker"], cwd, {**env, "FLUXSTREAM_KAFKA_URL": ""}, "FLUXSTREAM_KAFKA_URL")
    assert "up to date" in ok(["schemas"], cwd, env)  # and nothing above wrote into the package


def serve_until_ready(args: list[str], cwd: Path, env: dict[str, str], url: str, timeout: float = 180) -> str:
    """Start a long-running command, wait for ``url`` to answer 200, stop it with SIGTERM; its output."""
    log = cwd.parent / f"{args[0]}.log"  # a file, not a pipe: a chatty child would block on a full pipe
    with open(log, "wb") as out:
        proc = subprocess.Popen([*CLI, *args], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while True:
            assert proc.poll() is None, f"{args} exited with {proc.returncode}: {log.read_text()[-3000:]}"
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"{args}: {url} not ready after {timeout}s"
            time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGTERM if args[0] != "dev" else signal.SIGINT)
        proc.wait(timeout=60)
    output = log.read_text(errors="replace")
    assert proc.returncode in (0, -signal.SIGTERM), output[-3000:]  # uvicorn re-raises SIGTERM once stopped
    assert "Traceback" not in output, output[-3000:]
    return output


def test_worker_serve_and_dev_from_an_empty_directory(tmp_path: Path, env: dict[str, str]) -> None:
    cwd = tmp_path / "empty"
    cwd.mkdir()
    ok(["create-topics"], cwd, env)
    worker = serve_until_ready(["worker"], cwd, env, f"http://127.0.0.1:{env['FLUXSTREAM_WORKER_WEB_PORT']}/readyz")
    assert "FileNotFoundError" not in worker
    assert (cwd / ".fluxstream").is_dir()  # created by the worker itself
    port = free_port()
    serve_until_ready(["serve"], cwd, {**env, "FLUXSTREAM_HTTP_PORT": str(port)}, f"http://127.0.0.1:{port}/readyz")
    dev_dir = tmp_path / "dev"
    dev_dir.mkdir()
    port = free_port()
    dev = serve_until_ready(["dev"], dev_dir, {**env, "FLUXSTREAM_HTTP_PORT": str(port)},
                            f"http://127.0.0.1:{port}/readyz")
    assert "stopped" in dev and (dev_dir / ".fluxstream").is_dir()
