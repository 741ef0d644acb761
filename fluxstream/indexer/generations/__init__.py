"""Index generations, one home: a collection is served from one physical index while the next builds.

``registry``: the alias records (which generation serves, builds, retires), index names and the
``IndexTarget`` a request reads; ``retirement``: dropping generations after a switch, an abort, or
as orphans; ``status``: per collection generations, counts and positions, and the worker group's lag.
Rebuilding (reading a topic window into a new generation) is the worker's: streams.rebuild.
"""

from fluxstream.indexer.generations.registry import (
    GenerationRegistry,
    GenerationState,
    IndexTarget,
    RebuildConflict,
    index_name,
    parse_index_name,
)

__all__ = ["GenerationRegistry", "GenerationState", "IndexTarget", "RebuildConflict", "index_name",
           "parse_index_name"]
