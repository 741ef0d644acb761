"""`fluxstream cdc`: Debezium's embedded engine in this process, publishing to Kafka (streams/cdc_engine.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from urllib.parse import quote

from fluxstream.cli.common import Subparsers, load_settings, require
from fluxstream.core.logging import redact
from fluxstream.core.settings import SettingsError

CDC_RECOMMENDED = {"decimal.handling.mode": "string"}  # exact numbers with or without schemas (docs/cdc.md)


def register(sub: Subparsers) -> None:
    from fluxstream.streams.cdc_engine import parse_property  # light: no JVM until a command runs the engine

    cdc = sub.add_parser("cdc", help="capture PostgreSQL tables with Debezium (in-process) into Kafka topics")
    cdc.add_argument("--source", help="postgresql://user:pw@host:port/db (default $FLUXSTREAM_CDC_SOURCE_URL)")
    cdc.add_argument("--tables", help="schema.table,... (default $FLUXSTREAM_CDC_TABLES)")
    cdc.add_argument("--topic-prefix", help="topics <prefix>.<schema>.<table> (default $FLUXSTREAM_CDC_TOPIC_PREFIX)")
    cdc.add_argument("--slot", help="replication slot (default $FLUXSTREAM_CDC_SLOT)")
    cdc.add_argument("--schemas", action=argparse.BooleanOptionalAction, default=None,
                     help="JSON converter schemas.enable (default $FLUXSTREAM_CDC_SCHEMAS, true)")
    cdc.add_argument("--format", choices=("json", "avro"), default=None,
                     help="converter: json (Kafka's JsonConverter) or avro (Confluent's AvroConverter, schemas "
                          "registered in --schema-registry-url) (default $FLUXSTREAM_CDC_FORMAT, json)")
    cdc.add_argument("--schema-registry-url", help="Schema Registry for --format avro "
                                                   "(default $FLUXSTREAM_SCHEMA_REGISTRY_URL)")
    cdc.add_argument("--property", action="append", type=parse_property, default=[], metavar="NAME=VALUE",
                     help="extra Debezium connector setting (repeatable)")
    cdc.set_defaults(func=cmd_cdc)


def cmd_cdc(args: argparse.Namespace) -> int:
    """Debezium's embedded engine in this process (streams/cdc_engine.py), publishing to Kafka as Kafka
    Connect would; offsets under ``<state dir>/cdc``; SIGTERM/Ctrl-C stops it cleanly (exit status 0)."""
    from fluxstream.core.kafka import connection_options
    from fluxstream.streams.cdc_engine import KafkaSink, postgres_properties, serve

    settings = load_settings(args)
    source = args.source or settings.cdc_source_url
    tables = [t.strip() for t in (args.tables or settings.cdc_tables).split(",") if t.strip()]
    if not source or not tables:
        raise SettingsError(["cdc: give --source (or FLUXSTREAM_CDC_SOURCE_URL) and --tables "
                             "(or FLUXSTREAM_CDC_TABLES), e.g. --source postgresql://user:pw@host:5432/db "
                             "--tables public.articles"])
    if not source.startswith(("postgresql://", "postgres://")):
        raise SettingsError([f"cdc: --source {redact(source)}: expected a postgresql:// URL"])
    if bad := [t for t in tables if t.count(".") != 1]:
        raise SettingsError([f"cdc: --tables {','.join(bad)}: expected schema.table"])
    require(settings, "kafka_url")
    prefix = args.topic_prefix or settings.cdc_topic_prefix
    schemas = settings.cdc_schemas if args.schemas is None else args.schemas
    avro = (args.format or settings.cdc_format) == "avro"
    registry = args.schema_registry_url or settings.schema_registry_url
    if avro and not registry:
        raise SettingsError(["cdc: --format avro needs --schema-registry-url (or FLUXSTREAM_SCHEMA_REGISTRY_URL)"])
    if avro and not registry.startswith(("http://", "https://")):
        raise SettingsError([f"cdc: --schema-registry-url {redact(registry)}: expected an http(s):// URL"])
    if avro and settings.schema_registry_user and "@" not in registry:  # the converter takes them from the URL
        user, password = (quote(v, safe="") for v in (settings.schema_registry_user, settings.schema_registry_password))
        userinfo = f"{user}:{password}"
        registry = registry.replace("://", f"://{userinfo}@", 1)
    state = Path(settings.state_dir) / "cdc"
    properties = postgres_properties(source, tables, topic_prefix=prefix, offsets_file=state.resolve() / "offsets.dat",
                                     slot=args.slot or settings.cdc_slot, schemas=schemas,
                                     schema_registry_url=registry if avro else None,
                                     extra={**CDC_RECOMMENDED, **dict(args.property)})
    options = connection_options(settings)
    bootstrap = options.pop("bootstrap_servers")
    written = f"Avro (schemas in {redact(registry)})" if avro else "JSON"
    print(f"fluxstream cdc: capturing {', '.join(tables)} from {redact(source)} into {prefix}.<schema>.<table> "
          f"as {written} on {redact(bootstrap)} (offsets in {state.resolve()})"
          + (f", metrics on :{settings.cdc_web_port}/metrics" if settings.cdc_web_port else "") + "; Ctrl-C to stop",
          file=sys.stderr, flush=True)
    return serve(properties, lambda: KafkaSink(bootstrap, **options), state_dir=state,
                 web_port=settings.cdc_web_port)
