"""/review: admins approve, reject or correct voted pairs before they train anything.

`/review web` hands an admin a one-time link to the same review on the web (bot.web).
"""

from __future__ import annotations

import logging

import discord
from discord import app_commands

from storage import ReviewItem

from ..commands.review import clip, review_card
from ..permissions import NotAdmin, admin_only, is_admin
from ._common import AnswersErrors, SlashCog, adapter_names, caller_of, embed_of, reply, send_reply

log = logging.getLogger(__name__)

VIEW_TIMEOUT_S = 900


def review_embed(item: ReviewItem, waiting: int) -> discord.Embed:
    return embed_of(review_card(item, waiting), colour=discord.Colour.blurple())


class EditAnswer(AnswersErrors, discord.ui.Modal, title="Correct the answer"):
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


class ReviewView(AnswersErrors, discord.ui.View):
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
        done = await self.cog.core.review.decide(caller_of(interaction), self.item.turn.id,
                                                 status, edited=edited, also_asked=also_asked)
        self.tally[status] += 1
        await self.show_next(interaction, done.text)

    async def show_next(self, interaction: discord.Interaction, done: str | None = None) -> None:
        self.stop()
        item, waiting = await self.cog.core.review.next(caller_of(interaction), self.adapter,
                                                        self.skipped)
        if item is None:
            summary = (f"Nothing left to review. This session: {self.tally['approved']} "
                       f"approved, {self.tally['rejected']} rejected, {len(self.skipped)} "
                       f"skipped.")
            content = f"{done}. {summary}" if done else summary
            await interaction.response.edit_message(content=content, embed=None, view=None)
            return
        view = ReviewView(self.cog, self.reviewer_id, self.adapter, item, self.skipped,
                          self.tally)
        await interaction.response.edit_message(content=done, embed=review_embed(item, waiting),
                                                view=view)


class ConfirmBulk(AnswersErrors, discord.ui.View):
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
        done = await self.cog.core.review.approve_at_least(caller_of(interaction),
                                                           self.min_score, self.adapter)
        self.stop()
        await interaction.response.edit_message(content=done.text, view=None)

    @discord.ui.button(label="Cancel", style=discord.ButtonStyle.secondary,
                       custom_id="review:bulk-cancel")
    async def cancel(self, interaction: discord.Interaction, button: discord.ui.Button):
        self.stop()
        await interaction.response.edit_message(content="Nothing was approved.", view=None)


class Review(SlashCog):
    review = app_commands.Group(name="review", description="Approve, reject or correct voted "
                                "answers before they train an adapter",
                                default_permissions=discord.Permissions(manage_guild=True))

    @review.command(name="start", description="Review pending pairs one at a time")
    @app_commands.describe(adapter="Only this adapter's pairs (default: all)")
    @app_commands.autocomplete(adapter=adapter_names)
    @admin_only()
    async def start(self, interaction: discord.Interaction, adapter: str | None = None) -> None:
        item, waiting = await self.core.review.next(caller_of(interaction), adapter)
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
        count = await self.core.review.count_at_least(caller_of(interaction), min_score, adapter)
        if count == 0:
            await send_reply(interaction, self.core.review.nothing_at_least(min_score))
            return
        scope = f" of **{adapter}**" if adapter else ""
        await reply(interaction, f"Approve {count} pending pairs{scope} with a score of at "
                    f"least {min_score}? They will train the next version.",
                    view=ConfirmBulk(self, min_score, adapter, count))

    @review.command(name="also", description="Approve a pair and teach another way to ask "
                    "its question")
    @app_commands.describe(pair="The pair's number (#12 on its review card)",
                           question="Another way people ask this question")
    @admin_only()
    async def also(self, interaction: discord.Interaction, pair: app_commands.Range[int, 1],
                   question: str) -> None:
        await send_reply(interaction, await self.core.review.also(caller_of(interaction), pair,
                                                                  question))

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
