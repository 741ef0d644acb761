"""`fluxstream rebuild`: build a new index generation and switch to it, or --promote / --abort one
(the decisions live in streams/rebuild.py; `replay --into-generation` shares the plan options)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING

from fluxstream.cli.common import Subparsers, add_range_options, load_settings, ms, require
from fluxstream.core.settings import Settings

if TYPE_CHECKING:
    from fluxstream.streams.rebuild import RebuildPlan


def register(sub: Subparsers) -> None:
    reb = sub.add_parser("rebuild", help="build a new index generation of a collection and switch to it")
    reb.add_argument("collection")
    reb.add_argument("files", nargs="*", help="event-log files replayed first (an archive)")
    reb.add_argument("--from-topic", help="replay this topic (default: the documents topic and mapped CDC topics)")
    add_range_options(reb)
    reb.add_argument("--logs-only", action="store_true", help="with files: do not replay the topics after them")
    reb.add_argument("--abort", action="store_true", help="drop the building (or failed) generation")
    reb.add_argument("--promote", action="store_true", help="switch to a generation built with --no-switch")
    add_rebuild_options(reb)
    reb.set_defaults(func=cmd_rebuild)


def add_rebuild_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--grace", type=float, help="seconds the old generation is kept after the switch "
                        "(default $FLUXSTREAM_REBUILD_GRACE_SECONDS)")
    parser.add_argument("--no-switch", action="store_true", help="build and catch up, but keep serving the old one")


def cmd_rebuild(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    if args.abort:
        return abort(settings, args.collection)
    if args.promote:
        return promote(settings, args.collection, args.grace)
    return rebuild(settings, plan(args, args.collection, settings))


def plan(args: argparse.Namespace, collection: str, settings: Settings) -> RebuildPlan:
    """A new generation must catch up with the live topic: windows have a start but no end."""
    from fluxstream.streams.rebuild import RebuildPlan

    if args.to_offset is not None or args.to_time is not None:
        sys.exit("a new generation replays up to the topic's end (it must catch up): --to-* does not apply")
    topics = [args.from_topic] if getattr(args, "from_topic", None) else None
    return RebuildPlan(collection, logs=list(args.files), topics=topics, partitions=args.partition,
                       start=args.from_offset, start_ms=ms(args.from_time),
                       replay_topics=not (args.files and not topics and getattr(args, "logs_only", False)),
                       grace_seconds=args.grace if args.grace is not None else settings.rebuild_grace_seconds,
                       switch=not args.no_switch)


def rebuild(settings: Settings, plan: RebuildPlan) -> int:
    from fluxstream.streams import rebuild as generations
    from fluxstream.streams.app import load_cdc_mapping

    require(settings, "kafka_url", "redis_url", "database_url")
    report = asyncio.run(generations.rebuild(settings, plan, load_cdc_mapping(settings)))
    for bad in report.bad_lines:
        print(f"skipped bad line {bad}", file=sys.stderr)
    state = "serving now" if report.switched else "built, not switched (--no-switch)"
    print(f"{plan.collection}: generation {report.generation} ({report.index}) {state}; "
          f"{report.records} records replayed, {report.rejected} rejected, {report.seconds:.1f} s")
    return 0


def promote(settings: Settings, collection: str, grace: float | None) -> int:
    from fluxstream.streams import rebuild as generations

    require(settings, "redis_url")
    promotion = asyncio.run(generations.promote(settings, collection, grace))
    if promotion.generation is None:
        print(f"{collection}: no generation is ready to switch to (see fluxstream status)", file=sys.stderr)
        return 1
    if not promotion.switched:
        print("raced", file=sys.stderr)
        return 1
    print(f"{collection}: generation {promotion.generation} serving now")
    return 0


def abort(settings: Settings, collection: str) -> int:
    from fluxstream.streams import rebuild as generations

    require(settings, "redis_url", "database_url")
    dropped = asyncio.run(generations.abort(settings, collection))
    if dropped is None:
        print(f"{collection}: no generation is building")
    else:
        print(f"{collection}: dropped {dropped.index} ({dropped.redis_keys} keys, {dropped.vector_rows} vectors)")
    return 0
