"""Kafka clients built from the settings: one place for bootstrap servers, TLS and SASL.

Every producer, consumer and admin client fluxstream opens (worker via Faust, query service,
CLI, replay, rebuild) takes its connection options from here, so security settings apply
everywhere at once. Idempotence stays off: some brokers (Tansu) reject it, and versioned
apply makes duplicates harmless.
"""

from __future__ import annotations

import ssl
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.helpers import create_ssl_context

from fluxstream.settings import Settings

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
