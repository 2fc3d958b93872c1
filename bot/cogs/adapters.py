"""/adapter: list, use, unbind, create, info, prompt, rollback — the command core's adapter
operations on Discord."""

from __future__ import annotations

import discord
from discord import app_commands

from ..permissions import admin_only
from ._common import SlashCog, adapter_names, caller_of, send_reply


class Adapters(SlashCog):
    adapter = app_commands.Group(name="adapter", description="Adapters: which one answers "
                                 "in this channel, and their versions")

    @adapter.command(name="list", description="All adapters, their serving version and "
                     "channels")
    async def list_(self, interaction: discord.Interaction) -> None:
        await send_reply(interaction, await self.core.adapters.list(caller_of(interaction)))

    @adapter.command(name="use", description="Answer in this channel with an adapter "
                     "(`base`: the base model)")
    @app_commands.describe(name="The adapter (see /adapter list), or base for none")
    @app_commands.autocomplete(name=adapter_names)
    @app_commands.default_permissions(manage_guild=True)
    @admin_only()
    async def use(self, interaction: discord.Interaction, name: str) -> None:
        await send_reply(interaction, await self.core.adapters.use(caller_of(interaction), name))

    @adapter.command(name="unbind", description="Answer in this channel with the base model")
    @app_commands.default_permissions(manage_guild=True)
    @admin_only()
    async def unbind(self, interaction: discord.Interaction) -> None:
        await send_reply(interaction, await self.core.adapters.unbind(caller_of(interaction)))

    @adapter.command(name="create", description="Create a new adapter")
    @app_commands.describe(name="Lower-case letters, digits, - and _ (e.g. support-faq)",
                           base_on="Start from this adapter's serving version")
    @app_commands.autocomplete(base_on=adapter_names)
    @app_commands.default_permissions(manage_guild=True)
    @admin_only()
    async def create(self, interaction: discord.Interaction, name: str,
                     base_on: str | None = None) -> None:
        if base_on:  # copying a version's files takes a moment
            await interaction.response.defer(ephemeral=True, thinking=True)
        answer = await self.core.adapters.create(caller_of(interaction), name, base_on)
        await send_reply(interaction, answer)

    @adapter.command(name="info", description="Versions, metrics and channels of an adapter")
    @app_commands.describe(name="The adapter (default: this channel's)")
    @app_commands.autocomplete(name=adapter_names)
    async def info(self, interaction: discord.Interaction, name: str | None = None) -> None:
        await send_reply(interaction, await self.core.adapters.info(caller_of(interaction), name))

    @adapter.command(name="prompt", description="Set the system prompt an adapter answers "
                     "with")
    @app_commands.describe(name="The adapter", text="The system prompt; leave out (or -) for "
                           "the default one")
    @app_commands.autocomplete(name=adapter_names)
    @app_commands.default_permissions(manage_guild=True)
    @admin_only()
    async def prompt(self, interaction: discord.Interaction, name: str,
                     text: str | None = None) -> None:
        answer = await self.core.adapters.prompt(caller_of(interaction), name, text)
        await send_reply(interaction, answer)

    @adapter.command(name="rollback", description="Serve an earlier version again")
    @app_commands.describe(name="The adapter", version="Version to serve (default: the one "
                           "before the serving version)")
    @app_commands.autocomplete(name=adapter_names)
    @app_commands.default_permissions(manage_guild=True)
    @admin_only()
    async def rollback(self, interaction: discord.Interaction, name: str,
                       version: int | None = None) -> None:
        caller = caller_of(interaction)
        # refusals first, while the reply can still be private; then the slow part, in public
        version = await self.core.adapters.rollback_target(caller, name, version)
        await interaction.response.defer(thinking=True)  # loading the version takes a moment
        await send_reply(interaction, await self.core.adapters.serve(caller, name, version))


async def setup(bot) -> None:
    await bot.add_cog(Adapters(bot))
