"""`fluxstream status`: collections, generations, applied positions and consumer lag (indexer/generations/status.py)."""

from __future__ import annotations

import argparse
import asyncio
import sys

import orjson

from fluxstream.cli.common import Subparsers, load_settings, require
from fluxstream.cli.render import status_table


def register(sub: Subparsers) -> None:
    stat = sub.add_parser("status", help="collections (documents, chunks), applied positions, consumer lag")
    stat.add_argument("--json", action="store_true")
    stat.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    from fluxstream.indexer.generations.status import status

    settings = load_settings(args)
    require(settings, "kafka_url", "redis_url")
    report = asyncio.run(status(settings))
    if settings.cdc_source_url:  # a CDC source is configured: its slot's lag and the records captured
        from fluxstream.streams.cdc_source import cdc_status

        report["cdc"] = asyncio.run(cdc_status(settings))
    if args.json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    for line in status_table(report):
        print(line)
    return 0
