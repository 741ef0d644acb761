"""The Unicode-aware tokenizer shared by indexing and querying.

Rules, in order: NFKC normalisation (folds full-width forms and ligatures),
``str.casefold`` (Unicode-correct lower-casing, e.g. "Straße" -> "strasse"),
then words are maximal runs of Unicode letters and digits (``[^\\W_]+``: any
script, underscores split words), then stop words are dropped, then (optionally) a
Snowball stemmer maps inflections to one term ("measurements" -> "measur").
Identical rules on both sides are what make BM25 scores reproducible; changing them
needs a rebuild (``fluxstream rebuild``).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import Stemmer

WORD_RE = re.compile(r"[^\W_]+")

# Lucene's EnglishAnalyzer default stop set (33 words): small, safe for retrieval.
ENGLISH_STOPWORDS = frozenset([
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it",
    "no", "not", "of", "on", "or", "such", "that", "the", "their", "then", "there", "these",
    "they", "this", "to", "was", "will", "with",
])


def parse_stopwords(spec: str) -> frozenset[str]:
    """'english' (default), 'none', or a comma-separated custom list."""
    spec = spec.strip()
    if spec.lower() == "english":
        return ENGLISH_STOPWORDS
    if spec.lower() in {"", "none"}:
        return frozenset()
    return frozenset(normalise(w.strip()) for w in spec.split(",") if w.strip())


def normalise(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


@dataclass(frozen=True)
class Tokenizer:
    """Turns text into index terms; ``spans`` keeps offsets for chunking."""

    stopwords: frozenset[str] = ENGLISH_STOPWORDS
    stemmer: str = ""  # a Snowball language ("english", "german", ...) or "" for none

    def __post_init__(self) -> None:
        if self.stemmer:
            _stemmer(self.stemmer)  # fail at start-up on an unknown language, not on the first event

    def tokenize(self, text: str) -> list[str]:
        stop = self.stopwords
        words = [w for w in WORD_RE.findall(normalise(text)) if w not in stop]
        return _stemmer(self.stemmer).stemWords(words) if self.stemmer else words

    def spans(self, text: str) -> Iterator[tuple[int, int]]:
        """(start, end) offsets of every word in the *original* text, stop words included.

        Chunk boundaries are cut on these offsets so chunk text is an exact slice of
        the source. Case folding is applied per word later, so offsets stay valid.
        """
        for match in WORD_RE.finditer(text):
            yield match.span()


@lru_cache(maxsize=8)
def _stemmer(language: str) -> Stemmer.Stemmer:
    """PyStemmer's Snowball stemmers (C); each keeps a cache of recent words."""
    if language not in Stemmer.algorithms():
        raise ValueError(f"unknown stemmer language {language!r}; one of {', '.join(Stemmer.algorithms())}")
    return Stemmer.Stemmer(language, 100_000)
