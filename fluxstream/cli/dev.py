"""`fluxstream dev`: the embedded stack with worker and query service (fluxstream/devstack.py)."""

from __future__ import annotations

import argparse

from fluxstream.cli.common import Subparsers, load_settings


def register(sub: Subparsers) -> None:
    dev = sub.add_parser("dev", help="run the embedded stack with worker and query service")
    dev.add_argument("--demo", action="store_true", help="index the bundled sample corpus and run a query")
    dev.add_argument("--workers", type=int, default=1, help="number of worker processes")
    dev.add_argument("--cdc", metavar="URL", default="",
                     help="also capture this source PostgreSQL (postgresql://..., wal_level=logical) with Debezium "
                          "into the stack (docs/cdc.md)")
    dev.add_argument("--cdc-table", action="append", default=[], metavar="SCHEMA.TABLE", dest="cdc_tables",
                     help="a table to capture (repeatable; default $FLUXSTREAM_CDC_TABLES, else every table with "
                          "a primary key)")
    dev.set_defaults(func=cmd_dev)


def cmd_dev(args: argparse.Namespace) -> int:
    from fluxstream.devstack import DevOptions, run

    return run(load_settings(args, dev_stack=False),
               DevOptions(workers=args.workers, demo=args.demo, cdc_source=args.cdc, cdc_tables=tuple(args.cdc_tables)))
