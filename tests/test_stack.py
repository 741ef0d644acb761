"""The embedded stack starts only what is not configured by URL, and cleans up what it started."""

from __future__ import annotations

from pathlib import Path

import psutil

from fluxstream.settings import Settings
from fluxstream.stack import EmbeddedServices


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
