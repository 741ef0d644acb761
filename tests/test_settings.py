"""Settings are checked at start-up, for every command: a bad variable is one line (name, value, what is
allowed) and exit status 2, never a traceback; `--version` and `--help` read well; a query service that
must have API keys refuses to start without them (fail closed) and starts with them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import httpx
import pytest

from fluxstream.cli import build_parser
from fluxstream.core.settings import Settings, SettingsError
from fluxstream.query.auth import new_key
from fluxstream.stack import free_port

REPO = Path(__file__).resolve().parents[1]
BAD = {
    "FLUXSTREAM_HTTP_PORT": "abc",
    "FLUXSTREAM_EMBEDDER": "bogus",
    "FLUXSTREAM_CACHE_ENABLED": "maybe",
    "FLUXSTREAM_BM25_B": "1.5",
    "FLUXSTREAM_WORKER_STAGES": "bm25,vector",
}


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXSTREAM_")}
    env["PYTHONPATH"] = str(REPO)
    return {**env, **extra}


def fluxstream(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fluxstream.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


@pytest.mark.parametrize("command", [["status"], ["serve"], ["worker"], ["dev", "--demo"], ["publish"], ["config"],
                                     ["create-topics"], ["search", "anything"]])
def test_bad_settings_are_one_line_each_and_exit_2(command: list[str], tmp_path: Path) -> None:
    done = fluxstream("--state-dir", str(tmp_path), *command, env=clean_env(**BAD))
    assert done.returncode == 2, done
    assert "Traceback" not in done.stderr + done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == len(BAD), lines
    for (name, value), line in zip(sorted(BAD.items()), sorted(lines), strict=True):
        assert line.startswith(f"fluxstream: {name}={value!r}: expected "), line
    assert "fluxstream: FLUXSTREAM_EMBEDDER='bogus': expected one of local, openai" in lines
    assert "fluxstream: FLUXSTREAM_HTTP_PORT='abc': expected an integer from 1 to 65535" in lines
    assert not list(tmp_path.iterdir())  # nothing was started


def test_every_setting_is_checked_when_read() -> None:
    assert Settings.from_env({"FLUXSTREAM_EMBEDDER": "OpenAI", "FLUXSTREAM_STEMMER": "english",
                              "FLUXSTREAM_WORKER_STAGES": "bm25, vectors", "FLUXSTREAM_HTTP_PORT": "8080",
                              "FLUXSTREAM_CACHE_ENABLED": "off"}).http_port == 8080
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"FLUXSTREAM_STEMMER": "klingon", "FLUXSTREAM_KAFKA_SECURITY_PROTOCOL": "TLS",
                           "FLUXSTREAM_TOPIC_PARTITIONS": "0", "FLUXSTREAM_SESSION_TIMEOUT": "-1",
                           "FLUXSTREAM_LOG_FORMAT": "xml", "FLUXSTREAM_HNSW_PRESET": "fast"})
    assert [p.split("=")[0] for p in info.value.problems] == [
        "FLUXSTREAM_KAFKA_SECURITY_PROTOCOL", "FLUXSTREAM_TOPIC_PARTITIONS", "FLUXSTREAM_SESSION_TIMEOUT",
        "FLUXSTREAM_STEMMER", "FLUXSTREAM_HNSW_PRESET", "FLUXSTREAM_LOG_FORMAT"]
    assert "FLUXSTREAM_TOPIC_PARTITIONS='0': expected an integer ≥ 1" in info.value.problems
    with pytest.raises(SettingsError) as urls:
        Settings.from_env({"FLUXSTREAM_KAFKA_URL": "localhost", "FLUXSTREAM_REDIS_URL": "http://:s3cret@cache:6379",
                           "FLUXSTREAM_DATABASE_URL": "mysql://app:hunter2@db/app"})
    assert urls.value.problems == [
        "FLUXSTREAM_KAFKA_URL='localhost': expected host:port[,host:port]",
        "FLUXSTREAM_REDIS_URL='http://:***@cache:6379': expected a redis://, rediss:// or unix:// URL",
        "FLUXSTREAM_DATABASE_URL='mysql://app:***@db/app': expected a postgresql:// URL or a libpq connection "
        "string (host=... dbname=...)"]  # the value is named, its password is not
    assert Settings.from_env({"FLUXSTREAM_KAFKA_URL": "k1:9092,k2:9092", "FLUXSTREAM_REDIS_URL": "rediss://:p@h:1/0",
                              "FLUXSTREAM_DATABASE_URL": "host=db dbname=x"}).kafka_url == "k1:9092,k2:9092"
    with pytest.raises(SettingsError, match="CHUNK_OVERLAP=200: expected less than FLUXSTREAM_CHUNK_SIZE"):
        Settings.from_env({"FLUXSTREAM_CHUNK_OVERLAP": "200"})


def test_version_and_help_texts() -> None:
    done = fluxstream("--version", env=clean_env())
    assert done.returncode == 0 and done.stdout.strip() == f"fluxstream {version('fluxstream')}"
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.choices and "dev" in a.choices).choices
    texts = [parser.format_help(), *(p.format_help() for p in subparsers.values())]
    assert len(texts) > 10
    for text in texts:
        assert "`" not in text, text


def test_query_service_refuses_to_start_open_when_keys_are_required(stack: Settings) -> None:
    env = clean_env(FLUXSTREAM_REDIS_URL=stack.redis_url, FLUXSTREAM_DATABASE_URL=stack.database_url,
                    FLUXSTREAM_HTTP_PORT=str(free_port()), FLUXSTREAM_REQUIRE_API_KEYS="true")
    done = fluxstream("serve", env=env)
    assert done.returncode == 2, done
    assert "Traceback" not in done.stderr + done.stdout
    assert done.stderr.strip().splitlines() == [
        "fluxstream: FLUXSTREAM_API_KEYS is empty and FLUXSTREAM_REQUIRE_API_KEYS=true: the query service does not "
        "start open; add a key (fluxstream api-key --scopes search)"]


def test_query_service_with_required_keys_starts_and_checks_them(stack: Settings, tmp_path: Path) -> None:
    key, entry = new_key(["search"])
    port = free_port()
    env = clean_env(FLUXSTREAM_REDIS_URL=stack.redis_url, FLUXSTREAM_DATABASE_URL=stack.database_url,
                    FLUXSTREAM_HTTP_PORT=str(port), FLUXSTREAM_REQUIRE_API_KEYS="true", FLUXSTREAM_API_KEYS=entry,
                    FLUXSTREAM_LOG_FORMAT="console")
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "fluxstream.cli", "serve"], env=env, cwd=REPO, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        body = {"query": "anything", "collection": "nothing-here", "mode": "bm25"}
        url = f"http://127.0.0.1:{port}/v1/search"
        assert httpx.post(url, json=body, timeout=30).status_code == 401
        assert httpx.post(url, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30).status_code in {
            200, 404}  # 404: collection_not_found, where a missing collection says so
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
