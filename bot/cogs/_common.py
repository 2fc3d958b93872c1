"""What every slash-command cog shares: replying, errors, adapter autocomplete."""

from __future__ import annotations

import logging

import discord
from discord import app_commands
from discord.ext import commands

from storage import StorageError

from ..engine import EngineError

log = logging.getLogger(__name__)

EXPECTED = (StorageError, EngineError, ValueError)


async def reply(interaction: discord.Interaction, content: str | None = None, *,
                ephemeral: bool = True, **kwargs) -> None:
    """Answer an interaction whether or not it was deferred."""
    if interaction.response.is_done():
        await interaction.followup.send(content, ephemeral=ephemeral, **kwargs)
    else:
        await interaction.response.send_message(content, ephemeral=ephemeral, **kwargs)


async def report_error(interaction: discord.Interaction,
                       error: app_commands.AppCommandError) -> None:
    """Expected failures get a clear ephemeral line; the rest are logged in full."""
    original = getattr(error, "original", error)
    if isinstance(error, app_commands.CheckFailure):
        message = str(error) or "You are not allowed to use this command."
    elif isinstance(original, EXPECTED):
        message = f"⚠️ {original}"
    else:
        command = interaction.command.qualified_name if interaction.command else "?"
        log.error("/%s failed", command, exc_info=original)
        message = "Something went wrong; it has been logged for the admins."
    try:
        await reply(interaction, message)
    except discord.HTTPException:
        log.warning("could not report an error to the user: %s", message)


async def adapter_names(interaction: discord.Interaction,
                        current: str) -> list[app_commands.Choice[str]]:
    names = await interaction.client.db.adapter_names()
    current = current.lower()
    return [app_commands.Choice(name=n, value=n) for n in names if current in n][:25]


class SlashCog(commands.Cog):
    """A cog of slash commands: the bot's parts at hand, expected errors answered."""

    def __init__(self, bot):
        self.bot = bot
        self.config = bot.config
        self.db = bot.db

    async def cog_app_command_error(self, interaction, error) -> None:
        await report_error(interaction, error)

    async def channel_adapter(self, interaction: discord.Interaction,
                              none_message: str) -> str | None:
        """The adapter bound to this channel (or its server); says `none_message` if none."""
        here = await self.db.resolve_adapter_for(interaction.channel_id, interaction.guild_id)
        if here is None:
            await reply(interaction, none_message)
            return None
        return here.name
