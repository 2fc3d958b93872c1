"""Feedback: a human's 👍/👎 under a bot answer is a vote; removing it retracts it.

One vote per user per answer (a 👎 replaces a 👍); the bot's own reactions
and other bots' never count. Every vote is committed before this returns.
"""

from __future__ import annotations

import logging

import discord
from discord.ext import commands

from ..permissions import may_talk, roles_in_shared_servers

log = logging.getLogger(__name__)

VOTES = {"👍": 1, "👎": -1}


class Feedback(commands.Cog):
    def __init__(self, bot):
        self.bot = bot
        self.config = bot.config
        self.db = bot.db

    def is_bot(self, payload: discord.RawReactionActionEvent) -> bool:
        if payload.user_id == self.bot.user.id:
            return True
        if payload.member is not None:
            return payload.member.bot
        user = self.bot.get_user(payload.user_id)
        return bool(user and user.bot)

    def may_vote(self, payload: discord.RawReactionActionEvent) -> bool:
        """The people the bot does not answer do not vote either (the same lists)."""
        if payload.guild_id is None:
            return may_talk(self.config.discord, payload.user_id,
                            roles_in_shared_servers(self.bot, payload.user_id), None)
        roles = {role.id for role in payload.member.roles} if payload.member else set()
        return may_talk(self.config.discord, payload.user_id, roles, {payload.channel_id})

    @commands.Cog.listener()
    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        value = VOTES.get(str(payload.emoji))
        if value is None or self.is_bot(payload):
            return
        turn = await self.db.turn_for_answer_message(payload.message_id)
        if turn is None:
            return  # not one of the bot's answers
        if not self.may_vote(payload):
            log.info("vote by %d on answer %d ignored: the bot does not take it from them",
                     payload.user_id, turn.id)
            return
        result = await self.db.cast_vote(turn.id, payload.user_id, value,
                                         min_score=self.config.feedback.min_score)
        log.info("vote %+d by %d on answer %d: score %d%s", value, payload.user_id, turn.id,
                 result.score, " (now a review candidate)" if result.became_candidate else "")
        if result.reopened is not None:
            log.info("approved pair #%d, which answered %d from memory, is back in review",
                     result.reopened, turn.id)

    @commands.Cog.listener()
    async def on_raw_reaction_remove(self, payload: discord.RawReactionActionEvent) -> None:
        value = VOTES.get(str(payload.emoji))
        if value is None or payload.user_id == self.bot.user.id:
            return
        turn = await self.db.turn_for_answer_message(payload.message_id)
        if turn is None:
            return
        score = await self.db.retract_vote(turn.id, payload.user_id, value,
                                           min_score=self.config.feedback.min_score)
        log.info("vote %+d by %d on answer %d retracted: score %d", value, payload.user_id,
                 turn.id, score)


async def setup(bot) -> None:
    await bot.add_cog(Feedback(bot))
