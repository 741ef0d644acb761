"""Kafka clients built from the settings: one place for bootstrap servers, TLS and SASL.

Every producer, consumer and admin client fluxstream opens (worker via Faust, query service,
CLI, replay, rebuild) takes its connection options from here, so security settings apply
everywhere at once. Idempotence stays off: some brokers (Tansu) reject it, and versioned
apply makes duplicates harmless.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.helpers import create_ssl_context

from fluxstream.core.settings import Settings, SettingsError

_TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]{1,249}")
SASL_PROTOCOLS = {"SASL_PLAINTEXT", "SASL_SSL"}
TLS_PROTOCOLS = {"SSL", "SASL_SSL"}


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.kafka_security_protocol not in TLS_PROTOCOLS:
        return None
    return create_ssl_context(cafile=settings.kafka_ssl_cafile or None, certfile=settings.kafka_ssl_certfile or None,
                              keyfile=settings.kafka_ssl_keyfile or None)


def connection_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for any aiokafka client."""
    options: dict[str, Any] = {"bootstrap_servers": settings.kafka_url,
                               "security_protocol": settings.kafka_security_protocol}
    context = ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    if settings.kafka_security_protocol in SASL_PROTOCOLS:
        options.update(sasl_mechanism=settings.kafka_sasl_mechanism, sasl_plain_username=settings.kafka_sasl_username,
                       sasl_plain_password=settings.kafka_sasl_password)
    return options


def new_producer(settings: Settings, **overrides: Any) -> AIOKafkaProducer:
    """acks=all for durability; small linger to batch bursts."""
    return AIOKafkaProducer(**{**connection_options(settings), "acks": "all", "enable_idempotence": False,
                               "linger_ms": 5, "max_batch_size": 1 << 20, **overrides})


def new_consumer(settings: Settings, *topics: str, **options: Any) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(*topics, **connection_options(settings), **options)


def new_admin(settings: Settings) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**connection_options(settings))


def faust_credentials(settings: Settings) -> Any:
    """Faust's ``broker_credentials`` for the worker (None: plaintext)."""
    import faust

    context = ssl_context(settings)
    if settings.kafka_security_protocol in SASL_PROTOCOLS:
        return faust.SASLCredentials(username=settings.kafka_sasl_username, password=settings.kafka_sasl_password,
                                     mechanism=settings.kafka_sasl_mechanism, ssl_context=context)
    return faust.SSLCredentials(context) if context is not None else None


def topic_name_problem(name: object) -> str | None:
    """Why ``name`` is not a legal Kafka topic name (Kafka's rule: 1-249 of ``[a-zA-Z0-9._-]``, not
    "." or ".."), or None. A producer asked to send to an illegal name waits out its metadata timeout."""
    if not isinstance(name, str):
        return f"a topic name is a string, not {type(name).__name__}"
    if _TOPIC_NAME.fullmatch(name) is None:
        return "a topic name is 1 to 249 characters of [a-zA-Z0-9._-]"
    if name in {".", ".."}:
        return f"{name!r} is not a topic name"
    return None


class ReplyTopics:
    """The topics a search reply may go to: legal names matching ``FLUXSTREAM_REPLY_TOPIC_PATTERN``,
    or, when it is unset, the client helper's reply topic and ``<that topic>.<name>`` (so renamed
    topics keep working).

    A request names its own ``reply_to``; without this rule it could make the query service write
    into any topic (the documents topic, the dead letters). Built at start-up, so a pattern that
    does not compile, admits one of the ``protected`` topics (the query service passes every topic
    fluxstream reads or writes) or refuses the client helper's default reply topic raises
    SettingsError: the process stops with one clear line.
    """

    def __init__(self, settings: Settings, protected: Iterable[str] = ()) -> None:
        replies, spec = settings.search_replies_topic, settings.reply_topic_pattern
        if spec:
            self.rule = f"FLUXSTREAM_REPLY_TOPIC_PATTERN={spec}"
        else:
            spec, self.rule = re.escape(replies) + r"([.].+)?", f"{replies} or {replies}.<name>"
        try:
            self.pattern = re.compile(spec)
        except re.error as exc:
            raise SettingsError([f"{self.rule} is not a regular expression: {exc}"]) from None
        admitted = [t for t in protected if t != replies and self.pattern.fullmatch(t)]
        if admitted:
            raise SettingsError([f"reply topics ({self.rule}) would include {admitted[0]!r}, a topic fluxstream "
                                 "reads or writes; replies must go to topics of their own"])
        if self.refusal(replies) is not None:
            raise SettingsError([f"FLUXSTREAM_SEARCH_REPLIES_TOPIC={replies} is not an allowed reply topic "
                                 f"({self.rule})"])

    def refusal(self, topic: object) -> tuple[str, str] | None:
        """(reason, detail) when no reply may be sent to ``topic``: ``invalid_reply_to`` (not a legal
        topic name) or ``reply_to_not_allowed`` (not an allowed reply topic); None when it may."""
        problem = topic_name_problem(topic)
        if problem is not None:
            return "invalid_reply_to", f"reply_to {str(topic)[:300]!r}: {problem}"
        if self.pattern.fullmatch(str(topic)) is None:
            return "reply_to_not_allowed", f"reply_to {topic!r} is not an allowed reply topic ({self.rule})"
        return None


async def cluster_id(settings: Settings) -> str:
    """The Kafka cluster's id (Metadata v2+): what applied offsets are tied to (indexer.positions)."""
    admin = new_admin(settings)
    await admin.start()
    try:
        described = await admin.describe_cluster()
    finally:
        await admin.close()
    return str(described.get("cluster_id") or "")
