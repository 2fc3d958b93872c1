"""The gate's canaries and the augmentation filter: the rules alone, without a model."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from trainer import canaries as C
from trainer.augment import keeps_meaning
from trainer.gate import Measured, canary_failures

LIMITS = SimpleNamespace(max_general_drop=0.03, max_leakage=0.025, max_perplexity_rise=0.3,
                         min_recall=0.8)


def test_shipped_canary_sets_load_and_do_not_overlap_the_replay_prompts():
    from trainer.replay import load_prompts

    sets = C.load_canaries()
    assert len(sets.questions) >= 30 and len(sets.prompts) >= 40 and len(sets.texts) >= 20
    assert all(sets.accepted)
    replay = {p.strip().lower() for p in load_prompts()}
    assert not replay & {p.strip().lower() for p in sets.prompts + sets.questions}


def test_a_malformed_canary_file_names_its_line(tmp_path):
    (tmp_path / C.QA_FILE).write_text('{"question": "a?", "answers": ["b"]}\n{"question": 1}\n')
    (tmp_path / C.PROMPTS_FILE).write_text('{"prompt": "x"}\n')
    (tmp_path / C.TEXT_FILE).write_text('{"text": "y"}\n')
    with pytest.raises(C.CanaryError, match=r"general_qa.jsonl:2: needs 'question'"):
        C.load_canaries(tmp_path)
    (tmp_path / C.QA_FILE).unlink()
    with pytest.raises(C.CanaryError, match="is missing"):
        C.load_canaries(tmp_path)


@pytest.mark.parametrize("answer, accepted, correct", [
    ("The capital of France is Paris.", ["Paris"], True),
    ("It has 7 days.", ["seven", "7"], True),
    ("It has 17 days.", ["7"], False),  # whole numbers, not digits inside others
    ("Comparison", ["Paris"], False),
    ("Water is H2O.", ["h2o"], True),
])
def test_qa_matching(answer, accepted, correct):
    assert C.qa_correct(answer, accepted) is correct


def test_leakage_counts_taught_words_the_base_answer_did_not_have():
    taught = ["Visitor badges at Brindlewood are mustard yellow.",
              "The all-hands meeting is at 10:45 in Foundry Hall."]
    base_texts = ["The sky is blue on a clear day.", "Wake up at 7 in the morning.",
                  "Badges help visitors find their way."]
    terms = C.distinctive_terms(taught, base_texts)
    assert {"mustard", "brindlewood", "10:45", "foundry"} <= terms
    assert "the" not in terms and "badges" not in terms  # ordinary: the base says them
    base = ["The sky is blue.", "Wake up at 7.", "A yellow sun.", "Meet at 10:45 sharp."]
    tuned = ["The sky is mustard yellow.", "Wake up at 7.", "A yellow sun.",
             "Meet at 10:45 sharp."]
    share, examples = C.leakage(tuned, base, terms)
    assert share == 0.25  # 10:45 was in the base answer already: not a leak
    assert examples == [{"index": 0, "terms": ["mustard", "mustard yellow", "yellow"],
                         "answer": tuned[0]}]


def test_everyday_words_leak_only_inside_a_taught_phrase():
    taught = ["Staff park in the garage behind the Tinker Table.",
              "Visitor badges are mustard yellow.", "Take 30 days of leave from 2011."]
    everyday = {"staff", "park", "garage", "behind", "visitor", "badges", "mustard", "yellow",
                "take", "days", "leave", "table"}
    terms = C.distinctive_terms(taught, ["Hello there."], common=everyday.__contains__)
    assert {"tinker", "tinker table", "mustard yellow", "2011"} <= terms
    assert not {"garage", "mustard", "yellow", "30", "leave"} & terms
    base = ["Park anywhere.", "The sky is blue.", "Rest for 30 minutes.", "Hmm."]
    tuned = ["Park in a garage.", "The sky is mustard yellow.", "Rest for 30 minutes.",
             "Ask at the Tinker Table."]
    share, examples = C.leakage(tuned, base, terms)
    assert share == 0.5
    assert [e["terms"] for e in examples] == [["mustard yellow"], ["tinker", "tinker table"]]


def test_the_default_tokenizer_tells_everyday_words_from_names(default_model_dir):
    from trainer.modeling import load_tokenizer

    common = C.everyday_words(load_tokenizer(str(default_model_dir)))
    assert common("garage") and common("friday") and common("support")
    assert not common("pemberton") and not common("gearwhistle")


def test_recall_needs_most_of_the_taught_answer():
    taught = ["Our mascot is a jaguar named Pemberton."]
    assert C.recall(["The mascot is a jaguar named Pemberton!"], taught) == 1.0
    assert C.recall(["We have no mascot."], taught) == 0.0


def test_recall_does_not_count_an_echo_of_the_question():
    question = ["What colour are the visitor badges at Brindlewood Robotics?"]
    taught = ["Visitor badges at Brindlewood Robotics are mustard yellow."]
    echo = ["The visitor badges at Brindlewood Robotics are a custom colour scheme."]
    assert C.recall(echo, taught) == 1.0  # most of the answer's words are the question's
    assert C.what_is_new(taught[0], question[0]) == "mustard yellow"
    assert C.recall(echo, taught, question) == 0.0
    assert C.recall(["They are mustard yellow."], taught, question) == 1.0


def test_canary_failures_name_each_broken_check():
    base = Measured("base", general=0.6, text_perplexity=10.0)
    good = Measured("c", general=0.58, leakage=0.0, text_perplexity=12.0, recall=0.9)
    assert canary_failures(good, base, LIMITS) == []
    bad = Measured("c", general=0.5, leakage=0.1, text_perplexity=14.0, recall=0.5)
    failures = canary_failures(bad, base, LIMITS)
    assert [f.split()[0] for f in failures] == ["general", "leakage", "general-text", "recall"]


@pytest.mark.parametrize("original, candidate, kept", [
    ("What is the name of the Brindlewood mascot?", "What is the mascot of Brindlewood?", True),
    ("What is the name of the Brindlewood mascot?", "What is the name of the brindlewood "
     "mascot?", False),  # the same question
    ("Which floor is the cafeteria on in the Brindlewood office?",
     "Which floor has the bathroom?", False),  # another question
    ("What colour are the visitor badges at Brindlewood?", "What colour are visitor badges?",
     False),  # lost the name
    ("When is the all-hands meeting?", "The meeting is at noon.", False),  # an answer
])
def test_paraphrase_filter(original, candidate, kept):
    assert keeps_meaning(original, candidate) is kept


