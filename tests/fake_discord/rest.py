"""The HTTP API: reading and recording each request, injected faults, the route table, and
the REST handlers (users, application, app commands, channels, messages, reactions, guilds).
A route the fake lacks is a logged 404 that fails the test at teardown."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import BodyPartReader, web

from .protocol import (
    API_PREFIX,
    DiscordAPIError,
    Json,
    _emoji_key,
    _form_error,
    _json,
    _unknown,
)
from .records import RecordedCall, RecordedFile
from .world import FakeChannel, FakeGuild, FakeMessage

log = logging.getLogger("fake_discord")


@dataclass
class _Fault:
    method: str
    pattern: re.Pattern[str]
    status: int
    remaining: int
    retry_after: float
    is_global: bool


@dataclass
class _Request:
    method: str
    path: str
    query: dict[str, str]
    json: Any
    files: list[RecordedFile]


_Handler = Callable[..., Awaitable[Any]]


@dataclass
class _RouteEntry:
    method: str
    pattern: re.Pattern[str]
    handler: _Handler
    auth: bool


class RestMixin:
    """FakeDiscord's HTTP side."""

    # ----------------------------------------------------------------- fault injection

    def fail_next(self, method: str, path_regex: str, *, status: int = 500, times: int = 1,
                  retry_after: float = 0.05, is_global: bool = False) -> None:
        """Answer the next `times` matching calls with `status` instead of handling them.

        429 answers carry what discord.py needs to retry: JSON `retry_after`, a
        `Retry-After` header and `Via` (without it discord.py assumes a Cloudflare ban).
        `path_regex` must match the whole path after /api/v10.
        """
        self._faults.append(_Fault(method.upper(), re.compile(path_regex), status, times,
                                   retry_after, is_global))

    def _take_fault(self, call: RecordedCall) -> _Fault | None:
        for fault in self._faults:
            if fault.remaining > 0 and fault.method == call.method and \
                    fault.pattern.fullmatch(call.path):
                fault.remaining -= 1
                return fault
        return None

    @staticmethod
    def _fault_response(fault: _Fault) -> web.Response:
        if fault.status == 429:
            body = {"message": "You are being rate limited.", "retry_after": fault.retry_after,
                    "global": fault.is_global, "code": 0}
            headers = {"Retry-After": str(fault.retry_after), "Via": "1.1 google",
                       "X-RateLimit-Scope": "global" if fault.is_global else "user",
                       "X-RateLimit-Global": "true" if fault.is_global else "false"}
            return _json(body, status=429, headers=headers)
        body = {"message": f"{fault.status}: injected by fake Discord", "code": 0}
        return _json(body, status=fault.status)

    # ----------------------------------------------------------------- HTTP server

    async def _read_body(self, request: web.Request) -> tuple[Any, list[RecordedFile]]:
        files: list[RecordedFile] = []
        body: Any = None
        if request.content_type == "multipart/form-data":
            reader = await request.multipart()
            async for part in reader:
                if not isinstance(part, BodyPartReader):  # nested multipart: unused
                    continue
                if part.name == "payload_json":
                    body = json.loads(await part.text())
                else:
                    files.append(RecordedFile(part.name or "", part.filename or "",
                                              part.headers.get("Content-Type"),
                                              bytes(await part.read())))
        elif request.can_read_body:
            raw = await request.read()
            if raw:
                body = json.loads(raw)
        return body, files

    async def _handle_api(self, request: web.Request) -> web.StreamResponse:
        path = request.path[len(API_PREFIX):] or "/"
        body, files = await self._read_body(request)
        call = RecordedCall(request.method, path, dict(request.query), body, files,
                            dict(request.headers))
        self.calls.append(call)
        fault = self._take_fault(call)
        if fault is not None:
            call.injected = True
            response = self._fault_response(fault)
        else:
            try:
                response = await self._route(request, call)
            except DiscordAPIError as exc:
                response = exc.response()
            except Exception as exc:
                # 4xx, not 5xx: discord.py retries 5xx for ~25 s, which would hide the bug.
                log.exception("fake Discord: internal error on %s %s", call.method, call.path)
                self.errors.append(f"internal error on {call.method} {call.path}: {exc!r}")
                response = _json({"message": f"fake Discord bug: {exc!r}", "code": 0},
                                 status=400)
        call.status = response.status
        self._notify()
        return response

    async def _route(self, request: web.Request, call: RecordedCall) -> web.StreamResponse:
        path_matched = False
        for entry in self._routes:
            match = entry.pattern.fullmatch(call.path)
            if match is None:
                continue
            path_matched = True
            if entry.method != call.method:
                continue
            if entry.auth and request.headers.get("Authorization") != f"Bot {self.token}":
                return _json({"message": "401: Unauthorized", "code": 0}, status=401)
            req = _Request(call.method, call.path, call.query, call.json, call.files)
            result = await entry.handler(req, **match.groupdict())
            if isinstance(result, web.StreamResponse):
                return result
            if result is None:
                return web.Response(status=204)
            return _json(result)
        self.unhandled.append(call)
        log.warning("fake Discord: UNHANDLED %s %s%s (add a route to tests/fake_discord/rest.py)",
                    call.method, API_PREFIX, call.path)
        if path_matched:
            return _json({"message": "405: Method Not Allowed", "code": 0}, status=405)
        return _json({"message": "404: Not Found", "code": 0}, status=404)

    async def _handle_other(self, request: web.Request) -> web.Response:
        call = RecordedCall(request.method, request.path, dict(request.query), None, [],
                            dict(request.headers), status=404)
        self.calls.append(call)
        self.unhandled.append(call)
        log.warning("fake Discord: UNHANDLED %s %s (outside %s)", request.method, request.path,
                    API_PREFIX)
        return _json({"message": "404: Not Found", "code": 0}, status=404)

    async def _handle_attachment(self, request: web.Request) -> web.Response:
        attachment = self.attachments.get(int(request.match_info["attachment_id"]))
        if attachment is None:
            return web.Response(status=404, text="Not Found")
        return web.Response(body=attachment.data,
                            content_type=attachment.content_type or "application/octet-stream")

    def _build_routes(self) -> list[_RouteEntry]:
        channel = r"/channels/(?P<channel_id>\d+)"
        message = channel + r"/messages/(?P<message_id>\d+)"
        reaction = message + r"/reactions/(?P<emoji>[^/]+)"
        commands = r"/applications/(?P<app_id>\d+)(?:/guilds/(?P<guild_id>\d+))?/commands"
        webhook = r"/webhooks/(?P<app_id>\d+)/(?P<token>[^/]+)"
        table: list[tuple[str, str, _Handler, bool]] = [
            ("GET", r"/users/@me", self._get_me, True),
            ("GET", r"/users/(?P<user_id>\d+)", self._get_user, True),
            ("POST", r"/users/@me/channels", self._create_dm, True),
            ("GET", r"/(?:oauth2/)?applications/@me", self._get_application, True),
            ("GET", r"/gateway", self._get_gateway, False),
            ("GET", r"/gateway/bot", self._get_gateway_bot, True),
            ("GET", commands, self._get_commands, True),
            ("PUT", commands, self._put_commands, True),
            ("POST", commands, self._post_command, True),
            ("GET", commands + r"/(?P<command_id>\d+)", self._get_command, True),
            ("PATCH", commands + r"/(?P<command_id>\d+)", self._patch_command, True),
            ("DELETE", commands + r"/(?P<command_id>\d+)", self._delete_command, True),
            ("GET", channel, self._get_channel, True),
            ("GET", channel + r"/messages", self._get_messages, True),
            ("POST", channel + r"/messages", self._post_message, True),
            ("POST", channel + r"/typing", self._post_typing, True),
            ("GET", message, self._get_message, True),
            ("PATCH", message, self._patch_message, True),
            ("DELETE", message, self._delete_message, True),
            ("PUT", reaction + r"/@me", self._put_reaction, True),
            ("DELETE", reaction + r"/@me", self._delete_own_reaction, True),
            ("DELETE", reaction + r"/(?P<user_id>\d+)", self._delete_user_reaction, True),
            ("GET", reaction, self._get_reactions, True),
            ("GET", r"/guilds/(?P<guild_id>\d+)", self._get_guild, True),
            ("GET", r"/guilds/(?P<guild_id>\d+)/channels", self._get_guild_channels, True),
            ("GET", r"/guilds/(?P<guild_id>\d+)/roles", self._get_guild_roles, True),
            ("GET", r"/guilds/(?P<guild_id>\d+)/members", self._get_guild_members, True),
            ("GET", r"/guilds/(?P<guild_id>\d+)/members/(?P<user_id>\d+)", self._get_member,
             True),
            ("POST", r"/interactions/(?P<interaction_id>\d+)/(?P<token>[^/]+)/callback",
             self._interaction_callback, False),
            ("POST", webhook, self._post_followup, False),
            ("GET", webhook + r"/messages/(?P<message_id>@original|\d+)",
             self._get_webhook_message, False),
            ("PATCH", webhook + r"/messages/(?P<message_id>@original|\d+)",
             self._patch_webhook_message, False),
            ("DELETE", webhook + r"/messages/(?P<message_id>@original|\d+)",
             self._delete_webhook_message, False),
        ]
        return [_RouteEntry(m, re.compile(p), h, a) for m, p, h, a in table]

    # ----------------------------------------------------------------- REST: users, app

    async def _get_me(self, req: _Request) -> Json:
        return dict(self.bot_user.payload(), verified=True, mfa_enabled=False, locale="en-US")

    async def _get_user(self, req: _Request, user_id: str) -> Json:
        if int(user_id) not in self.users:
            raise _unknown("User")
        return self._user_payload(int(user_id))

    async def _create_dm(self, req: _Request) -> Json:
        channel = self._dm_channel(int(req.json["recipient_id"]))
        return self._channel_payload(channel)

    async def _get_application(self, req: _Request) -> Json:
        owner = self.world.owner if self.world else self.bot_user
        return {"id": str(self.application_id), "name": self.bot_user.username,
                "description": "", "icon": None, "bot_public": False,
                "bot_require_code_grant": False, "owner": owner.payload(), "team": None,
                "verify_key": "0" * 64, "summary": "", "flags": self._application_flags(),
                "bot": self.bot_user.payload(), "interactions_endpoint_url": None,
                "redirect_uris": [], "tags": []}

    async def _get_gateway(self, req: _Request) -> Json:
        return {"url": self.gateway_url}

    async def _get_gateway_bot(self, req: _Request) -> Json:
        return {"url": self.gateway_url, "shards": 1,
                "session_start_limit": {"total": 1000, "remaining": 999,
                                        "reset_after": 86_400_000, "max_concurrency": 1}}

    # ----------------------------------------------------------------- REST: app commands

    def _check_app(self, app_id: str, guild_id: str | None) -> int | None:
        if int(app_id) != self.application_id:
            raise DiscordAPIError(403, 50001, "Missing Access")
        if guild_id is not None and int(guild_id) not in self.guilds:
            raise _unknown("Guild")
        return int(guild_id) if guild_id is not None else None

    def _scoped_commands(self, guild_id: int | None) -> list[Json]:
        return [c for c in self.commands.values()
                if c["guild_id"] == (str(guild_id) if guild_id else None)]

    @staticmethod
    def _validate_command(command: Json) -> None:
        name = command.get("name", "")
        kind = command.get("type", 1)
        if kind == 1:
            if not re.fullmatch(r"[-_\w]{1,32}", name) or name != name.lower():
                raise _form_error("name", "APPLICATION_COMMAND_INVALID_NAME",
                                  f"Command name is invalid: {name!r}")
            if not 1 <= len(command.get("description", "")) <= 100:
                raise _form_error("description", "BASE_TYPE_BAD_LENGTH",
                                  f"{name}: description must be 1-100 characters.")
        options = command.get("options") or []
        if len(options) > 25:
            raise _form_error("options", "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer.")
        optional_seen = False
        for option in options:
            if option["type"] in (1, 2):
                RestMixin._validate_command(dict(option, type=1))
                continue
            if option.get("required"):
                if optional_seen:
                    raise _form_error("options", "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID",
                                      f"{name}: required options must come first.")
            else:
                optional_seen = True

    def _store_command(self, payload: Json, guild_id: int | None,
                       existing: Json | None = None) -> Json:
        self._validate_command(payload)
        command = dict(payload)
        command.setdefault("type", 1)
        command["id"] = existing["id"] if existing else str(self._snowflake())
        command["application_id"] = str(self.application_id)
        command["guild_id"] = str(guild_id) if guild_id else None
        command["version"] = str(self._snowflake())
        command.setdefault("default_member_permissions", None)
        self.commands[int(command["id"])] = command
        return command

    async def _get_commands(self, req: _Request, app_id: str, guild_id: str | None) -> list[Json]:
        return self._scoped_commands(self._check_app(app_id, guild_id))

    async def _put_commands(self, req: _Request, app_id: str, guild_id: str | None) -> list[Json]:
        scope = self._check_app(app_id, guild_id)
        old = {(c["name"], c["type"]): c for c in self._scoped_commands(scope)}
        for command in old.values():
            del self.commands[int(command["id"])]
        # Discord keeps a command's id when a bulk overwrite keeps its name and type.
        return [self._store_command(p, scope, old.get((p["name"], p.get("type", 1))))
                for p in req.json or []]

    async def _post_command(self, req: _Request, app_id: str, guild_id: str | None) -> Json:
        scope = self._check_app(app_id, guild_id)
        existing = next((c for c in self._scoped_commands(scope)
                         if (c["name"], c["type"]) == (req.json["name"],
                                                       req.json.get("type", 1))), None)
        return self._store_command(req.json, scope, existing)

    def _command(self, app_id: str, guild_id: str | None, command_id: str) -> Json:
        scope = self._check_app(app_id, guild_id)
        command = self.commands.get(int(command_id))
        if command is None or command["guild_id"] != (str(scope) if scope else None):
            raise _unknown("Application Command")
        return command

    async def _get_command(self, req: _Request, app_id: str, guild_id: str | None,
                           command_id: str) -> Json:
        return self._command(app_id, guild_id, command_id)

    async def _patch_command(self, req: _Request, app_id: str, guild_id: str | None,
                             command_id: str) -> Json:
        command = self._command(app_id, guild_id, command_id)
        return self._store_command(dict(command, **req.json), self._check_app(app_id, guild_id),
                                   command)

    async def _delete_command(self, req: _Request, app_id: str, guild_id: str | None,
                              command_id: str) -> None:
        self.commands.pop(int(self._command(app_id, guild_id, command_id)["id"]))

    # ----------------------------------------------------------------- REST: channels

    def _channel(self, channel_id: str | int) -> FakeChannel:
        channel = self.channels.get(int(channel_id))
        if channel is None:
            raise _unknown("Channel")
        return channel

    def _message(self, channel_id: str | int, message_id: str | int) -> FakeMessage:
        message = self.messages.get(int(message_id))
        if (message is None or message.deleted or message.channel_id != int(channel_id)
                or message.ephemeral):
            raise _unknown("Message")
        return message

    async def _get_channel(self, req: _Request, channel_id: str) -> Json:
        return self._channel_payload(self._channel(channel_id))

    async def _get_messages(self, req: _Request, channel_id: str) -> list[Json]:
        self._channel(channel_id)
        limit = max(1, min(100, int(req.query.get("limit", 50))))
        history = [m for m in self.messages_in(int(channel_id)) if not m.ephemeral]
        if "around" in req.query:
            around = int(req.query["around"])
            older = [m for m in history if m.id <= around][-((limit + 1) // 2):]
            newer = [m for m in history if m.id > around][:limit // 2]
            selected = older + newer
        elif "after" in req.query:
            selected = [m for m in history if m.id > int(req.query["after"])][:limit]
        else:
            before = int(req.query.get("before", 0)) or None
            selected = [m for m in history if before is None or m.id < before][-limit:]
        return [self._message_payload(m) for m in reversed(selected)]  # newest first

    async def _post_typing(self, req: _Request, channel_id: str) -> None:
        self.typing.append((self._channel(channel_id).id, time.monotonic()))

    async def _post_message(self, req: _Request, channel_id: str) -> Json:
        channel = self._channel(channel_id)
        message = self._create_message(channel, self.bot_user.id, req.json or {}, req.files)
        await self._dispatch_message("MESSAGE_CREATE", message)
        return self._message_payload(message)

    async def _get_message(self, req: _Request, channel_id: str, message_id: str) -> Json:
        return self._message_payload(self._message(channel_id, message_id))

    async def _patch_message(self, req: _Request, channel_id: str, message_id: str) -> Json:
        message = self._message(channel_id, message_id)
        body = req.json or {}
        if message.author_id != self.bot_user.id and set(body) - {"flags"}:
            raise DiscordAPIError(403, 50005, "Cannot edit a message authored by another user")
        await self._edit_message(message, body, req.files)
        return self._message_payload(message)

    async def _delete_message(self, req: _Request, channel_id: str, message_id: str) -> None:
        await self._remove_message(self._message(channel_id, message_id))

    # ----------------------------------------------------------------- REST: reactions

    async def _put_reaction(self, req: _Request, channel_id: str, message_id: str,
                            emoji: str) -> None:
        await self._react(self.bot_user.id, self._message(channel_id, message_id), emoji, True)

    async def _delete_own_reaction(self, req: _Request, channel_id: str, message_id: str,
                                   emoji: str) -> None:
        await self._react(self.bot_user.id, self._message(channel_id, message_id), emoji, False)

    async def _delete_user_reaction(self, req: _Request, channel_id: str, message_id: str,
                                    emoji: str, user_id: str) -> None:
        await self._react(int(user_id), self._message(channel_id, message_id), emoji, False)

    async def _get_reactions(self, req: _Request, channel_id: str, message_id: str,
                             emoji: str) -> list[Json]:
        message = self._message(channel_id, message_id)
        users = sorted(message.reactions.get(_emoji_key(emoji), set()))
        return [self._user_payload(u) for u in users]

    # ----------------------------------------------------------------- REST: guilds

    def _guild(self, guild_id: str) -> FakeGuild:
        guild = self.guilds.get(int(guild_id))
        if guild is None or self.bot_user.id not in guild.members:
            raise _unknown("Guild")
        return guild

    async def _get_guild(self, req: _Request, guild_id: str) -> Json:
        guild = self._guild(guild_id)
        return {"id": str(guild.id), "name": guild.name, "owner_id": str(guild.owner_id),
                "icon": None, "splash": None, "discovery_splash": None, "banner": None,
                "description": None, "features": [], "emojis": [], "stickers": [],
                "roles": [r.payload() for r in guild.roles.values()],
                "verification_level": 0, "default_message_notifications": 0,
                "explicit_content_filter": 0, "mfa_level": 0, "nsfw_level": 0,
                "premium_tier": 0, "preferred_locale": "en-US", "afk_timeout": 300,
                "system_channel_flags": 0, "approximate_member_count": len(guild.members)}

    async def _get_guild_channels(self, req: _Request, guild_id: str) -> list[Json]:
        return [self._channel_payload(self.channels[c]) for c in self._guild(guild_id).channel_ids]

    async def _get_guild_roles(self, req: _Request, guild_id: str) -> list[Json]:
        return [r.payload() for r in self._guild(guild_id).roles.values()]

    async def _get_guild_members(self, req: _Request, guild_id: str) -> list[Json]:
        after = int(req.query.get("after", 0))
        limit = int(req.query.get("limit", 1))
        members = sorted((m for m in self._guild(guild_id).members.values()
                          if m.user_id > after), key=lambda m: m.user_id)[:limit]
        return [self._member_payload(m, with_user=True) for m in members]

    async def _get_member(self, req: _Request, guild_id: str, user_id: str) -> Json:
        member = self._guild(guild_id).members.get(int(user_id))
        if member is None:
            raise _unknown("Member")
        return self._member_payload(member, with_user=True)
