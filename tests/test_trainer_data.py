"""Training data (trainer/data.py, trainer/datafiles.py): file formats and shapes,
line-numbered errors, de-duplication, the split."""

from __future__ import annotations

import json
import random

import pytest

from tests.conftest import ROOT
from trainer.__main__ import main
from trainer.data import (
    DataError,
    Example,
    build_splits,
    data_hash,
    is_held_out,
    load_from_db,
)
from trainer.datafiles import read_examples

GSM8K = ROOT.parent / "shared" / "data" / "gsm8k"


def write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def test_every_format_and_shape(tmp_path):
    jsonl = write(tmp_path / "a.jsonl", "\n".join(json.dumps(row) for row in [
        {"question": " What is 2+2? ", "answer": "4"},
        {"prompt": "Capital of France?", "completion": "Paris.", "system": "Be terse."},
        {"messages": [{"role": "system", "content": "Only maths."},
                      {"role": "user", "content": "1+1?"},
                      {"role": "assistant", "content": "2"},
                      {"role": "user", "content": "and 2+2?"},
                      {"role": "assistant", "content": "4"},
                      {"role": "user", "content": "thanks"}]},
    ]) + "\n\n")
    [qa, pc, chat] = read_examples(jsonl)
    assert (qa.question, qa.answer, qa.system, qa.source) == ("What is 2+2?", "4", "",
                                                                "a.jsonl:1")
    assert (pc.question, pc.answer, pc.system) == ("Capital of France?", "Paris.", "Be terse.")
    # the last assistant turn is the target; the turn after it has no answer and is dropped
    assert (chat.question, chat.answer, chat.system) == ("and 2+2?", "4", "Only maths.")
    assert chat.history == [{"role": "user", "content": "1+1?"},
                            {"role": "assistant", "content": "2"}]

    listing = write(tmp_path / "b.json", json.dumps(
        [{"question": "Q1?", "answer": "A1"}, {"prompt": "Q2?", "completion": "A2"}], indent=1))
    assert [(e.question, e.answer) for e in read_examples(listing)] == [("Q1?", "A1"),
                                                                         ("Q2?", "A2")]
    table = write(tmp_path / "c.csv", 'Prompt,Completion\n"Two\nlines?",yes\nplain?,"no, sir"\n')
    assert [(e.question, e.answer, e.source) for e in read_examples(table)] == [
        ("Two\nlines?", "yes", "c.csv:2"), ("plain?", "no, sir", "c.csv:4")]
    text = write(tmp_path / "d.txt", "# comment\nWhat is up?\tThe sky.\nQ: Who? A: Me.\n")
    assert [(e.question, e.answer) for e in read_examples(text)] == [
        ("What is up?", "The sky."), ("Who?", "Me.")]


def test_gsm8k_rows_as_they_are():
    if not (GSM8K / "test.jsonl").is_file():
        pytest.skip(f"GSM8K not found at {GSM8K} (shared data of the project)")
    examples = read_examples(GSM8K / "test.jsonl")
    assert len(examples) == 1319
    assert examples[0].question.startswith("Janet")
    assert examples[0].answer.endswith("#### 18")


def test_bad_lines_are_all_reported_with_file_and_line(tmp_path):
    path = write(tmp_path / "bad.jsonl", "\n".join([
        json.dumps({"question": "ok?", "answer": "ok"}),
        "{not json",
        "",
        json.dumps({"question": "no answer?"}),
        json.dumps({"messages": [{"role": "user", "content": "hi"}]}),
        json.dumps(["a", "list"]),
        json.dumps({"text": "unknown shape"}),
    ]) + "\n")
    with pytest.raises(DataError) as caught:
        read_examples(path)
    message = str(caught.value)
    assert f"{path}:2: not valid JSON" in message
    assert f"{path}:4: 'answer' must be a non-empty string" in message
    assert f"{path}:5: 'messages' has no assistant turn" in message
    assert f"{path}:6: expected an object" in message
    assert f"{path}:7: unknown shape (keys: text)" in message
    assert ":1:" not in message and len(caught.value.problems) == 5

    listing = write(tmp_path / "bad.json", '[\n  {"question": "a", "answer": "b"},\n'
                                           '  {"question": "c"}\n]')
    with pytest.raises(DataError, match=rf"{listing}:3: 'answer' must be"):
        read_examples(listing)
    table = write(tmp_path / "bad.csv", "q,a\nx,y\n")
    with pytest.raises(DataError, match=r"bad.csv:1: the header must name"):
        read_examples(table)
    text = write(tmp_path / "bad.txt", "fine?\tyes\nno separator here\n")
    with pytest.raises(DataError, match=r"bad.txt:2: expected 'question<TAB>answer'"):
        read_examples(text)
    with pytest.raises(DataError, match="unknown file type .xml"):
        read_examples(write(tmp_path / "x.xml", "<a/>"))


def examples(n: int, start: int = 0) -> list[Example]:
    return [Example(f"Question number {i}?", f"Answer {i}.") for i in range(start, start + n)]


def held_out_questions(items: list[Example], salt: str = "faq", seed: int = 0) -> set[str]:
    splits, _ = build_splits(items, salt=salt, held_out_fraction=0.2, validation_fraction=0.1,
                             seed=seed)
    return set(splits["held_out"]["question"])


def test_held_out_split_is_stable_and_independent_of_order():
    base = examples(300)
    held = held_out_questions(base)
    assert 30 < len(held) < 90  # about 20 %
    shuffled = base[:]
    random.Random(7).shuffle(shuffled)
    assert held_out_questions(shuffled, seed=123) == held  # order and seed do not matter
    grown = held_out_questions(base + examples(100, start=300))
    assert held <= grown  # new pairs never move old ones across the split
    # the same question in another case or spacing, with another answer, lands on its side
    variant = [Example(f"  QUESTION   number {i}? ", "different") for i in range(300)]
    assert [is_held_out(e.question, "faq", 0.2) for e in variant] == [
        e.question in held for e in base]
    assert held_out_questions(base, salt="other") != held  # fixed per adapter, not global
    splits, counts = build_splits(base, salt="faq", held_out_fraction=0.2,
                                  validation_fraction=0.1, seed=0)
    assert counts.train + counts.validation + counts.held_out == 300
    assert not set(splits["train"]["question"]) & held


def test_duplicates_are_dropped_after_normalisation():
    items = [Example("What is X?", "Y."), Example("what  is x?", " y. "),
             Example("What is X?", "Z.")]
    splits, counts = build_splits(items, salt="a", held_out_fraction=0.0,
                                  validation_fraction=0.0, seed=0)
    assert counts.duplicates == 1 and counts.train == 2
    assert data_hash(items) == data_hash(list(reversed(items)))


def test_prepare_command_reports_skipped_lines(tmp_path, capsys):
    raw = write(tmp_path / "raw.txt", "What is one?\tOne.\nQ: What is two? A: Two.\n"
                                      "just a sentence\n\nwhat is ONE?\tone.\n")
    out = tmp_path / "clean.jsonl"
    assert main(["prepare", str(raw), str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"skipped {raw}:3: expected 'question<TAB>answer'" in printed
    assert "wrote 2 example(s)" in printed and "dropped 1 duplicate(s)" in printed
    assert [json.loads(line) for line in out.read_text().splitlines()] == [
        {"question": "What is one?", "answer": "One."},
        {"question": "What is two?", "answer": "Two."}]
    assert read_examples(out)  # what prepare writes, train reads


async def test_approved_pairs_from_the_database_with_edits(db):
    await db.create_adapter("faq", "base")
    first = await db.record_turn(channel_id=1, author_id=2, question="Hours?",
                                 answer="9 to 5", adapter_name="faq",
                                 context=[{"role": "user", "content": "hello"},
                                          {"role": "assistant", "content": "hi"}])
    second = await db.record_turn(channel_id=1, author_id=2, question="Where?",
                                  answer="wrong", adapter_name="faq")
    other = await db.record_turn(channel_id=1, author_id=2, question="Other?", answer="x")
    for turn in (first, second, other):
        await db.cast_vote(turn, 9, 1, min_score=1)
    await db.decide_review(first, "approved", reviewer_id=9)
    await db.decide_review(second, "approved", reviewer_id=9, edited_answer="Room 4")
    await db.decide_review(other, "approved", reviewer_id=9)
    loaded = load_from_db(db.path, "faq")
    assert [(e.question, e.answer) for e in loaded] == [("Hours?", "9 to 5"),
                                                        ("Where?", "Room 4")]
    assert loaded[0].history[0] == {"role": "user", "content": "hello"}
    assert loaded[1].source == f"db:turn {second}"


def test_other_ways_to_ask_follow_their_pair(tmp_path):
    rows = [{"question": f"What is code {i}?", "answer": f"Code {i} is {i * 7}.",
             "also_asked": [f"Which number is code {i}?", f"what is CODE {i}?",
                            f"Which number is code {i}?", f"Code {i} means?"]}
            for i in range(60)]
    path = write(tmp_path / "codes.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    examples = read_examples(path)
    # the question itself (in any case) and repeats are not other ways to ask
    assert examples[3].also_asked == ["Which number is code 3?", "Code 3 means?"]
    splits, counts = build_splits(examples, salt="codes", held_out_fraction=0.25,
                                  validation_fraction=0.0, seed=0)
    assert counts.also_asked == 120 and counts.train + counts.held_out == 180
    for split in ("train", "held_out"):
        by_answer: dict[str, set[str]] = {}
        for row in splits[split]:
            by_answer.setdefault(row["answer"], set()).add(row["question"])
        # every pair on this side brought both its rewordings, with its answer, and no
        # rewording of a pair on the other side crossed over
        assert by_answer and all(len(qs) == 3 for qs in by_answer.values())
    held = {r["answer"] for r in splits["held_out"]}
    assert held and not held & {r["answer"] for r in splits["train"]}
    reworded = [r for r in splits["train"] if r["question"].startswith("Which number")]
    assert all(r["source"].endswith("(also asked)") and r["history"] == "[]"
               and r["also_asked"] == "[]" for r in reworded)
    # the same pair again (an approved pair and a file) brings its own ways to ask along
    merged, _ = build_splits([Example("Q?", "A.", also_asked=["Q one?"]),
                              Example("q?", "a.", also_asked=["Q one?", "Q two?"])],
                             salt="m", held_out_fraction=0, validation_fraction=0, seed=0)
    assert sorted(merged["train"]["question"]) == ["Q one?", "Q two?", "Q?"]
    # a new way to ask is new data: the fingerprint that decides "nothing new" changes
    fewer = [Example(e.question, e.answer, also_asked=e.also_asked[:1]) for e in examples]
    assert data_hash(fewer) != data_hash(examples)


def test_also_asked_must_be_a_list_of_questions(tmp_path):
    path = write(tmp_path / "bad.jsonl",
                 json.dumps({"question": "Q?", "answer": "A.", "also_asked": ["Fine?"]}) + "\n"
                 + json.dumps({"question": "Q2?", "answer": "A.", "also_asked": "Other?"}) + "\n"
                 + json.dumps({"question": "Q3?", "answer": "A.", "also_asked": ["", 4]}) + "\n")
    with pytest.raises(DataError) as caught:
        read_examples(path)
    message = str(caught.value)
    assert f"{path}:2: 'also_asked' must be a list of questions" in message
    assert f"{path}:3: 'also_asked' must be a list" in message and f"{path}:1:" not in message


def test_a_rewording_never_carries_a_question_across_the_split():
    pairs = [Example(f"Who makes coffee on day {i}?", "Sam.") for i in range(20)]
    held = [e for e in pairs if is_held_out(e.question, "cafe", 0.5)]
    taught = [e for e in pairs if not is_held_out(e.question, "cafe", 0.5)]
    assert held and len(taught) >= 2
    examples = [
        # a reviewer rewords a taught pair as a held-out question, and the other way round
        Example(taught[0].question, "Sam.", also_asked=[held[0].question, "Who brews?"]),
        Example(held[0].question, "Sam.", also_asked=[taught[1].question, "Coffee maker?"]),
        *taught[1:], *held[1:]]
    splits, counts = build_splits(examples, salt="cafe", held_out_fraction=0.5,
                                  validation_fraction=0.0, seed=0)
    train = set(splits["train"]["question"])
    judged = set(splits["held_out"]["question"])
    assert not train & judged
    assert "Who brews?" in train and "Coffee maker?" in judged  # the rest are kept
    assert counts.also_asked == 2
