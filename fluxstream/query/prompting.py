"""Context prompts with numbered citations, within a token budget.

Sources are numbered in retrieval order ``[1]``, ``[2]``...; each carries its doc and chunk id so
an answer's citations can be traced back. Sources are added whole, best first, until the next
one would exceed the budget (at least one is always included, cut to the budget). Token counts
are estimated (about 0.75 words per token for English, as with the GPT and Llama tokenizers), so
keep the budget a little under the model's context window.
"""

from __future__ import annotations

from dataclasses import dataclass

from fluxstream.schemas.api import SearchHit

SYSTEM_PROMPT = (
    "You answer questions using only the numbered sources provided. Cite the sources you use "
    "with their numbers in square brackets, like [1] or [2][3]. If the sources do not contain "
    "the answer, say that you do not know."
)


def estimate_tokens(text: str) -> int:
    return max(1, round(len(text.split()) / 0.75))


@dataclass(frozen=True)
class Prompt:
    messages: list[dict[str, str]]
    sources: list[SearchHit]  # the hits the prompt cites, in citation order
    context_tokens: int


def build_prompt(question: str, hits: list[SearchHit], budget_tokens: int, system: str = SYSTEM_PROMPT) -> Prompt:
    blocks: list[str] = []
    used: list[SearchHit] = []
    total = 0
    for hit in hits:
        header = f"[{len(used) + 1}] doc: {hit.doc_id} | chunk: {hit.chunk_id}" + (
            f" | {hit.title}" if hit.title else "")
        block = f"{header}\n{hit.text.strip()}"
        cost = estimate_tokens(block)
        if total + cost > budget_tokens:
            if used:
                break
            words = block.split()  # the best source alone is too long: keep its beginning
            block = " ".join(words[: max(1, int(budget_tokens * 0.75))])
            cost = estimate_tokens(block)
        blocks.append(block)
        used.append(hit)
        total += cost
    context = "\n\n".join(blocks) if blocks else "(no sources found)"
    user = f"Sources:\n\n{context}\n\nQuestion: {question}"
    return Prompt([{"role": "system", "content": system}, {"role": "user", "content": user}], used, total)
