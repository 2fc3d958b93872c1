"""/review: admins approve, reject or correct voted pairs before they train anything.

`/review web` hands an admin a one-time link to the same review on the web (bot.web).
"""

from __future__ import annotations

import logging

import discord
from discord import app_commands

from storage import ReviewItem

from ..permissions import NotAdmin, admin_only, is_admin
from ._common import SlashCog, adapter_names, reply

log = logging.getLogger(__name__)

VIEW_TIMEOUT_S = 900


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def review_embed(item: ReviewItem, waiting: int) -> discord.Embed:
    turn = item.turn
    embed = discord.Embed(title=f"Pair #{turn.id} · score {item.score:+d}",
                          description=f"**Question**\n{clip(turn.question, 1500)}\n\n"
                                      f"**Answer**\n{clip(turn.answer, 2300)}",
                          colour=discord.Colour.blurple())
    if turn.context:
        recent = "\n".join(f"{m['role']}: {clip(m['content'], 150)}" for m in turn.context[-4:])
        embed.add_field(name="context (last turns)", value=clip(recent, 1024), inline=False)
    version = f" v{turn.adapter_version}" if turn.adapter_version else ""
    embed.add_field(name="adapter", value=f"{item.adapter_name or 'base model'}{version}")
    embed.add_field(name="channel", value=f"<#{turn.channel_id}>" if turn.channel_id else "console")
    embed.set_footer(text=f"{waiting} waiting · asked {turn.created_at[:16].replace('T', ' ')}")
    return embed


class EditAnswer(discord.ui.Modal, title="Correct the answer"):
    def __init__(self, view: ReviewView, item: ReviewItem):
        super().__init__(timeout=VIEW_TIMEOUT_S, custom_id=f"review:edit-modal:{item.turn.id}")
        self.view = view
        self.item = item
        self.answer = discord.ui.TextInput(label="Answer used for training",
                                           style=discord.TextStyle.paragraph,
                                           default=clip(item.turn.answer, 4000), max_length=4000,
                                           custom_id="review:edited-answer")
        self.add_item(self.answer)
        # people's own rewordings teach the bot to recognise the question asked otherwise
        # far better than the model's paraphrases (BENCHMARKS.md, row G)
        self.also_asked = discord.ui.TextInput(
            label="Also asked as (one question per line)", style=discord.TextStyle.paragraph,
            required=False, max_length=2000, default="\n".join(item.also_asked) or None,
            placeholder="Other ways people ask this question (optional)",
            custom_id="review:also-asked")
        self.add_item(self.also_asked)

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        # discord.py finds an open form by its custom_id alone: anyone could submit it
        return await self.view.interaction_check(interaction)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await self.view.decide(interaction, "approved", edited=self.answer.value,
                               also_asked=self.also_asked.value.splitlines())


class ReviewView(discord.ui.View):
    """One pending pair at a time; buttons move to the next one."""

    def __init__(self, cog: Review, reviewer_id: int, adapter: str | None,
                 item: ReviewItem, skipped: set[int] | None = None, tally=None):
        super().__init__(timeout=VIEW_TIMEOUT_S)
        self.cog, self.reviewer_id, self.adapter, self.item = cog, reviewer_id, adapter, item
        self.skipped = skipped if skipped is not None else set()
        self.tally = tally if tally is not None else {"approved": 0, "rejected": 0}
        turn_id = item.turn.id
        for label, action, style in (("Approve", "approve", discord.ButtonStyle.success),
                                     ("Reject", "reject", discord.ButtonStyle.danger),
                                     ("Edit", "edit", discord.ButtonStyle.primary),
                                     ("Skip", "skip", discord.ButtonStyle.secondary)):
            button = discord.ui.Button(label=label, style=style,
                                       custom_id=f"review:{action}:{turn_id}")
            button.callback = getattr(self, f"on_{action}")
            self.add_item(button)

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if is_admin(interaction, self.cog.config.discord):
            return True
        await reply(interaction, str(NotAdmin("review")))
        return False

    async def on_approve(self, interaction: discord.Interaction) -> None:
        await self.decide(interaction, "approved")

    async def on_reject(self, interaction: discord.Interaction) -> None:
        await self.decide(interaction, "rejected")

    async def on_edit(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_modal(EditAnswer(self, self.item))

    async def on_skip(self, interaction: discord.Interaction) -> None:
        self.skipped.add(self.item.turn.id)
        await self.show_next(interaction)

    async def decide(self, interaction: discord.Interaction, status: str,
                     edited: str | None = None, also_asked: list[str] | None = None) -> None:
        item = await self.cog.db.decide_review(self.item.turn.id, status,
                                               reviewer_id=interaction.user.id,
                                               edited_answer=edited, also_asked=also_asked)
        self.tally[status] += 1
        log.info("pair %d %s by %d%s%s", self.item.turn.id, status, interaction.user.id,
                 " with an edited answer" if edited else "",
                 f", also asked {len(item.also_asked)} other way(s)" if item.also_asked else "")
        await self.show_next(interaction)

    async def show_next(self, interaction: discord.Interaction) -> None:
        self.stop()
        item, waiting = await self.cog.next_item(self.adapter, self.skipped)
        if item is None:
            done = (f"Nothing left to review. This session: {self.tally['approved']} approved, "
                    f"{self.tally['rejected']} rejected, {len(self.skipped)} skipped.")
            await interaction.response.edit_message(content=done, embed=None, view=None)
            return
        view = ReviewView(self.cog, self.reviewer_id, self.adapter, item, self.skipped,
                          self.tally)
        await interaction.response.edit_message(content=None,
                                                embed=review_embed(item, waiting), view=view)


class ConfirmBulk(discord.ui.View):
    def __init__(self, cog: Review, min_score: int, adapter: str | None, count: int):
        super().__init__(timeout=120)
        self.cog, self.min_score, self.adapter, self.count = cog, min_score, adapter, count

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if is_admin(interaction, self.cog.config.discord):
            return True
        await reply(interaction, str(NotAdmin("review bulk")))
        return False

    @discord.ui.button(label="Approve them", style=discord.ButtonStyle.success,
                       custom_id="review:bulk-confirm")
    async def confirm(self, interaction: discord.Interaction, button: discord.ui.Button):
        approved = await self.cog.db.approve_pending_at_least(
            self.min_score, reviewer_id=interaction.user.id, adapter=self.adapter)
        self.stop()
        await interaction.response.edit_message(
            content=f"Approved {approved} pairs with a score of at least {self.min_score}.",
            view=None)

    @discord.ui.button(label="Cancel", style=discord.ButtonStyle.secondary,
                       custom_id="review:bulk-cancel")
    async def cancel(self, interaction: discord.Interaction, button: discord.ui.Button):
        self.stop()
        await interaction.response.edit_message(content="Nothing was approved.", view=None)


class Review(SlashCog):
    review = app_commands.Group(name="review", description="Approve, reject or correct voted "
                                "answers before they train an adapter",
                                default_permissions=discord.Permissions(manage_guild=True))

    async def next_item(self, adapter: str | None,
                        skipped: set[int]) -> tuple[ReviewItem | None, int]:
        waiting = await self.db.count_reviews("pending", adapter)
        for item in await self.db.reviews("pending", adapter, limit=len(skipped) + 1):
            if item.turn.id not in skipped:
                return item, waiting
        return None, waiting

    @review.command(name="start", description="Review pending pairs one at a time")
    @app_commands.describe(adapter="Only this adapter's pairs (default: all)")
    @app_commands.autocomplete(adapter=adapter_names)
    @admin_only()
    async def start(self, interaction: discord.Interaction, adapter: str | None = None) -> None:
        if adapter is not None:
            await self.db.require_adapter(adapter)
        item, waiting = await self.next_item(adapter, set())
        if item is None:
            await reply(interaction, "Nothing waiting for review.")
            return
        view = ReviewView(self, interaction.user.id, adapter, item)
        await reply(interaction, embed=review_embed(item, waiting), view=view)

    @review.command(name="bulk", description="Approve every pending pair at or above a score")
    @app_commands.describe(min_score="Net 👍 minus 👎 a pair needs", adapter="Only this "
                           "adapter's pairs (default: all)")
    @app_commands.autocomplete(adapter=adapter_names)
    @admin_only()
    async def bulk(self, interaction: discord.Interaction,
                   min_score: app_commands.Range[int, 1, 1000],
                   adapter: str | None = None) -> None:
        if adapter is not None:
            await self.db.require_adapter(adapter)
        count = await self.db.count_pending_at_least(min_score, adapter)
        if count == 0:
            await reply(interaction, f"No pending pair has a score of at least {min_score}.")
            return
        scope = f" of **{adapter}**" if adapter else ""
        await reply(interaction, f"Approve {count} pending pairs{scope} with a score of at "
                    f"least {min_score}? They will train the next version.",
                    view=ConfirmBulk(self, min_score, adapter, count))

    @review.command(name="web", description="A one-time link to the review page in your "
                    "browser")
    @admin_only()
    async def web_link(self, interaction: discord.Interaction) -> None:
        # the bot sets review_sessions (bot.web.ReviewSessions) when [web] is enabled
        sessions = getattr(self.bot, "review_sessions", None)
        if sessions is None:
            await reply(interaction, "The web review page is off. To use it, set `enabled = "
                        "true` and `public_url` in the `[web]` section of config.toml and "
                        "restart the bot.")
            return
        link = sessions.mint_link(interaction.user.id, str(interaction.user),
                                  interaction.guild.id if interaction.guild else None)
        minutes = max(1, round(sessions.link_ttl_s / 60))
        log.info("review page sign-in link minted for %d", interaction.user.id)  # not the link
        await reply(interaction, f"Your sign-in link to the review page works once, for "
                    f"{minutes} minute{'s' if minutes != 1 else ''}; don't share it:\n<{link}>",
                    suppress_embeds=True)


async def setup(bot) -> None:
    await bot.add_cog(Review(bot))
