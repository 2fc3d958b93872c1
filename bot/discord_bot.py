"""The Discord client: a `commands.Bot` that owns nothing but Discord.

The engine, storage and router are passed in; each feature is a cog in
`bot/cogs/`, loaded in `setup_hook`.
"""

from __future__ import annotations

import logging

import discord
from discord.ext import commands

from settings import Config
from storage import Database

from .commands import Commands, Services
from .engine_base import GenerationEngine
from .permissions import member_is_admin, owner_ids
from .routing import Router
from .training import TrainingService

log = logging.getLogger(__name__)

COGS = ("bot.cogs.chat", "bot.cogs.feedback", "bot.cogs.adapters", "bot.cogs.review",
        "bot.cogs.data", "bot.cogs.training", "bot.cogs.memory")

# the model's text never pings anyone: no @everyone/@here, no roles, no users;
# only the person the bot replies to is notified
SAFE_MENTIONS = discord.AllowedMentions(everyone=False, roles=False, users=False,
                                        replied_user=True)


def intents() -> discord.Intents:
    """The minimum: servers and channels, messages (with content), reactions, DMs."""
    chosen = discord.Intents.none()
    chosen.guilds = True
    chosen.guild_messages = True
    chosen.dm_messages = True
    chosen.message_content = True  # privileged: enable it in the Developer Portal
    chosen.guild_reactions = True
    chosen.dm_reactions = True
    return chosen


class ChannelBot(commands.Bot):
    def __init__(self, config: Config, db: Database, engine: GenerationEngine, router: Router,
                 training: TrainingService | None = None):
        """`training`: the process's one training service (`python -m bot` builds it
        beside the engine and the database; tests may let the client make its own)."""
        super().__init__(command_prefix=commands.when_mentioned, intents=intents(),
                         allowed_mentions=SAFE_MENTIONS, help_command=None)
        self.config = config
        self.db = db
        self.engine = engine
        self.router = router
        self.training = training or TrainingService(config, db, engine)
        # the operations every cog calls (the console and the web page hold their own)
        self.core = Commands(Services(config=config, db=db, training=self.training,
                                      promote=engine.promote,
                                      memory=getattr(engine, "memory", None)))
        self.review_sessions = None  # bot.web.ReviewSessions when [web] is enabled

    async def still_admin(self, guild_id: int, user_id: int) -> bool | None:
        """Is the user an admin of that server now? (Asked of Discord: no member cache.)
        None when Discord cannot tell just now (reconnecting, an HTTP error). An owner
        is an admin everywhere."""
        if user_id in owner_ids(self, self.config.discord):
            return True
        guild = self.get_guild(guild_id)
        if guild is None:
            return None if not self.is_ready() else False  # cache rebuilding, or bot left
        try:
            member = await guild.fetch_member(user_id)
        except discord.NotFound:
            return False  # left or was removed
        except discord.HTTPException as exc:
            log.warning("could not ask Discord about member %d: %s", user_id, exc)
            return None
        return member_is_admin(member, self.config.discord)

    async def setup_hook(self) -> None:
        for name in COGS:
            await self.load_extension(name)
        await self.sync_commands()

    async def sync_commands(self) -> None:
        mode = self.config.discord.command_sync
        if mode == "global":
            synced = await self.tree.sync()
            log.info("synced %d slash commands globally (may take up to an hour to show)",
                     len(synced))
            return
        for guild_id in self.config.discord.dev_guild_ids:
            guild = discord.Object(id=guild_id)
            self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
            log.info("synced %d slash commands to guild %d", len(synced), guild_id)
        if not self.config.discord.dev_guild_ids:
            log.warning("discord.command_sync = 'guild' but discord.dev_guild_ids is empty: "
                        "no slash commands were synced; add your server's id or use 'global'")

    async def on_message(self, message: discord.Message) -> None:
        """No prefix commands here (only slash commands); the chat cog listens instead."""

    async def on_ready(self) -> None:
        log.info("connected as %s (%d) to %d servers", self.user, self.user.id,
                 len(self.guilds))
