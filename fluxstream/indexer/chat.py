"""Chat completions from any OpenAI-compatible server (OpenAI, Azure OpenAI, vLLM, Ollama...).

Used by ``/v1/answer`` and the query transforms, and by the enrichment stage (chunk tags): a model
provider like the embedders, so it sits in the indexer layer both can import. Whole answers retry
through transient failures (``fluxstream.core.provider_calls``); a stream retries only until its
first token arrives, since tokens already sent to a client cannot be taken back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import openai

from fluxstream.core.provider_calls import call_with_retries, provider_policy
from fluxstream.core.retry import RetryPolicy
from fluxstream.core.settings import Settings

Message = dict[str, str]


class ChatError(Exception):
    def __init__(self, message: str, *, permanent: bool, status_code: int | None = None) -> None:
        super().__init__(message)
        self.permanent, self.status_code = permanent, status_code


@dataclass(frozen=True)
class Completion:
    text: str
    model: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class ChatModel:
    def __init__(self, client: Any, model: str, *, policy: RetryPolicy, max_tokens: int,
                 temperature: float = 0.0) -> None:
        self.client, self.model, self.policy = client, model, policy
        self.max_tokens, self.temperature = max_tokens, temperature

    @classmethod
    def from_settings(cls, settings: Settings) -> ChatModel | None:
        """None when no chat model is configured (answers then return the prompt and sources)."""
        if not settings.chat_model:
            return None
        common: dict[str, Any] = {"api_key": settings.chat_api_key or "unused", "timeout": settings.chat_timeout,
                                  "max_retries": 0}
        if settings.chat_provider == "azure":
            client: Any = openai.AsyncAzureOpenAI(azure_endpoint=settings.chat_base_url,
                                                 api_version=settings.azure_api_version, **common)
        else:
            client = openai.AsyncOpenAI(base_url=settings.chat_base_url or None, **common)
        return cls(client, settings.chat_model, policy=provider_policy(settings.chat_max_retries),
                   max_tokens=settings.answer_max_tokens)

    def _error(self, message: str, permanent: bool, status: int | None) -> ChatError:
        return ChatError(f"chat model {self.model}: {message}", permanent=permanent, status_code=status)

    async def complete(self, messages: list[Message], *, max_tokens: int | None = None) -> Completion:
        response = await call_with_retries(
            lambda: self.client.chat.completions.create(
                model=self.model, messages=messages, max_tokens=max_tokens or self.max_tokens,
                temperature=self.temperature),
            self.policy, self._error)
        try:
            text = response.choices[0].message.content or ""
        except (AttributeError, IndexError) as exc:
            raise self._error(f"malformed response: {exc}", True, None) from exc
        usage = getattr(response, "usage", None)
        return Completion(text, getattr(response, "model", self.model) or self.model,
                          getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None))

    async def stream(self, messages: list[Message]) -> AsyncIterator[str]:
        """Text deltas as they arrive."""
        chunks = await call_with_retries(
            lambda: self.client.chat.completions.create(
                model=self.model, messages=messages, max_tokens=self.max_tokens, temperature=self.temperature,
                stream=True),
            self.policy, self._error)
        try:
            async for chunk in chunks:
                for choice in getattr(chunk, "choices", None) or []:
                    delta = getattr(choice.delta, "content", None)
                    if delta:
                        yield delta
        except (openai.APIError, openai.APIConnectionError) as exc:
            raise self._error(f"stream broke off: {exc}", False, None) from exc
