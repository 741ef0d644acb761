"""What every command shares: settings loading, required settings, one-line errors, topic windows.

A user's mistake or a service that is down is one line on stderr (no traceback): settings problems
exit with status 2 (as a usage error), a missing setting or an unreachable service with status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from fluxstream import devenv
from fluxstream.core.settings import Settings, SettingsError

if TYPE_CHECKING:
    from fluxstream.core.topic_range import TopicRange

Handler = Callable[[argparse.Namespace], int]
"""A command: parsed arguments in, exit status out (``set_defaults(func=...)`` of its sub-parser)."""
Subparsers = argparse._SubParsersAction  # what ``add_subparsers`` returns; each command module adds its own


def load_settings(args: argparse.Namespace, *, dev_stack: bool = True) -> Settings:
    """Settings from the environment; with ``dev_stack``, unset URLs come from a running `fluxstream dev`
    with the same state directory (fluxstream/devenv.py)."""
    state_dir = getattr(args, "state_dir", None) or os.environ.get("FLUXSTREAM_STATE_DIR") or ".fluxstream"
    settings = Settings.from_env(devenv.environ_with_dev_stack(state_dir) if dev_stack else None)
    if getattr(args, "state_dir", None):
        settings = replace(settings, state_dir=args.state_dir)
    return settings


def require(settings: Settings, *names: str) -> None:
    """Exit with one line naming the unset ``FLUXSTREAM_*`` variables a command needs."""
    missing = [f"FLUXSTREAM_{n.upper()}" for n in names if not getattr(settings, n)]
    if missing:
        sys.exit(f"fluxstream: set {', '.join(missing)}, or start `fluxstream dev` here: other commands read a "
                 f"running dev stack's URLs from {devenv.env_path(settings.state_dir)} (--state-dir or "
                 "FLUXSTREAM_STATE_DIR for another directory)")


def refuse(exc: SettingsError) -> int:
    """Settings a command cannot run with: one line each on stderr, exit status 2 (as for a usage error)."""
    for problem in exc.problems:
        print(f"fluxstream: {problem}", file=sys.stderr)
    return 2


def one_line(exc: BaseException) -> str | None:
    """A missing file or a service that is down or misaddressed, as one line for the user (not a
    traceback); None for anything else (a bug, which deserves its traceback)."""
    import httpx
    from aiokafka.errors import KafkaError
    from psycopg import OperationalError
    from psycopg_pool import PoolTimeout
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.strerror}: {exc.filename}"
    if isinstance(exc, (OSError, httpx.TransportError, KafkaError, OperationalError, PoolTimeout,
                        RedisConnectionError, RedisTimeoutError)):
        first_line = (str(exc).strip().splitlines() or [""])[0]
        return f"cannot reach a service: {type(exc).__name__}: {first_line}"
    return None


def ms(text: str | None) -> int | None:
    """ISO timestamp -> epoch milliseconds (Kafka record time)."""
    from datetime import datetime

    return None if text is None else int(datetime.fromisoformat(text).timestamp() * 1000)


def add_range_options(parser: argparse.ArgumentParser) -> None:
    """A window of a topic: partitions, offsets and record times (``window`` reads them)."""
    parser.add_argument("--partition", type=int, action="append", help="repeatable; default: all")
    parser.add_argument("--from-offset", type=int)
    parser.add_argument("--to-offset", type=int, help="exclusive")
    parser.add_argument("--from-time", help="ISO timestamp, inclusive")
    parser.add_argument("--to-time", help="ISO timestamp, exclusive")


def window(args: argparse.Namespace, topic: str) -> TopicRange:
    from fluxstream.core.topic_range import TopicRange

    return TopicRange(topic, args.partition, start=args.from_offset, end=args.to_offset,
                      start_ms=ms(args.from_time), end_ms=ms(args.to_time))
