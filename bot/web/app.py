"""The review site as an aiohttp sub-application: sign-in, session and CSRF checks, pages.

`create_review_app` returns an application to mount at `MOUNT_PATH` on the bot's HTTP
server. It holds no state of its own beyond the sessions: every page reads the same
`storage.Database` as the slash commands, every action calls the same methods the
Discord buttons call, promotions go through the engine's hot reload when one is given,
and training runs through the bot's `TrainingService`, so Discord and the web never
disagree.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from settings import Config
from storage import Adapter, Database, StorageError, UnknownAdapterError

from ..commands import (
    Busy,
    Caller,
    Commands,
    Conflict,
    Missing,
    NotAdmin,
    Refused,
    Services,
    plain,
)
from ..commands.services import Promote
from .sessions import COOKIE_NAME, RIGHTS_RECHECK_S, Admin, ReviewSessions, Session

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
PUBLIC_ROUTES = frozenset({"sign_in", "sign_in_form", "static"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
# pages and scripts come only from this site; nothing inline, nothing framed
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self'; connect-src 'self'; form-action 'self'; "
                               "base-uri 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",  # a sign-in link never leaks through a Referer
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}



@dataclass
class ReviewSite:
    """What the handlers share; one per mounted application."""

    config: Config
    db: Database
    sessions: ReviewSessions
    training: Any = None  # bot.training.TrainingService, or None: runs are shown only
    promote: Promote | None = None
    describe_channel: Callable[[int], str | None] | None = None
    event_poll_s: float = 0.5
    # (guild id, user id) → still an admin there? None: rights are checked at sign-in only
    check_admin: Callable[[int, int], Awaitable[bool | None]] | None = None
    templates: jinja2.Environment = field(init=False)
    core: Commands = field(init=False)  # the operations, as the cogs and the console call them

    def __post_init__(self) -> None:
        self.core = Commands(Services(config=self.config, db=self.db, training=self.training,
                                      promote=self.promote))
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True, undefined=jinja2.StrictUndefined,
            trim_blocks=True, lstrip_blocks=True)
        self.templates.filters["age"] = age_text
        self.templates.globals["channel_label"] = self.channel_label

    def channel_label(self, channel_id: int | None) -> str:
        if not channel_id:
            return "console"
        name = self.describe_channel(channel_id) if self.describe_channel else None
        return f"#{name}" if name else f"#{channel_id}"

    async def record(self, request: web.Request, action: str, target: str | None = None,
                     **detail: Any) -> None:
        """The admin log: every action names the admin's Discord id."""
        admin = admin_of(request)
        await self.db.record_admin_action(admin.id, action, target, detail or None,
                                          guild_id=admin.guild_id)
        log.info("web review: %s (%d) %s %s", admin.name, admin.id, action, target or "")


SITE = web.AppKey("review_site", ReviewSite)
SESSION = web.RequestKey("review_session", Session)  # set by require_session


def admin_of(request: web.Request) -> Admin:
    """The signed-in admin: whose Discord id every action records."""
    return request[SESSION].admin


def caller_of(request: web.Request) -> Caller:
    """The signed-in admin, for the command core (the session proves the rights, and
    `require_session` asks Discord again while it lasts)."""
    admin = admin_of(request)
    return Caller(user_id=admin.id, channel_id=None, guild_id=admin.guild_id, is_admin=True,
                  name=admin.name)


def scope_of_request(request: web.Request) -> int:
    """The scope every page shows: the guild the admin signed in from (the console's
    link: the direct scope). Another guild's pairs, adapters and runs never appear."""
    return caller_of(request).scope


async def adapter_here(request: web.Request, key: str) -> Adapter:
    """The adapter with this key (what URLs and forms carry), if it is of the admin's
    scope; else unknown, with the scope's own adapters as the known ones."""
    db, scope = request.app[SITE].db, scope_of_request(request)
    record = await db.get_adapter(key)
    if record is None or record.guild_id != scope:
        raise UnknownAdapterError(key, [a.label for a in await db.list_adapters(scope)])
    return record


# LookupError: storage's unknown adapter or version
REFUSAL_STATUS = ((NotAdmin, 403), (Missing, 404), (LookupError, 404), (Conflict, 409),
                  (Busy, 409))
EXPECTED = (Refused, StorageError, ValueError)  # what `refused` answers; the rest is a bug


def refused(request: web.Request, exc: Exception) -> web.Response:
    """A command core refusal (or a storage error) as the page shows it."""
    status = next((code for kind, code in REFUSAL_STATUS if isinstance(exc, kind)), 400)
    return failure(request, status, plain(str(exc)))


def create_review_app(*, config: Config, db: Database, sessions: ReviewSessions,
                      training: Any = None, promote: Promote | None = None,
                      describe_channel: Callable[[int], str | None] | None = None,
                      check_admin: Callable[[int, int], Awaitable[bool | None]] | None = None,
                      event_poll_s: float = 0.5) -> web.Application:
    """The review site, to mount at `bot.web.MOUNT_PATH` (`/review`).

    `training` is the bot's TrainingService (None: runs are listed, not started);
    `promote` is the engine's hot reload, `engine.promote` (None: promotion and
    rollback only change the serving version in storage, and the engine loads it on the
    next request); `describe_channel` turns a channel id into its name; `check_admin`
    asks Discord whether a user is still an admin of a server (the bot's `still_admin`).
    """
    from . import account, pairs, runs, versions  # the handlers import this module's helpers

    app = web.Application(middlewares=[security_headers, require_session])
    app[SITE] = ReviewSite(config, db, sessions, training, promote, describe_channel,
                           event_poll_s, check_admin)
    add = app.router
    account.add_routes(add)
    pairs.add_routes(add)
    versions.add_routes(add)
    runs.add_routes(add)
    add.add_static("/static", HERE / "static", name="static", append_version=True)
    return app


# --- middleware ------------------------------------------------------------------------

@web.middleware
async def security_headers(request: web.Request, handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        response = exc
        _add_headers(request, response)
        raise
    _add_headers(request, response)
    return response


def _add_headers(request: web.Request, response: web.StreamResponse) -> None:
    if response.prepared:  # a stream (server-sent events) sets its own before it starts
        return
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if _route_name(request) != "static":
        response.headers.setdefault("Cache-Control", "no-store")


@web.middleware
async def require_session(request: web.Request, handler) -> web.StreamResponse:
    """A valid session for every page; the CSRF token for every state-changing request."""
    if _route_name(request) in PUBLIC_ROUTES:
        return await handler(request)
    site = request.app[SITE]
    session = site.sessions.get(request.cookies.get(COOKIE_NAME))
    if session is None:
        return failure(request, 401, "You are not signed in, or your session has expired. "
                       "Run /review web in Discord for a new sign-in link.", title="Sign in")
    still = await _still_admin(site, session)
    if still is None:  # Discord could not say: neither trust the old answer nor sign out
        return failure(request, 503, "Your admin rights could not be confirmed with Discord "
                       "just now; nothing was changed. Try again in a moment.")
    if not still:
        site.sessions.end(request.cookies.get(COOKIE_NAME))
        log.warning("web review: %s (%d) is no longer an admin; their session ended",
                    session.admin.name, session.admin.id)
        return failure(request, 403, "Your admin rights in the server were removed, so this "
                       "session has ended. An admin can run /review web for a new sign-in "
                       "link.", title="Signed out")
    if request.method not in SAFE_METHODS:
        token = request.headers.get(CSRF_HEADER)
        if token is None and request.content_type in ("application/x-www-form-urlencoded",
                                                      "multipart/form-data"):
            token = (await request.post()).get(CSRF_FIELD)
        if not site.sessions.csrf_ok(session, token if isinstance(token, str) else None):
            log.warning("web review: a %s to %s without a valid CSRF token was refused",
                        request.method, request.path)
            return failure(request, 403, "This request did not carry the page's security "
                           "token, so nothing was changed. Reload the page and try again.")
    request[SESSION] = session
    return await handler(request)


async def _still_admin(site: ReviewSite, session: Session) -> bool | None:
    """Ask Discord again when the last confirmation is older than RIGHTS_RECHECK_S;
    None when it cannot tell just now."""
    guild_id = session.admin.guild_id
    if site.check_admin is None or guild_id is None:
        return True
    now = site.sessions.clock()
    if now - session.rights_checked_at < RIGHTS_RECHECK_S:
        return True
    try:
        still = await site.check_admin(guild_id, session.admin.id)
    except Exception as exc:
        log.warning("web review: could not check the rights of %d: %s", session.admin.id, exc)
        return None
    if still:
        session.rights_checked_at = now
    return still


async def session_lasts(request: web.Request) -> bool:
    """Whether the request's session still holds (not expired, not signed out, rights
    not removed): for a response that stays open, such as the live progress stream. A
    Discord that cannot tell just now does not end it."""
    site = request.app[SITE]
    cookie = request.cookies.get(COOKIE_NAME)
    session = site.sessions.get(cookie)
    if session is None:
        return False
    if await _still_admin(site, session) is False:
        site.sessions.end(cookie)
        return False
    return True


def _route_name(request: web.Request) -> str | None:
    route = request.match_info.route
    return getattr(route, "name", None)


# --- responses -------------------------------------------------------------------------

def wants_json(request: web.Request) -> bool:
    return "application/json" in request.headers.get("Accept", "")


def url(request: web.Request, name: str, query: dict[str, Any] | None = None,
        **parts: Any) -> str:
    target = request.app.router[name].url_for(**{k: str(v) for k, v in parts.items()})
    if query:
        target = target.with_query({k: str(v) for k, v in query.items()
                                    if v is not None and v != ""})
    return str(target)


def render(request: web.Request, template: str, *, status: int = 200,
           **context: Any) -> web.Response:
    site = request.app[SITE]
    session: Session | None = request.get(SESSION)

    def url_for(name: str, query: dict[str, Any] | None = None, **parts: Any) -> str:
        return url(request, name, query, **parts)

    def static(filename: str) -> str:
        return str(request.app.router["static"].url_for(filename=filename))

    body = site.templates.get_template(template).render(
        session=session, csrf=session.csrf_token if session else "", url=url_for,
        static=static, here=request.path_qs, page=context.pop("page", None),
        nav=context.pop("nav", None), **context)
    return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")


def failure(request: web.Request, status: int, message: str, *,
            title: str = "Not done") -> web.Response:
    """An expected refusal: JSON for the page's scripts, a small page otherwise."""
    if wants_json(request):
        return web.json_response({"error": message}, status=status)
    return render(request, "message.html", status=status, title=title, message=message)


def done(request: web.Request, payload: dict[str, Any], back: str) -> web.Response:
    """After an action: JSON for the page's scripts, else back to the page (303)."""
    if wants_json(request):
        return web.json_response(payload)
    raise web.HTTPSeeOther(back)


def safe_back(request: web.Request, candidate: Any, default: str) -> str:
    """Where a plain form returns to: a path on this site only (no open redirect)."""
    prefix = url(request, "home")
    if isinstance(candidate, str) and candidate.startswith(prefix) \
            and not candidate.startswith("//"):
        return candidate
    return default


async def nav_counts(request: web.Request) -> dict[str, int]:
    db, scope = request.app[SITE].db, scope_of_request(request)
    return {status: await db.count_reviews(status, scope=scope)
            for status in ("pending", "approved")}


def age_text(created_at: str | None, now: float | None = None) -> str:
    """'3 h ago' from a stored UTC timestamp."""
    if not created_at:
        return ""
    try:
        moment = datetime.fromisoformat(created_at).timestamp()
    except ValueError:
        return created_at
    seconds = max(0.0, (time.time() if now is None else now) - moment)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return "just now"
