"""Splitting answers for Discord's 2,000-character limit."""

from __future__ import annotations

import pytest

from bot.text import split_message, strip_bot_mention

SENTENCE = "This sentence is exactly fifty characters long ok. "


@pytest.mark.parametrize(("text", "limit", "expected_pieces"), [
    ("short", 2000, ["short"]),
    ("", 2000, []),
    ("a" * 2000, 2000, ["a" * 2000]),
])
def test_no_split_needed(text, limit, expected_pieces):
    assert split_message(text, limit) == expected_pieces


def test_splits_at_sentence_boundaries_within_the_limit():
    text = SENTENCE * 100  # 5,000 characters
    pieces = split_message(text)
    assert len(pieces) == 3
    assert all(len(p) <= 2000 for p in pieces)
    assert all(p.endswith("ok.") for p in pieces)
    assert " ".join(pieces) == text.strip()


def test_prefers_line_and_paragraph_breaks():
    text = ("line one\n" * 150) + "\n" + ("second part " * 100)
    pieces = split_message(text, 1500)
    assert pieces[0].endswith("line one")
    assert all(len(p) <= 1500 for p in pieces)


def test_a_giant_word_is_cut_hard():
    pieces = split_message("x" * 4500)
    assert [len(p) for p in pieces] == [2000, 2000, 500]


def test_code_blocks_are_closed_and_reopened():
    text = "Here:\n```python\n" + "print('hello world')\n" * 150 + "```\nDone."
    pieces = split_message(text)
    assert len(pieces) >= 2
    for piece in pieces:
        assert piece.count("```") % 2 == 0, piece[-40:]
        assert len(piece) <= 2000


def test_mention_is_removed():
    assert strip_bot_mention("<@123> what is up?", 123) == "what is up?"
    assert strip_bot_mention("hey <@!123>", 123) == "hey"
    assert strip_bot_mention("<@456> hi", 123) == "<@456> hi"
