"""The ``auto`` fusion strategy: fusion weights chosen from the query's shape.

Short keyword queries ("hnsw recall", "error 0x80070005") are what exact term matching is
good at, so BM25 leads; long natural-language questions are what embeddings are good at, so
the vector retriever leads; everything between gets the configured balance. The shape is
read from the raw words (a question word or "?" marks natural language) and from the index
terms the tokenizer keeps (stop words do not count as keywords).
"""

from __future__ import annotations

from dataclasses import dataclass

from fluxstream.indexer.tokenizer import Tokenizer

QUESTION_WORDS = frozenset({"what", "why", "how", "when", "where", "which", "who", "whom", "whose", "does", "do",
                            "is", "are", "can", "could", "should", "would", "explain", "describe"})


@dataclass(frozen=True)
class AutoStrategy:
    keyword_max_terms: int = 3  # at most this many index terms and no question: a keyword query
    natural_min_words: int = 8  # at least this many words, or a question: natural language
    sparse_first: tuple[float, float] = (0.7, 0.3)  # (bm25, vector)
    vector_first: tuple[float, float] = (0.3, 0.7)

    def choose(self, query: str, tokenizer: Tokenizer, balanced: tuple[float, float]) -> tuple[str, dict[str, float]]:
        """(strategy name, weights) for ``query``."""
        words = query.split()
        question = query.rstrip().endswith("?") or (bool(words) and words[0].lower() in QUESTION_WORDS)
        terms = tokenizer.tokenize(query)
        if len(terms) <= self.keyword_max_terms and not question:
            name, (b, v) = "sparse-first", self.sparse_first
        elif question or len(words) >= self.natural_min_words:
            name, (b, v) = "vector-first", self.vector_first
        else:
            name, (b, v) = "balanced", balanced
        return name, {"bm25": b, "vector": v}
