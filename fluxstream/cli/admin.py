"""`fluxstream schemas`, `api-key` and `config`: the JSON Schemas, API keys and the settings reference."""

from __future__ import annotations

import argparse
import sys

from fluxstream.cli.common import Subparsers
from fluxstream.core.settings import describe, markdown_reference


def register_schemas(sub: Subparsers) -> None:
    schemas = sub.add_parser("schemas", help="check (default) or --write the JSON Schemas")
    schemas.add_argument("--write", action="store_true")
    schemas.set_defaults(func=cmd_schemas)


def register_api_key(sub: Subparsers) -> None:
    keys = sub.add_parser("api-key", help="make an API key and its FLUXSTREAM_API_KEYS entry (only the hash is kept)")
    keys.add_argument("--scopes", default="search", help="comma-separated: search, admin")
    keys.set_defaults(func=cmd_api_key)


def register_config(sub: Subparsers) -> None:
    config = sub.add_parser("config", help="list environment variables and defaults")
    config.add_argument("--markdown", action="store_true", help="print docs/configuration.md")
    config.set_defaults(func=cmd_config)


def cmd_schemas(args: argparse.Namespace) -> int:
    from fluxstream.schemas.registry import ALL_MODELS, render, schema_path, write_all

    if args.write:
        for path in write_all():
            print(f"wrote {path}")
        return 0
    stale = [name for name in ALL_MODELS if schema_path(name).read_bytes() != render(name)]
    print("stale: " + ", ".join(stale) if stale else "schemas up to date")
    return 1 if stale else 0


def cmd_api_key(args: argparse.Namespace) -> int:
    """Print a new key (give it to the client) and its entry (append it to FLUXSTREAM_API_KEYS)."""
    from fluxstream.query.auth import new_key

    key, entry = new_key([s.strip() for s in args.scopes.split(",") if s.strip()])
    print(f"key:   {key}\nentry: {entry}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    if args.markdown:
        sys.stdout.write(markdown_reference())
        return 0
    for name, default, doc in describe():
        print(f"{name:38} {default:28} {doc}")
    return 0
