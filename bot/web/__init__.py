"""The admin review site: a web page the bot serves, opened from Discord with a one-time link.

`create_review_app` builds an aiohttp sub-application (server-rendered Jinja2 pages, a
little vanilla JavaScript, no build step) to mount at `MOUNT_PATH` on the bot's HTTP
server; `ReviewSessions` mints the sign-in links that `/review web` hands to admins and
keeps the sessions they open.
"""

from .app import create_review_app
from .sessions import MOUNT_PATH, ReviewSessions

__all__ = ["MOUNT_PATH", "ReviewSessions", "create_review_app"]
