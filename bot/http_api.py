"""The bot's HTTP server: an API to the tuned adapters, a health check and metrics.

Off by default (`[http] enabled`). It runs in the bot process on the same event loop
and with the same engine as Discord or the console, so other tools reach every adapter
version the bot serves, batched with the chat's requests:

- `POST /v1/generate`: a `prompt` or chat `messages`, an optional `adapter` (and
  `version`), sampling settings; JSON back, or server-sent events with `"stream": true`.
  API answers are not recorded as turns: there is nobody to vote on them.
- `GET /healthz` (no token): is the engine ready, does the database answer.
- `GET /metrics`: the Prometheus text format: answers (every source, through
  `MeteredEngine`), their latency, requests in flight, votes, review pairs, training runs.

It listens on 127.0.0.1 unless `http.host` says otherwise. Clients send a bearer token
read from the environment (`BOT_HTTP_TOKEN`), compared in constant time and registered
as a secret, so no log line can show it. Other parts of the bot (the web review page)
attach their own sub-applications with `mount()` before `start()`; they authenticate
their own requests.
"""

from __future__ import annotations

import asyncio
import copy
import hmac
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from storage import UnknownAdapterError, UnknownVersionError

from .config import ENV_PREFIX, HTTP_TOKEN_ENV, SECTIONS, Config, EngineConfig, HttpConfig
from .config_checks import did_you_mean
from .generation import (
    EngineError,
    GenerationRequest,
    GenerationTimeout,
    Message,
    Sampling,
    trim_messages,
)
from .logs import register_secret
from .routing import Route, Router

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
MIN_TOKEN_CHARS = 16
API_CHANNEL_ID = -1  # API requests name their adapter; this id is never routed
ROLES = ("system", "user", "assistant")
MAX_STOP_STRINGS = 4
# the classic text format that generate_latest() writes, which every Prometheus reads
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS_S = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160)


class HttpConfigError(ValueError):
    """The HTTP server cannot start as configured; the message says what to change."""


class BadRequest(ValueError):
    """A request body field is wrong; `field` names it for the client."""

    def __init__(self, field: str, problem: str):
        self.field = field
        super().__init__(f"{field}: {problem}")


# --- the token --------------------------------------------------------------------------

def resolve_token(settings: HttpConfig, environ: Mapping[str, str] | None = None) -> str | None:
    """The bearer token from the environment, or None where running without one is allowed.

    Raises HttpConfigError when the server must not start: no token (unless on a
    loopback host with `require_token = false`), a token too short to be a secret, or a
    variable name that the settings loader would read as a setting.
    """
    name = settings.token_env
    section = name[len(ENV_PREFIX):].lower().partition("_")[0]
    if name != HTTP_TOKEN_ENV and name.startswith(ENV_PREFIX) and section in SECTIONS:
        raise HttpConfigError(f"http.token_env = {name!r} would be read as a setting "
                              f"({ENV_PREFIX}<SECTION>_<KEY>); use {HTTP_TOKEN_ENV} or a name "
                              f"that does not start with {ENV_PREFIX}{section.upper()}_")
    env = os.environ if environ is None else environ
    token = env.get(name, "").strip() or None
    make_one = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise HttpConfigError(f"{name} is {len(token)} characters long; use at least "
                              f"{MIN_TOKEN_CHARS}, e.g. export {name}=$({make_one})")
    if token is None and settings.require_token:
        raise HttpConfigError(f"[http] enabled = true but {name} is not set: export "
                              f"{name}=$({make_one}), or, on a loopback host only, set "
                              f"http.require_token = false")
    if token is None and settings.host not in LOOPBACK_HOSTS:
        raise HttpConfigError(f"http.require_token = false is allowed only on a loopback host "
                              f"({', '.join(LOOPBACK_HOSTS)}), not {settings.host!r}: set "
                              f"{name} or bind to 127.0.0.1")
    return token


# --- request bodies ---------------------------------------------------------------------

@dataclass(frozen=True)
class ApiCall:
    messages: list[Message]
    adapter: str | None
    version: int | None
    sampling: Sampling
    stream: bool


GENERATE_FIELDS = ("prompt", "messages", "adapter", "version", "max_new_tokens",
                   "temperature", "top_p", "stop", "stream")


def parse_generate(body: Any, defaults: EngineConfig) -> ApiCall:
    """A /v1/generate body checked field by field; raises BadRequest naming the field."""
    if not isinstance(body, dict):
        raise BadRequest("body", 'expected a JSON object such as {"prompt": "Hello"}')
    for key in body:
        if key not in GENERATE_FIELDS:
            raise BadRequest(key, f"unknown field{did_you_mean(key, GENERATE_FIELDS)}")
    if ("prompt" in body) == ("messages" in body):
        raise BadRequest("prompt", "send exactly one of 'prompt' (a string) or 'messages' "
                         "(a list of {role, content})")
    if "prompt" in body:
        prompt = body["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise BadRequest("prompt", "expected a non-empty string")
        messages = [{"role": "user", "content": prompt}]
    else:
        messages = _messages(body["messages"])
    adapter = _optional(body, "adapter", str)
    version = _optional(body, "version", int)
    if version is not None and (adapter is None or version < 1):
        raise BadRequest("version", "a version number (1 or more) needs an 'adapter'")
    overrides: dict[str, Any] = {}
    for key, low, high in (("max_new_tokens", 1, 8192), ("temperature", 0.0, 2.0),
                           ("top_p", 0.01, 1.0)):
        value = _optional(body, key, int if key == "max_new_tokens" else float)
        if value is not None:
            if not low <= value <= high:
                raise BadRequest(key, f"out of range: allowed {low} to {high}")
            overrides[key] = value
    stop = body.get("stop", [])
    if (not isinstance(stop, list) or len(stop) > MAX_STOP_STRINGS
            or not all(isinstance(s, str) and s for s in stop)):
        raise BadRequest("stop", f"expected a list of up to {MAX_STOP_STRINGS} non-empty "
                         f"strings")
    overrides["stop"] = tuple(stop)
    stream = _optional(body, "stream", bool) or False
    return ApiCall(messages, adapter, version, Sampling.from_config(defaults, **overrides),
                   stream)


def _messages(value: Any) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise BadRequest("messages", "expected a non-empty list of {\"role\", \"content\"}")
    messages = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict) or set(message) - {"role", "content"}:
            raise BadRequest(where, "expected an object with only 'role' and 'content'")
        if message.get("role") not in ROLES:
            raise BadRequest(f"{where}.role", f"expected one of {', '.join(ROLES)}")
        if not isinstance(message.get("content"), str):
            raise BadRequest(f"{where}.content", "expected a string")
        messages.append({"role": message["role"], "content": message["content"]})
    if messages[-1]["role"] != "user":
        raise BadRequest(f"messages[{len(messages) - 1}].role",
                         "the last message must be the user's")
    return messages


def _optional(body: dict[str, Any], key: str, kind: type) -> Any:
    value = body.get(key)
    if value is None:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        expected = {str: "a string", int: "an integer", float: "a number",
                    bool: "true or false"}[kind]
        raise BadRequest(key, f"expected {expected}")
    return value


# --- metrics ----------------------------------------------------------------------------

class ServiceMetrics:
    """The bot's Prometheus metrics, in a registry of their own (one per server)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.answers = Counter("bot_answers", "Answers the engine finished (Discord, console "
                               "and API), by adapter and outcome.", ["adapter", "outcome"],
                               registry=r)
        self.answer_tokens = Counter("bot_answer_tokens", "Tokens generated in answers.",
                                     ["adapter"], registry=r)
        self.latency = Histogram("bot_answer_latency_seconds", "Time from a request's "
                                 "submission to its last token (answers that ended well).",
                                 buckets=LATENCY_BUCKETS_S, registry=r)
        self.in_flight = Gauge("bot_engine_requests_in_flight", "Requests submitted to the "
                               "engine and not finished: queued or generating.", registry=r)
        self.http_requests = Counter("bot_http_requests", "HTTP requests served, by route "
                                     "and status code.", ["route", "status"], registry=r)
        self.adapters_loaded = Gauge("bot_engine_adapters_loaded", "Adapter versions loaded "
                                     "in the engine.", registry=r)
        self.stored = Gauge("bot_stored", "Rows in the database: answers, votes, adapters, "
                            "training runs (all time).", ["kind"], registry=r)
        self.review_pairs = Gauge("bot_review_pairs", "Review candidates by status.",
                                  ["status"], registry=r)
        self.training_running = Gauge("bot_training_running", "1 while a training run holds "
                                      "the host's training lock.", registry=r)
        self.database_up = Gauge("bot_database_up", "1 when the last scrape could read the "
                                 "database.", registry=r)

    async def refresh(self, engine: Any, db: Any) -> None:
        """Read the numbers that live in the database and the engine (at scrape time)."""
        self.adapters_loaded.set(len(engine.loaded_adapters()))
        try:
            stats = await db.stats()
            lock = await db.training_lock()
        except Exception as exc:  # a metrics scrape must still answer
            log.warning("metrics: the database could not be read (%s)", exc)
            self.database_up.set(0)
            return
        self.database_up.set(1)
        for kind in ("answers", "votes", "adapters", "runs"):
            self.stored.labels(kind).set(stats[kind])
        for status in ("pending", "approved", "rejected"):
            self.review_pairs.labels(status).set(stats[status])
        self.training_running.set(0 if lock is None else 1)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class MeteredGeneration:
    """A submitted request whose end is counted: passes everything else to the original."""

    def __init__(self, inner: Any, metrics: ServiceMetrics):
        self._inner = inner
        self._metrics = metrics
        self._ended = False
        self.route: Route = inner.route
        metrics.in_flight.inc()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    @property
    def text(self) -> str:
        return self._inner.text

    @property
    def latency_ms(self) -> float | None:
        return self._inner.latency_ms

    @property
    def token_count(self) -> int:
        return self._inner.token_count

    def __aiter__(self) -> AsyncIterator[str]:
        return self._stream()

    async def _stream(self) -> AsyncIterator[str]:
        outcome = "cancelled"
        try:
            async for chunk in self._inner:
                yield chunk
            outcome = "ok"
        except GenerationTimeout:
            outcome = "timeout"
            raise
        except Exception:
            outcome = "error"
            raise
        finally:
            self._inner.cancel()  # idempotent; frees the slot at once if the reader left
            self._end(outcome)

    def cancel(self) -> None:
        self._inner.cancel()
        self._end("cancelled")

    async def complete(self) -> str:
        async for _ in self:
            pass
        return self.text.strip()

    def _end(self, outcome: str) -> None:
        if self._ended:
            return
        self._ended = True
        adapter = self.route.adapter or "base"
        self._metrics.in_flight.dec()
        self._metrics.answers.labels(adapter, outcome).inc()
        self._metrics.answer_tokens.labels(adapter).inc(self.token_count)
        if outcome == "ok" and self.latency_ms is not None:
            self._metrics.latency.observe(self.latency_ms / 1000)


class MeteredEngine:
    """An engine (local or remote) whose answers are counted and timed.

    Only `submit`/`generate` are its own; every other attribute is the engine's, so it
    stands in for the engine wherever the bot passes one.
    """

    def __init__(self, engine: Any, metrics: ServiceMetrics):
        self.inner = engine
        self.metrics = metrics

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def submit(self, request: GenerationRequest) -> MeteredGeneration:
        return MeteredGeneration(await self.inner.submit(request), self.metrics)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[str]:
        generation = await self.submit(request)
        async for chunk in generation:
            yield chunk


def engine_ready(engine: Any) -> bool:
    """Whether the engine can answer now (a remote engine says so itself)."""
    ready = getattr(engine, "ready", None)
    if ready is not None:
        return bool(ready)
    inner = getattr(engine, "inner", engine)
    # the local Engine has no such flag: its model is loaded and its worker thread lives
    thread = getattr(inner, "_thread", None)
    return getattr(inner, "model", None) is not None and thread is not None \
        and thread.is_alive()


# --- the server -------------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpServer:
    """The aiohttp server of the bot process: start() after the engine, close() before it."""

    def __init__(self, config: Config, engine: Any, db: Any, router: Router | None, *,
                 token: str | None, metrics: ServiceMetrics | None = None):
        self.config = config
        self.settings = config.http
        self.metrics = metrics or ServiceMetrics()
        self.engine = engine if isinstance(engine, MeteredEngine) \
            else MeteredEngine(engine, self.metrics)
        self.db = db
        self.router = router
        self.token = token
        register_secret(token)
        self._tokenizer: Any = None
        self.app = web.Application(client_max_size=self.settings.max_body_bytes,
                                   middlewares=[self._count_requests])
        self.app.router.add_post("/v1/generate", self.generate)
        self.app.router.add_get("/healthz", self.healthz)
        if self.settings.metrics:
            self.app.router.add_get("/metrics", self.metrics_text)
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    @classmethod
    def from_config(cls, config: Config, engine: Any, db: Any, router: Router | None,
                    environ: Mapping[str, str] | None = None) -> HttpServer:
        """The server as `[http]` describes it; raises HttpConfigError before anything loads."""
        return cls(config, engine, db, router, token=resolve_token(config.http, environ))

    def mount(self, prefix: str, subapp: web.Application) -> None:
        """Serve another application under `prefix` (e.g. "/review"); only before start()."""
        if self._runner is not None:
            raise RuntimeError("mount() must be called before the HTTP server starts")
        self.app.add_subapp(prefix, subapp)

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self.settings.host, self.settings.port)
        try:
            await self._site.start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            raise HttpConfigError(f"the HTTP server cannot listen on {self.settings.host}:"
                                  f"{self.settings.port} ({exc.strerror or exc}); another "
                                  f"program may use that port: change http.port") from exc
        log.info("HTTP API on http://%s:%d (%s)", self.settings.host, self.port,
                 "bearer token required" if self.token else "no token: loopback only")

    @property
    def port(self) -> int:
        """The port actually bound (http.port = 0 picks a free one)."""
        if self._runner is None or not self._runner.addresses:
            raise RuntimeError("the HTTP server is not started")
        return self._runner.addresses[0][1]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- plumbing -----------------------------------------------------------------------
    @web.middleware
    async def _count_requests(self, request: web.Request, handler: Handler) -> Any:
        route = request.match_info.route.resource
        name = route.canonical if route is not None else "unmatched"
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            self.metrics.http_requests.labels(name, str(status)).inc()

    def _authorize(self, request: web.Request) -> None:
        if self.token is None:
            return
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(),
                                                              self.token.encode()):
            return
        log.warning("refused %s %s from %s: missing or wrong bearer token", request.method,
                    request.path, request.remote)
        raise web.HTTPUnauthorized(
            text=json.dumps({"error": f"missing or wrong bearer token: send the header "
                                      f"'Authorization: Bearer <token>' with the token in "
                                      f"{self.settings.token_env}"}),
            content_type="application/json",
            headers={"WWW-Authenticate": 'Bearer realm="channel-tuned-bot"'})

    # --- endpoints ----------------------------------------------------------------------
    async def healthz(self, request: web.Request) -> web.Response:
        ready = engine_ready(self.engine)
        body: dict[str, Any] = {"engine": "ready" if ready else "not ready"}
        try:
            body["schema_version"] = await asyncio.wait_for(self.db.schema_version(), 5)
            body["database"] = "ok"
        except Exception as exc:  # the answer is the diagnosis
            body["database"] = f"unavailable: {exc}"
        healthy = ready and body["database"] == "ok"
        body["status"] = "ok" if healthy else "unavailable"
        return web.json_response(body, status=200 if healthy else 503)

    async def metrics_text(self, request: web.Request) -> web.Response:
        if self.settings.metrics_require_token:
            self._authorize(request)
        await self.metrics.refresh(self.engine, self.db)
        return web.Response(body=self.metrics.exposition(),
                            headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def generate(self, request: web.Request) -> web.StreamResponse:
        self._authorize(request)
        try:
            body = await request.json()
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"body: larger than http.max_body_bytes "
                               f"({self.settings.max_body_bytes} bytes)", field="body")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return _error(400, f"body: not valid JSON ({exc})", field="body")
        try:
            call = parse_generate(body, self.config.engine)
        except BadRequest as exc:
            return _error(400, str(exc), field=exc.field)
        try:
            route = await self._route(call)
        except UnknownAdapterError as exc:
            return _error(404, str(exc), known_adapters=exc.known)
        except UnknownVersionError as exc:
            return _error(404, str(exc))
        if not engine_ready(self.engine):
            return _error(503, "the engine is not ready yet (the model is loading); retry")
        generation_request = GenerationRequest(channel_id=API_CHANNEL_ID,
                                               messages=call.messages,
                                               sampling=call.sampling, route=route)
        generation = await self.engine.submit(generation_request)
        if call.stream:
            return await self._stream(request, generation, call, route)
        try:
            await generation.complete()
        except GenerationTimeout as exc:
            return _error(504, str(exc))
        except EngineError as exc:
            return _error(500, str(exc))
        return web.json_response(await self._result(generation, call, route))

    async def _route(self, call: ApiCall) -> Route:
        if call.adapter is None:
            return Route(system_prompt=self.config.model.system_prompt)
        if self.router is None:
            raise UnknownAdapterError(call.adapter, [])
        return await self.router.route_for_adapter(call.adapter, call.version)

    async def _stream(self, request: web.Request, generation: MeteredGeneration,
                      call: ApiCall, route: Route) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        try:
            try:
                async for chunk in generation:
                    await response.write(_sse({"text": chunk}))
            except EngineError as exc:
                await response.write(_sse({"error": str(exc)}, event="error"))
            else:
                result = await self._result(generation, call, route)
                await response.write(_sse(result, event="done"))
            await response.write_eof()
        except ConnectionResetError:  # the client left: its request stops at the next token
            generation.cancel()
        return response

    async def _result(self, generation: MeteredGeneration, call: ApiCall,
                      route: Route) -> dict[str, Any]:
        """The answer as generated (not stripped: the same text the stream carried)."""
        prompt_tokens = getattr(generation, "prompt_tokens", None)
        if prompt_tokens is None:
            prompt_tokens = await self._count_prompt(call.messages, route)
        return {"text": generation.text, "adapter": route.adapter, "version": route.version,
                "prompt_tokens": prompt_tokens, "completion_tokens": generation.token_count,
                "latency_ms": round(generation.latency_ms or 0.0, 1)}

    async def _count_prompt(self, messages: Sequence[Message], route: Route) -> int | None:
        """Prompt tokens as the local engine builds the prompt: system prompt, trimming,
        chat template. On a copy of its tokenizer, so the engine's thread never shares one."""
        tokenizer = getattr(self.engine, "tokenizer", None)
        if tokenizer is None:
            return None
        if self._tokenizer is None:
            self._tokenizer = await asyncio.to_thread(copy.deepcopy, tokenizer)

        def count(chat: Sequence[Message]) -> int:
            ids = self._tokenizer.apply_chat_template(list(chat), add_generation_prompt=True,
                                                      tokenize=True, return_dict=False)
            return len(ids)

        def prompt_length() -> int:
            chat = list(messages)
            if chat[0]["role"] != "system":
                system = route.system_prompt or self.config.model.system_prompt
                chat = [{"role": "system", "content": system}, *chat]
            return count(trim_messages(chat, self.config.engine.context_tokens, count))

        return await asyncio.to_thread(prompt_length)


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def _sse(payload: dict[str, Any], event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()
