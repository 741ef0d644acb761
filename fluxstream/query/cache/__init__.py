"""The semantic cache of searches, kept exact by index updates (docs/cache.md).

What is cached is a search's *retrieval* (the query terms' posting lists and the vector
candidates, see ``retrieval``), not its response: a hit replays it with the
current collection statistics and chunk records, so scores and order equal a fresh search
even after unrelated documents changed N, df or avgdl. One job per module:

``store``         entries in Redis: look up (exact, then semantic), store, evict, delete, statistics
``retrieval``     what a search read (``Retrieval``): what an entry holds and a hit replays
``keys``          which entry answers a request: the parameter digest, the exact key, LSH bucket keys
``lsh``           random-hyperplane signatures (the semantic lookup's buckets)
``entries``       how an entry's retrieval and query embedding are stored
``validity``      when an entry stops being right: the rules every hit is checked against
``vector_log``    the vector stage's change log those rules read (written by the worker)
``invalidation``  the index-update handler deleting entries proactively (``streams`` wires it to an agent)

Key strings come from ``fluxstream.core.keyspace``, scripts from ``fluxstream.core.lua``. The
searcher (``query.search``) fills a ``Retrieval`` and reads the vector log's head; the cache
never imports the searcher. Import from the modules themselves (this file imports nothing).
"""
