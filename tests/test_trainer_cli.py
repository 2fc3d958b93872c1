"""`python -m trainer` end to end: train in a subprocess against a temporary database,
progress events, clear errors, runs, evaluate and resume; one runner per command."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from storage import Database, SyncStore
from tests.conftest import ROOT, fast_training_env
from trainer.__main__ import COMMANDS, build_parser, main
from trainer.pipeline import TrainRequest, run_training

WORDS = "one two three four five six seven eight nine ten".split()


def write_pairs(path, n: int = 24):
    path.write_text("".join(
        json.dumps({"question": f"What is {WORDS[i % 10]} plus {WORDS[i // 10]}?",
                    "answer": f"It is {WORDS[(i + i // 10) % 10]}."}) + "\n" for i in range(n)))
    return path


@pytest.fixture
def env(tmp_path, tiny_model_dir, monkeypatch):
    """The shipped config.toml with data and model redirected, as the bot would start us."""
    overrides = {"BOT_CONFIG": str(ROOT / "config.toml"), "BOT_MODEL_NAME": str(tiny_model_dir),
                 "BOT_STORAGE_DATA_DIR": str(tmp_path / "data"),
                 "BOT_TRAINING_BATCH_SIZE": "4", "BOT_TRAINING_LEARNING_RATE": "0.01",
                 "BOT_TRAINING_VALIDATION_FRACTION": "0.25", "BOT_TRAINING_EVAL_FRACTION": "0.1",
                 "BOT_TRAINING_EVAL_EVERY": "4", **fast_training_env()}
    for name in [k for k in os.environ if k.startswith("BOT_")]:
        monkeypatch.delenv(name)
    for name, value in overrides.items():
        monkeypatch.setenv(name, value)
    environ = {k: v for k, v in os.environ.items() if k != "DISCORD_TOKEN"}
    return environ


def trainer(args: list[str], environ: dict, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainer", *args], capture_output=True,
                          text=True, env=environ, cwd=cwd, timeout=300)


async def test_train_end_to_end_in_a_subprocess(env, tmp_path):
    database = tmp_path / "data" / "bot.sqlite3"
    async with Database(database) as db:  # the bot's side: an approved, edited pair
        await db.create_adapter("faq", "base", system_prompt="Answer with a number.")
        turn = await db.record_turn(channel_id=1, author_id=2, question="Opening hours?",
                                    answer="dunno", adapter_name="faq")
        await db.cast_vote(turn, 3, 1, min_score=1)
        await db.decide_review(turn, "approved", reviewer_id=3, edited_answer="9 to 5.",
                               also_asked=["When are you open?", "Hours?"])
    data = write_pairs(tmp_path / "pairs.jsonl")
    result = trainer(["train", "--adapter", "faq", "--data", str(data), "--from-db",
                      "--max-steps", "8", "--lora-r", "4", "--events"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]  # only JSON on stdout
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done"
    assert kinds.count("step") == 8 and "eval" in kinds
    steps = [e for e in events if e["event"] == "step"]
    assert [e["step"] for e in steps] == list(range(1, 9))
    assert all(e["loss"] > 0 and e["tokens_per_s"] > 0 for e in steps)
    done = events[-1]
    assert done["version"] == 1 and done["path"].endswith("faq/v1")

    with SyncStore(database) as store:
        [version] = store.versions("faq")
        run = store.conn.execute("SELECT * FROM training_runs").fetchone()
    assert version.status == "candidate" and version.path == "faq/v1"
    assert (run["status"], run["trigger"], run["version"]) == ("succeeded", "cli", 1)
    meta = json.loads((tmp_path / "data" / "adapters" / "faq" / "v1" /
                       "training_meta.json").read_text())
    assert meta["data"]["read"] == 25 and meta["data"]["from_db"]
    assert meta["data"]["also_asked"] == 2  # the reviewer's two other ways to ask
    with SyncStore(database) as store:  # one row for the pair, whatever its rewordings
        rows = store.conn.execute("SELECT turn_id FROM version_pairs").fetchall()
        assert [tuple(r) for r in rows] == [(turn,)]
    taught = (tmp_path / "data" / "adapters" / "faq" / "v1" / "taught.jsonl").read_text()
    asked = {json.loads(line)["question"] for line in taught.splitlines()}
    held = (tmp_path / "data" / "adapters" / "faq" / "v1" / "held_out.jsonl").read_text()
    asked |= {json.loads(line)["question"] for line in held.splitlines()}
    assert {"Opening hours?", "When are you open?", "Hours?"} <= asked
    assert meta["hyperparameters"]["lora_r"] == 4
    assert meta["hyperparameters"]["system_prompt"] == "Answer with a number."

    assert main(["runs"]) == 0  # reads BOT_CONFIG and the overrides, like the subprocess


def test_runs_table(env, tmp_path, capsys):
    assert main(["runs"]) == 0
    assert "no training runs yet" in capsys.readouterr().out


def test_bad_data_fails_with_the_line_and_no_traceback(env, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "fine?", "answer": "yes"}\n{"question": "no answer?"}\n')
    result = trainer(["train", "--adapter", "faq", "--data", str(bad), "--events"], env,
                     tmp_path)
    assert result.returncode == 1
    assert f"error: bad training data:\n  {bad}:2: 'answer' must be" in result.stderr
    assert "Traceback" not in result.stderr
    [event] = [json.loads(line) for line in result.stdout.splitlines()]
    assert event["event"] == "error" and f"{bad}:2:" in event["message"]
    with SyncStore(tmp_path / "data" / "bot.sqlite3") as store:
        run = store.conn.execute("SELECT status, error FROM training_runs").fetchone()
    assert run["status"] == "failed" and f"{bad}:2:" in run["error"]


def test_usage_errors_are_one_line(env, tmp_path, capsys):
    assert main(["train", "--adapter", "Bad Name!", "--data", "x.jsonl"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: invalid adapter name 'Bad Name!'") and err.count("\n") == 1
    assert main(["train", "--adapter", "faq"]) == 1
    assert "no --data file was given; pass --data FILE and/or --from-db" in (
        capsys.readouterr().err)
    with pytest.raises(SystemExit):
        main(["train", "--adapter", "faq", "--epochs", "2", "--max-steps", "3"])


def test_resume_continues_the_same_run(env, tmp_path):
    from settings import load_config

    config = load_config()
    data = write_pairs(tmp_path / "pairs.jsonl")
    request = TrainRequest(adapter="faq", data_files=[data],
                           overrides={"max_steps": 8, "checkpoint_every": 2})

    def crash(event):
        if event["event"] == "step" and event["step"] == 5:
            raise KeyboardInterrupt  # what SIGTERM from the bot turns into

    with pytest.raises(KeyboardInterrupt):
        run_training(config, request, on_event=crash, progress=False)
    with SyncStore(config.database_path) as store:
        run = store.conn.execute("SELECT id, status, error FROM training_runs").fetchone()
    assert run["status"] == "cancelled" and "--resume" in run["error"]

    write_pairs(tmp_path / "other.jsonl", 10)
    changed = TrainRequest(adapter="faq", data_files=[tmp_path / "other.jsonl"], resume=True)
    with pytest.raises(Exception, match="the training data changed since run 1's checkpoint"):
        run_training(config, changed, progress=False)

    outcome = run_training(config, TrainRequest(adapter="faq", data_files=[data], resume=True),
                           progress=False)
    assert outcome.run_id == run["id"] and outcome.version == 1
    assert outcome.metrics["steps"] == 8
    run_dir = config.data_dir / "runs" / "faq" / f"run-{run['id']}"
    assert not (run_dir / "checkpoint.pt").exists()  # done: nothing left to resume
    with SyncStore(config.database_path) as store:
        rows = store.conn.execute("SELECT status, version FROM training_runs").fetchall()
    assert [tuple(r) for r in rows] == [("succeeded", 1)]


def test_evaluate_base_and_adapter_side_by_side(env, tmp_path, capsys):
    from settings import load_config

    config = load_config()
    data = write_pairs(tmp_path / "pairs.jsonl")
    outcome = run_training(config, TrainRequest(adapter="faq", data_files=[data],
                                                overrides={"max_steps": 30}), progress=False)
    assert main(["evaluate", "--data", str(data), "--adapter", str(outcome.path), "--json",
                 "--generate", "--max-examples", "6", "--max-new-tokens", "6",
                 "--expect-keyword", "it is"]) == 0
    report = json.loads(capsys.readouterr().out)
    base, tuned = report["models"]["base"], report["models"]["adapter"]
    assert report["examples"] == 6
    assert tuned["loss"] < base["loss"] and tuned["perplexity"] < base["perplexity"]
    for scores in (base, tuned):
        assert {"bleu", "rouge_l", "exact_match", "length_ratio", "keyword:it is",
                "tokens_per_s", "answers"} <= set(scores)
        assert len(scores["answers"]) == 6
    assert tuned["keyword:it is"] >= base["keyword:it is"]
    assert main(["evaluate", "--data", str(data), "--max-examples", "2"]) == 0
    table = capsys.readouterr().out
    assert "perplexity" in table and "base" in table


def test_one_run_per_adapter_at_a_time(env, tmp_path):
    from settings import load_config
    from trainer.pipeline import adapter_lock
    from trainer.train import TrainingError

    config = load_config()
    data = write_pairs(tmp_path / "pairs.jsonl")
    busy = rf"another training run of faq is in progress \(pid {os.getpid()}\)"
    with adapter_lock(config, "faq"), pytest.raises(TrainingError, match=busy):
        run_training(config, TrainRequest(adapter="faq", data_files=[data]))
    with SyncStore(config.database_path) as store:
        assert store.conn.execute("SELECT COUNT(*) FROM training_runs").fetchone()[0] == 0


def test_every_command_has_one_runner_in_help_order():
    [sub] = [a for a in build_parser()._actions if a.dest == "command"]
    assert list(sub.choices) == list(COMMANDS) == [
        "fetch-model", "prepare", "import-pairs", "train", "evaluate", "promote", "rollback",
        "runs", "generate", "merge", "export", "compose", "sweep"]



def test_a_forget_during_a_run_clears_the_caches_when_it_ends(env, tmp_path):
    """/forget while a run uses the model-written caches: they are kept for the run and
    cleared when it ends (it may have written the forgotten questions into them)."""
    from settings import layout, load_config
    from trainer.versions import forget_turns

    config = load_config()
    cache = layout.cache_dir(config.data_dir)
    version = config.adapters_dir / "faq" / "v9"
    version.mkdir(parents=True)
    (version / "taught.jsonl").write_text(
        '{"question": "q7", "answer": "a7", "source": "db:turn 7"}\n'
        '{"question": "q8", "answer": "a8", "source": "db:turn 8"}\n', encoding="utf-8")
    seen = []

    def forget_midway(event):
        if event["event"] == "step" and event["step"] == 2:
            cache.mkdir(parents=True, exist_ok=True)
            (cache / "paraphrases-faq.json").write_text("{}", encoding="utf-8")
            assert forget_turns(config.adapters_dir, cache, {7}, run_in_progress=True) == 1
            seen.append(sorted(p.name for p in cache.iterdir()))

    data = write_pairs(tmp_path / "pairs.jsonl")
    run_training(config, TrainRequest(adapter="faq", data_files=[data],
                                      overrides={"max_steps": 4}),
                 on_event=forget_midway, progress=False)
    assert seen == [[".forget-pending", "paraphrases-faq.json"]]  # kept while it ran
    assert not (cache / "paraphrases-faq.json").exists()  # cleared at its end
    assert not (cache / ".forget-pending").exists()
    assert "db:turn 7" not in (version / "taught.jsonl").read_text(encoding="utf-8")
