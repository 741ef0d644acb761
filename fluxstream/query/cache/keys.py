"""Which cache entry answers a request: its parameter digest, exact key and LSH buckets.

Only what tells answers apart goes into a key; the key strings themselves are built by
``fluxstream.core.keyspace``.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from fluxstream.core import keyspace
from fluxstream.query.cache.lsh import LSH
from fluxstream.schemas.api import SearchRequest

_PARAM_FIELDS = {"collection", "k", "mode", "fusion", "rrf_k", "weights", "filters", "ef_search"}


def params_digest(req: SearchRequest, index: str | None = None) -> str:
    """Everything but the query text that shapes a result: the index (by default generation 1 of
    ``req.collection``, whose index name is the collection's), k, mode, fusion, weights, filters.

    Encoded so that values a retriever tells apart never share a digest: the standard library's JSON
    keeps NaN and infinities apart from null (orjson writes all three as null, which let a NaN
    filter's answer serve a null filter) and writes integers of any size.
    """
    fields = req.model_dump(include=_PARAM_FIELDS)
    if index is not None:
        fields["collection"] = index
    params = json.dumps(fields, sort_keys=True, allow_nan=True)
    return hashlib.blake2b(params.encode(), digest_size=12).hexdigest()


def exact_key(req: SearchRequest, index: str, identity: bytes) -> str:
    """The key of answers equal to ``req``'s on ``index``: its parameters and ``identity``, what the mode's
    retrievers read of the query text (``Searcher.query_identity``). Only texts every retriever
    treats identically share it; the cache normalises nothing itself (docs/cache.md)."""
    digest = hashlib.blake2b(b"v2\0" + params_digest(req, index).encode() + b"\0" + identity, digest_size=16)
    return keyspace.cache_exact(index, digest.hexdigest())


def bucket_keys(lsh: LSH, req: SearchRequest, index: str, vector: np.ndarray) -> list[str]:
    """The LSH buckets of a query ``vector`` among entries of ``index`` with ``req``'s parameters."""
    return keyspace.cache_buckets(index, params_digest(req, index), lsh.signatures(vector))
