"""Every Redis key layout, pinned: the key strings are stored data (issue 17, item 3).

A deployment's Redis holds keys built by earlier versions; a key function that starts building
another string orphans them silently (the index looks empty, cached answers are never found,
pending marks are never cleared). Changing a row here must be a deliberate migration.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from fluxstream.core import keyspace

KEYS: list[tuple[Callable[[], object], object]] = [
    # an index's BM25 data (indexer.postings, indexer.positions)
    (lambda: keyspace.index_base("docs"), "fx:{docs}"),
    (lambda: keyspace.index_prefix("docs@g2"), "fx:{docs@g2}:"),
    (lambda: keyspace.meta("docs"), "fx:{docs}:meta"),
    (lambda: keyspace.posting("docs", "heron"), "fx:{docs}:p:heron"),
    (lambda: keyspace.posting("docs", ""), "fx:{docs}:p:"),
    (lambda: keyspace.document("docs", "a:b}c"), "fx:{docs}:doc:a:b}c"),
    (lambda: keyspace.chunk("docs", "d1#0"), "fx:{docs}:chunk:d1#0"),
    (lambda: keyspace.term_versions("docs"), "fx:{docs}:termver"),
    (lambda: keyspace.vector_log("docs"), "fx:{docs}:vlog"),
    (lambda: keyspace.pending_vectors("docs", "fluxstream.documents", 3), "fx:{docs}:pending:fluxstream.documents:3"),
    (lambda: keyspace.pending_entries("docs", "fluxstream.documents", 3),
     "fx:{docs}:pending-entries:fluxstream.documents:3"),
    (lambda: keyspace.PENDING_SCAN, "fx:*:pending*"),
    # its semantic cache (query.cache)
    (lambda: keyspace.cache_base("docs"), "fxc:{docs}"),
    (lambda: keyspace.cache_prefix("docs@g2"), "fxc:{docs@g2}:"),
    (lambda: keyspace.cache_entry("docs", "e1"), "fxc:{docs}:e:e1"),
    (lambda: keyspace.cache_exact("docs", "00ff"), "fxc:{docs}:x:00ff"),
    (lambda: keyspace.cache_buckets("docs", "p9", [7, 0]), ["fxc:{docs}:l:p9:0:7", "fxc:{docs}:l:p9:1:0"]),
    (lambda: keyspace.cache_term("docs", "heron"), "fxc:{docs}:t:heron"),
    (lambda: keyspace.cache_doc("docs", "d1"), "fxc:{docs}:d:d1"),
    (lambda: keyspace.cache_lru("docs"), "fxc:{docs}:lru"),
    (lambda: keyspace.cache_new("docs"), "fxc:{docs}:new"),
    (lambda: keyspace.index_prefixes("docs"), ("fx:{docs}:", "fxc:{docs}:")),
    # global keys
    (lambda: keyspace.COLLECTIONS, "fx:collections"),
    (lambda: keyspace.APPLIED, "fx:applied"),
    (lambda: keyspace.generation_registry("docs"), "fx:generations:docs"),
    (lambda: keyspace.GENERATIONS_PREFIX, "fx:generations:"),
    (lambda: keyspace.GENERATIONS_DROPPED, "fx:generations-dropped"),
    (lambda: keyspace.CACHE_STATS, "fx:cache:stats"),
    # SCAN patterns escape the hash tag's braces
    (lambda: keyspace.scan_pattern("fx:{docs}:p:"), "fx:\\{docs\\}:p:*"),
]


@pytest.mark.parametrize(("build", "expected"), KEYS, ids=[str(expected) for _, expected in KEYS])
def test_key_layout(build: Callable[[], object], expected: object) -> None:
    assert build() == expected


def test_every_key_builder_is_pinned() -> None:
    """A key function added to the keyspace without a row above fails here."""
    import inspect

    public = {name for name, value in vars(keyspace).items()
              if not name.startswith("_") and (inspect.isfunction(value) or isinstance(value, str))
              and getattr(value, "__module__", keyspace.__name__) == keyspace.__name__}
    pinned = {name for build, _ in KEYS for name in build.__code__.co_names} - {"keyspace"}
    assert public - {"annotations", "PREFIX", "CACHE_PREFIX"} <= pinned, public - pinned


def test_pending_keys_are_told_apart_from_lookalike_document_ids() -> None:
    """``adopt_cluster`` drops pending keys only: a document id may contain ``:pending:``."""
    assert keyspace.PENDING_KEY.match(keyspace.pending_vectors("c", "docs", 0).encode())
    assert keyspace.PENDING_KEY.match(keyspace.pending_entries("c", "docs", 0).encode())
    assert not keyspace.PENDING_KEY.match(keyspace.document("c", "y}:pending:docs:0").encode())
