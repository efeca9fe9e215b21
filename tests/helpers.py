"""Small builders shared by tests."""

from __future__ import annotations

import numpy as np

from memosys.types import CubeConfig, MemCube, MemoryItem

DIM = 16


def unit_vectors(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((n, dim)).astype(np.float32)
    return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)


def make_cube(name: str = "c1", dim: int = DIM) -> MemCube:
    return MemCube(name=name, config=CubeConfig(embedder_id="test-vectors", embedding_dim=dim))


def make_item(cube: MemCube, text: str, **fields: object) -> MemoryItem:
    return MemoryItem(cube_id=cube.id, text=text, **fields)  # type: ignore[arg-type]
