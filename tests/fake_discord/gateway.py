"""The gateway: websocket connections and sessions (HELLO, IDENTIFY with intents, RESUME
replaying what was missed, heartbeats, member chunks), dispatching events to the sessions
that subscribed to them, and the gateway faults a test can cause."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web

from .protocol import (
    INTENT_DIRECT_MESSAGES,
    INTENT_GUILD_MEMBERS,
    INTENT_GUILD_MESSAGES,
    INTENT_GUILD_PRESENCES,
    INTENT_GUILDS,
    INTENT_MESSAGE_CONTENT,
    OP_DISPATCH,
    OP_HEARTBEAT,
    OP_HEARTBEAT_ACK,
    OP_HELLO,
    OP_IDENTIFY,
    OP_INVALID_SESSION,
    OP_PRESENCE,
    OP_RECONNECT,
    OP_REQUEST_MEMBERS,
    OP_RESUME,
    OP_VOICE_STATE,
    PRIVILEGED_INTENTS,
    Json,
)
from .records import DispatchRecord, GatewayFrame
from .world import FakeMessage

log = logging.getLogger("fake_discord")


@dataclass(eq=False)
class _GatewayConnection:
    index: int
    ws: web.WebSocketResponse
    request: web.Request
    path: str
    query: dict[str, str]
    session: _GatewaySession | None = None


@dataclass(eq=False)
class _GatewaySession:
    id: str
    intents: int
    seq: int = 0
    conn: _GatewayConnection | None = None
    buffer: list[tuple[int, str]] = field(default_factory=list)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class GatewayMixin:
    """FakeDiscord's websocket side."""

    # ----------------------------------------------------------------- gateway server

    async def _handle_gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        conn = _GatewayConnection(len(self.gateway_connections), ws, request, request.path,
                                  dict(request.query))
        self.gateway_connections.append(conn)
        self._notify()
        if conn.query.get("encoding", "json") != "json" or conn.query.get("v") != "10":
            log.warning("fake Discord: gateway connected with %s (only v=10 JSON is faked)",
                        conn.query)
        try:
            await self._gateway_gate.wait()  # held by drop_gateway(hold=True)
            await self._ws_send(conn, {"op": OP_HELLO, "s": None, "t": None,
                                       "d": {"heartbeat_interval": self.heartbeat_interval_ms,
                                             "_trace": ["fake-discord"]}})
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    frame = json.loads(msg.data)
                    self.gateway_frames.append(GatewayFrame(conn.index, frame.get("op"),
                                                            frame.get("d")))
                    self._notify()
                    await self._on_gateway_frame(conn, frame)
                elif msg.type is WSMsgType.BINARY:
                    log.error("fake Discord: binary gateway frames (ETF) are not supported")
                    await ws.close(code=4002, message=b"Decode error")
        except (ConnectionError, RuntimeError) as exc:
            log.debug("gateway connection %d ended: %r", conn.index, exc)
        finally:
            session = conn.session
            if session is not None and session.conn is conn:
                session.conn = None
                # A clean close ends the session; anything else leaves it resumable.
                if ws.close_code in (1000, 1001):
                    self.sessions.pop(session.id, None)
            self._notify()
        return ws

    async def _ws_send(self, conn: _GatewayConnection, payload: Json) -> None:
        if not conn.ws.closed:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await conn.ws.send_str(json.dumps(payload))

    async def _on_gateway_frame(self, conn: _GatewayConnection, frame: Json) -> None:
        op, data = frame.get("op"), frame.get("d")
        if op == OP_HEARTBEAT:
            await self._ws_send(conn, {"op": OP_HEARTBEAT_ACK, "s": None, "t": None, "d": None})
        elif op == OP_IDENTIFY:
            await self._identify(conn, data)
        elif op == OP_RESUME:
            await self._resume(conn, data)
        elif conn.session is None:
            await conn.ws.close(code=4003, message=b"Not authenticated.")
        elif op == OP_REQUEST_MEMBERS:
            await self._send_member_chunk(conn.session, data)
        elif op == OP_PRESENCE:
            self.presences.append(data)
        elif op == OP_VOICE_STATE:
            log.info("fake Discord: voice is not faked (voice state update ignored)")
        else:
            log.error("fake Discord: unknown gateway op %r", op)
            await conn.ws.close(code=4001, message=b"Unknown opcode.")

    async def _identify(self, conn: _GatewayConnection, data: Json) -> None:
        if conn.session is not None:
            await conn.ws.close(code=4005, message=b"Already authenticated.")
            return
        if data.get("token") != self.token:
            await conn.ws.close(code=4004, message=b"Authentication failed.")
            return
        intents = int(data.get("intents", 0))
        if intents & PRIVILEGED_INTENTS & ~self.enabled_privileged_intents:
            await conn.ws.close(code=4014, message=b"Disallowed intent(s).")
            return
        session = _GatewaySession(secrets.token_hex(16), intents)
        self.sessions[session.id] = session
        conn.session = session
        session.conn = conn
        ready = {
            "v": 10, "user": dict(self.bot_user.payload(), verified=True, mfa_enabled=False),
            "guilds": [{"id": str(g.id), "unavailable": True} for g in self.guilds.values()
                       if self.bot_user.id in g.members],
            "session_id": session.id, "session_type": "normal",
            "resume_gateway_url": self.resume_gateway_url,
            "application": {"id": str(self.application_id), "flags": self._application_flags()},
            "private_channels": [], "relationships": [], "presences": [],
            "guild_join_requests": [], "geo_ordered_rtc_regions": [], "user_settings": {},
            "_trace": ["fake-discord"],
        }
        if "shard" in data:
            ready["shard"] = data["shard"]
        await self._send_dispatch(session, "READY", ready)
        if intents & INTENT_GUILDS:
            for guild in self.guilds.values():
                if self.bot_user.id in guild.members:
                    await self._send_dispatch(session, "GUILD_CREATE",
                                              self._guild_create_payload(guild, session))

    async def _resume(self, conn: _GatewayConnection, data: Json) -> None:
        if data.get("token") != self.token:
            await conn.ws.close(code=4004, message=b"Authentication failed.")
            return
        session = self.sessions.get(data.get("session_id", ""))
        if session is None:
            await self._ws_send(conn, {"op": OP_INVALID_SESSION, "s": None, "t": None,
                                       "d": False})
            return
        seq = data.get("seq") or 0
        async with session.lock:
            conn.session = session
            for frame_seq, text in session.buffer:
                if frame_seq > seq:
                    await conn.ws.send_str(text)
            session.conn = conn
        await self._send_dispatch(session, "RESUMED", {"_trace": ["fake-discord"]})

    async def _send_member_chunk(self, session: _GatewaySession, data: Json) -> None:
        guild = self.guilds.get(int(data["guild_id"]))
        if guild is None:
            return
        members = list(guild.members.values())
        if data.get("user_ids"):
            wanted = {int(u) for u in data["user_ids"]}
            members = [m for m in members if m.user_id in wanted]
        elif data.get("query"):
            query = data["query"].lower()
            members = [m for m in members
                       if self.users[m.user_id].username.lower().startswith(query)]
        if data.get("limit"):
            members = members[:data["limit"]]
        chunk: Json = {"guild_id": str(guild.id), "chunk_index": 0, "chunk_count": 1,
                       "members": [self._member_payload(m, with_user=True) for m in members],
                       "not_found": []}
        if data.get("nonce"):
            chunk["nonce"] = data["nonce"]
        await self._send_dispatch(session, "GUILD_MEMBERS_CHUNK", chunk)

    def _application_flags(self) -> int:
        flags = 0
        if self.enabled_privileged_intents & INTENT_GUILD_PRESENCES:
            flags |= 1 << 13
        if self.enabled_privileged_intents & INTENT_GUILD_MEMBERS:
            flags |= 1 << 15
        if self.enabled_privileged_intents & INTENT_MESSAGE_CONTENT:
            flags |= 1 << 19
        return flags

    async def _send_dispatch(self, session: _GatewaySession, event: str, data: Json) -> None:
        async with session.lock:
            session.seq += 1
            text = json.dumps({"op": OP_DISPATCH, "t": event, "s": session.seq, "d": data})
            # Kept for RESUME: events sent while the connection is down get replayed.
            session.buffer.append((session.seq, text))
            self.dispatched.append(DispatchRecord(session.id, session.seq, event, data))
            conn = session.conn
            if conn is not None and not conn.ws.closed:
                try:
                    await conn.ws.send_str(text)
                except (ConnectionError, RuntimeError):
                    session.conn = None
        self._notify()

    async def _dispatch(self, event: str, data: Json, intent: int | None = None,
                        transform: Callable[[Json, _GatewaySession], Json] | None = None) -> int:
        """Send an event to every session subscribed to `intent`; returns how many."""
        sent = 0
        for session in list(self.sessions.values()):
            if intent is not None and not session.intents & intent:
                continue
            await self._send_dispatch(session, event,
                                      transform(data, session) if transform else data)
            sent += 1
        if not self.sessions:
            log.warning("fake Discord: %s not delivered, no bot is connected", event)
        return sent

    async def _dispatch_message(self, event: str, message: FakeMessage) -> None:
        if message.ephemeral:
            return  # Discord never sends ephemeral messages over the gateway
        intent = INTENT_DIRECT_MESSAGES if message.guild_id is None else INTENT_GUILD_MESSAGES
        await self._dispatch(event, self._message_payload(message, gateway=True), intent,
                             self._strip_content)

    # ----------------------------------------------------------------- gateway faults

    async def drop_gateway(self, *, hold: bool = False, code: int | None = None) -> None:
        """Cut every gateway connection; sessions stay resumable.

        `code=None` aborts the TCP connection (no close frame); a code sends a close frame.
        With `hold=True` new connections wait before HELLO until `release_gateway()`, so
        events dispatched meanwhile are certain to be missed and replayed on RESUME.
        """
        if hold:
            self._gateway_gate.clear()
        for session in self.sessions.values():
            async with session.lock:
                session.conn = None
        for conn in self.gateway_connections:
            if conn.ws.closed:
                continue
            if code is None:
                transport = conn.request.transport
                if transport is not None:
                    transport.abort()
            else:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.ws.close(code=code), 2.0)

    def release_gateway(self) -> None:
        self._gateway_gate.set()

    async def invalidate_session(self, *, resumable: bool = False) -> None:
        """Send op 9 INVALID_SESSION; unless resumable, the session is forgotten."""
        for session in list(self.sessions.values()):
            if session.conn is not None:
                await self._ws_send(session.conn, {"op": OP_INVALID_SESSION, "s": None,
                                                   "t": None, "d": resumable})
            if not resumable:
                self.sessions.pop(session.id, None)

    async def send_reconnect(self) -> None:
        """Send op 7 RECONNECT (the client should close and RESUME)."""
        for session in list(self.sessions.values()):
            if session.conn is not None:
                await self._ws_send(session.conn, {"op": OP_RECONNECT, "s": None, "t": None,
                                                   "d": None})
