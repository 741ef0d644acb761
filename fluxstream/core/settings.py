"""Configuration from environment variables, each with a documented default.

One frozen dataclass is read once per process; every component takes the values it
needs from it, so the full list of knobs lives here and in docs/configuration.md.
Every value is checked when it is read (type, range, allowed words): a mistake is reported
as one line per variable before anything starts, not as a traceback later.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from fluxstream.core.hnsw import HNSW_PRESETS, HNSWParams
from fluxstream.core.logging import redact

ENV_PREFIX = "FLUXSTREAM_"
WORKER_STAGES = ("bm25", "vectors", "cache", "enrich")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
EMBEDDER_KINDS = ("local", "openai")  # built by indexer.embedders.factory


class SettingsError(ValueError):
    """Settings that cannot be used; ``problems`` has one line per variable (name, value, what is allowed)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Allowed:
    """What a setting accepts beyond its type; ``text`` completes "expected <type> ..." in the error."""

    text: str
    test: Callable[[Any], bool]


def between(low: float | None = None, high: float | None = None, *, above: float | None = None) -> Allowed:
    """A number in [low, high] (either end open when None), or strictly above ``above``."""
    if above is not None:
        return Allowed(f"> {above:g}", lambda v: v > above)
    if high is None:
        return Allowed(f"≥ {low:g}", lambda v: v >= low)
    return Allowed(f"from {low:g} to {high:g}", lambda v: low <= v <= high)


def one_of(*choices: str, ignore_case: bool = False) -> Allowed:
    fold: Callable[[str], str] = str.lower if ignore_case else str
    return Allowed(f"one of {', '.join(choices)}", lambda v: fold(v.strip()) in choices)


def words_of(*choices: str) -> Allowed:
    """A comma-separated list of at least one of ``choices``."""
    def test(value: str) -> bool:
        words = [w.strip() for w in value.split(",") if w.strip()]
        return bool(words) and set(words) <= set(choices)
    return Allowed(f"a comma-separated list of {', '.join(choices)}", test)


def _stemmer_language(value: str) -> bool:
    import Stemmer

    return value == "" or value in Stemmer.algorithms()


def _kafka_servers(value: str) -> bool:
    hosts = [h.strip() for h in value.split(",")]
    return all(h.rpartition(":")[0] and h.rpartition(":")[2].isdigit() for h in hosts)


def _compiles(value: str) -> bool:
    try:
        re.compile(value)
    except re.error:
        return False
    return True


KAFKA_SERVERS = Allowed("host:port[,host:port]", _kafka_servers)
REDIS_URL = Allowed("a redis://, rediss:// or unix:// URL",
                    lambda v: v.startswith(("redis://", "rediss://", "unix://")))
POSTGRES_URL = Allowed("a postgresql:// URL or a libpq connection string (host=... dbname=...)",
                       lambda v: v.startswith(("postgresql://", "postgres://")) or "=" in v)
SCHEMA_REGISTRY_URL = Allowed("an http:// or https:// URL, or empty",
                              lambda v: v == "" or v.startswith(("http://", "https://")))
SNOWBALL = Allowed("a Snowball language (english, german, french, ...) or empty", _stemmer_language)
REGEX = Allowed("a regular expression (Python re syntax)", _compiles)
PORT = between(1, 65535)
COUNT = between(1)  # at least one
NONNEGATIVE = between(0)
POSITIVE = between(above=0)


def _env_field(default: Any, doc: str, allowed: Allowed | None = None) -> Any:
    return field(default=default, metadata={"doc": doc, "allowed": allowed})


@dataclass(frozen=True)
class Settings:
    """All runtime settings; field name ``foo_bar`` is read from ``FLUXSTREAM_FOO_BAR``."""

    # --- services (unset: `fluxstream dev` and the tests start embedded servers) ---
    kafka_url: str = _env_field("", "Kafka bootstrap servers, host:port[,host:port].", KAFKA_SERVERS)
    redis_url: str = _env_field("", "Redis/Valkey URL, e.g. redis://localhost:6379/0.", REDIS_URL)
    database_url: str = _env_field("", "PostgreSQL URL with pgvector available.", POSTGRES_URL)
    database_pool_timeout: float = _env_field(
        3.0, "Query service: longest a request waits for a PostgreSQL connection (s); while PostgreSQL is down, "
        "vector searches answer 503 and hybrid ones BM25 alone after at most this long (docs/operations.md).", POSITIVE)
    kafka_security_protocol: str = _env_field(
        "PLAINTEXT", "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (every Kafka client, worker included).",
        one_of("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"))
    kafka_sasl_mechanism: str = _env_field(
        "PLAIN", "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.", one_of("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"))
    kafka_sasl_username: str = _env_field("", "SASL user name.")
    kafka_sasl_password: str = _env_field("", "SASL password (from a secret).")
    kafka_ssl_cafile: str = _env_field("", "CA bundle to verify the brokers (default: system CAs).")
    kafka_ssl_certfile: str = _env_field("", "Client certificate for mutual TLS.")
    kafka_ssl_keyfile: str = _env_field("", "Client key for mutual TLS.")
    api_keys: str = _env_field(
        "", "API keys as <sha256 hex>:<scope>[+<scope>], comma-separated (scopes: search, admin); empty: open. "
        "`fluxstream api-key` makes one.")
    require_api_keys: bool = _env_field(
        False, "Fail closed: the query service refuses to start while FLUXSTREAM_API_KEYS is empty (production).")
    rate_limit_per_second: float = _env_field(
        0.0, "Requests per second per API key (or client address); 0: off.", NONNEGATIVE)
    rate_limit_burst: int = _env_field(20, "Requests a client may make at once before the rate applies.", COUNT)
    max_request_bytes: int = _env_field(1_048_576, "Largest HTTP request body; larger ones get 413.", COUNT)
    http_host: str = _env_field("127.0.0.1", "Query service bind address.")
    http_port: int = _env_field(8000, "Query service port.", PORT)
    state_dir: str = _env_field(".fluxstream", "Directory holding the embedded stack's state.")

    # --- topics ---
    documents_topic: str = _env_field("fluxstream.documents", "Change events, keyed by doc_id.")
    index_updates_topic: str = _env_field("fluxstream.index-updates", "IndexUpdate events.")
    dead_letters_topic: str = _env_field("fluxstream.dead-letters", "Malformed events with reason.")
    search_requests_topic: str = _env_field("fluxstream.search-requests", "Search requests (request/reply).")
    search_replies_topic: str = _env_field("fluxstream.search-replies", "Default reply topic of the client helper.")
    reply_topic_pattern: str = _env_field(
        "", "Regular expression a topic search's reply_to must match in full; empty: the reply topic above or "
        "<reply topic>.<anything>. Other requests are dead-lettered as reply_to_not_allowed.", REGEX)
    reply_timeout: float = _env_field(
        10.0, "Seconds a topic search reply may take to be delivered, retried with backoff; then its request is "
        "dead-lettered as reply_failed.", POSITIVE)
    search_concurrency: int = _env_field(16, "Topic search requests run at once per query service.", COUNT)
    embed_jobs_topic: str = _env_field("fluxstream.embed-jobs", "Internal: chunks waiting for vectors.")
    topic_partitions: int = _env_field(4, "Partitions when fluxstream creates its topics.", COUNT)
    topic_replication: int = _env_field(1, "Replication factor when fluxstream creates its topics.", COUNT)

    cdc_config: str = _env_field("", "TOML file mapping Debezium topics/tables to collections (docs/cdc.md).")
    cdc_source_url: str = _env_field(
        "", "Source PostgreSQL `fluxstream cdc` captures (wal_level=logical), postgresql://user:pw@host:port/db.",
        Allowed("a postgresql:// URL", lambda v: not v or v.startswith(("postgresql://", "postgres://"))))
    cdc_tables: str = _env_field("", "Tables `fluxstream cdc` captures, schema.table comma-separated.")
    cdc_topic_prefix: str = _env_field("cdc", "Topic prefix of `fluxstream cdc`: topics are <prefix>.<schema>.<table>.")
    cdc_slot: str = _env_field("fluxstream", "Replication slot of `fluxstream cdc` (publication <slot>_publication).")
    cdc_web_port: int = _env_field(
        6067, "`fluxstream cdc` metrics port (/metrics: records captured, replication slot lag); 0 disables it; "
        "`fluxstream status` reads it.", between(0, 65535))
    cdc_schemas: bool = _env_field(True, "`fluxstream cdc` writes JSON with schemas (schemas.enable=true).")
    cdc_format: str = _env_field(
        "json", "Converter of `fluxstream cdc`: json (Kafka's JsonConverter) or avro (Confluent's AvroConverter, "
        "schemas registered in FLUXSTREAM_SCHEMA_REGISTRY_URL).", one_of("json", "avro"))
    schema_registry_url: str = _env_field(
        "", "Confluent Schema Registry the worker reads Avro CDC records' schemas from (and `fluxstream cdc "
        "--format avro` registers them in), http(s)://[user:pw@]host:port; empty: Avro records are dead-lettered "
        "(docs/cdc.md).", SCHEMA_REGISTRY_URL)
    schema_registry_user: str = _env_field("", "Schema Registry basic-auth user (else the URL's userinfo).")
    schema_registry_password: str = _env_field("", "Schema Registry basic-auth password (from a secret).")
    schema_registry_timeout: float = _env_field(
        5.0, "Seconds per Schema Registry request; a timeout is an outage: the batch is retried.", POSITIVE)
    schema_registry_cache_size: int = _env_field(1000, "Schemas kept per worker (by id, least recently used out).",
                                                 COUNT)

    # --- worker ---
    app_id: str = _env_field("fluxstream", "Faust app id, also the consumer group id.")
    session_timeout: float = _env_field(30.0, "Kafka consumer session timeout (s).", POSITIVE)
    fetch_max_wait_ms: int = _env_field(
        100, "Longest a consumer fetch waits for data (Faust hard-codes 1500).", NONNEGATIVE)
    batch_max: int = _env_field(
        256, "Max change events handled as one batch (written in groups of 64 documents).", COUNT)
    batch_within: float = _env_field(0.02, "Max wait (s) to fill a change-event batch.", NONNEGATIVE)
    batches_in_flight: int = _env_field(
        4, "Change-event batches a worker handles at once: the next ones are planned while Redis writes the "
        "earlier ones (see docs/benchmarks.md).", COUNT)
    embed_batch_max: int = _env_field(
        512, "Max embed jobs handled together (fewer, larger batches keep the embedder busy; see docs/benchmarks.md).",
        COUNT)
    embed_batch_within: float = _env_field(0.1, "Max wait (s) to fill an embed-job batch.", NONNEGATIVE)
    max_text_bytes: int = _env_field(1_000_000, "Larger title+text is dead-lettered.", COUNT)
    dead_letter_max_bytes: int = _env_field(
        1_000_000, "Largest dead-letter record (key, value, headers); a longer original value is cut to fit, its size "
        "and SHA-256 in headers. Keep it under the broker's message.max.bytes (Kafka's default: 1,048,588).", COUNT)
    retry_max_backoff: float = _env_field(10.0, "Cap (s) of the backoff while Redis/Postgres are down.", POSITIVE)
    worker_web_port: int = _env_field(
        6066, "Faust worker web port (metrics, health); 0 disables it.", between(0, 65535))
    worker_stages: str = _env_field(
        "bm25,vectors,cache,enrich", "Agents this worker runs: bm25 (changes, CDC), vectors (embedding), cache "
        "(invalidation), enrich (chunk metadata). Split them to scale embedding apart from keyword indexing.",
        words_of(*WORKER_STAGES))
    gc_interval_seconds: float = _env_field(30.0, "How often workers drop retired index generations.", POSITIVE)
    rebuild_grace_seconds: float = _env_field(
        300.0, "How long a replaced generation is kept after a rebuild switches (queries in flight finish).",
        NONNEGATIVE)

    # --- text processing ---
    chunk_size: int = _env_field(200, "Chunk size in tokens.", COUNT)
    chunk_overlap: int = _env_field(40, "Tokens shared by consecutive chunks.", NONNEGATIVE)
    stopwords: str = _env_field("english", "'english', 'none', or a comma-separated list.")
    stemmer: str = _env_field("", "Snowball stemmer language for index terms (e.g. english); empty: none.", SNOWBALL)

    # --- BM25 ---
    bm25_k1: float = _env_field(1.2, "BM25 k1.", NONNEGATIVE)
    bm25_b: float = _env_field(0.75, "BM25 b.", between(0, 1))

    # --- embeddings ---
    embedder: str = _env_field(
        "local", "'local' (offline MiniLM) or 'openai'.", one_of(*EMBEDDER_KINDS, ignore_case=True))
    embed_batch_size: int = _env_field(32, "Texts per embedding call.", COUNT)
    embed_in_child_process: bool = _env_field(
        True, "Worker: run the local embedder in child processes, one BLAS thread each (see docs/embedders.md).")
    embed_processes: int = _env_field(0, "Worker: embedding child processes; 0 means one per usable core.", NONNEGATIVE)
    openai_base_url: str = _env_field("", "OpenAI-compatible base URL (empty: api.openai.com).")
    openai_api_key: str = _env_field("", "API key for the OpenAI-compatible provider.")
    openai_model: str = _env_field("text-embedding-3-small", "Embedding model name.")
    embedding_dimensions: int = _env_field(0, "Vector size; 0 means the model's native size.", NONNEGATIVE)
    embed_max_retries: int = _env_field(5, "Retries with backoff for a failing embedding call.", NONNEGATIVE)
    hnsw_preset: str = _env_field(
        "balanced", "HNSW preset: speed, balanced, accuracy or memory (m, ef_construction, ef_search).",
        one_of(*HNSW_PRESETS))
    hnsw_m: int = _env_field(0, "HNSW m for the pgvector index; 0 takes the preset's.", NONNEGATIVE)
    hnsw_ef_construction: int = _env_field(0, "HNSW ef_construction; 0 takes the preset's.", NONNEGATIVE)
    hnsw_ef_search: int = _env_field(0, "Default hnsw.ef_search per query; 0 takes the preset's.", NONNEGATIVE)

    # --- query ---
    rrf_k: int = _env_field(40, "Reciprocal-rank-fusion constant (tuned on Vaswani, docs/benchmarks.md).", COUNT)
    weight_bm25: float = _env_field(
        0.3, "Score fusions: weight of the normalised BM25 score (tuned on Vaswani).", NONNEGATIVE)
    weight_vector: float = _env_field(
        0.7, "Score fusions: weight of the normalised vector score (tuned on Vaswani).", NONNEGATIVE)
    min_position_timeout_ms: int = _env_field(
        5000, "Default wait for a search's min_position (read-your-writes).", NONNEGATIVE)
    max_position_wait_ms: int = _env_field(
        10_000, "Longest a min_position wait may hold a request, whatever wait_timeout_ms asks (the server's cap; "
        "keep it well under your proxies' timeouts).", NONNEGATIVE)
    candidate_pool: int = _env_field(100, "Candidates fetched from each retriever before fusion.", COUNT)

    # --- semantic cache ---
    cache_enabled: bool = _env_field(True, "Serve repeated / near-duplicate searches from the Redis cache.")
    chat_model: str = _env_field("", "Chat model for /v1/answer and query transforms; empty: answers return prompt "
                                 "and sources only.")
    chat_provider: str = _env_field(
        "openai", "'openai' (any OpenAI-compatible base URL) or 'azure' (Azure OpenAI).", one_of("openai", "azure"))
    chat_base_url: str = _env_field("", "Chat endpoint base URL (Azure: the resource endpoint); empty: api.openai.com.")
    chat_api_key: str = _env_field("", "Chat API key (from a secret).")
    azure_api_version: str = _env_field("2024-10-21", "Azure OpenAI API version.")
    chat_max_retries: int = _env_field(3, "Retries with backoff for a failing chat call.", NONNEGATIVE)
    chat_timeout: float = _env_field(60.0, "Seconds per chat request.", POSITIVE)
    answer_context_tokens: int = _env_field(3000, "Token budget of the sources in an answer prompt.", COUNT)
    answer_max_tokens: int = _env_field(512, "Most tokens an answer may have.", COUNT)
    quote_questions: int = _env_field(3, "QuOTE: related questions generated per query.", NONNEGATIVE)
    cache_threshold: float = _env_field(0.95, "Cosine similarity for a near-duplicate (semantic) hit.", between(0, 1))
    cache_ttl_seconds: int = _env_field(86_400, "Cache entry lifetime.", COUNT)
    cache_max_entries: int = _env_field(10_000, "Entries per collection; least recently used are evicted.", COUNT)

    # --- logging ---
    log_format: str = _env_field("json", "'json' (production) or 'console'.", one_of("json", "console"))
    log_level: str = _env_field("info", "Log level.", one_of(*LOG_LEVELS, ignore_case=True))

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
        """Read every field from ``FLUXSTREAM_<NAME>``; explicit overrides win. SettingsError lists every
        variable that is not usable (wrong type, out of range, unknown word), one line each."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        problems: list[str] = []
        for f in fields(cls):
            name = ENV_PREFIX + f.name.upper()
            if f.name in overrides:
                raw: Any = overrides[f.name]
            else:
                raw = env.get(name)
                if raw is None or raw == "":
                    continue
            value, problem = _checked(f.default, f.metadata.get("allowed"), raw)
            if problem is not None:
                shown = redact(raw) if isinstance(raw, str) else raw  # the value, never a URL's password
                problems.append(f"{name}={shown!r}: expected {problem}")
            else:
                values[f.name] = value
        if not problems and values.get("chunk_overlap", 0) >= values.get("chunk_size", cls.chunk_size):
            problems.append(f"{ENV_PREFIX}CHUNK_OVERLAP={values.get('chunk_overlap')!r}: expected less than "
                            f"{ENV_PREFIX}CHUNK_SIZE ({values.get('chunk_size', cls.chunk_size)})")
        if problems:
            raise SettingsError(problems)
        return cls(**values)

    def hnsw(self) -> tuple[HNSWParams, int]:
        """(index build parameters, default ef_search): the preset, with explicit values winning."""
        preset = HNSW_PRESETS.get(self.hnsw_preset)
        if preset is None:
            raise ValueError(f"FLUXSTREAM_HNSW_PRESET={self.hnsw_preset!r}: one of {', '.join(HNSW_PRESETS)}")
        params, ef_search = preset
        return (HNSWParams(self.hnsw_m or params.m, self.hnsw_ef_construction or params.ef_construction),
                self.hnsw_ef_search or ef_search)

    def to_env(self) -> dict[str, str]:
        """The settings as environment variables, to hand to child processes."""
        return {ENV_PREFIX + f.name.upper(): str(getattr(self, f.name)) for f in fields(self)}


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "text"}


def _checked(default: Any, allowed: Allowed | None, raw: Any) -> tuple[Any, str | None]:
    """(the value as the field's type, None) or (None, what is allowed) for one raw setting."""
    kind = type(default)
    try:
        value = _parse_bool(raw) if kind is bool else kind(raw)
    except (TypeError, ValueError):
        value = None
    if value is None or (allowed is not None and not allowed.test(value)):
        if allowed is None:
            return None, _TYPE_NAMES[kind]
        return None, allowed.text if kind is str else f"{_TYPE_NAMES[kind]} {allowed.text}"
    return value, None


def _parse_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if str(raw).strip().lower() in {"1", "true", "yes", "on"}:
        return True
    if str(raw).strip().lower() in {"0", "false", "no", "off"}:
        return False
    raise ValueError(raw)


def describe() -> list[tuple[str, str, str]]:
    """(variable, default, description) rows, for docs and `fluxstream config`."""
    return [
        (ENV_PREFIX + f.name.upper(), repr(f.default), f.metadata.get("doc", ""))
        for f in fields(Settings)
    ]


CONFIG_DOC_HEADER = """# Configuration

Every setting is an environment variable (read once at process start). `fluxstream config` prints
this table. Unset service URLs make `fluxstream dev` and the test fixtures start embedded servers.
Every value is checked before any command starts (type, range, allowed words): each unusable variable
is reported on one line with its value and what it accepts, and the command exits with status 2.

| variable | default | meaning |
|---|---|---|
"""


def markdown_reference() -> str:
    """docs/configuration.md, generated (`fluxstream config --markdown > docs/configuration.md`)."""
    rows = "".join(f"| `{name}` | `{default}` | {doc} |\n" for name, default, doc in describe())
    return CONFIG_DOC_HEADER + rows
