"""Random-hyperplane LSH: the semantic lookup's buckets (``keys.bucket_keys``)."""

from __future__ import annotations

import numpy as np


class LSH:
    """Random-hyperplane signatures: vectors within a small angle share a band with high probability."""

    def __init__(self, dimensions: int, bands: int, bits: int, seed: int = 20261122) -> None:
        self.bands, self.bits = bands, bits
        self.planes = np.random.default_rng(seed).standard_normal((bands * bits, dimensions)).astype(np.float32)
        self.weights = 1 << np.arange(bits, dtype=np.int64)

    def signatures(self, vector: np.ndarray) -> list[int]:
        bits = (self.planes @ vector > 0).reshape(self.bands, self.bits).astype(np.int64)
        return [int(v) for v in bits @ self.weights]
