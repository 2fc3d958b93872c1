"""An engine backend that sends generation to an OpenAI-compatible server with multi-LoRA.

For deployments that outgrow one GPU: a vLLM server (`vllm serve MODEL --enable-lora`)
serves the base model and every adapter version side by side, and the same bot, storage
and trainer drive it. `create_engine` picks this backend when `engine.backend = "openai"`.

- Adapter versions are addressed by the local engine's names, `<adapter>__v<N>`; a
  version is registered on the server the first time a request or a promotion needs it,
  through vLLM's `POST /v1/load_lora_adapter` (`{"lora_name", "lora_path"}`), and
  unregistered (`/v1/unload_lora_adapter`) beyond `engine.max_loaded_adapters`, least
  recently used first, never while a request uses it. The server reads the adapter
  files itself: it must see `storage.adapters_dir` (the same disk, or a shared volume
  mounted at `engine.remote_adapters_dir`).
- Answers stream from `POST /v1/chat/completions` (server-sent events); the chat
  template is the server's. Routing, pinning and promotion are `EngineBase`'s, as in
  the local engine; both are a `GenerationEngine` and `submit` returns the same
  `Generation`, so callers cannot tell the backends apart.
- The server has the tokenizer, not the bot: context trimming counts tokens by an
  estimate (about four characters a token), and prompt token counts come from the
  server's usage report.

Tested against a fake server (tests/test_remote_engine.py); it has not been run against
a real vLLM server yet.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import aiohttp

from settings import Config
from settings.logs import register_secret
from storage import BASE_ADAPTER
from trainer.adapters import scaled_copy

from .batching import END, Job
from .engine_base import EngineBase, GenerationEngine
from .generation import (
    AdapterLoadError,
    EngineError,
    GenerationTimeout,
    Message,
)
from .routing import Route, Router

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4  # a rough count for trimming: the tokenizer lives on the server
_VERSION_NAME = re.compile(r"^(?P<adapter>.+)__v(?P<version>\d+)(?:__s(?P<scale>[\dp]+))?$")


class RemoteEngineError(EngineError):
    """The generation server cannot be reached, or answered something unusable."""


def create_engine(config: Config, router: Router | None = None) -> GenerationEngine:
    """The engine `engine.backend` asks for: the local model, or a remote server."""
    if config.engine.backend == "openai":
        return RemoteEngine(config, router)
    from .engine import Engine

    return Engine(config, router)


class RemoteEngine(EngineBase):
    def __init__(self, config: Config, router: Router | None = None,
                 environ: Mapping[str, str] | None = None):
        super().__init__(config, router)
        settings = config.engine
        self.base_url = _checked_url(settings.remote_url)
        self.model_name = settings.remote_base_model or config.model.name
        env = os.environ if environ is None else environ
        self.api_key = env.get(settings.remote_api_key_env, "").strip() or None
        register_secret(self.api_key)
        self._ready = False
        self._session: aiohttp.ClientSession | None = None
        self._tasks: dict[int, asyncio.Task] = {}
        self._load_lock = asyncio.Lock()

    @property
    def ready(self) -> bool:
        """Connected, and the server serves the base model (set by start())."""
        return self._ready

    @property
    def started(self) -> bool:
        return self._session is not None

    @property
    def serves_on(self) -> str:
        return f" on {self.base_url}"

    # --- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        """Connect and check that the server serves the base model; adopt the adapter
        versions it already has (registered by an earlier run of the bot)."""
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        timeout = aiohttp.ClientTimeout(total=None, connect=10,
                                        sock_read=self.config.engine.request_timeout_s)
        self._session = aiohttp.ClientSession(headers=headers, timeout=timeout)
        try:
            served = await self._served_models()
        except BaseException:
            await self.close()
            raise
        if self.model_name not in served:
            await self.close()
            raise RemoteEngineError(
                f"the generation server at {self.base_url} does not serve {self.model_name!r} "
                f"(it serves: {', '.join(served) or 'nothing'}); set engine.remote_base_model "
                f"to the server's --served-model-name")
        for name in served:
            match = _VERSION_NAME.match(name)
            if match:
                with self.slots.lock:
                    scale = float(match["scale"].replace("p", ".")) if match["scale"] else 1.0
                    self.slots.loaded[name] = Route(match["adapter"], int(match["version"]),
                                                    scale=scale)
        self._ready = True
        log.info("generating on %s (model %s, %d adapter versions already registered)",
                 self.base_url, self.model_name, len(self.slots.loaded))

    async def close(self) -> None:
        self._ready = False
        for task in list(self._tasks.values()):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _served_models(self) -> list[str]:
        try:
            async with self._session.get(f"{self.base_url}/models") as response:
                if response.status in (401, 403):
                    raise RemoteEngineError(
                        f"the generation server at {self.base_url} refused the API key "
                        f"({response.status}): set {self.config.engine.remote_api_key_env} "
                        f"to its --api-key")
                if response.status != 200:
                    raise RemoteEngineError(f"GET {self.base_url}/models answered "
                                            f"{response.status}: {await _excerpt(response)}")
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise RemoteEngineError(
                f"the generation server at {self.base_url} cannot be reached ({exc}); start it "
                f"(docs/operations.md, 'The vLLM backend') or fix engine.remote_url") from exc
        except ValueError as exc:
            raise RemoteEngineError(f"GET {self.base_url}/models did not answer JSON: is "
                                    f"engine.remote_url an OpenAI-compatible /v1 URL?") from exc
        return [str(model.get("id")) for model in body.get("data", [])
                if isinstance(model, dict)]

    # --- public API ---------------------------------------------------------------------
    async def preload(self, route: Route) -> None:
        """Register an adapter version on the server ahead of the requests that use it."""
        await self._ensure_loaded(route)

    def count_tokens(self, messages: Sequence[Message]) -> int:
        """An estimate (about four characters a token, a few per message for the template)."""
        return sum(4 + len(m.get("content", "")) // CHARS_PER_TOKEN for m in messages)

    async def count_prompt_tokens(self, messages: Sequence[Message], route: Route) -> None:
        """None: the server renders and counts the prompt (its count comes with each
        answer, as `Generation.prompt_tokens`)."""
        return None

    def server_path(self, path: Path) -> str:
        """Where the server finds an adapter directory of `storage.adapters_dir`."""
        mounted = self.config.engine.remote_adapters_dir
        if not mounted:
            return str(path)
        relative = path.resolve().relative_to(self.config.adapters_dir.resolve())
        return str(PurePosixPath(mounted) / relative.as_posix())

    # --- requests -----------------------------------------------------------------------
    def _dispatch(self, job: Job) -> None:
        self._tasks[job.id] = asyncio.create_task(self._run(job), name=f"remote-job-{job.id}")

    def _release(self, job: Job) -> None:
        super()._release(job)
        task = self._tasks.pop(job.id, None)
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel()  # its reader went away: stop reading the server's stream

    async def _run(self, job: Job) -> None:
        try:
            async with asyncio.timeout(max(job.deadline - time.monotonic(), 0)):
                await self._ensure_loaded(job.route)
                await self._stream(job)
            job.push(END)
        except TimeoutError:
            job.push(GenerationTimeout(f"the answer took longer than engine.request_timeout_s "
                                       f"and was cut off after {job.token_count} tokens"))
        except EngineError as exc:
            log.error("%s", exc)
            job.push(exc)
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            log.error("the generation server failed a request: %s", exc)
            job.push(RemoteEngineError(f"the generation server at {self.base_url} failed: "
                                       f"{exc}"))
        except asyncio.CancelledError:
            job.push(EngineError("the request was cancelled (the engine is closing)"))
            raise

    def _body(self, job: Job) -> dict[str, Any]:
        sampling = job.request.sampling
        body: dict[str, Any] = {
            "model": job.route.key if job.route.key != BASE_ADAPTER else self.model_name,
            "messages": self.prompt_messages(job.request.messages, job.route),
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": sampling.max_new_tokens, "temperature": sampling.temperature,
        }
        if sampling.temperature > 0:
            body["top_p"] = sampling.top_p
        if sampling.repetition_penalty != 1.0:
            body["repetition_penalty"] = sampling.repetition_penalty  # a vLLM extension
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        return body

    async def _stream(self, job: Job) -> None:
        url = f"{self.base_url}/chat/completions"
        async with self._session.post(url, json=self._body(job)) as response:
            if response.status != 200:
                raise RemoteEngineError(f"POST {url} answered {response.status}: "
                                        f"{await _excerpt(response)}")
            async for data in sse_data(response.content):
                if job.abandoned.is_set() or data == "[DONE]":
                    return
                chunk = json.loads(data)
                if chunk.get("error"):
                    raise RemoteEngineError(f"the generation server stopped the answer: "
                                            f"{chunk['error']}")
                for choice in chunk.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        job.token_count += 1  # one streamed chunk is one token in vLLM
                        job.push(text)
                usage = chunk.get("usage")
                if usage:
                    job.token_count = usage.get("completion_tokens", job.token_count)
                    job.prompt_tokens = usage.get("prompt_tokens")

    # --- adapter versions on the server -------------------------------------------------
    async def _ensure_loaded(self, route: Route) -> None:
        if route.key == BASE_ADAPTER:
            return
        async with self._load_lock:  # one registration at a time: no duplicate loads
            if route.key in self.slots.loaded:
                self.slots.touch(route.key)
            else:
                await self._load(route)
            for victim in self.slots.evictable(keep={route.key}):
                await self._unload(victim)

    async def _load(self, route: Route) -> None:
        started = time.perf_counter()
        url = f"{self.base_url}/load_lora_adapter"
        # the server has no per-adapter scale: a version served below 1 is registered from
        # a scaled copy of its directory (written once beside it; its own files stay final)
        path = route.path if route.scale == 1.0 else await asyncio.to_thread(
            scaled_copy, route.path, route.scale)
        body = {"lora_name": route.key, "lora_path": self.server_path(path)}
        try:
            async with self._session.post(url, json=body) as response:
                text = await _excerpt(response)
                already = response.status == 400 and "already" in text.lower()
                if response.status != 200 and not already:
                    raise AdapterLoadError(
                        f"the generation server refused adapter {route.adapter} "
                        f"v{route.version} ({response.status}: {text}); it needs "
                        f"--enable-lora, VLLM_ALLOW_RUNTIME_LORA_UPDATING=True and a "
                        f"--max-lora-rank at least the adapter's rank, and must see "
                        f"{body['lora_path']}; roll back with /adapter rollback {route.adapter}")
        except (aiohttp.ClientError, OSError) as exc:
            raise AdapterLoadError(f"adapter {route.adapter} v{route.version} could not be "
                                   f"registered on {self.base_url}: {exc}") from exc
        with self.slots.lock:
            self.slots.loaded[route.key] = route
        log.info("registered adapter %s v%s on the generation server in %.0f ms",
                 route.adapter, route.version, (time.perf_counter() - started) * 1000)

    async def _unload(self, key: str) -> None:
        try:
            async with self._session.post(f"{self.base_url}/unload_lora_adapter",
                                          json={"lora_name": key}) as response:
                if response.status != 200:
                    log.warning("the generation server did not unload %s (%d: %s)", key,
                                response.status, await _excerpt(response))
        except (aiohttp.ClientError, OSError) as exc:
            log.warning("could not unload %s from the generation server: %s", key, exc)
        with self.slots.lock:
            self.slots.loaded.pop(key, None)
        log.info("unregistered adapter version %s (least recently used)", key)


async def sse_data(stream: aiohttp.StreamReader) -> AsyncIterator[str]:
    """The `data:` payloads of a server-sent event stream, one per event."""
    lines: list[str] = []
    async for raw in stream:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if lines:
                yield "\n".join(lines)
                lines = []
        elif line.startswith("data:"):
            value = line[5:]
            lines.append(value[1:] if value.startswith(" ") else value)
    if lines:
        yield "\n".join(lines)


async def _excerpt(response: aiohttp.ClientResponse) -> str:
    text = await response.text(errors="replace")
    return " ".join(text.split())[:300] or "(empty answer)"


def _checked_url(url: str) -> str:
    if not re.match(r"^https?://[^/\s]+", url):
        raise RemoteEngineError(f"engine.remote_url = {url!r} is not an http(s) URL: set it to "
                                f"the server's base URL with /v1, e.g. http://127.0.0.1:8000/v1")
    return url.rstrip("/")
