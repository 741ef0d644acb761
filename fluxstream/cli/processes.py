"""`fluxstream worker` and `fluxstream serve`: the two long-running processes."""

from __future__ import annotations

import argparse
import sys

from fluxstream.cli.common import Subparsers, load_settings, require


def register_worker(sub: Subparsers) -> None:
    sub.add_parser("worker", help="run a Faust indexing worker").set_defaults(func=cmd_worker)


def register_serve(sub: Subparsers) -> None:
    sub.add_parser("serve", help="run the HTTP query service").set_defaults(func=cmd_serve)


def cmd_worker(args: argparse.Namespace) -> int:
    from fluxstream.streams.app import build_app, run_worker

    sys.argv = [sys.argv[0], "worker"]  # faust.Worker parses argv itself
    settings = load_settings(args)
    require(settings, "kafka_url", "redis_url", "database_url")
    use_uvloop()
    run_worker(build_app(settings), settings)
    return 0


def use_uvloop() -> None:
    """The worker on uvloop (libuv) when installed: asyncio's own machinery was about a fifth of the
    worker's CPU in the BM25 path's profile (docs/benchmarks.md)."""
    try:
        import mode.loop

        mode.loop.use("uvloop")
    except ImportError:  # uvloop is not built for this platform (Windows): the default loop
        pass


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from fluxstream.core.kafka import ReplyTopics
    from fluxstream.core.logging import logging_config
    from fluxstream.query.http import create_app
    from fluxstream.schemas.topics import topic_names

    settings = load_settings(args)
    require(settings, "redis_url", "database_url")
    ReplyTopics(settings, protected=topic_names(settings))  # checked again by topic search; SettingsError: by main
    app = create_app(settings)  # SettingsError (API keys) is reported by main
    uvicorn.run(app, host=settings.http_host, port=settings.http_port,
                log_config=logging_config(settings.log_format, settings.log_level), access_log=False)
    return 0
