"""Topic names and creation: fluxstream's topics exist before any worker starts.

Beside the event schemas because the topic list is part of the wire contract (each topic carries
one of schemas.events' models, or CDC envelopes mapped by schemas.cdc_mapping): the worker and the
dev stack create them, the topic-search server refuses to reply into any of them.
"""

from __future__ import annotations

import contextlib

from aiokafka.admin import NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from fluxstream.core.kafka import new_admin
from fluxstream.core.settings import Settings
from fluxstream.schemas.cdc_mapping import CdcMapping


def topic_names(settings: Settings) -> list[str]:
    """fluxstream's own topics plus the CDC topics its mapping reads (normally made by Kafka Connect)."""
    cdc = CdcMapping.from_settings(settings)
    return [
        settings.documents_topic,
        settings.embed_jobs_topic,
        settings.index_updates_topic,
        settings.dead_letters_topic,
        settings.search_requests_topic,
        settings.search_replies_topic,
        *cdc.topics,
    ]


async def create_topics(settings: Settings) -> list[str]:
    """Create missing topics; returns the names that were created."""
    admin = new_admin(settings)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(name, num_partitions=settings.topic_partitions,
                     replication_factor=settings.topic_replication)
            for name in topic_names(settings) if name not in existing
        ]
        if wanted:
            with contextlib.suppress(TopicAlreadyExistsError):  # another process won the race
                await admin.create_topics(wanted)
        return [t.name for t in wanted]
    finally:
        await admin.close()
