"""Image-encoder embeddings cached in the object store, so a frozen encoder sees each image once per variant.

Key: ``embeddings/<checkpoint hash>/<variant spec hash>/<encoder precision>/<image content sha256>.pt``: a
different checkpoint, preprocessing, precision or image byte gives a different key, and nothing else can change
an embedding. Values are stored as float16 (half the bytes: a ViT-B embedding, ``(256, 64, 64)``, is 2 MiB), and
the trainer always trains on the stored, rounded values, so a hit and a miss train identically. A bounded
in-memory layer keeps the embeddings between epochs; every lookup is counted.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch

from pixelperfect.storage import ObjectNotFoundError, ObjectStore, join_key


@dataclass
class CachedEmbedding:
    """``features``: ``(C, h, w)`` float16 on the CPU; the sizes are those of ``SamEmbedding``. ``levels``: SAM 2's
    higher-resolution feature levels (``(32, s/4, s/4)``, ``(64, s/8, s/8)``), empty for SAM v1."""

    features: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    levels: tuple[torch.Tensor, ...] = ()

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        torch.save(
            {
                "features": self.features.contiguous(),
                "original_size": list(self.original_size),
                "input_size": list(self.input_size),
                "levels": [t.contiguous() for t in self.levels],
            },
            buf,
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> CachedEmbedding:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        levels = tuple(payload.get("levels", ()))
        return cls(payload["features"], tuple(payload["original_size"]), tuple(payload["input_size"]), levels)  # type: ignore[arg-type]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.features, *self.levels))


@dataclass
class CacheStats:
    memory_hits: int = 0
    store_hits: int = 0
    misses: int = 0
    puts: int = 0

    @property
    def hits(self) -> int:
        return self.memory_hits + self.store_hits

    def as_dict(self) -> dict[str, int]:
        return {
            "hits": self.hits,
            "memory_hits": self.memory_hits,
            "store_hits": self.store_hits,
            "misses": self.misses,
            "puts": self.puts,
        }

    def minus(self, other: CacheStats) -> dict[str, int]:
        return {k: v - other.as_dict()[k] for k, v in self.as_dict().items()}

    def copy(self) -> CacheStats:
        return CacheStats(self.memory_hits, self.store_hits, self.misses, self.puts)


class EmbeddingCache:
    """Embeddings of one (checkpoint, variant, precision) under ``store``; LRU in memory up to ``memory_bytes``."""

    def __init__(
        self, store: ObjectStore, *, checkpoint_hash: str, variant_hash: str, precision: str, memory_bytes: int
    ) -> None:
        if not checkpoint_hash or not variant_hash:
            raise ValueError("embedding cache needs a checkpoint hash and a variant hash")
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
        if memory_bytes < 0:
            raise ValueError(f"memory_bytes must be >= 0, got {memory_bytes}")
        self.store = store
        self.prefix = join_key("embeddings", checkpoint_hash[:32], variant_hash, precision)
        self.memory_bytes = memory_bytes
        self.stats = CacheStats()
        self._memory: OrderedDict[str, CachedEmbedding] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()

    def key(self, sha256: str) -> str:
        return join_key(self.prefix, f"{sha256}.pt")

    def get(self, sha256: str) -> CachedEmbedding | None:
        """The embedding of the image with content hash ``sha256``, or ``None`` (counted as a miss)."""
        with self._lock:
            hit = self._memory.get(sha256)
            if hit is not None:
                self._memory.move_to_end(sha256)
                self.stats.memory_hits += 1
                return hit
        try:
            data = self.store.get(self.key(sha256))
        except ObjectNotFoundError:
            with self._lock:
                self.stats.misses += 1
            return None
        emb = CachedEmbedding.from_bytes(data)
        with self._lock:
            self.stats.store_hits += 1
            self._remember(sha256, emb)
        return emb

    def put(self, sha256: str, embedding: CachedEmbedding) -> CachedEmbedding:
        """Store (as float16) and return the stored form, which is what training must use."""
        levels = tuple(t.detach().to("cpu", torch.float16) for t in embedding.levels)
        stored = CachedEmbedding(embedding.features.detach().to("cpu", torch.float16), *_sizes(embedding), levels)
        self.store.put(self.key(sha256), stored.to_bytes(), "application/octet-stream")
        with self._lock:
            self.stats.puts += 1
            self._remember(sha256, stored)
        return stored

    def _remember(self, sha256: str, emb: CachedEmbedding) -> None:
        if emb.nbytes > self.memory_bytes:
            return
        if sha256 in self._memory:
            self._held -= self._memory.pop(sha256).nbytes
        self._memory[sha256] = emb
        self._held += emb.nbytes
        while self._held > self.memory_bytes:
            _, old = self._memory.popitem(last=False)
            self._held -= old.nbytes


def _sizes(embedding: CachedEmbedding) -> tuple[tuple[int, int], tuple[int, int]]:
    return tuple(embedding.original_size), tuple(embedding.input_size)  # type: ignore[return-value]
