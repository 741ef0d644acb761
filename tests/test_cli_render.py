"""The text `fluxstream status` prints (fluxstream/cli/render.py), without servers: a rebuild in progress,
applied offsets, a partition committed past its end, and the Kafka cluster the offsets belong to."""

from __future__ import annotations

from fluxstream.cli.render import status_table


def test_status_table_shows_a_rebuild_and_warns_of_a_partition_committed_past_its_end() -> None:
    report = {
        "collections": [
            {"collection": "docs", "generation": 2, "documents": 10, "chunks": 12, "change_seq": 40, "building":
             {"generation": 3, "state": "building", "phase": "replaying", "records": 7, "documents": 5}},
            {"collection": "notes", "generation": 1, "documents": 1, "chunks": 1, "change_seq": 1, "building": None},
        ],
        "consumer_lag": [
            {"topic": "fx.documents", "partition": 0, "committed": 12, "end": 10, "lag": 0, "ahead": True},
            {"topic": "fx.documents", "partition": 1, "committed": 3, "end": 5, "lag": 2, "ahead": False},
        ],
        "applied_positions": {"fx.documents:1": 2},
        "kafka_cluster": "c-1",
    }
    lines = status_table(report)
    assert lines[1].split() == ["docs", "2", "10", "12", "40", "g3", "building", "replaying", "7", "records,", "5",
                                "documents"]
    assert lines[2].split() == ["notes", "1", "1", "1", "1", "-"]
    assert lines[4].split() == ["fx.documents", "0", "12!", "10", "0", "-"]
    assert lines[5].split() == ["fx.documents", "1", "3", "5", "2", "2"]
    assert "Kafka cluster c-1" in lines[6]
    assert lines[7].startswith("\n! committed past the partition's end")
    quiet = status_table({**report, "consumer_lag": report["consumer_lag"][1:], "kafka_cluster": None})
    assert not any("committed past" in line or "Kafka cluster" in line for line in quiet)
