"""Which index generations a pipeline writes: all live ones (the worker) or one being rebuilt.

The worker's pipeline sends each change to every write target of its collection (the
serving generation and, during a rebuild, the building one). A rebuild's pipeline
replays history into the building generation only, and leaves the live bookkeeping
(applied positions, dead letters) to the worker that already did it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from fluxstream.indexer.generations import GenerationRegistry, IndexTarget


@dataclass(frozen=True)
class LiveScope:
    registry: GenerationRegistry
    live: bool = True

    async def targets(self, collections: Iterable[str]) -> dict[str, list[IndexTarget]]:
        """Each collection's write targets, the serving generation first."""
        return await self.registry.write_targets(collections)

    async def accepts_vectors(self, names: Iterable[str]) -> dict[str, bool]:
        return await self.registry.accepts_vectors(names)


@dataclass(frozen=True)
class RebuildScope:
    target: IndexTarget  # the generation being built
    live: bool = False

    async def targets(self, collections: Iterable[str]) -> dict[str, list[IndexTarget]]:
        return {c: [self.target] if c == self.target.collection else [] for c in collections}

    async def accepts_vectors(self, names: Iterable[str]) -> dict[str, bool]:
        """``names``: index names, as embed jobs carry them."""
        return {name: name == self.target.index for name in names}


WriteScope = LiveScope | RebuildScope
