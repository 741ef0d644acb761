"""HNSW parameters for pgvector and the presets operators pick from.

``m`` (graph degree) and ``ef_construction`` are fixed when the index is built; ``ef_search``
is per query. Presets trade recall against latency and memory; bench/hnsw.py measures each
(recall@10 against exact search, latency, index size) and docs/benchmarks.md has the figures.
In the floor because the settings check ``FLUXSTREAM_HNSW_PRESET`` against these names; the vector
store (indexer.vector_store) builds its indexes with them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HNSWParams:
    m: int = 16
    ef_construction: int = 64


HNSW_PRESETS: dict[str, tuple[HNSWParams, int]] = {
    "speed": (HNSWParams(m=12, ef_construction=48), 40),
    "balanced": (HNSWParams(m=16, ef_construction=64), 100),
    "accuracy": (HNSWParams(m=32, ef_construction=200), 300),
    "memory": (HNSWParams(m=8, ef_construction=64), 100),
}

DEFAULT_HNSW = HNSW_PRESETS["balanced"][0]
