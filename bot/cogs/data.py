"""/stats, /export and /forget: what is stored, taking it out, and deleting your own."""

from __future__ import annotations

import discord
from discord import app_commands

from ..commands import FORGET_WARNING, Attachment
from ..commands.data import check_import_size
from ..permissions import admin_only
from ._common import AnswersErrors, SlashCog, adapter_names, caller_of, reply, send_reply


class ConfirmForget(AnswersErrors, discord.ui.View):
    def __init__(self, cog: Data, user_id: int):
        super().__init__(timeout=120)
        self.cog, self.user_id = cog, user_id

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if interaction.user.id == self.user_id:  # only the person whose data it is
            return True
        await reply(interaction, "These buttons belong to someone else's `/forget`; run "
                    "`/forget` yourself to delete your own data.")
        return False

    @discord.ui.button(label="Delete my data", style=discord.ButtonStyle.danger,
                       custom_id="forget:confirm")
    async def confirm(self, interaction: discord.Interaction, button: discord.ui.Button):
        done, turn_ids = await self.cog.core.data.forget(caller_of(interaction))
        self.stop()
        await interaction.response.edit_message(content=done.text, view=None)
        # many versions' files take longer to clean than Discord waits for a reply
        cleaned = await self.cog.core.data.forget_files(turn_ids)
        if cleaned is not None:
            await interaction.followup.send(cleaned.text, ephemeral=True)

    @discord.ui.button(label="Keep it", style=discord.ButtonStyle.secondary,
                       custom_id="forget:cancel")
    async def cancel(self, interaction: discord.Interaction, button: discord.ui.Button):
        self.stop()
        await interaction.response.edit_message(content="Nothing was deleted.", view=None)


class Data(SlashCog):
    @app_commands.command(name="stats", description="Answers, votes, pairs and adapters")
    async def stats(self, interaction: discord.Interaction) -> None:
        await send_reply(interaction, await self.core.data.stats(caller_of(interaction)))

    @app_commands.command(name="export", description="Approved pairs as a JSONL file")
    @app_commands.describe(adapter="Only this adapter's pairs (default: all)")
    @app_commands.autocomplete(adapter=adapter_names)
    @app_commands.default_permissions(manage_guild=True)
    @admin_only()
    async def export(self, interaction: discord.Interaction, adapter: str | None = None) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        await send_reply(interaction, await self.core.data.export(caller_of(interaction),
                                                                  adapter))

    @app_commands.command(name="import", description="Store a file of question/answer pairs "
                          "as approved pairs, answered from at once")
    @app_commands.describe(file="JSONL, JSON, CSV, TXT or TSV rows: question and answer "
                           "(also_asked too), as the trainer reads them",
                           adapter="Whose pairs (default: this channel's adapter)")
    @app_commands.autocomplete(adapter=adapter_names)
    @app_commands.default_permissions(manage_guild=True)
    @admin_only()
    async def import_pairs(self, interaction: discord.Interaction, file: discord.Attachment,
                           adapter: str | None = None) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        check_import_size(file.filename, file.size)  # before downloading it
        await send_reply(interaction, await self.core.data.import_file(
            caller_of(interaction), Attachment(file.filename, await file.read()), adapter))

    @app_commands.command(name="forget", description="Delete your stored questions and votes")
    async def forget(self, interaction: discord.Interaction) -> None:
        await reply(interaction, FORGET_WARNING + " Continue?",
                    view=ConfirmForget(self, interaction.user.id))


async def setup(bot) -> None:
    await bot.add_cog(Data(bot))
