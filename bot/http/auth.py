"""The HTTP server's bearer token: where it comes from, when the server may run without
one, and how a request proves it holds it (compared in constant time)."""

from __future__ import annotations

import hmac
import json
import logging
import os
from collections.abc import Mapping

from aiohttp import web

from settings import ENV_PREFIX, HTTP_TOKEN_ENV, SECTIONS, HttpConfig

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
MIN_TOKEN_CHARS = 16


class HttpConfigError(ValueError):
    """The HTTP server cannot start as configured; the message says what to change."""


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


def carries_bearer(request: web.Request, token: str | None) -> bool:
    """Whether the request carries `Authorization: Bearer <token>` (always, when the server
    runs without a token)."""
    if token is None:
        return True
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(),
                                                              token.encode())


def require_bearer(request: web.Request, token: str | None, token_env: str) -> None:
    """Raise 401 unless the request carries `Authorization: Bearer <token>` (nothing is
    required when the server runs without a token)."""
    if carries_bearer(request, token):
        return
    log.warning("refused %s %s from %s: missing or wrong bearer token", request.method,
                request.path, request.remote)
    raise web.HTTPUnauthorized(
        text=json.dumps({"error": f"missing or wrong bearer token: send the header "
                                  f"'Authorization: Bearer <token>' with the token in "
                                  f"{token_env}"}),
        content_type="application/json",
        headers={"WWW-Authenticate": 'Bearer realm="channel-tuned-bot"'})
