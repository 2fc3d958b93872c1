"""Weighted sampling: votes and recency decide how often an approved pair is drawn.

The weights themselves (a table of cases), the epoch plan that draws with them
(heavier pairs drawn more often, seeded, an epoch stays the data size, shards
for several processes), the default that changes nothing, and the settings
travelling from config.toml and the database into a run and its training_meta.
"""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest

from storage import SyncStore
from tests.conftest import fast_training_toml
from trainer.data import DataError, Example, build_splits, load_from_db, sampling_weights
from trainer.distributed import EpochPlan, World
from trainer.formatting import LengthGroupedBatches
from trainer.modeling import choose_placement
from trainer.pipeline import TrainRequest, run_training
from trainer.train import Recipe, TrainConfig

DAY = "2026-03-{:02d}T12:00:00.000Z"


@pytest.mark.parametrize(("votes", "dates", "options", "expected"), [
    # off: uniform, whatever the votes and dates
    ([5, 2, 0], [DAY.format(9), DAY.format(1), ""],
     {"vote_weight": 0.0, "half_life_days": 0.0}, None),
    # one extra unit of weight per vote above the baseline; never below 1
    ([2, 3, 6, 0], ["", "", "", ""], {"vote_weight": 1.0, "half_life_days": 0.0},
     [1.0, 2.0, 5.0, 1.0]),
    ([4, 2], ["", ""], {"vote_weight": 0.25, "half_life_days": 0.0}, [1.5, 1.0]),
    # half the weight per half-life of age, counted from the newest pair; files never decay
    ([2, 2, 2, 0], [DAY.format(21), DAY.format(11), DAY.format(1), ""],
     {"vote_weight": 0.0, "half_life_days": 10.0}, [1.0, 0.5, 0.25, 1.0]),
    # both at once multiply
    ([4, 2], [DAY.format(11), DAY.format(21)], {"vote_weight": 1.0, "half_life_days": 10.0},
     [1.5, 1.0]),
    # every weight equal (only files): uniform, the plain shuffle
    ([0, 0, 0], ["", "", ""], {"vote_weight": 1.0, "half_life_days": 5.0}, None),
])
def test_sampling_weights(votes, dates, options, expected):
    weights = sampling_weights(votes, dates, vote_baseline=2, **options)
    assert weights == (None if expected is None else pytest.approx(expected))


def test_a_bad_timestamp_is_a_clear_error():
    with pytest.raises(DataError, match="created_at 'yesterday' is not an ISO-8601 time"):
        sampling_weights([3, 3], ["yesterday", DAY.format(1)], vote_weight=0.0,
                         vote_baseline=2, half_life_days=3.0)


LENGTHS = [10 + (i * 7) % 23 for i in range(40)]


def epochs(plan: EpochPlan, n: int = 20) -> list[list[list[int]]]:
    return [plan.epoch(e) for e in range(n)]


def test_default_plan_is_the_unweighted_length_grouped_order():
    plan = EpochPlan(LENGTHS, 4, seed=7, weights=None)
    plain = LengthGroupedBatches(LENGTHS, 4, seed=7)
    assert len(plan) == len(plain) == 10
    assert epochs(plan, 5) == [plain.epoch(e) for e in range(5)]
    for batches in epochs(plan, 5):  # every example exactly once per epoch
        assert sorted(i for b in batches for i in b) == list(range(40))


def test_heavier_examples_are_drawn_more_often_and_an_epoch_stays_the_data_size():
    weights = [1.0] * 40
    weights[3] = 20.0
    weights[17] = 5.0
    plan = EpochPlan(LENGTHS, 4, seed=7, weights=weights)
    counts: Counter[int] = Counter()
    for batches in epochs(plan, 30):
        assert len(batches) == len(plan) == 10
        drawn = [i for b in batches for i in b]
        assert len(drawn) == 40  # as many draws as examples
        counts.update(drawn)
    total = sum(weights)
    expected = {i: 30 * 40 * w / total for i, w in enumerate(weights)}
    light = [counts[i] for i in range(40) if weights[i] == 1.0]
    assert counts[3] == pytest.approx(expected[3], rel=0.25)  # about 407 of 1,200 draws
    assert counts[17] == pytest.approx(expected[17], rel=0.35)
    assert counts[3] > 10 * (sum(light) / len(light))
    assert counts[3] > counts[17] > max(light) / 2


def test_weighted_plan_is_reproducible_with_the_seed():
    weights = [1.0 + (i % 5) for i in range(40)]
    first = epochs(EpochPlan(LENGTHS, 4, seed=11, weights=weights), 4)
    assert first == epochs(EpochPlan(LENGTHS, 4, seed=11, weights=weights), 4)
    assert first != epochs(EpochPlan(LENGTHS, 4, seed=12, weights=weights), 4)
    assert first[0] != first[1]  # a new draw every epoch


@pytest.mark.parametrize("n", [40, 41])
@pytest.mark.parametrize("weighted", [False, True])
def test_several_processes_share_each_epoch(n, weighted):
    lengths = LENGTHS[:n] if n <= 40 else LENGTHS + [12]
    weights = [1.0 + (i % 3) for i in range(n)] if weighted else None
    plans = [EpochPlan(lengths, 4, seed=5, weights=weights, world=World(rank, 2, rank))
             for rank in (0, 1)]
    assert len(plans[0]) == len(plans[1]) == math.ceil(math.ceil(n / 2) / 4)  # same steps
    for epoch in range(3):
        shares = [[i for b in plan.epoch(epoch) for i in b] for plan in plans]
        assert len(shares[0]) == len(shares[1]) == -(-n // 2)  # padded to equal shares
        everything = plans[0].draw(epoch)
        assert everything == plans[1].draw(epoch)  # the same draw on every rank
        together = Counter(shares[0]) + Counter(shares[1])
        if n % 2 == 0:  # the draw split between the ranks, nothing lost or repeated
            assert together == Counter(everything)
        else:  # one example repeated to even the shares out
            assert sum((together - Counter(everything)).values()) == 1
            assert not Counter(everything) - together
        if not weighted:
            assert set(everything) == set(range(n))


def test_a_recipe_weighs_its_pairs_by_votes(tiny_model_dir, tmp_path):
    items = [Example(f"Question {w}?", f"Answer {w}.", votes=2, created_at=DAY.format(1))
             for w in "abcdefg"]
    items.append(Example("Liked question?", "Liked answer.", votes=12,
                         created_at=DAY.format(1)))
    splits, _ = build_splits(items, salt="t", held_out_fraction=0.0, validation_fraction=0.0,
                             seed=0)
    cfg = TrainConfig(batch_size=4, max_steps=2, vote_weight=1.0, vote_baseline=2, seed=1)
    run = Recipe(cfg, model_source=str(tiny_model_dir), placement=choose_placement("cpu"),
                 run_dir=tmp_path / "run", progress=False)
    run.setup(splits)
    liked = run.encoded["train"]["question"].index("Liked question?")
    assert run.batches.weights[liked] == 11.0
    assert sorted(set(run.batches.weights)) == [1.0, 11.0]
    counts = Counter(i for batches in epochs(run.batches, 20) for b in batches for i in b)
    assert counts[liked] > 3 * max(c for i, c in counts.items() if i != liked)
    run.train()
    run.cleanup()


async def test_votes_and_dates_reach_the_run_from_the_database(db, make_config,
                                                               tiny_model_dir):
    await db.create_adapter("faq", "base")
    for i in range(10):
        turn = await db.record_turn(channel_id=1, author_id=2, question=f"Question {i}?",
                                    answer=f"Answer number {i}.", adapter_name="faq")
        for user in range(7 if i == 0 else 2):  # the first pair: 7 net votes, the rest 2
            await db.cast_vote(turn, 100 + user, 1, min_score=2)
        await db.decide_review(turn, "approved", reviewer_id=9)
    loaded = load_from_db(db.path, "faq")
    assert [e.votes for e in loaded] == [7] + [2] * 9
    assert all(e.created_at.endswith("Z") for e in loaded)

    config = _with_database(make_config(
        f'[model]\nname = "{tiny_model_dir.as_posix()}"\n'
        "[feedback]\nmin_score = 2\n"
        "[training]\nbatch_size = 4\nvote_weight = 0.5\nrecency_half_life_days = 30.0\n"
        "validation_fraction = 0.0\neval_fraction = 0.0\n" + fast_training_toml()), db.path)
    request = TrainRequest(adapter="faq", from_db=True, overrides={"max_steps": 2})
    outcome = run_training(config, request, progress=False)
    meta = json.loads((outcome.path / "training_meta.json").read_text())
    hyper = meta["hyperparameters"]
    assert (hyper["vote_weight"], hyper["recency_half_life_days"], hyper["vote_baseline"]) == (
        0.5, 30.0, 2)
    assert meta["data"]["from_db"] and meta["data"]["read"] == 10
    assert meta["processes"] == 1
    with SyncStore(db.path) as store:
        assert [v.version for v in store.versions("faq")] == [1]


def _with_database(config, path):
    """The same config, with its data directory where the test database lives."""
    from dataclasses import replace

    storage = replace(config.storage, data_dir=str(path.parent), database=path.name)
    return replace(config, storage=storage)
