"""A local Schema Registry speaking the documented Confluent REST subset, started by tests.

No Schema Registry is installable here (Karapace is not on PyPI, Confluent's is a Java service), so
this serves what Kafka Connect's Avro converter and fluxstream use:

* ``POST /subjects/{s}/versions`` registers a schema (the same schema text keeps its id everywhere),
  answering ``{"id": N}``; ``POST /subjects/{s}`` looks one up (40401/40403 when unknown);
* ``GET /schemas/ids/{id}`` (404 ``error_code`` 40403 when unknown), ``GET /subjects``,
  ``GET /subjects/{s}/versions``, ``GET /subjects/{s}/versions/{v|latest}``;
* the compatibility endpoints answer ``{"is_compatible": true}``, ``/config`` BACKWARD.

Switches for error tests (``RegistryState``): ``failures`` (statuses the next schema fetches by id
answer, e.g. 503; a converter registering schemas meanwhile is not disturbed),
``delay`` (seconds before answering: timeouts), ``credentials`` (basic auth required, else 401),
``forget`` (ids answered 404 as if deleted). ``requests`` records each (method, path).
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import unquote, urlsplit

from tests.local_http import serving

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


@dataclass
class RegistryState:
    schemas: dict[int, dict[str, Any]] = field(default_factory=dict)  # id -> {"schema", "schemaType"?, ...}
    subjects: dict[str, list[int]] = field(default_factory=dict)  # subject -> ids by version (1-based)
    failures: list[int] = field(default_factory=list)
    delay: float = 0.0
    credentials: tuple[str, str] | None = None
    forget: set[int] = field(default_factory=set)
    requests: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def register(self, subject: str, schema: str, schema_type: str = "AVRO") -> int:
        """The id of ``schema`` under ``subject``, registering it as the subject's next version if new."""
        with self.lock:
            key = _canonical(schema)
            found = next((i for i, s in self.schemas.items()
                          if _canonical(s["schema"]) == key and s.get("schemaType", "AVRO") == schema_type), None)
            if found is None:
                found = max(self.schemas, default=0) + 1
                entry: dict[str, Any] = {"schema": schema}
                if schema_type != "AVRO":
                    entry["schemaType"] = schema_type
                self.schemas[found] = entry
            versions = self.subjects.setdefault(subject, [])
            if found not in versions:
                versions.append(found)
            return found

    def dump(self) -> dict[str, Any]:
        """Every schema and subject (golden fixtures keep the schemas their records name)."""
        with self.lock:
            return {"schemas": {str(i): s for i, s in sorted(self.schemas.items())},
                    "subjects": dict(sorted(self.subjects.items()))}

    @classmethod
    def load(cls, dumped: dict[str, Any]) -> RegistryState:
        return cls(schemas={int(i): s for i, s in dumped["schemas"].items()},
                   subjects={k: list(v) for k, v in dumped["subjects"].items()})


def _canonical(schema: str) -> Any:
    try:
        return json.dumps(json.loads(schema), sort_keys=True)
    except ValueError:
        return schema


def _handler(state: RegistryState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _answer(self, method: str) -> None:
            path = unquote(urlsplit(self.path).path).rstrip("/")
            length = int(self.headers.get("content-length") or 0)
            body = json.loads(self.rfile.read(length)) if length else {}
            fetch = method == "GET" and path.startswith("/schemas/ids/")
            with state.lock:
                state.requests.append((method, path))
                failure = state.failures.pop(0) if state.failures and fetch else None
                delay = state.delay
            if delay:
                time.sleep(delay)
            if state.credentials is not None and not self._authorised():
                return self._json(401, {"error_code": 401, "message": "Unauthorized"})
            if failure is not None:
                return self._json(failure, {"error_code": failure, "message": f"forced {failure}"})
            parts = path.strip("/").split("/")
            try:
                status, payload = self._route(method, parts, body)
            except LookupError as exc:
                status, payload = 404, {"error_code": int(str(exc.args[0])), "message": "not found"}
            self._json(status, payload)

        def _route(self, method: str, parts: list[str], body: dict[str, Any]) -> tuple[int, Any]:
            match (method, parts):
                case ("GET", ["schemas", "ids", schema_id]):
                    sid = int(schema_id)
                    if sid not in state.schemas or sid in state.forget:
                        raise LookupError(40403)
                    return 200, state.schemas[sid]
                case ("GET", ["subjects"]):
                    return 200, sorted(state.subjects)
                case ("GET", ["subjects", subject, "versions"]):
                    return 200, list(range(1, len(self._subject(subject)) + 1))
                case ("GET", ["subjects", subject, "versions", version]):
                    ids = self._subject(subject)
                    number = len(ids) if version == "latest" else int(version)
                    if not 1 <= number <= len(ids):
                        raise LookupError(40402)
                    return 200, self._version(subject, number, ids[number - 1])
                case ("POST", ["subjects", subject, "versions"]):
                    return 200, {"id": state.register(subject, body["schema"], body.get("schemaType", "AVRO"))}
                case ("POST", ["subjects", subject]):
                    ids = self._subject(subject)
                    key = _canonical(body["schema"])
                    for number, sid in enumerate(ids, 1):
                        if _canonical(state.schemas[sid]["schema"]) == key:
                            return 200, self._version(subject, number, sid)
                    raise LookupError(40403)
                case ("POST", ["compatibility", "subjects", _, "versions", *_]):
                    return 200, {"is_compatible": True}
                case ("GET", ["config", *_]):
                    return 200, {"compatibilityLevel": "BACKWARD"}
                case ("PUT", ["config", *_]):
                    return 200, {"compatibility": body.get("compatibility", "BACKWARD")}
            raise LookupError(404)

        def _subject(self, subject: str) -> list[int]:
            if subject not in state.subjects:
                raise LookupError(40401)
            return state.subjects[subject]

        @staticmethod
        def _version(subject: str, number: int, sid: int) -> dict[str, Any]:
            return {"subject": subject, "version": number, "id": sid, **state.schemas[sid]}

        def _authorised(self) -> bool:
            header = self.headers.get("authorization") or ""
            if not header.startswith("Basic "):
                return False
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            return (user, password) == state.credentials

        def _json(self, status: int, payload: Any) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", CONTENT_TYPE)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._answer("GET")

        def do_POST(self) -> None:
            self._answer("POST")

        def do_PUT(self) -> None:
            self._answer("PUT")

    return Handler


@contextmanager
def schema_registry(state: RegistryState | None = None) -> Iterator[tuple[str, RegistryState]]:
    """(base URL, state) of a running registry."""
    state = state or RegistryState()
    with serving(_handler(state)) as server:
        yield f"http://127.0.0.1:{server.server_address[1]}", state


if __name__ == "__main__":  # a registry for a manual run: python -m tests.schema_registry_server
    import sys

    with schema_registry() as (url, _):
        print(url, flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            sys.exit(0)
