"""/memory search: what the channel memory would do with a question (admins)."""

from __future__ import annotations

import discord
from discord import app_commands

from ..permissions import admin_only
from ._common import SlashCog, adapter_names, caller_of, send_reply


class Memory(SlashCog):
    memory = app_commands.Group(name="memory", description="The channel memory: approved "
                                "pairs answered from at once, in other words too",
                                default_permissions=discord.Permissions(manage_guild=True))

    @memory.command(name="search", description="What memory would do with a question: the "
                    "nearest approved pairs and their scores")
    @app_commands.describe(text="The question, as someone would ask it",
                           adapter="Whose memory (default: this channel's adapter)")
    @app_commands.autocomplete(adapter=adapter_names)
    @admin_only()
    async def search(self, interaction: discord.Interaction, text: str,
                     adapter: str | None = None) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)  # a first embedding
        await send_reply(interaction, await self.core.memory.search(caller_of(interaction),
                                                                    text, adapter))


async def setup(bot) -> None:
    await bot.add_cog(Memory(bot))
