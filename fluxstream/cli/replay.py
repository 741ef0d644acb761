"""`fluxstream replay`: event-log files or a topic range back onto topics (or into a new generation)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from fluxstream.cli import rebuild
from fluxstream.cli.common import Subparsers, add_range_options, load_settings, require, window


def register(sub: Subparsers) -> None:
    rep = sub.add_parser("replay", help="publish event-log files (NDJSON, .gz), or a topic range, to topics")
    rep.add_argument("files", nargs="*")
    rep.add_argument("--from-topic", help="replay a range of this topic instead of files (see range options)")
    add_range_options(rep)
    rep.add_argument("--topic", help="publish here instead of each record's original topic")
    rep.add_argument("--collection", help="rewrite native change events into this collection")
    rep.add_argument("--rate", type=float, default=0.0, help="records per second (0: as fast as possible)")
    rep.add_argument("--dry-run", action="store_true", help="validate and count only; report bad lines")
    rep.set_defaults(func=cmd_replay)
    rep.add_argument("--into-generation", metavar="COLLECTION",
                     help="build a new generation of COLLECTION from these files/topic instead (see rebuild)")
    rebuild.add_rebuild_options(rep)


def cmd_replay(args: argparse.Namespace) -> int:
    from fluxstream.streams.replay import replay, replay_range

    settings = load_settings(args)
    if not args.dry_run or args.from_topic:
        require(settings, "kafka_url")
    if bool(args.files) == bool(args.from_topic):
        sys.exit("fluxstream replay: give log files, or --from-topic with a range (not both)")
    if args.into_generation:
        if args.dry_run:
            sys.exit("fluxstream replay: --dry-run validates files; it does not combine with --into-generation")
        return rebuild.rebuild(settings, rebuild.plan(args, args.into_generation, settings))
    if args.from_topic:
        report = asyncio.run(replay_range(settings, window(args, args.from_topic), topic=args.topic, rate=args.rate,
                                          dry_run=args.dry_run, collection=args.collection))
    else:
        report = asyncio.run(replay(settings, args.files, topic=args.topic, rate=args.rate, dry_run=args.dry_run,
                                    collection=args.collection))
    for bad in report.bad:
        print(f"bad {bad}", file=sys.stderr)
    verb = "checked" if args.dry_run else "published"
    print(f"{verb} {report.published if not args.dry_run else report.records} records; {len(report.bad)} bad lines"
          + ("; nothing published" if report.bad and not args.dry_run else ""))
    return 1 if report.bad else 0
