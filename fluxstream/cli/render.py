"""Text the commands print: the status table and the dead-letter lines (presentation only; the data
comes from indexer/generations/status.py and streams/dead_letters.py)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fluxstream.streams.dead_letters import Letter, Redriven


def status_table(report: dict[str, Any]) -> list[str]:
    """`fluxstream status` without --json: collections, then partitions (lag, applied offsets), then warnings."""
    lines = [f"{'collection':24} {'gen':>4} {'documents':>10} {'chunks':>10} {'changes':>10}  building"]
    for row in report["collections"]:
        building = row["building"]
        rebuilding = "-" if building is None else (
            f"g{building['generation']} {building['state']} {building.get('phase', '')} "
            f"{building.get('records', 0)} records, {building['documents']} documents")
        lines.append(f"{row['collection']:24} {row['generation']:>4} {row['documents']:>10} {row['chunks']:>10} "
                     f"{row['change_seq']:>10}  {rebuilding}")
    lines.append(f"\n{'topic':32} {'partition':>9} {'committed':>10} {'end':>10} {'lag':>8} {'applied':>10}")
    for row in report["consumer_lag"]:
        applied = report["applied_positions"].get(f"{row['topic']}:{row['partition']}", "-")
        committed = f"{row['committed']}{'!' if row.get('ahead') else ''}"
        lines.append(f"{row['topic']:32} {row['partition']:>9} {committed:>10} {row['end']:>10} {row['lag']:>8} "
                     f"{applied:>10}")
    if report.get("cdc"):
        lines.append("\n" + cdc_line(report["cdc"]))
    if report.get("kafka_cluster"):
        lines.append(f"\napplied offsets belong to Kafka cluster {report['kafka_cluster']} (a worker on another "
                     "cluster starts them afresh)")
    if any(row.get("ahead") for row in report["consumer_lag"]):
        lines.append("\n! committed past the partition's end: the topic was recreated or lost records (an in-memory "
                     "broker restarted?); the worker group skips or re-reads records until its offsets are reset")
    return lines


def cdc_line(cdc: dict[str, Any]) -> str:
    """`status`'s CDC line: slot, lag to the source's WAL position, records captured by the local cdc process."""
    if cdc.get("error"):
        slot = f"source unreachable ({cdc['error']})"
    elif not cdc.get("exists"):
        slot = "not created yet (capture has not started)"
    else:
        slot = f"{'active' if cdc['active'] else 'inactive'}, lag {cdc['lag_bytes']} bytes"
    captured = "?" if cdc.get("records_captured") is None else cdc["records_captured"]
    return f"cdc  {cdc['source']}  slot {cdc['slot']}: {slot}; records captured {captured}"


def dead_letter_line(letter: Letter) -> str:
    """`dead-letters list`: position, time, reason, source position, size, payload preview."""
    source = letter.letter.source if letter.letter else None
    origin = f"{source.topic}:{source.partition}:{source.offset}" if source else "?"
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(letter.timestamp_ms / 1000))
    return (f"{letter.position}  {when}  {letter.reason}  from {origin}  {letter.size} B"
            f"{' (cut)' if letter.cut else ''}  {letter.preview()}")


def redriven_line(result: Redriven) -> str:
    """`dead-letters redrive`: where a letter went, or would go (dry run); refusals are printed apart."""
    if result.to is None:
        source = result.letter.letter.source.topic if result.letter.letter else "?"
        return f"{result.letter.position}: would redrive to {source} (dry run)"
    return f"{result.letter.position}: redriven to {result.to.topic}:{result.to.partition}:{result.to.offset}"
