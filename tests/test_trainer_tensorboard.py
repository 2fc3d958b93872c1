"""`train --tensorboard DIR`: the run's scalars read back with TensorBoard's own reader,
the same numbers as the progress events, and a one-line error without the package."""

from __future__ import annotations

import json
import sys

import pytest

from storage import SyncStore
from tests.conftest import fast_training_toml
from trainer.__main__ import build_parser, main
from trainer.pipeline import TrainRequest, run_training
from trainer.train import TrainingError

WORDS = "one two three four five six seven eight nine ten".split()


def write_pairs(path, n: int = 20):
    path.write_text("".join(
        json.dumps({"question": f"What is {WORDS[i % 10]} plus {WORDS[i // 10]}?",
                    "answer": f"It is {WORDS[(i + i // 10) % 10]}."}) + "\n" for i in range(n)))
    return path


@pytest.fixture
def config(make_config, tiny_model_dir):
    return make_config(f'[model]\nname = "{tiny_model_dir.as_posix()}"\n'
                       "[training]\nbatch_size = 4\nlearning_rate = 0.01\neval_every = 2\n"
                       "validation_fraction = 0.2\neval_fraction = 0.2\n" + fast_training_toml())


def read_scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir))
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


def test_scalars_match_the_progress_events(config, tmp_path):
    events: list[dict] = []
    request = TrainRequest(adapter="faq", data_files=[write_pairs(tmp_path / "d.jsonl")],
                           overrides={"max_steps": 4}, tensorboard=tmp_path / "tb")
    outcome = run_training(config, request, on_event=events.append, progress=False)
    [run_dir] = (tmp_path / "tb" / "faq").iterdir()  # DIR/<adapter>/<run>
    assert run_dir.name == f"run-{outcome.run_id}"
    scalars = read_scalars(run_dir)
    assert {"train/loss", "train/learning_rate", "train/tokens_per_s", "train/grad_norm",
            "validation/loss", "validation/perplexity", "held_out/loss",
            "held_out/perplexity"} <= set(scalars)

    steps = [e for e in events if e["event"] == "step"]
    evals = [e for e in events if e["event"] == "eval"]
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3, 4]
    assert [v for _, v in scalars["train/loss"]] == pytest.approx([e["loss"] for e in steps])
    assert [v for _, v in scalars["train/learning_rate"]] == pytest.approx(
        [e["lr"] for e in steps])
    assert all(v > 0 for _, v in scalars["train/tokens_per_s"])
    assert [(s, pytest.approx(v)) for s, v in scalars["validation/loss"]] == [
        (e["step"], e["loss"]) for e in evals]
    assert [s for s, _ in scalars["validation/loss"]] == [2, 4]
    [(step, held)] = scalars["held_out/loss"]
    assert step == 4 and held == pytest.approx(outcome.metrics["held_out_loss"])


def test_the_option_reaches_the_request(tmp_path):
    args = build_parser().parse_args(["train", "--adapter", "faq", "--tensorboard",
                                      str(tmp_path / "tb")])
    assert args.tensorboard == tmp_path / "tb"
    assert build_parser().parse_args(["train", "--adapter", "faq"]).tensorboard is None


def test_without_tensorboard_one_clear_line(config, tmp_path, monkeypatch, capsys,
                                            tiny_model_dir):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    request = TrainRequest(adapter="faq", data_files=[write_pairs(tmp_path / "d.jsonl")],
                           overrides={"max_steps": 2}, tensorboard=tmp_path / "tb")
    with pytest.raises(TrainingError, match=r"--tensorboard needs the tensorboard package: "
                                            r"pip install tensorboard"):
        run_training(config, request, progress=False)
    with SyncStore(config.database_path) as store:  # refused before any run row
        assert store.list_runs(None, 10) == []

    monkeypatch.setattr("signal.signal", lambda *args: None)  # main() would keep its handler
    settings = tmp_path / "settings.toml"
    settings.write_text(f'[storage]\ndata_dir = "{(tmp_path / "data").as_posix()}"\n'
                        f'[model]\nname = "{tiny_model_dir.as_posix()}"\n')
    code = main(["train", "--config", str(settings), "--adapter", "faq", "--data",
                 str(tmp_path / "d.jsonl"), "--tensorboard", str(tmp_path / "tb")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err == ["error: --tensorboard needs the tensorboard package: pip install "
                   "tensorboard (or pip install -e '.[tensorboard]')"]
    assert not (tmp_path / "tb").exists()
