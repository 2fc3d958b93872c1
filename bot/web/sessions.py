"""Sign-in to the review site: one-time links minted in Discord, server-side sessions.

No passwords: `/review web` (admins only) mints a link that works once and expires in
minutes. Opening it starts a server-side session whose random id is the cookie
(HttpOnly, SameSite=Strict, Secure behind HTTPS); the session carries the admin's
Discord id, which every action records, and a CSRF token that every state-changing
request must echo. The admin's rights are asked of Discord again at most every
`RIGHTS_RECHECK_S` seconds while the session lasts: a removed role ends it. Only
SHA-256 digests of links and session ids are kept, so a memory dump or a log line
cannot be replayed. Everything lives in memory: a restart
signs everyone out, and a new `/review web` signs them in again.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

MOUNT_PATH = "/review"  # where the site is mounted on the bot's HTTP server
SIGN_IN_PATH = "/signin/"
COOKIE_NAME = "review_session"
MAX_OPEN_LINKS = 100  # links minted and not used yet; the oldest go first beyond this
MAX_SESSIONS = 200
RIGHTS_RECHECK_S = 60.0  # how stale a session's confirmation of admin rights may be


@dataclass(frozen=True)
class Admin:
    """Who minted the link: a Discord user the bot checked was an admin at that moment."""

    id: int
    name: str
    guild_id: int | None = None  # where those rights are checked again (None: the console)


@dataclass
class Session:
    admin: Admin
    csrf_token: str
    expires_at: float
    rights_checked_at: float = 0.0  # when the admin's rights were last confirmed


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_public_url(url: str) -> str:
    """`[web] public_url` without its trailing slash; refuses what cannot make a link."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"[web] public_url = {url!r} is not an http:// or https:// address; "
                         f"set it to how an admin's browser reaches the bot, e.g. "
                         f"'https://bot.example.org'")
    if parts.path.strip("/") or parts.query or parts.fragment:
        raise ValueError(f"[web] public_url = {url!r} has a path; the review site lives at "
                         f"{MOUNT_PATH} of the host, so give only scheme://host[:port] (a "
                         f"reverse proxy must forward paths unchanged)")
    return f"{parts.scheme}://{parts.netloc}"


class ReviewSessions:
    """One-time sign-in links and the sessions they open; `clock` is injectable for tests."""

    def __init__(self, *, public_url: str, link_ttl_s: float, session_ttl_s: float,
                 secure_cookies: bool = False, clock: Callable[[], float] = time.time):
        self.base_url = check_public_url(public_url)
        self.link_ttl_s = link_ttl_s
        self.session_ttl_s = session_ttl_s
        self.secure_cookies = secure_cookies or self.base_url.startswith("https://")
        self.clock = clock
        self._links: dict[str, tuple[Admin, float]] = {}  # digest → admin, expiry
        self._sessions: dict[str, Session] = {}  # digest of the cookie value → session

    @classmethod
    def from_config(cls, web, *, clock: Callable[[], float] = time.time) -> ReviewSessions:
        """From the `[web]` section (a `settings.WebConfig`)."""
        return cls(public_url=web.public_url, link_ttl_s=web.link_ttl_s,
                   session_ttl_s=web.session_ttl_s, secure_cookies=web.secure_cookies,
                   clock=clock)

    # --- links ------------------------------------------------------------------------
    def mint_link(self, admin_id: int, admin_name: str, guild_id: int | None = None) -> str:
        """A sign-in URL for this admin (of `guild_id`), valid once for `link_ttl_s` s."""
        self._prune()
        token = secrets.token_urlsafe(32)
        self._links[_digest(token)] = (Admin(admin_id, admin_name, guild_id),
                                       self.clock() + self.link_ttl_s)
        while len(self._links) > MAX_OPEN_LINKS:
            self._links.pop(next(iter(self._links)))  # dicts keep minting order
        return f"{self.base_url}{MOUNT_PATH}{SIGN_IN_PATH}{token}"

    def redeem(self, token: str) -> tuple[str, Session] | None:
        """Use a link: (cookie value, new session), or None if unknown, used or expired."""
        entry = self._links.pop(_digest(token), None)  # gone on first use, valid or not
        if entry is None or entry[1] <= self.clock():
            return None
        admin, _ = entry
        self._prune()
        session_id = secrets.token_urlsafe(32)
        session = Session(admin, secrets.token_urlsafe(32), self.clock() + self.session_ttl_s,
                          rights_checked_at=self.clock())
        self._sessions[_digest(session_id)] = session
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.pop(next(iter(self._sessions)))
        return session_id, session

    # --- sessions ---------------------------------------------------------------------
    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        key = _digest(session_id)
        session = self._sessions.get(key)
        if session is None:
            return None
        if session.expires_at <= self.clock():
            del self._sessions[key]
            return None
        return session

    def end(self, session_id: str | None) -> None:
        if session_id:
            self._sessions.pop(_digest(session_id), None)

    @staticmethod
    def csrf_ok(session: Session, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(session.csrf_token, token)

    def _prune(self) -> None:
        now = self.clock()
        self._links = {k: v for k, v in self._links.items() if v[1] > now}
        self._sessions = {k: s for k, s in self._sessions.items() if s.expires_at > now}
