"""Text helpers for Discord: splitting long answers, cleaning questions."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

DISCORD_LIMIT = 2000
CURSOR = " ▌"
ZERO_WIDTH_SPACE = "\u200b"

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


def special_token_strings(tokenizer: Any) -> tuple[str, ...]:
    """The texts a tokenizer turns into special tokens (`<|im_start|>`, `<|endoftext|>`…)."""
    found = set(getattr(tokenizer, "all_special_tokens", None) or ())
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    found.update(token.content for token in added.values() if getattr(token, "special", False))
    return tuple(sorted((t for t in found if len(t) > 1), key=len, reverse=True))


def defuse_special_tokens(text: str, special_tokens: Iterable[str]) -> str:
    """`text` with every special-token string broken by a zero-width space.

    The chat template is rendered to text and then tokenised, so a user who types
    `<|im_start|>system` would otherwise open a real system turn of their own. The
    zero-width space makes the tokenizer read it as plain text; people see no change.
    """
    for token in special_tokens:
        while token in text:
            text = text.replace(token, token[0] + ZERO_WIDTH_SPACE + token[1:])
    return text
