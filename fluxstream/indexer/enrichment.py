"""Chunk metadata computed after indexing: text metrics, document structure, keywords, LLM tags.

Runs as its own stage (agent ``enrich-chunks`` on the index-updates topic), so it never delays
BM25 or vectors. Every field lands under an ``enrich_`` key in the chunk's metadata and can be
filtered on like any other metadata (``{"enrich_section": "Installation"}``):

``enrich_chars``, ``enrich_tokens``, ``enrich_sentences``   sizes (tokens as the index counts them)
``enrich_readability``                                       Flesch reading ease (higher: easier)
``enrich_section``, ``enrich_heading_path``                  Markdown (``#``) or HTML (``<h1>``-``<h6>``)
                                                              heading in force at the chunk, and its path
``enrich_prev_chunk``, ``enrich_next_chunk``                 neighbour context
``enrich_keywords``, ``enrich_keyword_weights``              top terms by tf x idf from the live BM25
                                                              statistics, and their weights
``enrich_entities``, ``enrich_topics``                       from the chat model, when one is configured

Writes are compare-and-set on the chunk's content hash: enrichment of text that changed meanwhile
is dropped (the newer change brings its own enrichment).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from fluxstream.indexer.chat import ChatModel
from fluxstream.indexer.postings import PostingsStore, StoredChunk
from fluxstream.indexer.tokenizer import Tokenizer

PREFIX = "enrich_"
_SENTENCE = re.compile(r"[^.!?]+(?:[.!?]+|$)")
_MARKDOWN_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.M)
_HTML_HEADING = re.compile(r"<h([1-6])[^>]*>(.*?)</h\1>", re.I | re.S)
_TAG = re.compile(r"<[^>]+>")
_VOWEL_GROUPS = re.compile(r"[aeiouy]+")


def syllables(word: str) -> int:
    word = word.lower()
    count = len(_VOWEL_GROUPS.findall(word))
    if word.endswith("e") and count > 1 and not word.endswith("le"):
        count -= 1
    return max(1, count)


def text_metrics(text: str, tokenizer: Tokenizer) -> dict[str, Any]:
    words = re.findall(r"[^\W\d_]+", text)
    sentences = [s for s in _SENTENCE.findall(text) if s.strip()]
    n_sentences = max(1, len(sentences))
    readability = None
    if words:
        per_sentence = len(words) / n_sentences
        per_word = sum(syllables(w) for w in words) / len(words)
        readability = round(206.835 - 1.015 * per_sentence - 84.6 * per_word, 1)
    return {"chars": len(text), "tokens": len(tokenizer.tokenize(text)), "sentences": len(sentences),
            "readability": readability}


class Heading(NamedTuple):
    """A markdown or HTML heading: where it starts in the text, its level (1 = top) and title."""

    offset: int
    level: int
    title: str


def headings(text: str) -> list[Heading]:
    """Every heading in ``text``, in order."""
    found = [Heading(m.start(), len(m.group(1)), m.group(2).strip()) for m in _MARKDOWN_HEADING.finditer(text)]
    found += [Heading(m.start(), int(m.group(1)), " ".join(_TAG.sub("", m.group(2)).split()))
              for m in _HTML_HEADING.finditer(text)]
    return sorted(found)


def structure(chunks: Sequence[StoredChunk]) -> list[dict[str, Any]]:
    """Section, heading path and neighbours per chunk (chunks in document order, overlapping).

    A chunk's section is the heading in force where its content begins: headings that open the
    chunk count, headings further in belong to the content after them. Consecutive chunks overlap,
    so only the headings before the next chunk's start carry over to it.
    """
    stack: list[Heading] = []  # the headings in force, outermost first

    def enter(heading: Heading) -> None:
        nonlocal stack
        stack = [h for h in stack if h.level < heading.level] + [heading]

    out = []
    for i, chunk in enumerate(chunks):
        found = headings(chunk.text)
        body = _content_start(chunk.text)
        for heading in (h for h in found if h.offset <= body):
            enter(heading)
        path = [h.title for h in stack]
        out.append({"section": path[-1] if path else None, "heading_path": " > ".join(path) or None,
                    "prev_chunk": chunks[i - 1].chunk_id if i > 0 else None,
                    "next_chunk": chunks[i + 1].chunk_id if i + 1 < len(chunks) else None})
        next_start = len(chunk.text)
        if i + 1 < len(chunks):
            at = chunk.text.find(chunks[i + 1].text[:60])
            next_start = at if at > 0 else next_start
        for heading in (h for h in found if body < h.offset < next_start):
            enter(heading)
    return out


def _content_start(text: str) -> int:
    """Offset of the first line that is neither blank nor a heading."""
    offset = 0
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        if stripped and not _MARKDOWN_HEADING.match(stripped) and not _HTML_HEADING.fullmatch(stripped):
            return offset
        offset += len(line)
    return offset


def keywords(tf: Counter[str], df: dict[str, int], n_chunks: int, top: int = 5) -> dict[str, float]:
    """Top terms by tf x idf (BM25's idf, from the live statistics)."""
    weights = {term: count * math.log(1.0 + (n_chunks - df.get(term, 1) + 0.5) / (df.get(term, 1) + 0.5))
               for term, count in tf.items() if len(term) > 2}
    best = sorted(weights.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return {term: round(weight, 3) for term, weight in best}


@dataclass
class DocumentEnrichment:
    """What the stage computes for one document's chunks (``fields[i]`` belongs to ``chunks[i]``)."""

    chunks: list[StoredChunk]
    fields: list[dict[str, Any]]


async def enrich_document(store: PostingsStore, tokenizer: Tokenizer, index: str,
                          chunks: list[StoredChunk]) -> DocumentEnrichment:
    tfs = [Counter(tokenizer.tokenize(c.text)) for c in chunks]
    terms = sorted({t for tf in tfs for t in tf})
    df = await store.document_frequencies(index, terms)
    n_chunks = (await store.stats(index)).chunks
    fields = []
    for chunk, tf, shape in zip(chunks, tfs, structure(chunks), strict=True):
        weights = keywords(tf, df, n_chunks)
        fields.append({**text_metrics(chunk.text, tokenizer), **shape, "keywords": list(weights),
                       "keyword_weights": list(weights.values())})
    return DocumentEnrichment(chunks, fields)


TAGS_PROMPT = ('Name the entities (people, organisations, places, products) and the topics of the text. Reply '
               'with JSON only: {"entities": ["..."], "topics": ["..."]}, at most 10 of each.')


async def llm_tags(chat: ChatModel, text: str, max_words: int = 1500) -> dict[str, list[str]]:
    """Entities and topics of a document from the chat model; empty when the reply is not usable."""
    reply = await chat.complete([{"role": "system", "content": TAGS_PROMPT},
                                 {"role": "user", "content": " ".join(text.split()[:max_words])}], max_tokens=300)
    start, end = reply.text.find("{"), reply.text.rfind("}")
    try:
        parsed = json.loads(reply.text[start : end + 1]) if start >= 0 else {}
    except json.JSONDecodeError:
        return {}
    return {key: [str(v)[:100] for v in parsed.get(key, []) if isinstance(v, str | int | float)][:10]
            for key in ("entities", "topics") if isinstance(parsed.get(key), list)}


def prefixed(fields: dict[str, Any]) -> dict[str, Any]:
    return {PREFIX + name: value for name, value in fields.items() if value is not None}
