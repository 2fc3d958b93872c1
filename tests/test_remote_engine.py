"""The vLLM (OpenAI-compatible) backend against a fake server on a local port.

The fake behaves like `vllm serve --enable-lora` as far as the bot uses it: it lists
models, registers and unregisters LoRA adapters by name, refuses a name registered
twice, and streams chat completions as server-sent events with a usage chunk last.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket

import aiohttp
import pytest
from aiohttp import web

from bot.engine import Engine
from bot.generation import AdapterLoadError, GenerationRequest, GenerationTimeout
from bot.http import HttpServer
from bot.remote_engine import RemoteEngine, RemoteEngineError, create_engine
from bot.routing import Route, Router
from settings import parse_config
from settings.logs import REDACTED

BASE = "base-model"
API_KEY = "remote-api-key-for-tests-42"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


class FakeVllm:
    """Records every call; answers "<words> from <model>" one word per SSE chunk."""

    def __init__(self, api_key: str | None = None):
        self.api_key = api_key
        self.loras: dict[str, str] = {}
        self.loads: list[dict] = []
        self.unloads: list[str] = []
        self.chats: list[dict] = []
        self.refuse_loads = False
        self.fail_chat = False
        self.stall = asyncio.Event()  # set: the next chat stalls after its first chunk
        self.released = asyncio.Event()
        self.app = web.Application(middlewares=[self.check_key])
        self.app.router.add_get("/v1/models", self.models)
        self.app.router.add_post("/v1/load_lora_adapter", self.load)
        self.app.router.add_post("/v1/unload_lora_adapter", self.unload)
        self.app.router.add_post("/v1/chat/completions", self.chat)

    @web.middleware
    async def check_key(self, request, handler):
        if self.api_key and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"error": "Unauthorized"}, status=401)
        return await handler(request)

    async def models(self, request):
        names = [BASE, *self.loras]
        return web.json_response({"object": "list",
                                  "data": [{"id": n, "object": "model"} for n in names]})

    async def load(self, request):
        body = await request.json()
        self.loads.append(body)
        if self.refuse_loads:
            return web.json_response({"error": {"message": "No adapter found"}}, status=404)
        if body["lora_name"] in self.loras:
            return web.json_response({"error": {"message": f"The lora adapter "
                                      f"'{body['lora_name']}' has already been loaded."}},
                                     status=400)
        self.loras[body["lora_name"]] = body["lora_path"]
        return web.Response(text=f"Success: LoRA adapter '{body['lora_name']}' added")

    async def unload(self, request):
        name = (await request.json())["lora_name"]
        self.unloads.append(name)
        self.loras.pop(name, None)
        return web.Response(text="Success")

    async def chat(self, request):
        body = await request.json()
        self.chats.append(body)
        if self.fail_chat:
            return web.json_response({"error": {"message": "CUDA out of memory"}}, status=500)
        if body["model"] != BASE and body["model"] not in self.loras:
            return web.json_response({"error": {"message": "model not found"}}, status=404)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        words = f"Paris is the answer from {body['model']}".split(" ")
        words = words[:body["max_tokens"]]
        try:
            for i, word in enumerate(words):
                delta = {"content": word if i == 0 else " " + word}
                await response.write(_sse({"choices": [{"index": 0, "delta": delta}]}))
                if self.stall.is_set():
                    await self.released.wait()
            await response.write(_sse({"choices": [], "usage": {
                "prompt_tokens": 21, "completion_tokens": len(words)}}))
            await response.write(b"data: [DONE]\n\n")
        except ConnectionResetError:
            pass  # the bot hung up (a timeout, a reader gone)
        return response


def _sse(payload: dict) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()


@pytest.fixture
async def vllm():
    fake = FakeVllm(api_key=API_KEY)
    runner = web.AppRunner(fake.app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake.url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    yield fake
    fake.released.set()
    await runner.cleanup()


def remote_config(tmp_path, url, engine="", base=BASE):
    return parse_config(f'[storage]\ndata_dir = "{tmp_path.as_posix()}/data"\n'
                        f'[engine]\nbackend = "openai"\nremote_url = "{url}"\n'
                        f'remote_base_model = "{base}"\nremote_api_key_env = "TEST_VLLM_KEY"\n'
                        f"{engine}\n", base_dir=tmp_path)


@pytest.fixture
async def served(tmp_path, vllm, db):
    """A started remote engine whose router reads a real database: 'faq' v1 serves."""
    config = remote_config(tmp_path, vllm.url, "max_loaded_adapters = 2")
    await db.create_adapter("faq", BASE, scope=1, system_prompt="You answer FAQ questions.")
    for version in (1, 2, 3):
        await db.add_version("faq", path=f"faq/v{version}",
                             status="serving" if version == 1 else "candidate")
    await db.bind_channel(7, "faq", guild_id=1)
    engine = RemoteEngine(config, Router(config, db), environ={"TEST_VLLM_KEY": API_KEY})
    await engine.start()
    yield engine
    await engine.close()


async def answer(engine, channel_id=7, route=None, **sampling):
    from bot.generation import Sampling

    request = GenerationRequest(channel_id, QUESTION, Sampling(**sampling), guild_id=1,
                                route=route)
    generation = await engine.submit(request)
    chunks = [chunk async for chunk in generation]
    return generation, chunks


# --- generation -------------------------------------------------------------------------

async def test_channel_adapter_is_registered_once_and_streams(served, vllm):
    generation, chunks = await answer(served, temperature=0.7, top_p=0.9, stop=("\n\n",),
                                      max_new_tokens=50)
    assert chunks == ["Paris", " is", " the", " answer", " from", " faq__v1"]
    assert generation.text == "Paris is the answer from faq__v1"
    assert (generation.route.adapter, generation.route.version) == ("faq", 1)
    assert generation.token_count == 6 and generation.prompt_tokens == 21
    assert generation.latency_ms > 0
    assert vllm.loads == [{"lora_name": "faq__v1",
                           "lora_path": str(served.config.adapters_dir / "faq" / "v1")}]
    chat = vllm.chats[0]
    assert chat["model"] == "faq__v1" and chat["stream"] is True
    assert chat["messages"][0] == {"role": "system", "content": "You answer FAQ questions."}
    assert chat["messages"][1:] == QUESTION
    assert (chat["max_tokens"], chat["temperature"], chat["top_p"]) == (50, 0.7, 0.9)
    assert chat["stop"] == ["\n\n"] and chat["stream_options"] == {"include_usage": True}

    await answer(served)  # the second request finds it registered
    assert len(vllm.loads) == 1
    _, unrouted = await answer(served, channel_id=99)
    assert unrouted[-1] == f" {BASE}"  # no adapter: the base model by its served name
    assert served.loaded_adapters() == ["faq__v1"]
    assert not served.slots.pins  # every finished request released its version


async def test_promotion_registers_the_new_version_then_serves_it(served, vllm, db):
    await served.promote("faq", 2, reason="gate passed")
    assert [load["lora_name"] for load in vllm.loads] == ["faq__v2"]
    assert (await db.serving_version("faq")).version == 2
    generation, chunks = await answer(served)
    assert chunks[-1] == " faq__v2" and generation.route.version == 2
    # a third version goes beyond max_loaded_adapters = 2: the least recently used goes
    await served.promote("faq", 3)
    await served.promote("faq", 1, reason="rollback")
    assert vllm.unloads == ["faq__v2"]
    assert sorted(served.loaded_adapters()) == ["faq__v1", "faq__v3"]


async def test_a_version_below_scale_1_is_registered_from_a_scaled_copy(served, vllm):
    """vLLM has no per-adapter scale: it gets a copy of the version's directory with alpha
    times the scale, under a name of its own; the version's files stay as they were."""
    import json

    directory = served.config.adapters_dir / "faq" / "v1"
    directory.mkdir(parents=True)
    (directory / "adapter_config.json").write_text('{"lora_alpha": 32, "r": 16}')
    (directory / "adapter_model.safetensors").write_bytes(b"weights")
    generation, chunks = await answer(served, route=Route("faq", 1, directory, scale=0.5))
    copy = served.config.adapters_dir / "faq" / "v1-x0.5"
    assert vllm.loads == [{"lora_name": "faq__v1__s0p5", "lora_path": str(copy)}]
    assert chunks[-1] == " faq__v1__s0p5"
    assert json.loads((copy / "adapter_config.json").read_text())["lora_alpha"] == 16
    assert (copy / "adapter_model.safetensors").read_bytes() == b"weights"
    assert json.loads((directory / "adapter_config.json").read_text())["lora_alpha"] == 32
    vllm.loras.clear()  # as after a restart of the bot: the server still has it, by name
    vllm.loras["faq__v1__s0p5"] = str(copy)
    again = RemoteEngine(served.config, environ={"TEST_VLLM_KEY": API_KEY})
    await again.start()
    try:
        [adopted] = again.slots.loaded.values()
        assert (adopted.adapter, adopted.version, adopted.scale) == ("faq", 1, 0.5)
    finally:
        await again.close()


async def test_versions_already_on_the_server_are_adopted(tmp_path, vllm, db):
    vllm.loras["faq__v1"] = "/elsewhere/faq/v1"  # registered by an earlier run of the bot
    config = remote_config(tmp_path, vllm.url)
    engine = RemoteEngine(config, environ={"TEST_VLLM_KEY": API_KEY})
    await engine.start()
    try:
        assert engine.loaded_adapters() == ["faq__v1"]
        await engine.preload(Route("faq", 1, config.adapters_dir / "faq" / "v1"))
        assert vllm.loads == []
    finally:
        await engine.close()


async def test_adapters_dir_as_the_server_sees_it(tmp_path, vllm):
    config = remote_config(tmp_path, vllm.url, 'remote_adapters_dir = "/models/adapters"')
    engine = RemoteEngine(config, environ={"TEST_VLLM_KEY": API_KEY})
    await engine.start()
    try:
        await engine.preload(Route("faq", 4, config.adapters_dir / "faq" / "v4"))
        assert vllm.loads == [{"lora_name": "faq__v4", "lora_path": "/models/adapters/faq/v4"}]
    finally:
        await engine.close()


# --- failures ---------------------------------------------------------------------------

async def test_server_failures_reach_the_reader_as_engine_errors(served, vllm):
    vllm.fail_chat = True
    with pytest.raises(RemoteEngineError, match="answered 500: .*CUDA out of memory"):
        await answer(served)
    vllm.fail_chat = False
    vllm.refuse_loads = True
    route = await served.router.route_for_adapter("faq", 2)
    with pytest.raises(AdapterLoadError, match=r"refused adapter faq v2 \(404.*"
                                               r"/adapter rollback faq"):
        await answer(served, route=route)
    assert not served.slots.pins


async def test_a_stalled_answer_times_out_and_a_left_one_stops(tmp_path, vllm, db):
    config = remote_config(tmp_path, vllm.url, "request_timeout_s = 1.0")
    engine = RemoteEngine(config, environ={"TEST_VLLM_KEY": API_KEY})
    await engine.start()
    try:
        vllm.stall.set()
        with pytest.raises(GenerationTimeout, match="cut off after 1 tokens"):
            await answer(engine, channel_id=1)
        route = Route("faq", 1, config.adapters_dir / "faq" / "v1")
        generation = await engine.submit(GenerationRequest(1, QUESTION, route=route))
        async for _ in generation:
            break  # the reader leaves after the first chunk (as a deleted question does)
        generation.cancel()
        assert engine.slots.pins["faq__v1"] == 0  # the version may be unloaded again
        for _ in range(10):  # let the cancelled request unwind
            await asyncio.sleep(0)
        assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("remote-job")]
    finally:
        await engine.close()


async def test_start_refuses_a_wrong_server_model_or_key(tmp_path, vllm, caplog):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]  # nothing listens here once the socket is closed
    cases = [
        (remote_config(tmp_path, f"http://127.0.0.1:{closed}/v1"), API_KEY, "cannot be reached"),
        (remote_config(tmp_path, vllm.url, base="other"), API_KEY,
         "does not serve 'other' .*set engine.remote_base_model"),
        (remote_config(tmp_path, vllm.url), "wrong-key-of-some-length", "refused the API key"),
        (remote_config(tmp_path, "localhost:8000"), API_KEY, "not an http"),
    ]
    with caplog.at_level(logging.DEBUG):
        for config, key, message in cases:
            with pytest.raises(RemoteEngineError, match=message):
                engine = RemoteEngine(config, environ={"TEST_VLLM_KEY": key})
                await engine.start()
            logging.getLogger("bot.test").info("key was %s", key)
    assert API_KEY not in caplog.text and REDACTED in caplog.text


def test_the_backend_setting_picks_the_engine(tmp_path):
    assert isinstance(create_engine(remote_config(tmp_path, "http://gpu-box:8000/v1")),
                      RemoteEngine)
    local = parse_config('[engine]\nbackend = "local"\n')
    assert type(create_engine(local)) is Engine


async def test_http_api_over_the_remote_engine(tmp_path, vllm, db):
    """The same HTTP API drives the remote server: adapter by name, server's token counts."""
    config = remote_config(tmp_path, vllm.url, "[http]\nport = 0\nrequire_token = false")
    await db.create_adapter("faq", BASE)
    await db.add_version("faq", path="faq/v1", status="serving")
    router = Router(config, db)
    engine = RemoteEngine(config, router, environ={"TEST_VLLM_KEY": API_KEY})
    server = HttpServer(config, engine, db, router, token=None)
    await server.engine.start()
    await server.start()
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{server.port}") as client:
            async with client.post("/v1/generate", json={"prompt": "Capital of France?",
                                                         "adapter": "faq"}) as response:
                assert response.status == 200
                body = await response.json()
            async with client.get("/healthz") as response:
                assert (await response.json())["engine"] == "ready"
    finally:
        await server.close()
        await server.engine.close()
    assert body["text"] == "Paris is the answer from faq__v1"
    assert (body["prompt_tokens"], body["completion_tokens"]) == (21, 6)
    assert vllm.chats[0]["messages"][-1] == {"role": "user", "content": "Capital of France?"}


async def test_console_run_answers_through_the_server(tmp_path, vllm, monkeypatch):
    """`python -m bot chat` with backend = "openai": no model loads here, the server answers."""
    import io

    from bot.__main__ import run_console
    from bot.console import ConsoleChat

    monkeypatch.setenv("TEST_VLLM_KEY", API_KEY)
    out = io.StringIO()
    monkeypatch.setattr(ConsoleChat.__init__, "__defaults__",
                        (io.StringIO("What is the capital of France?\n"), out))
    assert await run_console(remote_config(tmp_path, vllm.url)) == 0
    assert "Paris is the answer from base-model" in out.getvalue()
    assert vllm.chats[0]["model"] == BASE
