"""`fluxstream dead-letters list|show|redrive`: the dead-letter topic (streams/dead_letters.py)."""

from __future__ import annotations

import argparse
import asyncio
import sys

import orjson

from fluxstream.cli.common import Subparsers, load_settings, ms, require
from fluxstream.cli.render import dead_letter_line, redriven_line


def register(sub: Subparsers) -> None:
    dl = sub.add_parser("dead-letters", help="list, show or redrive records of the dead-letter topic")
    dl_sub = dl.add_subparsers(dest="action", required=True)
    dl_list = dl_sub.add_parser("list", help="one line per dead letter: position, time, reason, source, preview")
    dl_list.add_argument("--partition", type=int, action="append", help="repeatable; default: all")
    dl_list.add_argument("--from-offset", type=int)
    dl_list.add_argument("--from-time", help="ISO timestamp, inclusive")
    dl_list.add_argument("--limit", type=int, help="at most this many")
    dl_list.add_argument("--json", action="store_true", help="one JSON object per line")
    dl_show = dl_sub.add_parser("show", help="a whole dead letter: headers, key, payload")
    dl_show.add_argument("positions", nargs="+", metavar="PARTITION:OFFSET")
    dl_redrive = dl_sub.add_parser("redrive", help="republish dead letters to their source topic (safe: the "
                                   "versioned apply skips what is already applied)")
    dl_redrive.add_argument("positions", nargs="*", metavar="PARTITION:OFFSET")
    dl_redrive.add_argument("--all", action="store_true", help="every dead letter (with --reason: of that reason)")
    dl_redrive.add_argument("--dry-run", action="store_true", help="say what would be redriven; send nothing")
    for p in (dl_list, dl_show, dl_redrive):
        p.add_argument("--reason", help="only dead letters of this reason (e.g. handler_failed)")
        p.set_defaults(func=cmd_dead_letters, partition=None, from_offset=None, from_time=None, limit=None)


def cmd_dead_letters(args: argparse.Namespace) -> int:
    """list | show | redrive the records of the dead-letter topic (streams/dead_letters.py)."""
    from fluxstream.core.topic_range import TopicRange
    from fluxstream.streams.dead_letters import MissingLetters, parse_position, redrive, select_letters

    settings = load_settings(args)
    require(settings, "kafka_url")
    topic = settings.dead_letters_topic
    try:
        positions = [parse_position(p) for p in getattr(args, "positions", [])]
        start_ms = ms(args.from_time)
    except ValueError as exc:
        sys.exit(f"fluxstream dead-letters: {exc}")
    if args.action == "redrive" and not positions and not args.all and args.reason is None:
        sys.exit("fluxstream dead-letters redrive: name records (PARTITION:OFFSET ...), or --all / --reason R")
    window = TopicRange(topic, args.partition, start=args.from_offset, start_ms=start_ms)
    try:
        letters = asyncio.run(select_letters(settings, positions, window, args.reason, args.limit))
    except MissingLetters as exc:
        sys.exit(f"fluxstream dead-letters: no record at {', '.join(exc.positions)} of {topic}")
    if args.action == "list":
        for letter in letters:
            print(orjson.dumps(letter.summary()).decode() if args.json else dead_letter_line(letter))
        return 0
    if args.action == "show":
        for letter in letters:
            print(orjson.dumps(letter.detail(), option=orjson.OPT_INDENT_2).decode())
        return 0
    results = asyncio.run(redrive(settings, letters, dry_run=args.dry_run))
    for result in results:
        if result.refused:
            print(f"{result.letter.position}: refused: {result.refused}", file=sys.stderr)
        else:
            print(redriven_line(result))
    sent = sum(r.to is not None for r in results)
    refused = sum(bool(r.refused) for r in results)
    print(f"{'checked' if args.dry_run else 'redriven'} {len(results) - refused if args.dry_run else sent} "
          f"of {len(results)} dead letters; {refused} refused")
    return 1 if refused else 0
