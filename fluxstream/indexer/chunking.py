"""Splitting documents into overlapping chunks, the unit of retrieval.

Chunks are measured in words (the tokenizer's word spans, stop words included)
and cut at word boundaries of the original text, so a chunk is an exact slice of
``title + text``. A chunk whose first word only has markup before it on its line
("# Title", "- item", "<h2>Usage") starts at that line, so the markup stays with it
(headings keep marking sections; see indexer.enrichment). Consecutive chunks share
``overlap`` words so a passage that straddles a boundary is still found whole in one
of them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from fluxstream.indexer.tokenizer import Tokenizer


@dataclass(frozen=True)
class Chunk:
    chunk_no: int
    text: str
    content_hash: str

    def chunk_id(self, doc_id: str) -> str:
        return make_chunk_id(doc_id, self.chunk_no)


def _line_start(text: str, word_start: int) -> int:
    """Where the chunk starting at ``word_start`` begins: its line's start when only markup precedes."""
    line_start = text.rfind("\n", 0, word_start) + 1
    prefix = text[line_start:word_start]
    return line_start if prefix.strip() and not any(c.isalnum() for c in prefix) else word_start


def make_chunk_id(doc_id: str, chunk_no: int) -> str:
    return f"{doc_id}#{chunk_no}"


def content_hash(text: str) -> str:
    """Identity of chunk text: equal hashes mean the stored embedding can be reused."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


@dataclass(frozen=True)
class Chunker:
    size: int = 200
    overlap: int = 40
    tokenizer: Tokenizer = field(default_factory=Tokenizer)

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError("chunk size must be >= 1")
        if not 0 <= self.overlap < self.size:
            raise ValueError("chunk overlap must be >= 0 and smaller than the chunk size")

    def split(self, title: str, text: str) -> list[Chunk]:
        """Chunks of ``title`` + blank line + ``text``; the title lands in chunk 0."""
        full = f"{title}\n\n{text}" if title and text else (title or text)
        spans = list(self.tokenizer.spans(full))
        if not spans:
            stripped = full.strip()
            return [Chunk(0, stripped, content_hash(stripped))] if stripped else []
        chunks: list[Chunk] = []
        step = self.size - self.overlap
        start = 0
        while True:
            window = spans[start : start + self.size]
            piece = full[_line_start(full, window[0][0]) : window[-1][1]]
            chunks.append(Chunk(len(chunks), piece, content_hash(piece)))
            if start + self.size >= len(spans):
                return chunks
            start += step
