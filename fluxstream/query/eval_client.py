"""The run `fluxstream eval` scores: judged queries sent to a running query service's batch endpoint.

The metrics themselves are query/evaluation.py's; this only asks the service (HTTP, uncached, so a
cached answer from before a change cannot stand in for the index as it is).
"""

from __future__ import annotations

from collections.abc import Mapping

import httpx

BATCH_LIMIT = 100  # searches the batch endpoint takes in one request


class BatchSearchFailed(Exception):
    """The service answered a batch with an error status (``str``: the status and the start of the body)."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"{status} {text[:500]}")
        self.status = status


def ranked_run(url: str, queries: Mapping[str, str], *, collection: str, mode: str, depth: int,
               api_key: str | None = None) -> dict[str, list[str]]:
    """Doc ids per query id, best first, ``depth`` of them, from ``url``'s ``/v1/search/batch``."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    run: dict[str, list[str]] = {}
    items = list(queries.items())
    for i in range(0, len(items), BATCH_LIMIT):
        batch = items[i:i + BATCH_LIMIT]
        body = {"requests": [{"query": text, "collection": collection, "k": depth, "mode": mode, "cache": False}
                             for _, text in batch]}
        resp = httpx.post(f"{url}/v1/search/batch", json=body, headers=headers, timeout=300)
        if resp.status_code != 200:
            raise BatchSearchFailed(resp.status_code, resp.text)
        for (qid, _), response in zip(batch, resp.json()["responses"], strict=True):
            run[qid] = [hit["doc_id"] for hit in response["hits"]]
    return run
