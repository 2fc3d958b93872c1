"""A local fake Discord (HTTP API v10 + Gateway) for end-to-end tests of discord.py bots.

The real discord.py client logs in, connects to the gateway, receives messages, reactions and
interactions, and answers them, all against an aiohttp server on 127.0.0.1: no network needed.
Payloads follow what discord.py 2.7 parses; behaviour follows Discord where a bot could notice
the difference (intents, message content stripping, the 3 s interaction deadline, the first
follow-up after a "thinking" defer replacing it, 2000-character messages, ephemeral messages
never reaching the gateway, 429s with `Via` and `retry_after`).

Use it from a test module with::

    pytest_plugins = ("fake_discord",)

    async def test_hello(fake_discord):
        bot = commands.Bot(command_prefix="!", intents=discord.Intents.all())
        await fake_discord.start_bot(bot)
        world = fake_discord.world
        await fake_discord.send_message(world.general.id, world.alice.id, "hi", mentions_bot=True)

Everything the bot sends is recorded (`calls`, `messages_in`, `interaction_responses`); waits
(`wait_for`, `wait_for_message`, `wait_until`) never sleep blindly. Faults: `fail_next` for
HTTP errors, `drop_gateway` / `invalidate_session` / `send_reconnect` for the gateway.

The parts, one job each (`FakeDiscord` puts their mixins together):

    protocol      constants, error bodies, component and embed limits
    world         the state: users, guilds, roles, members, channels, messages
    payloads      that state as the JSON the bot receives
    records       what the fake records of the bot
    gateway       websocket sessions, dispatching events, gateway faults
    rest          the HTTP server, injected faults, the route table, REST handlers
    messages      creating, editing, deleting and reacting to messages
    interactions  FakeInteraction and the bot's answers to one
    driver        what users do: messages, reactions, commands, buttons, modals
    fake          FakeDiscord: lifecycle, running bots, waiting; the fixture

PYTEST_DONT_REWRITE: test modules import this before `pytest_plugins` loads it as a plugin,
and pytest would otherwise warn that it cannot rewrite this module's asserts.
"""

from .fake import FakeDiscord, fake_discord
from .interactions import FakeInteraction
from .protocol import (
    ADMINISTRATOR,
    ALL_PERMISSIONS,
    API_PREFIX,
    BOT_PERMISSIONS,
    CALLBACK_AUTOCOMPLETE,
    CALLBACK_DEFERRED_MESSAGE,
    CALLBACK_DEFERRED_UPDATE,
    CALLBACK_MESSAGE,
    CALLBACK_MODAL,
    CALLBACK_UPDATE_MESSAGE,
    CHANNEL_DM,
    CHANNEL_TEXT,
    DEFAULT_TOKEN,
    DISCORD_EPOCH_MS,
    EVERYONE_PERMISSIONS,
    FLAG_EPHEMERAL,
    FLAG_LOADING,
    INTENT_DIRECT_MESSAGE_REACTIONS,
    INTENT_DIRECT_MESSAGES,
    INTENT_GUILD_MEMBERS,
    INTENT_GUILD_MESSAGE_REACTIONS,
    INTENT_GUILD_MESSAGES,
    INTENT_GUILD_PRESENCES,
    INTENT_GUILDS,
    INTENT_MESSAGE_CONTENT,
    INTERACTION_AUTOCOMPLETE,
    INTERACTION_COMMAND,
    INTERACTION_COMPONENT,
    INTERACTION_MODAL_SUBMIT,
    MAX_CONTENT,
    MESSAGE_CHAT_INPUT,
    MESSAGE_DEFAULT,
    MESSAGE_REPLY,
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
    UPLOAD_LIMIT,
    DiscordAPIError,
    Json,
)
from .records import DispatchRecord, GatewayFrame, RecordedCall, RecordedFile, ResponseRecord
from .world import (
    FakeAttachment,
    FakeChannel,
    FakeGuild,
    FakeMember,
    FakeMessage,
    FakeRole,
    FakeUser,
    MessageVersion,
    World,
)

__all__ = [
    "ADMINISTRATOR", "ALL_PERMISSIONS", "API_PREFIX", "BOT_PERMISSIONS",
    "CALLBACK_AUTOCOMPLETE", "CALLBACK_DEFERRED_MESSAGE", "CALLBACK_DEFERRED_UPDATE",
    "CALLBACK_MESSAGE", "CALLBACK_MODAL", "CALLBACK_UPDATE_MESSAGE", "CHANNEL_DM",
    "CHANNEL_TEXT", "DEFAULT_TOKEN", "DISCORD_EPOCH_MS", "EVERYONE_PERMISSIONS",
    "FLAG_EPHEMERAL", "FLAG_LOADING", "INTENT_DIRECT_MESSAGE_REACTIONS",
    "INTENT_DIRECT_MESSAGES", "INTENT_GUILD_MEMBERS", "INTENT_GUILD_MESSAGE_REACTIONS",
    "INTENT_GUILD_MESSAGES", "INTENT_GUILD_PRESENCES", "INTENT_GUILDS", "INTENT_MESSAGE_CONTENT",
    "INTERACTION_AUTOCOMPLETE", "INTERACTION_COMMAND", "INTERACTION_COMPONENT",
    "INTERACTION_MODAL_SUBMIT", "MAX_CONTENT", "MESSAGE_CHAT_INPUT", "MESSAGE_DEFAULT",
    "MESSAGE_REPLY", "OP_DISPATCH", "OP_HEARTBEAT", "OP_HEARTBEAT_ACK", "OP_HELLO",
    "OP_IDENTIFY", "OP_INVALID_SESSION", "OP_PRESENCE", "OP_RECONNECT", "OP_REQUEST_MEMBERS",
    "OP_RESUME", "OP_VOICE_STATE", "PRIVILEGED_INTENTS", "UPLOAD_LIMIT",
    "DiscordAPIError", "DispatchRecord", "FakeAttachment", "FakeChannel", "FakeDiscord",
    "FakeGuild", "FakeInteraction", "FakeMember", "FakeMessage", "FakeRole", "FakeUser",
    "GatewayFrame", "Json", "MessageVersion", "RecordedCall", "RecordedFile", "ResponseRecord",
    "World", "fake_discord",
]
