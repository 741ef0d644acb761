"""`fluxstream create-topics` and `fluxstream export` (a topic range to an event-log file)."""

from __future__ import annotations

import argparse
import asyncio

from fluxstream.cli.common import Subparsers, add_range_options, load_settings, require, window


def register_create_topics(sub: Subparsers) -> None:
    sub.add_parser("create-topics", help="create fluxstream's topics").set_defaults(func=cmd_create_topics)


def register_export(sub: Subparsers) -> None:
    exp = sub.add_parser("export", help="write a topic range to an event-log file")
    exp.add_argument("--topic", help="default: the documents topic")
    exp.add_argument("--out", required=True, help="file (.gz compresses), - for stdout")
    add_range_options(exp)
    exp.set_defaults(func=cmd_export)


def cmd_create_topics(args: argparse.Namespace) -> int:
    from fluxstream.schemas.topics import create_topics

    settings = load_settings(args)
    require(settings, "kafka_url")
    created = asyncio.run(create_topics(settings))
    print(f"created: {', '.join(created) or 'nothing (all exist)'}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from fluxstream.streams.replay import export

    settings = load_settings(args)
    require(settings, "kafka_url")
    written = asyncio.run(export(settings, window(args, args.topic or settings.documents_topic), args.out))
    print(f"exported {written} records to {args.out}")
    return 0
