"""A local HTTP server speaking the OpenAI chat-completions wire format, started by tests.

It answers ``POST /v1/chat/completions`` whole or as a server-sent-event stream, and can be told
to fail first (status codes, with Retry-After) so the client's retries are exercised. Replies are
chosen by the system prompt, so HyDE, QuOTE and answers each get a recognisable text.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.local_http import serving

Reply = Callable[[list[dict[str, str]]], str]


@dataclass
class ChatServerState:
    reply: Reply
    failures: list[int] = field(default_factory=list)  # statuses to answer with before succeeding
    requests: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _handler(state: ChatServerState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep test output quiet
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            with state.lock:
                state.requests.append(body)
                failure = state.failures.pop(0) if state.failures else None
            if self.path != "/v1/chat/completions":
                self._json(404, {"error": {"message": "not found"}})
            elif failure is not None:
                self._json(failure, {"error": {"message": f"forced {failure}", "type": "test"}},
                           {"retry-after": "0.1"} if failure == 429 else None)
            elif body.get("stream"):
                self._stream(body, state.reply(body["messages"]))
            else:
                text = state.reply(body["messages"])
                self._json(200, {
                    "id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()),
                    "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": len(text.split()), "total_tokens": 20},
                })

        def _json(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def _stream(self, body: dict[str, Any], text: str) -> None:
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.end_headers()
            words = text.split(" ")
            for i, word in enumerate(words):
                delta = word if i == len(words) - 1 else word + " "
                chunk = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": int(time.time()),
                         "model": body["model"], "choices": [{"index": 0, "delta": {"content": delta},
                                                              "finish_reason": None}]}
                self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                self.wfile.flush()
            self.wfile.write(b"data: [DONE]\n\n")

    return Handler


@contextmanager
def chat_server(reply: Reply) -> Iterator[tuple[str, ChatServerState]]:
    """(base URL ending in /v1, state) of a running server."""
    state = ChatServerState(reply)
    with serving(_handler(state)) as server:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", state
