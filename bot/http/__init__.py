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

One job a module: `auth` (the token), `schema` (request bodies), `metrics` (Prometheus),
`metering` (the counting engine), `server` (the aiohttp application and its endpoints).
"""

from .auth import HttpConfigError, resolve_token
from .metering import MeteredEngine, MeteredGeneration
from .metrics import ServiceMetrics
from .schema import ApiCall, BadRequest, parse_generate
from .server import API_CHANNEL_ID, HttpServer

__all__ = ["API_CHANNEL_ID", "ApiCall", "BadRequest", "HttpConfigError", "HttpServer",
           "MeteredEngine", "MeteredGeneration", "ServiceMetrics", "parse_generate",
           "resolve_token"]
