"""Chat: answer when addressed, stream the answer by editing, store the turn.

The bot answers when mentioned, when replied to, in DMs, and in channels set
to answer every message; never to bots or itself. Context is the reply chain
(up to `discord.reply_chain_depth` messages) plus the channel's recent turns;
the engine trims it to its token budget.
"""

from __future__ import annotations

import logging
import time

import aiohttp
import discord
from discord.ext import commands

from ..engine import EngineError, Generation, GenerationRequest, GenerationTimeout, Sampling
from ..permissions import may_talk, roles_in_shared_servers
from ..routing import Route
from ..text import (
    CURSOR,
    DISCORD_LIMIT,
    defuse_special_tokens,
    special_token_strings,
    split_message,
    strip_bot_mention,
)

log = logging.getLogger(__name__)

APOLOGY = "Sorry — I could not answer that just now (the model failed). It has been logged."
EMPTY_QUESTION = "Ask me something after the mention, e.g. `@me what is a LoRA adapter?`"
NO_ANSWER = "I could not come up with an answer to that."


class AnswerMessages:
    """One answer on Discord: edited while it streams, split past 2,000 characters."""

    def __init__(self, question: discord.Message, edit_interval_s: float):
        self.question = question
        self.interval = edit_interval_s
        self.messages: list[discord.Message] = []
        self.shown: list[str] = []
        self.last_edit = 0.0
        self.edits = 0

    async def update(self, text: str, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.last_edit < self.interval:
            return  # Discord allows about five edits per five seconds per channel
        self.last_edit = now
        # room for the cursor, and the same cut while streaming as at the end
        pieces = split_message(text, DISCORD_LIMIT - len(CURSOR)) or ["…"]
        for index, piece in enumerate(pieces):
            last = index == len(pieces) - 1
            content = piece if final or not last else piece + CURSOR
            if index < len(self.messages):
                if self.shown[index] != content:
                    await self._edit(index, content)
            else:
                await self._send(content)

    async def _send(self, content: str) -> None:
        target = self.messages[-1] if self.messages else self.question
        message = await target.reply(content, mention_author=not self.messages)
        self.messages.append(message)
        self.shown.append(content)

    async def _edit(self, index: int, content: str) -> None:
        try:
            await self.messages[index].edit(content=content)
        except (discord.HTTPException, aiohttp.ClientError) as exc:  # a lost edit is not a
            # lost answer: the next edit (or the final one) carries the whole text again
            log.warning("editing answer message failed (%s); the next edit will catch up", exc)
            return
        self.shown[index] = content
        self.edits += 1


class Chat(commands.Cog):
    def __init__(self, bot):
        self.bot = bot
        self.config = bot.config
        self.db = bot.db
        self.engine = bot.engine
        self.last_question_at: dict[int, float] = {}
        self.in_flight: dict[int, Generation] = {}  # question message id → its answer
        self._special_tokens: tuple[str, ...] = ()

    def plain(self, text: str) -> str:
        """People's text as plain text to the model: never its special tokens (a typed
        `<|im_start|>system` must not open a system turn). Stored that way too, so it
        cannot reach training either."""
        tokenizer = getattr(self.engine, "tokenizer", None)  # None until the model loads
        if not self._special_tokens and tokenizer is not None:
            self._special_tokens = special_token_strings(tokenizer)
        return defuse_special_tokens(text, self._special_tokens)

    # --- who gets an answer --------------------------------------------------------------
    def permitted(self, message: discord.Message) -> bool:
        author = message.author
        if message.guild is None:  # a DM: the roles held in the servers shared with the bot
            return may_talk(self.config.discord, author.id, roles_in_shared_servers(
                self.bot, author.id), None)
        channel_ids = {message.channel.id, getattr(message.channel, "parent_id", None)} - {None}
        roles = {role.id for role in getattr(author, "roles", [])}
        return may_talk(self.config.discord, author.id, roles, channel_ids)

    async def addressed(self, message: discord.Message) -> bool:
        if message.guild is None:
            return True  # a DM is always for the bot
        if self.bot.user in message.mentions:
            return True
        if message.reference is not None and message.reference.message_id is not None:
            replied = message.reference.resolved
            if isinstance(replied, discord.Message):
                if replied.author.id == self.bot.user.id:
                    return True
            elif await self.db.turn_for_answer_message(message.reference.message_id):
                return True
        return self.config.answer_mode_for(message.channel.id) == "all"

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        if message.author.bot or message.author.id == self.bot.user.id:
            return
        if message.type not in (discord.MessageType.default, discord.MessageType.reply):
            return
        if not self.permitted(message) or not await self.addressed(message):
            return
        question = self.plain(strip_bot_mention(message.content, self.bot.user.id))
        if not question:
            await message.reply(EMPTY_QUESTION, mention_author=False)
            return
        wait = self.cooldown_left(message.author.id)
        if wait > 0:
            await message.reply(f"⏳ One question every {self.config.discord.user_cooldown_s:g}"
                                f" s — ask again in {wait:.0f} s.", mention_author=False,
                                delete_after=10)
            return
        self.last_question_at[message.author.id] = time.monotonic()
        await self.answer(message, question)

    @commands.Cog.listener()
    async def on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
        """A question deleted while it is answered: stop generating, free the slot. One
        deleted after it was answered is forgotten: its answer, votes and review go, and
        with them its pair from the channel memory and from future training."""
        generation = self.in_flight.pop(payload.message_id, None)
        if generation is not None:
            generation.cancel()
            log.info("question %d was deleted: its answer stopped", payload.message_id)
        forgotten = await self.db.forget_question(payload.message_id)
        if forgotten:
            log.info("question %d was deleted: turn %s forgotten", payload.message_id,
                     ", ".join(map(str, forgotten)))
            await self.bot.core.data.forget_files(forgotten)

    @commands.Cog.listener()
    async def on_raw_bulk_message_delete(self,
                                         payload: discord.RawBulkMessageDeleteEvent) -> None:
        for message_id in payload.message_ids:  # a purge stops every answer it touches
            await self.on_raw_message_delete(
                discord.RawMessageDeleteEvent({"id": message_id,
                                               "channel_id": payload.channel_id}))

    def cooldown_left(self, user_id: int) -> float:
        last = self.last_question_at.get(user_id)
        if last is None:
            return 0.0
        return self.config.discord.user_cooldown_s - (time.monotonic() - last)

    # --- context -----------------------------------------------------------------------
    async def reply_chain(self, message: discord.Message) -> list[discord.Message]:
        """The messages this one replies to, oldest first."""
        chain: list[discord.Message] = []
        current = message
        while len(chain) < self.config.discord.reply_chain_depth and current.reference:
            ref = current.reference
            parent = ref.resolved if isinstance(ref.resolved, discord.Message) else None
            if parent is None and ref.message_id is not None:
                try:
                    parent = await current.channel.fetch_message(ref.message_id)
                except discord.HTTPException:
                    break  # deleted or not visible: the chain ends here
            if parent is None:
                break
            chain.append(parent)
            current = parent
        return list(reversed(chain))

    async def build_context(self, message: discord.Message,
                            route: Route | None = None) -> list[dict[str, str]]:
        """Recent answered turns of the channel, then the reply chain, oldest first.

        Recent turns answered by another adapter or version than `route` are left out:
        after a promotion a new version fed the old version's answers copies them (a
        wrong answer it was just taught to correct, repeated). A reply to such an
        answer still carries it: the user pointed at it.
        """
        chain = await self.reply_chain(message)
        chain_ids = {m.id for m in chain}
        context: list[dict[str, str]] = []
        for turn in await self.db.recent_turns(message.channel.id,
                                               self.config.discord.history_turns):
            if turn.answer_message_id in chain_ids or turn.question_message_id in chain_ids:
                continue  # the chain below carries it
            if route is not None and (turn.adapter_name, turn.adapter_version) != (
                    route.adapter, route.version):
                continue
            context += [{"role": "user", "content": self.plain(turn.question)},
                        {"role": "assistant", "content": self.plain(turn.answer)}]
        for parent in chain:
            role = "assistant" if parent.author.id == self.bot.user.id else "user"
            text = self.plain(strip_bot_mention(parent.content, self.bot.user.id))
            if text:
                context.append({"role": role, "content": text})
        return context

    # --- answering ---------------------------------------------------------------------
    async def answer(self, message: discord.Message, question: str) -> None:
        route = await self.bot.router.current(message.channel.id,
                                              message.guild.id if message.guild else None)
        context = await self.build_context(message, route)
        request = GenerationRequest(
            channel_id=message.channel.id, guild_id=message.guild.id if message.guild else None,
            messages=[*context, {"role": "user", "content": question}],
            sampling=Sampling.from_config(self.config.engine), route=route)
        answer = AnswerMessages(message, self.config.discord.stream_edit_interval_s)
        generation: Generation | None = None
        problem = ""
        try:
            async with message.channel.typing():
                generation = await self.engine.submit(request)
                self.in_flight[message.id] = generation
                stream = generation.__aiter__()
                first = await anext(stream, None)  # typing shows until the first words
            if first is not None:
                await answer.update(first)
                async for _ in stream:
                    await answer.update(generation.text)
        except GenerationTimeout:
            problem = "cut off: the answer took too long"
        except EngineError:
            log.exception("engine failed to answer message %d", message.id)
            problem = "the model failed mid-answer"
        except Exception:
            log.exception("unexpected failure answering message %d", message.id)
            problem = "the model failed mid-answer"
        finally:
            deleted = message.id not in self.in_flight and generation is not None
            self.in_flight.pop(message.id, None)
            if generation is not None:
                generation.cancel()  # frees the slot if anything above ended it early
        if deleted:
            await self.withdraw(answer)
            return
        text = generation.text.strip() if generation is not None else ""
        if not text:
            await message.reply(APOLOGY if problem else NO_ANSWER, mention_author=False)
            return
        recalled = getattr(generation, "recalled", None)
        footer = f"\n-# from approved answer #{recalled.turn_id}" if recalled else ""
        await answer.update(text + (f"\n\n*({problem})*" if problem else "") + footer,
                            final=True)
        await self.store(message, question, context, generation, answer)

    async def withdraw(self, answer: AnswerMessages) -> None:
        """The question is gone: so is the half-written answer (nothing is stored)."""
        for sent in answer.messages:
            try:
                await sent.delete()
            except (discord.HTTPException, aiohttp.ClientError) as exc:
                log.warning("could not delete an answer to a deleted question: %s", exc)

    async def store(self, message: discord.Message, question: str,
                    context: list[dict[str, str]], generation: Generation,
                    answer: AnswerMessages) -> None:
        last = answer.messages[-1]
        route = generation.route
        await self.db.record_turn(
            source="discord", guild_id=message.guild.id if message.guild else None,
            channel_id=message.channel.id, author_id=message.author.id, question=question,
            context=context, answer=generation.text.strip(), question_message_id=message.id,
            answer_message_id=last.id, adapter_name=route.adapter,
            adapter_version=route.version, latency_ms=generation.latency_ms,
            recalled_from=getattr(getattr(generation, "recalled", None), "turn_id", None))
        if self.config.feedback.add_reactions:
            for emoji in ("👍", "👎"):
                try:
                    await last.add_reaction(emoji)
                except discord.HTTPException as exc:
                    log.warning("could not add %s under answer %d: %s", emoji, last.id, exc)
                    break


async def setup(bot) -> None:
    await bot.add_cog(Chat(bot))

