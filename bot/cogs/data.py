"""/stats, /export and /forget: what is stored, taking it out, and deleting your own."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from dataclasses import asdict

import discord
from discord import app_commands

from trainer.versions import forget_turns

from ..permissions import admin_only
from ._common import SlashCog, adapter_names, reply

log = logging.getLogger(__name__)


class ConfirmForget(discord.ui.View):
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
        config = self.cog.config
        counts = await self.cog.db.forget_user(self.user_id,
                                               min_score=config.feedback.min_score)
        self.stop()
        await interaction.response.edit_message(
            content=f"Deleted {counts['turns']} of your questions (with the bot's answers to "
                    f"them) and {counts['votes']} of your votes. They will not train any "
                    f"future version.", view=None)
        # trained versions keep lists of what they were taught and judged on: cleaned after
        # the reply (many versions take longer than Discord waits for one)
        try:
            removed = await asyncio.to_thread(forget_turns, config.adapters_dir,
                                              config.data_dir / "cache",
                                              set(counts["turn_ids"]))
        except OSError:
            log.exception("/forget: the versions' question lists could not be cleaned")
            await interaction.followup.send(
                "Your questions could not be removed from the stored training records; the "
                "admins have the error in the log.", ephemeral=True)
            return
        if removed:
            await interaction.followup.send(
                f"They were also removed from {removed} stored training record(s).",
                ephemeral=True)

    @discord.ui.button(label="Keep it", style=discord.ButtonStyle.secondary,
                       custom_id="forget:cancel")
    async def cancel(self, interaction: discord.Interaction, button: discord.ui.Button):
        self.stop()
        await interaction.response.edit_message(content="Nothing was deleted.", view=None)


class Data(SlashCog):
    @app_commands.command(name="stats", description="Answers, votes, pairs and adapters")
    async def stats(self, interaction: discord.Interaction) -> None:
        stats = await self.db.stats()
        runs = await self.db.list_runs(limit=1)
        embed = discord.Embed(title="What the bot has learned from")
        for key, label in (("answers", "answers"), ("votes", "votes"),
                           ("pending", "pairs waiting for review"),
                           ("approved", "approved pairs"), ("rejected", "rejected pairs"),
                           ("adapters", "adapters"), ("runs", "training runs")):
            embed.add_field(name=label, value=str(stats[key]))
        if runs:
            last = runs[0]
            embed.add_field(name="last run", value=f"{last.adapter}: {last.status} "
                            f"({(last.finished_at or last.created_at)[:16]})", inline=False)
        await reply(interaction, embed=embed)

    @app_commands.command(name="export", description="Approved pairs as a JSONL file")
    @app_commands.describe(adapter="Only this adapter's pairs (default: all)")
    @app_commands.autocomplete(adapter=adapter_names)
    @app_commands.default_permissions(manage_guild=True)
    @admin_only()
    async def export(self, interaction: discord.Interaction, adapter: str | None = None) -> None:
        if adapter is not None:
            await self.db.require_adapter(adapter)
        await interaction.response.defer(ephemeral=True, thinking=True)
        pairs = await self.db.approved_pairs(adapter)
        body = "".join(json.dumps(asdict(p), ensure_ascii=False) + "\n" for p in pairs)
        name = f"{adapter or 'all'}-approved.jsonl"
        await reply(interaction, f"{len(pairs)} approved pairs.",
                    file=discord.File(io.BytesIO(body.encode("utf-8")), filename=name))

    @app_commands.command(name="forget", description="Delete your stored questions and votes")
    async def forget(self, interaction: discord.Interaction) -> None:
        await reply(interaction, "This deletes every question you asked the bot (with its "
                    "answers) and every vote you cast. Pairs already used by a trained version "
                    "stay in that version's weights (its stored lists of questions are "
                    "cleaned), but never train another. Continue?",
                    view=ConfirmForget(self, interaction.user.id))


async def setup(bot) -> None:
    await bot.add_cog(Data(bot))
