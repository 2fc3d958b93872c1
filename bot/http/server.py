"""The aiohttp server of the bot process: `/v1/generate`, `/healthz`, `/metrics`, and
the sub-applications other parts of the bot mount on it."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from settings import Config
from settings.logs import register_secret
from storage import Database, UnknownAdapterError, UnknownVersionError

from ..engine_base import GenerationEngine, GenerationHandle
from ..generation import EngineError, GenerationRequest, GenerationTimeout
from ..routing import Route, Router
from .auth import HttpConfigError, carries_bearer, require_bearer, resolve_token
from .metering import MeteredEngine
from .metrics import METRICS_CONTENT_TYPE, ServiceMetrics
from .schema import ApiCall, BadRequest, parse_generate

log = logging.getLogger(__name__)

CLIENT_CHECK_S = 0.25  # how often a waiting /v1/generate looks whether its client left

API_CHANNEL_ID = -1  # API requests name their adapter; this id is never routed

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpServer:
    """The aiohttp server of the bot process: start() after the engine, close() before it."""

    def __init__(self, config: Config, engine: GenerationEngine, db: Database,
                 router: Router | None, *, token: str | None,
                 metrics: ServiceMetrics | None = None):
        self.config = config
        self.settings = config.http
        self.metrics = metrics or ServiceMetrics()
        self.engine = engine if isinstance(engine, MeteredEngine) \
            else MeteredEngine(engine, self.metrics)
        self.db = db
        self.router = router
        self.token = token
        register_secret(token)
        self.app = web.Application(client_max_size=self.settings.max_body_bytes,
                                   middlewares=[self._count_requests])
        self.app.router.add_post("/v1/generate", self.generate)
        self.app.router.add_get("/healthz", self.healthz)
        if self.settings.metrics:
            self.app.router.add_get("/metrics", self.metrics_text)
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    @classmethod
    def from_config(cls, config: Config, engine: GenerationEngine, db: Database,
                    router: Router | None,
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
        require_bearer(request, self.token, self.settings.token_env)

    # --- endpoints ----------------------------------------------------------------------
    async def healthz(self, request: web.Request) -> web.Response:
        """"ok", "not ready" (the model is loading) or "failing" (the database does not
        answer) for anyone — a container's health check needs no token; what failed and
        how only behind the token, and in the log."""
        details: dict[str, Any] = {"engine": "ready" if self.engine.ready else "not ready"}
        try:
            details["schema_version"] = await asyncio.wait_for(self.db.schema_version(), 5)
            details["database"] = "ok"
        except Exception as exc:  # the health check reports it; the log keeps the trace
            log.warning("health check: the database does not answer", exc_info=True)
            details["database"] = f"unavailable: {exc}"
        if details["database"] != "ok":
            status = "failing"
        else:
            status = "ok" if self.engine.ready else "not ready"
        body = {"status": status}
        if carries_bearer(request, self.token):
            body.update(details)
        return web.json_response(body, status=200 if status == "ok" else 503)

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
        if not self.engine.ready:
            return _error(503, "the engine is not ready yet (the model is loading); retry")
        generation_request = GenerationRequest(channel_id=API_CHANNEL_ID,
                                               messages=call.messages,
                                               sampling=call.sampling, route=route)
        generation = await self.engine.submit(generation_request)
        if call.stream:
            return await self._stream(request, generation, call, route)
        try:
            if not await _complete_unless_client_leaves(request, generation):
                log.info("a client of /v1/generate left before its answer; it was stopped "
                         "after %d token(s)", generation.token_count)
                return _error(499, "the client closed the connection")  # nobody reads it
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

    async def _stream(self, request: web.Request, generation: GenerationHandle,
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

    async def _result(self, generation: GenerationHandle, call: ApiCall,
                      route: Route) -> dict[str, Any]:
        """The answer as generated (not stripped: the same text the stream carried)."""
        # the prompt the engine fed (a remote server reports its count with the answer);
        # an engine that did not count while generating is asked for the same rendering
        prompt_tokens = generation.prompt_tokens
        if prompt_tokens is None:
            prompt_tokens = await self.engine.count_prompt_tokens(call.messages, route)
        recalled = getattr(generation, "recalled", None)  # answered from the channel memory
        return {"text": generation.text, "adapter": route.adapter, "version": route.version,
                "prompt_tokens": prompt_tokens, "completion_tokens": generation.token_count,
                "latency_ms": round(generation.latency_ms or 0.0, 1),
                "recalled_from": recalled.turn_id if recalled is not None else None}


async def _complete_unless_client_leaves(request: web.Request,
                                         generation: GenerationHandle) -> bool:
    """Wait for the whole answer; False (and the generation stopped, freeing its batch
    slot) as soon as the client has closed its connection. aiohttp does not cancel a
    handler whose client left, so the connection is looked at while waiting."""
    done = asyncio.ensure_future(generation.complete())
    while not done.done():
        await asyncio.wait({done}, timeout=CLIENT_CHECK_S)
        transport = request.transport
        if not done.done() and (transport is None or transport.is_closing()):
            generation.cancel()
            await asyncio.wait({done})
            if not done.cancelled():
                done.exception()  # how it ended matters to nobody now
            return False
    done.result()  # its errors are the caller's to answer
    return True


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def _sse(payload: dict[str, Any], event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()
