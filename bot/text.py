"""Text helpers for Discord: splitting long answers, cleaning questions."""

from __future__ import annotations

import re

from trainer.formatting import (  # noqa: F401  (the chat cog and tests import them here)
    ZERO_WIDTH_SPACE,
    defuse_special_tokens,
    special_token_strings,
)

DISCORD_LIMIT = 2000
CURSOR = " ▌"

_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")


def split_message(text: str, limit: int = DISCORD_LIMIT) -> list[str]:
    """Cut `text` into pieces of at most `limit` characters.

    Prefer a paragraph break, then a line break, then a sentence end, then a
    space; cut mid-word only when a single word is longer than the limit. A
    code block cut in two is closed and reopened so both halves render.
    """
    if limit < 20:
        raise ValueError("limit too small to split sensibly")
    pieces: list[str] = []
    rest = text.strip()
    while len(rest) > limit:
        window = rest[:limit]
        cut = _best_cut(window)
        piece, rest = rest[:cut].rstrip(), rest[cut:].lstrip()
        if piece.count("```") % 2 == 1:  # inside a code block: close it, reopen next
            if len(piece) + 4 > limit:
                overflow = len(piece) + 4 - limit
                piece, rest = piece[:-overflow], piece[-overflow:] + rest
            piece += "\n```"
            rest = "```\n" + rest
        pieces.append(piece)
    if rest:
        pieces.append(rest)
    return pieces


def _best_cut(window: str) -> int:
    floor = len(window) // 3  # never leave a tiny first piece
    for pattern in ("\n\n", "\n"):
        at = window.rfind(pattern)
        if at > floor:
            return at + len(pattern)
    ends = [m.end() for m in _SENTENCE_END.finditer(window) if m.end() > floor]
    if ends:
        return ends[-1]
    at = window.rfind(" ")
    return at + 1 if at > floor else len(window)


def strip_bot_mention(content: str, bot_id: int) -> str:
    """The question without the `@bot` that addressed it."""
    return re.sub(rf"<@!?{bot_id}>", "", content).strip()
