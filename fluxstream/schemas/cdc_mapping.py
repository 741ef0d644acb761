"""Per-table mapping of Debezium change events to documents, from a TOML file.

```toml
[[sources]]
topics = ["dbserver1.public.articles"]   # one or more CDC topics
table = "articles"                        # optional: only events whose source.table matches
collection = "articles"
id_columns = ["id"]                       # several columns join with "|"
title = "{title}"                         # str.format templates over the row's columns
text = "{summary}\\n\\n{body}"
metadata = ["author", "category"]         # columns copied into metadata
name = "articles"                         # optional: the source's name (default: table, else the
                                          # topic's last dot-separated part)
id_prefix = "articles:"                   # optional: prepended to doc ids (default below)
format = "auto"                           # optional: auto (default), json or avro (streams/wire_format.py)
```

``FLUXSTREAM_CDC_CONFIG`` points at the file; several sources may feed one worker. When several
sources feed one collection, their doc ids are namespaced by default (``id_prefix = "<name>:"``) so
rows of different tables never share an id, and a truncate removes only its own source's documents
(each document records its source's name); a collection with one source keeps plain ids.
"""

from __future__ import annotations

import math
import string
import tomllib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from fluxstream.core.settings import Settings
from fluxstream.schemas.events import INT64_MAX, INT64_MIN

ID_SEPARATOR = "|"
NAMESPACE_SEPARATOR = ":"
FORMATS = ("auto", "json", "avro")
"""How a source's records are encoded: ``auto`` reads Confluent-framed records (magic byte 0) as Avro
with the Schema Registry and the rest as JSON; ``json`` and ``avro`` insist on one."""


class _Blank(dict[str, Any]):
    """Template values: missing or NULL columns render as empty text."""

    def __missing__(self, key: str) -> str:
        return ""


@dataclass(frozen=True)
class TableMapping:
    topics: tuple[str, ...]
    collection: str
    id_columns: tuple[str, ...]
    title: str = ""
    text: str = ""
    metadata: tuple[str, ...] = ()
    table: str | None = None
    name: str = ""  # set from table / topic when empty; see ``source_name``
    id_prefix: str = ""
    sole_source: bool = True  # the only source of its collection: documents without a source name are its own
    format: str = "auto"  # one of FORMATS

    def __post_init__(self) -> None:
        if not self.topics or not self.id_columns:
            raise ValueError(f"mapping for {self.collection!r} needs topics and id_columns")
        if self.format not in FORMATS:
            raise ValueError(f"source {self.name or self.collection!r}: format {self.format!r} is not one of "
                             f"{', '.join(FORMATS)}")
        if not self.name:
            object.__setattr__(self, "name", source_name(self.table, self.topics))
        for template in (self.title, self.text):
            for _, name, _, _ in string.Formatter().parse(template):
                if name is not None and not name.isidentifier():
                    raise ValueError(f"template field {{{name}}} must be a plain column name")

    @property
    def columns(self) -> set[str]:
        """Columns the document is built from (only these are kept for TOAST merging)."""
        names = {n for t in (self.title, self.text) for _, n, _, _ in string.Formatter().parse(t) if n}
        return names | set(self.metadata) | set(self.id_columns)

    def doc_id(self, key: Mapping[str, Any]) -> str:
        missing = [c for c in self.id_columns if key.get(c) is None]
        if missing:
            raise KeyError(f"id column(s) {missing} missing")
        return self.id_prefix + ID_SEPARATOR.join(str(key[c]) for c in self.id_columns)

    def render(self, row: Mapping[str, Any]) -> tuple[str, str, dict[str, Any]]:
        """(title, text, metadata) of a full row."""
        values = _Blank({k: "" if v is None else v for k, v in row.items()})
        metadata = {c: _metadata_value(row.get(c)) for c in self.metadata if c in row}
        return self.title.format_map(values).strip(), self.text.format_map(values).strip(), metadata


def source_name(table: str | None, topics: tuple[str, ...]) -> str:
    """A source's default name: its table, else its (first) topic's last part (``pg.public.articles``)."""
    return table or (topics[0].rsplit(".", 1)[-1] if topics else "")


def _check_distinct(sources: list[TableMapping]) -> None:
    """Sources of one collection need distinct names (truncation scope) and distinct non-empty id prefixes."""
    seen: set[tuple[str, str, str]] = set()
    for source in sources:
        for kind, value in (("name", source.name), ("id_prefix", source.id_prefix)):
            if kind == "id_prefix" and not value:
                continue  # explicitly plain ids: the operator vouches that they do not collide
            if (source.collection, kind, value) in seen:
                raise ValueError(f"two sources of collection {source.collection!r} share the {kind} {value!r}; "
                                 f"set a distinct `{kind}` for each")
            seen.add((source.collection, kind, value))


def _metadata_value(value: Any) -> Any:
    """Scalars and lists of scalars as they are (filterable); anything else (an object such as an hstore
    map, a list of lists or objects) as its JSON text. A number the event schema cannot carry (a MySQL
    ``BIGINT UNSIGNED`` over 2^63-1, a double beyond that range or NaN) becomes its text, so the row is
    still indexed rather than dead-lettered for one column."""
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, int | float):
        return _storable_number(value)
    if isinstance(value, list) and all(isinstance(v, str | int | float | bool) for v in value):
        return [v if isinstance(v, str | bool) else _storable_number(v) for v in value]
    return orjson.dumps(value, default=str, option=orjson.OPT_SORT_KEYS).decode()


def _storable_number(value: float) -> float | str:
    """``value`` itself when schemas.events' metadata numbers admit it, else its decimal text."""
    if isinstance(value, int):
        return value if INT64_MIN <= value <= INT64_MAX else str(value)
    return value if math.isfinite(value) and INT64_MIN + 1024 <= value <= INT64_MAX - 1023 else repr(value)


@dataclass(frozen=True)
class CdcMapping:
    sources: tuple[TableMapping, ...] = field(default_factory=tuple)

    @classmethod
    def from_settings(cls, settings: Settings) -> CdcMapping:
        """The mapping of ``FLUXSTREAM_CDC_CONFIG``; none (no sources) when it is unset."""
        return cls.load(settings.cdc_config) if settings.cdc_config else cls()

    @classmethod
    def load(cls, path: str | Path) -> CdcMapping:
        raw = tomllib.loads(Path(path).read_text())
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> CdcMapping:
        entries = list(raw.get("sources", []))
        per_collection = Counter(entry["collection"] for entry in entries)
        sources = []
        for entry in entries:
            shared = per_collection[entry["collection"]] > 1
            name = entry.get("name") or source_name(entry.get("table"), tuple(entry["topics"]))
            prefix = entry.get("id_prefix", name + NAMESPACE_SEPARATOR if shared else "")
            if not isinstance(prefix, str):
                raise ValueError(f"source {name!r}: id_prefix must be a string")
            sources.append(TableMapping(
                topics=tuple(entry["topics"]), collection=entry["collection"],
                id_columns=tuple(entry["id_columns"]), title=entry.get("title", ""), text=entry.get("text", ""),
                metadata=tuple(entry.get("metadata", ())), table=entry.get("table"),
                name=name, id_prefix=prefix, sole_source=not shared, format=entry.get("format", "auto"),
            ))
        _check_distinct(sources)
        formats: dict[str, str] = {}
        for source in sources:
            for topic in source.topics:
                if formats.setdefault(topic, source.format) != source.format:
                    raise ValueError(f"topic {topic!r} is listed with formats {formats[topic]!r} and "
                                     f"{source.format!r}; give its sources one format")
        return cls(tuple(sources))

    @property
    def topics(self) -> list[str]:
        return sorted({t for s in self.sources for t in s.topics})

    def format_of(self, topic: str) -> str:
        """How ``topic``'s records are encoded (``auto`` for a topic no source lists)."""
        return next((s.format for s in self.sources if topic in s.topics), "auto")

    @property
    def needs_registry(self) -> bool:
        """Some source insists on Avro, which needs FLUXSTREAM_SCHEMA_REGISTRY_URL."""
        return any(s.format == "avro" for s in self.sources)

    def for_event(self, topic: str, table: str | None) -> TableMapping | None:
        for source in self.sources:
            if topic in source.topics and (source.table is None or table is None or source.table == table):
                return source
        return None
