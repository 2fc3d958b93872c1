"""/train start|status|cancel: the same run path as the nightly schedule."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import discord
from discord import app_commands
from discord.ext import commands

from settings.layout import CURVE_FILE
from storage import DIRECT_SCOPE, TrainingRun

from ..permissions import admin_only
from ..training import Outcome
from ._common import SlashCog, adapter_names, caller_of, send_reply

log = logging.getLogger(__name__)

EDIT_EVERY_S = 5.0
# Discord's interaction token (the follow-up message and its edits) lives 15 minutes; a
# run longer than that reports in the channel instead, a minute before the token ends
TOKEN_LIFETIME_S = 15 * 60.0
TOKEN_MARGIN_S = 60.0


class Training(SlashCog):
    train = app_commands.Group(name="train", description="Fine-tune an adapter on its "
                               "approved pairs", default_permissions=discord.Permissions(
                                   manage_guild=True))

    def __init__(self, bot):
        super().__init__(bot)
        self.service = bot.training
        self.followers: set[asyncio.Task] = set()
        self.clock = time.monotonic  # (tests move it past the token's lifetime)
        self.reported: set[int] = set()  # runs from before a restart, being reported

    def keep(self, task: asyncio.Task) -> None:
        self.followers.add(task)
        task.add_done_callback(self.followers.discard)

    @train.command(name="start", description="Train now on the approved pairs")
    @app_commands.describe(adapter="The adapter to train (default: this channel's)")
    @app_commands.autocomplete(adapter=adapter_names)
    @admin_only()
    async def start(self, interaction: discord.Interaction, adapter: str | None = None) -> None:
        caller = caller_of(interaction)
        record = await self.core.training.adapter_for(caller, adapter)  # refused in private
        await interaction.response.defer(thinking=True)  # starting the child takes a moment
        run = await self.core.training.start(caller, record.label)
        # the run is followed to its end even if Discord refuses the progress message:
        # otherwise nobody drains its events and the service stays busy
        self.keep(asyncio.create_task(self.report(interaction, record.label, run.id)))

    @commands.Cog.listener()
    async def on_ready(self) -> None:
        """A run that outlived the bot before this one: its end goes to the channel it was
        asked for in, as if the bot had never stopped."""
        run, end = self.service.reattached, self.service.reattached_end
        if run is None or end is None or run.id in self.reported:
            return  # (on_ready comes again after every reconnect)
        self.reported.add(run.id)
        self.keep(asyncio.create_task(self.report_reattached(run, end)))

    async def report_reattached(self, run: TrainingRun, end: asyncio.Task[Outcome]) -> None:
        outcome = await asyncio.shield(end)
        guild_id = None if run.adapter_guild == DIRECT_SCOPE else run.adapter_guild
        channel = self.bot.get_channel(run.channel_id) if run.channel_id else None
        if not self.in_server(channel, guild_id):  # gone, or not the run's server
            admin = self.bot.get_channel(self.config.discord.admin_channel_id)
            channel = admin if self.in_server(admin, guild_id) else None
        await self.finish(None, channel, outcome, guild_id)

    async def report(self, interaction: discord.Interaction, adapter: str, run_id: int) -> None:
        message = None
        since = self.clock()  # the interaction was answered (deferred) just now

        def token_alive() -> bool:
            return self.clock() - since < TOKEN_LIFETIME_S - TOKEN_MARGIN_S

        try:
            message = await interaction.followup.send(
                f"🏋️ Training **{adapter}** (run {run_id}) on its approved pairs…", wait=True)
        except discord.HTTPException as exc:
            log.warning("could not post the progress of run %d: %s", run_id, exc)
        last_edit = 0.0

        async def on_event(event: dict) -> None:
            nonlocal last_edit
            if message is None or event.get("event") not in ("step", "eval") or not token_alive():
                return
            if self.service.active is None or time.monotonic() - last_edit < EDIT_EVERY_S:
                return  # progress is a glance, not a stream
            last_edit = time.monotonic()
            with contextlib.suppress(discord.HTTPException):
                await message.edit(content=f"🏋️ Training {self.service.active.progress()}")

        outcome = await self.service.follow(on_event)
        if not token_alive():  # the follow-up cannot be edited any more: a channel message
            log.info("run %d outlived its interaction token: its result goes to the channel",
                     run_id)
            message = None
        channel = interaction.channel
        if channel is None:  # (not cached): the admin channel, if it is this server's
            admin = self.bot.get_channel(self.config.discord.admin_channel_id)
            channel = admin if self.in_server(admin, interaction.guild_id) else None
        await self.finish(message, channel, outcome, interaction.guild_id)

    @staticmethod
    def in_server(channel, guild_id: int | None) -> bool:
        """Whether `channel` lies in that server (guild_id None: a DM's — no server)."""
        return channel is not None and getattr(getattr(channel, "guild", None), "id",
                                               None) == guild_id

    async def finish(self, message: discord.WebhookMessage | None, channel,
                     outcome: Outcome, guild_id: int | None) -> None:
        """The result where the run was asked for; the configured admin or announce channel
        hears it too, when it lies in the same server (never in another one's)."""
        icon = {"succeeded": "✅" if outcome.promoted else "🟡", "cancelled": "⏹️"}.get(
            outcome.status, "❌")
        text = f"{icon} {outcome.summary()}"
        table = outcome.report_table()
        if table and len(text) + len(table) < 1900:  # one Discord message
            text += f"\n```\n{table}\n```"
        if message is None or not await self._edit(message, text, outcome):
            await self._post(channel, text, outcome)
        target = (self.config.discord.announce_channel_id if outcome.promoted
                  else self.config.discord.admin_channel_id)
        announce = self.bot.get_channel(target) if target else None
        if not self.in_server(announce, guild_id):
            return
        if announce is not None and (channel is None or announce.id != channel.id):
            await announce.send(text)

    @staticmethod
    def _curve(outcome: Outcome) -> list[discord.File]:
        if outcome.loss_curve is None:
            return []
        return [discord.File(outcome.loss_curve, filename=CURVE_FILE)]

    async def _edit(self, message: discord.WebhookMessage, text: str, outcome: Outcome) -> bool:
        try:
            await message.edit(content=text, attachments=self._curve(outcome))
            return True
        except discord.HTTPException as exc:  # an expired token, a deleted message
            log.warning("could not edit the training message (%s); the result goes to the "
                        "channel", exc)
            return False

    async def _post(self, channel, text: str, outcome: Outcome) -> None:
        if channel is None:
            log.warning("the training result has no channel to go to: %s", text)
            return
        try:
            await channel.send(text, files=self._curve(outcome))
        except discord.HTTPException as exc:
            log.warning("could not post the training result: %s", exc)

    @train.command(name="status", description="The training run going on, and the last ones")
    @admin_only()
    async def status(self, interaction: discord.Interaction) -> None:
        await send_reply(interaction, await self.core.training.status(caller_of(interaction)))

    @train.command(name="cancel", description="Stop the training run going on")
    @admin_only()
    async def cancel(self, interaction: discord.Interaction) -> None:
        if self.service.active is not None:  # stopping the child takes a moment
            await interaction.response.defer(ephemeral=True, thinking=True)
        await send_reply(interaction, await self.core.training.cancel(caller_of(interaction)))


async def setup(bot) -> None:
    await bot.add_cog(Training(bot))
