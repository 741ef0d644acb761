"""The ``fluxstream`` command: the parser assembled from one module per command group, and ``main``.

Each command module registers its sub-parser (``register*(sub)``) with its handler as ``func``;
``main`` checks the settings first, then runs the handler and turns a user's mistake or an
unreachable service into one line (fluxstream/cli/common.py).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from fluxstream import __version__
from fluxstream.cli import (
    admin,
    cdc,
    dead_letters,
    dev,
    evaluation,
    processes,
    publish,
    rebuild,
    replay,
    search,
    status,
    topics,
)
from fluxstream.cli.common import Subparsers, one_line, refuse
from fluxstream.core.logging import configure_logging
from fluxstream.core.settings import Settings, SettingsError

COMMANDS: tuple[Callable[[Subparsers], None], ...] = (  # in the order `fluxstream --help` lists them
    dev.register, cdc.register, processes.register_worker, processes.register_serve, topics.register_create_topics,
    publish.register, replay.register, rebuild.register, topics.register_export, dead_letters.register,
    status.register, search.register, evaluation.register, admin.register_schemas, admin.register_api_key,
    admin.register_config,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fluxstream", description="fluxstream: dev stack, worker, query service, topic admin, publishing, search. "
        "Every setting is a FLUXSTREAM_* environment variable (fluxstream config lists them).")
    parser.add_argument("--version", action="version", version=f"fluxstream {__version__}")
    parser.add_argument("--state-dir", help="state directory (default $FLUXSTREAM_STATE_DIR or .fluxstream)")
    sub = parser.add_subparsers(dest="command", required=True)
    for register in COMMANDS:
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:  # one line per unusable variable, before any command starts
        return refuse(exc)
    configure_logging("console" if args.command == "dev" else settings.log_format, settings.log_level)
    try:
        result: int = args.func(args)
        return result
    except SettingsError as exc:  # found by the command (e.g. the query service's API keys, a dev env file)
        return refuse(exc)
    except Exception as exc:
        message = one_line(exc)
        if message is None:
            raise
        sys.exit(f"fluxstream {args.command}: {message}")
