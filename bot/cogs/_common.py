"""What every slash-command cog shares: the command core, replying, errors, adapter
autocomplete."""

from __future__ import annotations

import io
import logging

import discord
from discord import app_commands
from discord.ext import commands

from storage import StorageError

from ..commands import Busy, Caller, Commands, Refused, Reply
from ..engine import EngineError
from ..permissions import is_admin, is_owner

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
    elif isinstance(original, Busy):
        message = f"⏳ {original}"
    elif isinstance(original, Refused):
        message = str(original)
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


async def send_reply(interaction: discord.Interaction, answer: Reply, **kwargs) -> None:
    """A command core reply on Discord: an embed when it has a title or fields, the
    attachment as a file, ephemeral unless the reply is for the channel."""
    if answer.title or answer.fields:
        kwargs["embed"] = embed_of(answer)
        content = None
    else:
        content = answer.text
    if answer.attachment is not None:
        kwargs["file"] = discord.File(io.BytesIO(answer.attachment.data),
                                      filename=answer.attachment.filename)
    await reply(interaction, content, ephemeral=not answer.public, **kwargs)


def embed_of(answer: Reply, colour: discord.Colour | None = None) -> discord.Embed:
    embed = discord.Embed(title=answer.title, description=answer.text or None, colour=colour)
    for name, value in answer.fields:
        embed.add_field(name=name, value=value, inline=len(value) < 40)
    if answer.footer:
        embed.set_footer(text=answer.footer)
    return embed


def caller_of(interaction: discord.Interaction) -> Caller:
    """Who runs a slash command, a button or a form, for the command core."""
    config = interaction.client.config
    return Caller(user_id=interaction.user.id, channel_id=interaction.channel_id,
                  guild_id=interaction.guild_id, is_admin=is_admin(interaction, config.discord),
                  name=str(interaction.user), is_owner=is_owner(interaction, config.discord))


async def adapter_names(interaction: discord.Interaction,
                        current: str) -> list[app_commands.Choice[str]]:
    """The adapters of this server (in DMs: of the direct scope) — never another's."""
    names = await interaction.client.core.adapters.labels(caller_of(interaction))
    current = current.lower()
    return [app_commands.Choice(name=n, value=n) for n in names if current in n][:25]


class AnswersErrors:
    """For views and forms: an expected failure behind a button or a form (a pair decided
    meanwhile on the web page, a refusal) is answered like a slash command's, not left
    as Discord's bare "This interaction failed"."""

    async def on_error(self, interaction: discord.Interaction, error: Exception,
                       *_item) -> None:
        await report_error(interaction, error)


class SlashCog(commands.Cog):
    """A cog of slash commands: the bot's parts at hand, expected errors answered."""

    def __init__(self, bot):
        self.bot = bot
        self.config = bot.config
        self.db = bot.db
        self.core: Commands = bot.core

    async def cog_app_command_error(self, interaction, error) -> None:
        await report_error(interaction, error)
