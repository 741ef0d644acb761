"""The tokenizer's documented rules and the chunker's boundaries."""

from __future__ import annotations

import pytest

from fluxstream.indexer.chunking import Chunker, content_hash
from fluxstream.indexer.tokenizer import ENGLISH_STOPWORDS, Tokenizer, parse_stopwords


def test_unicode_folding_and_words() -> None:
    tok = Tokenizer(frozenset())
    assert tok.tokenize("Straße ＡＢＣ café naïve") == ["strasse", "abc", "café", "naïve"]
    assert tok.tokenize("snake_case, hyphen-ated; 3.14 ΑΘΗΝΑ 東京") == [
        "snake", "case", "hyphen", "ated", "3", "14", "αθηνα", "東京"]


def test_stopwords_configurable() -> None:
    assert Tokenizer().tokenize("The cat is on the mat") == ["cat", "mat"]
    assert parse_stopwords("english") == ENGLISH_STOPWORDS
    assert parse_stopwords("none") == frozenset()
    custom = Tokenizer(parse_stopwords("Cat, MAT"))
    assert custom.tokenize("The cat is on the mat") == ["the", "is", "on", "the"]


def test_chunks_overlap_and_are_exact_slices() -> None:
    text = " ".join(f"w{i}" for i in range(25))
    chunks = Chunker(size=10, overlap=3, tokenizer=Tokenizer(frozenset())).split("", text)
    words = [c.text.split() for c in chunks]
    assert words[0] == [f"w{i}" for i in range(10)]
    assert words[1][:3] == words[0][-3:]
    assert words[-1][-1] == "w24"
    assert all(c.text in text for c in chunks)
    assert [c.chunk_no for c in chunks] == list(range(len(chunks)))
    assert len(chunks) == 4  # starts at 0, 7, 14, 21


def test_title_goes_into_first_chunk_and_hash_tracks_text() -> None:
    chunks = Chunker(size=50, overlap=5).split("My Title", "body text here")
    assert len(chunks) == 1 and chunks[0].text == "My Title\n\nbody text here"
    assert chunks[0].content_hash == content_hash("My Title\n\nbody text here")
    assert Chunker().split("", "   ") == []


@pytest.mark.parametrize(("size", "overlap"), [(0, 0), (10, 10), (10, -1)])
def test_invalid_chunk_settings(size: int, overlap: int) -> None:
    with pytest.raises(ValueError):
        Chunker(size=size, overlap=overlap)


def test_optional_snowball_stemming() -> None:
    plain, stemmed = Tokenizer(), Tokenizer(stemmer="english")
    assert plain.tokenize("Measurements of liquids") == ["measurements", "liquids"]
    assert stemmed.tokenize("Measurements of liquids") == stemmed.tokenize("measurement liquid") == ["measur", "liquid"]
    with pytest.raises(ValueError, match="unknown stemmer"):
        Tokenizer(stemmer="klingon")
