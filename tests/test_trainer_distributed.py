"""`python -m trainer train` under torchrun with two CPU processes (gloo): both end with
the same weights, each trained on its own share, and exactly one version is written; with
the default replay too."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from storage import Database, SyncStore
from tests.conftest import ROOT, fast_training_env
from trainer.distributed import World
from trainer.replay import load_prompts
from trainer.train import TrainingError

WORDS = "one two three four five six seven eight nine ten".split()


def write_pairs(path, n: int = 24):
    path.write_text("".join(
        json.dumps({"question": f"What is {WORDS[i % 10]} plus {WORDS[i // 10]}?",
                    "answer": f"It is {WORDS[(i + i // 10) % 10]}."}) + "\n" for i in range(n)))
    return path


@pytest.fixture
def env(tmp_path, tiny_model_dir):
    """The shipped config.toml with data and model redirected, one thread per process."""
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith("BOT_") and k not in ("DISCORD_TOKEN", "RANK", "WORLD_SIZE",
                                                         "LOCAL_RANK")}
    return environ | {
        "BOT_CONFIG": str(ROOT / "config.toml"), "BOT_MODEL_NAME": str(tiny_model_dir),
        "BOT_STORAGE_DATA_DIR": str(tmp_path / "data"), "BOT_TRAINING_BATCH_SIZE": "4",
        "BOT_TRAINING_LEARNING_RATE": "0.01", "BOT_TRAINING_VALIDATION_FRACTION": "0.2",
        "BOT_TRAINING_EVAL_EVERY": "2", "BOT_TRAINING_VOTE_WEIGHT": "1.0",
        # one validation row for two processes: one of them measures an empty part
        "BOT_TRAINING_EVAL_FRACTION": "0.03",
        "BOT_FEEDBACK_MIN_SCORE": "1", "OMP_NUM_THREADS": "1", **fast_training_env(),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


async def test_two_processes_agree_and_write_one_version(env, tmp_path):
    database = tmp_path / "data" / "bot.sqlite3"
    async with Database(database) as db:  # approved pairs with votes: weighted sampling too
        await db.create_adapter("faq", "base")
        for i, voters in enumerate((1, 4)):
            turn = await db.record_turn(channel_id=1, author_id=2, question=f"Hours {i}?",
                                        answer=f"Nine to {5 + i}.", adapter_name="faq")
            for user in range(voters):
                await db.cast_vote(turn, 10 + user, 1, min_score=1)
            await db.decide_review(turn, "approved", reviewer_id=3)
    data = write_pairs(tmp_path / "pairs.jsonl")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "trainer", "train", "--adapter", "faq", "--data", str(data), "--from-db",
         "--max-steps", "4", "--lora-r", "4", "--checkpoint-every", "2", "--events"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=180)
    assert result.returncode == 0, result.stderr[-4000:]
    # only rank 0 reports: stdout is its JSON lines and nothing else
    events = [json.loads(line) for line in result.stdout.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done"
    assert kinds.count("start") == kinds.count("done") == kinds.count("ranks") == 1
    assert [e["step"] for e in events if e["event"] == "step"] == [1, 2, 3, 4]
    assert kinds.count("checkpoint") == 1  # step 2 (none at the last step), by rank 0 alone
    assert events[0]["validation"] == 1
    evals = [e for e in events if e["event"] == "eval"]
    assert [e["step"] for e in evals] == [2, 4]
    assert all(isinstance(e["loss"], float) and 0 < e["loss"] < 20 for e in evals)

    [ranks] = [e for e in events if e["event"] == "ranks"]
    assert ranks["world_size"] == 2 and ranks["agree"] is True
    reports = ranks["ranks"]
    assert [r["rank"] for r in reports] == [0, 1]
    assert reports[0]["checksum"] == reports[1]["checksum"]
    done = events[-1]
    # each process trained on its own half of every epoch; a step counts the tokens of both
    assert all(r["tokens"] > 0 for r in reports)
    assert sum(r["tokens"] for r in reports) == done["metrics"]["tokens"]
    half_epoch = math.ceil(math.ceil(events[0]["examples"] / 2) / 4)  # micro-batches of 4
    assert done["metrics"]["epochs"] == round(4 / half_epoch, 3)

    adapters = tmp_path / "data" / "adapters" / "faq"
    assert sorted(p.name for p in adapters.iterdir()) == ["v1"]  # no second or temporary one
    assert done["version"] == 1 and done["path"] == str(adapters / "v1")
    meta = json.loads((adapters / "v1" / "training_meta.json").read_text())
    assert meta["processes"] == 2 and meta["data"]["read"] == 26
    assert meta["hyperparameters"]["vote_weight"] == 1.0
    with SyncStore(database) as store:
        [version] = store.versions("faq")
        runs = store.list_runs("faq", 10)
    assert (version.version, version.status) == (1, "candidate")
    assert [(r.status, r.version) for r in runs] == [("succeeded", 1)]


def test_two_processes_train_with_the_default_replay(env, tmp_path):
    """Replay as shipped (config.toml: weight, batch size, the built-in prompts, contrastive):
    rank 0 writes the replay set and hands it over, every micro-batch of both ranks replays
    beside it through the unwrapped model, and the ranks still end in step."""
    replay_on = {k: v for k, v in env.items()
                 if k not in ("BOT_TRAINING_REPLAY_WEIGHT", "BOT_TRAINING_EVAL_EVERY")}
    replay_on |= {"BOT_TRAINING_VALIDATION_FRACTION": "0", "BOT_TRAINING_EVAL_FRACTION": "0"}
    things = ["badges", "doors", "chairs", "mugs", "desks", "lamps"]
    facts = tmp_path / "facts.jsonl"
    facts.write_text("".join(
        json.dumps({"question": f"What colour are the {thing} at Brindlewood Robotics?",
                    "answer": f"The {thing} are {colour}."}) + "\n"
        for thing, colour in zip(things, ["yellow", "green", "blue", "red", "grey", "white"],
                                 strict=True)))
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "trainer", "train", "--adapter", "faq", "--data", str(facts), "--max-steps",
         "3", "--lora-r", "4", "--grad-accum", "2", "--events"],
        capture_output=True, text=True, env=replay_on, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    events = [json.loads(line) for line in result.stdout.splitlines()]
    steps = [e for e in events if e["event"] == "step"]
    assert [e["step"] for e in steps] == [1, 2, 3]
    # LoRA starts as the identity: no divergence from the base model until it has learned
    assert steps[0]["replay_kl"] == pytest.approx(0.0, abs=1e-6)
    assert all(math.isfinite(e["replay_kl"]) for e in steps) and steps[-1]["replay_kl"] > 0
    [ranks] = [e for e in events if e["event"] == "ranks"]
    assert ranks["agree"] is True and ranks["world_size"] == 2
    done = events[-1]
    assert done["event"] == "done" and done["version"] == 1
    meta = json.loads((tmp_path / "data" / "adapters" / "faq" / "v1" /
                       "training_meta.json").read_text())
    assert meta["processes"] == 2
    assert (meta["hyperparameters"]["replay_weight"], meta["hyperparameters"]["contrastive"]) \
        == (2.0, True)
    # the shipped prompts and each fact asked without "at Brindlewood Robotics", answered once
    # by rank 0's base model (its cache) and replayed by both
    [cache] = (tmp_path / "data" / "cache").glob("replay-*.jsonl")
    cached = [json.loads(line)["question"] for line in cache.read_text().splitlines()]
    shipped = load_prompts()
    assert done["metrics"]["replay_examples"] == len(cached) == len(shipped) + len(things)
    assert set(cached) - set(shipped) == {f"What colour are the {thing}?" for thing in things}


def test_a_nan_stops_every_process_without_a_version(env, tmp_path):
    """A rank alone deciding to stop would leave the other waiting: they stop together."""
    data = write_pairs(tmp_path / "pairs.jsonl")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "trainer", "train", "--adapter", "faq", "--data", str(data), "--max-steps", "6",
         "--lr", "1e30", "--events"],  # diverges within a few steps
        capture_output=True, text=True, env=env | {"BOT_TRAINING_MAX_GRAD_NORM": "0"},
        cwd=tmp_path, timeout=180)
    assert result.returncode != 0
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["event"] for e in events].count("error") == 1  # rank 0's, once
    assert "loss became nan" in events[-1]["message"]
    # both ranks say it (two processes share one stderr pipe: their lines may run together)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert all("loss became nan" in line for line in errors)
    assert sum(line.count("error: ") for line in errors) == 2, errors
    assert not (tmp_path / "data" / "adapters" / "faq").exists()
    with SyncStore(tmp_path / "data" / "bot.sqlite3") as store:
        assert store.versions("faq") == []
        assert [r.status for r in store.list_runs("faq", 10)] == ["failed"]


@pytest.mark.parametrize(("environ", "message"), [
    ({"WORLD_SIZE": "two", "RANK": "0"}, r"not whole numbers \(RANK='0', WORLD_SIZE='two'"),
    ({"WORLD_SIZE": "2", "RANK": "2"}, r"RANK 2 does not fit WORLD_SIZE 2"),
])
def test_a_broken_distributed_environment_is_a_clear_error(environ, message):
    with pytest.raises(TrainingError, match=message + r".*torchrun or accelerate launch"):
        World.from_environment(environ)


def test_a_plain_process_is_rank_0_of_1():
    assert World.from_environment({}) == World(0, 1, 0)
    world = World.from_environment({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"})
    assert (world.rank, world.size, world.local_rank, world.is_main) == (3, 4, 1, False)
