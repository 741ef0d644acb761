"""The BM25 stage's pure core (issue 17): ``fold(batch, before) -> plan`` decides, without Redis, which
changes apply, each document's final state, and the postings, records, statistics, compare-and-set
expectations and vector-pending marks of the write. No server: these tests run in milliseconds."""

from __future__ import annotations

from typing import Any

from fluxstream.indexer.chunking import Chunker
from fluxstream.indexer.documents import DocRef, DocumentState, PendingMark, TableRef
from fluxstream.indexer.fold import (
    Before,
    DocumentBuilder,
    FoldPlan,
    SourcedChange,
    documents_to_read,
    fold,
    tables_to_read,
)
from fluxstream.indexer.generations import IndexTarget
from fluxstream.indexer.tokenizer import Tokenizer
from fluxstream.indexer.write_plan import CollectionWrite
from fluxstream.schemas.events import DocumentChange, SourcePosition

TOKENIZER = Tokenizer()
BUILDER = DocumentBuilder(Chunker(size=4, overlap=0, tokenizer=TOKENIZER), TOKENIZER)  # 4 words a chunk


def at(offset: int, partition: int = 0) -> SourcePosition:
    return SourcePosition(topic="docs", partition=partition, offset=offset)


def upsert(doc_id: str, version: int, text: str, offset: int, collection: str = "c", **extra: Any) -> SourcedChange:
    change = DocumentChange(op="upsert", doc_id=doc_id, collection=collection, version=version, text=text)
    return SourcedChange(change, at(offset), **extra)


def delete(doc_id: str, version: int, offset: int, collection: str = "c", **extra: Any) -> SourcedChange:
    change = DocumentChange(op="delete", doc_id=doc_id, collection=collection, version=version)
    return SourcedChange(change, at(offset), **extra)


def indexed(doc_id: str, version: int, text: str, offset: int, collection: str = "c") -> DocumentState:
    """A document as a write of ``text`` at ``offset`` left it (read back: no chunk texts)."""
    plan = run([upsert(doc_id, version, text, offset, collection)])
    state = plan.to_embed[0].state
    for chunk in state.chunks:
        chunk.text = ""
    return state


def run(batch: list[SourcedChange], *states: DocumentState, truncations: dict[TableRef, int] | None = None) -> FoldPlan:
    """Fold ``batch`` onto ``states``, every other document it reads not indexed yet."""
    held = {s.ref: s for s in states}
    documents = {ref: held.get(ref, DocumentState(*ref)) for ref in documents_to_read(batch)}
    return fold(batch, Before(documents, truncations or {}), BUILDER)


def only_write(plan: FoldPlan) -> CollectionWrite:
    assert len(plan.writes) == 1, plan.writes
    return plan.writes[0]


def test_upsert_of_a_new_document_posts_every_chunk_and_counts_it() -> None:
    plan = run([upsert("d", 3, "alpha beta gamma delta epsilon", 7)])
    write = only_write(plan)
    [document] = write.documents
    after = document.write.after
    assert [c.chunk_id for c in after.chunks] == ["d#0", "d#1"]
    assert document.expected_version is None and document.floor_table is None
    assert document.posted == after.chunks and document.unposted == [] and document.dropped == []
    assert write.stats_delta == {"chunks": 2, "total_len": 5, "docs": 1}
    assert write.changed_terms == ["alpha", "beta", "delta", "epsilon", "gamma"]
    assert write.marks == [PendingMark("c", "docs", 0, "d", 7, 7)]
    assert [r.applied for r in plan.results] == [True]
    assert [(e.state.version, e.source.offset) for e in plan.to_embed] == [(3, 7)]
    assert [(a.state.version, a.previous.version if a.previous else "-") for a in plan.announcements] == [(3, None)]
    assert plan.redelivered == []


def test_a_new_version_with_the_same_text_rewrites_records_but_no_posting_or_statistic() -> None:
    before = indexed("d", 1, "alpha beta gamma delta epsilon", 0)
    plan = run([upsert("d", 2, "alpha beta gamma delta epsilon", 5)], before)
    write = only_write(plan)
    [document] = write.documents
    assert document.expected_version == 1 and document.write.after.version == 2
    assert document.unposted == document.posted == document.dropped == []
    assert write.stats_delta == {} and write.changed_terms == []
    assert document.write.after.chunks[0].tf is before.chunks[0].tf  # term counts reused, not recounted


def test_a_redelivered_version_writes_no_document_but_is_announced_again() -> None:
    before = indexed("d", 4, "alpha beta", 9)
    plan = run([upsert("d", 4, "alpha beta", 9)], before)
    assert [r.applied for r in plan.results] == [False]
    assert plan.announcements == [] and plan.to_embed == []
    assert [(e.state, e.source.offset) for e in plan.redelivered] == [(before, 9)]
    write = only_write(plan)  # only its own pending mark: its re-sent job clears it
    assert write.documents == [] and write.marks == [PendingMark("c", "docs", 0, "d", 9, 9)]


def test_changed_chunks_alone_lose_and_gain_postings() -> None:
    before = indexed("d", 1, "alpha beta gamma delta epsilon zeta eta theta iota", 0)  # 3 chunks
    plan = run([upsert("d", 2, "alpha beta gamma delta epsilon zeta eta kappa", 1)], before)
    write = only_write(plan)
    [document] = write.documents
    assert [c.chunk_id for c in document.unposted] == ["d#1", "d#2"]  # "epsilon ... theta" and "iota" changed
    assert [c.chunk_id for c in document.posted] == ["d#1"]
    assert document.dropped == ["d#2"]  # the third chunk is gone
    assert write.changed_terms == ["epsilon", "eta", "iota", "kappa", "theta", "zeta"]  # "alpha"... untouched
    assert write.stats_delta == {"chunks": -1, "total_len": -1}


def test_delete_drops_every_chunk_and_leaves_a_tombstone() -> None:
    before = indexed("d", 1, "alpha beta gamma delta epsilon", 0)
    plan = run([delete("d", 2, 3, table="notes")], before)
    write = only_write(plan)
    [document] = write.documents
    after = document.write.after
    assert after.deleted and after.version == 2 and after.chunks == [] and not after.live
    assert document.unposted == before.chunks and document.dropped == ["d#0", "d#1"] and document.posted == []
    assert document.floor_table is None  # a delete is never refused by a truncation floor
    assert write.stats_delta == {"chunks": -2, "total_len": -5, "docs": -1}
    assert plan.to_embed[0].state is after


def test_a_change_at_or_below_its_tables_truncation_floor_is_skipped() -> None:
    batch = [upsert("old", 100, "alpha", 0, table="notes"), upsert("new", 101, "beta", 1, table="notes"),
             upsert("native", 5, "gamma", 2)]
    assert tables_to_read(batch) == [TableRef("c", "notes")]
    plan = run(batch, truncations={TableRef("c", "notes"): 100})
    assert [(r.item.change.doc_id, r.applied) for r in plan.results] == [("old", False), ("new", True),
                                                                         ("native", True)]
    write = only_write(plan)
    assert [(d.write.after.doc_id, d.floor_table) for d in write.documents] == [("new", "notes"), ("native", None)]
    assert [m.doc_id for m in write.marks] == ["new", "native"]  # nothing waits for the truncated row


def test_two_changes_of_one_document_fold_into_one_write_of_the_last() -> None:
    before = indexed("d", 1, "alpha", 0)
    batch = [upsert("d", 2, "beta", 10), upsert("d", 3, "gamma", 11)]
    plan = run(batch, before)
    write = only_write(plan)
    [document] = write.documents
    assert document.write.before is before and document.write.after.version == 3
    assert [c.tf for c in document.posted] == [{"gamma": 1}]  # "beta" was never written
    assert write.changed_terms == ["alpha", "gamma"]
    assert [r.applied for r in plan.results] == [True, True]
    # Each applied change is announced with the terms it touched; one job, for the final state.
    assert [(a.state.version, a.previous.version if a.previous else None) for a in plan.announcements] == [
        (2, 1), (3, 2)]
    assert [(e.state.version, e.source.offset) for e in plan.to_embed] == [(3, 11)]
    assert write.marks == [PendingMark("c", "docs", 0, "d", 10, 11)]  # both offsets clear with that job


def test_changes_apply_in_source_order_so_a_late_lower_version_is_skipped() -> None:
    batch = [upsert("d", 3, "gamma", 10), upsert("d", 2, "beta", 11)]
    plan = run(batch)
    assert [r.applied for r in plan.results] == [True, False]
    [document] = only_write(plan).documents
    assert document.write.after.version == 3 and [c.tf for c in document.posted] == [{"gamma": 1}]
    assert [(e.state.version, e.source.offset) for e in plan.to_embed] == [(3, 10)]


def test_a_change_superseded_by_a_newer_indexed_version_waits_for_that_versions_job() -> None:
    before = indexed("d", 5, "alpha", 20)  # written from offset 20: its job may still be pending
    plan = run([upsert("d", 4, "beta", 10), upsert("e", 1, "gamma", 30)], before)
    assert [r.applied for r in plan.results] == [False, True]
    assert plan.redelivered == []  # an older version, not a redelivery
    write = only_write(plan)
    assert [d.write.after.doc_id for d in write.documents] == ["e"]
    assert write.marks == [PendingMark("c", "docs", 0, "d", 10, 20, only_if=20),
                           PendingMark("c", "docs", 0, "e", 30, 30)]
    # Above the write that superseded it, a skipped change needs no mark: that write's entry covers it.
    later = run([upsert("d", 4, "beta", 25)], before)
    assert later.writes == [] and later.results[0].applied is False


def test_a_multi_collection_batch_plans_one_atomic_write_per_collection() -> None:
    before = indexed("d", 1, "alpha beta", 0, collection="a")
    batch = [upsert("d", 2, "alpha", 1, collection="a"), upsert("d", 1, "gamma delta", 2, collection="b"),
             upsert("x", 1, "beta", 3, collection="a")]
    assert documents_to_read(batch) == [DocRef("a", "d"), DocRef("b", "d"), DocRef("a", "x")]
    plan = run(batch, before)
    by_collection = {w.collection: w for w in plan.writes}
    assert list(by_collection) == ["a", "b"]
    a, b = by_collection["a"], by_collection["b"]
    assert [d.write.after.doc_id for d in a.documents] == ["d", "x"]
    assert a.stats_delta == {"chunks": 1, "docs": 1}  # "d" lost a term, "x" gained one: total_len 0 omitted
    assert a.changed_terms == ["alpha", "beta"] and b.changed_terms == ["delta", "gamma"]
    assert b.stats_delta == {"chunks": 1, "total_len": 2, "docs": 1}
    assert [m.doc_id for m in a.marks] == ["d", "x"] and [m.doc_id for m in b.marks] == ["d"]


def test_a_change_routed_to_generation_2_plans_its_writes_under_that_index_and_keeps_its_collection() -> None:
    change = DocumentChange(op="upsert", doc_id="d", collection="c", version=2, text="alpha beta")
    serving = SourcedChange(change, at(5), table="orders", target=IndexTarget("c"))
    building = SourcedChange(change, at(5), table="orders", target=IndexTarget("c", 2))
    assert building.index == "c@g2" and building.ref == DocRef("c@g2", "d")
    assert documents_to_read([serving, building]) == [DocRef("c", "d"), DocRef("c@g2", "d")]
    assert tables_to_read([serving, building]) == [TableRef("c", "orders"), TableRef("c@g2", "orders")]
    plan = run([serving, building], truncations={TableRef("c", "orders"): -1, TableRef("c@g2", "orders"): 1})
    assert [w.collection for w in plan.writes] == ["c", "c@g2"]
    g2 = plan.writes[1]
    assert [d.write.after.ref for d in g2.documents] == [DocRef("c@g2", "d")]
    assert g2.marks == [PendingMark("c@g2", "docs", 0, "d", 5, 5)]
    assert [e.state.collection for e in plan.to_embed] == ["c", "c@g2"]  # the events' index names
    assert [(r.item.change.collection, r.item.target) for r in plan.results] == \
        [("c", IndexTarget("c")), ("c", IndexTarget("c", 2))]  # the producer's collection, untouched
    assert change.collection == "c"
    # Each generation is checked against its own truncation floor.
    skipped = run([building], truncations={TableRef("c@g2", "orders"): 2})
    assert [r.applied for r in skipped.results] == [False] and skipped.writes == []


def test_a_key_change_fills_from_the_old_keys_tombstone_and_expects_it_unchanged() -> None:
    def render(row: Any) -> tuple[str, str, dict[str, Any]]:
        return row["title"], row["body"], {}

    old = DocumentState("c", "1", 7, deleted=True, row={"title": "walrus", "body": "tusks"}, table="t")
    create = upsert("2", 7, "", 4, row={"title": "walrus", "body": None}, unavailable=frozenset({"body"}),
                    render=render, table="t", previous_doc_id="1")
    assert documents_to_read([create]) == [DocRef("c", "2"), DocRef("c", "1")]
    plan = run([create], old, truncations={TableRef("c", "t"): -1})
    write = only_write(plan)
    [document] = write.documents
    assert document.write.after.row == {"title": "walrus", "body": "tusks"}
    assert [c.tf for c in document.posted] == [{"walrus": 1, "tusks": 1}]
    assert plan.announcements[0].incomplete == []
    assert write.expected == [old]  # read, not written: the script checks it still holds version 7


def test_fold_leaves_what_it_read_unchanged() -> None:
    before = indexed("d", 1, "alpha beta gamma delta epsilon", 0)
    chunks = [(c.chunk_id, c.content_hash, dict(c.tf)) for c in before.chunks]
    run([upsert("d", 2, "zeta", 1), delete("d", 3, 2)], before)
    assert before.version == 1 and [(c.chunk_id, c.content_hash, c.tf) for c in before.chunks] == chunks


def test_a_write_of_marks_only_checks_nothing_and_counts_nothing() -> None:
    old = DocumentState("c", "1", 7, deleted=True, row={"body": "tusks"})
    newer = indexed("2", 9, "walrus", 20)
    stale_create = upsert("2", 7, "walrus", 10, previous_doc_id="1")
    write = only_write(run([stale_create], old, newer))
    assert write.documents == [] and write.expected == []  # the old key is checked only when a write uses it
    assert write.stats_delta == {} and write.changed_terms == []
    assert write.marks == [PendingMark("c", "docs", 0, "2", 10, 20, only_if=20)]
