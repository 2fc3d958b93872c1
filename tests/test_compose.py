"""compose.yaml: valid YAML that runs the image's `python -m bot` on a reserved GPU, keeps
/data in a volume, takes secrets from the environment and publishes HTTP on loopback only."""

from __future__ import annotations

import re

import pytest

from settings import parse_config
from tests.conftest import ROOT

yaml = pytest.importorskip("yaml", reason="PyYAML comes with transformers; pip install pyyaml")


@pytest.fixture(scope="module")
def bot_service() -> dict:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    assert set(compose["services"]) == {"bot"}
    assert "botdata" in compose["volumes"]
    return compose["services"]["bot"]


def test_gpu_is_reserved(bot_service):
    devices = bot_service["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]


def test_data_volume_and_image_entry_point(bot_service):
    assert "botdata:/data" in bot_service["volumes"]
    assert bot_service["build"] == "."
    assert "entrypoint" not in bot_service  # the Dockerfile's stays in force
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert 'ENTRYPOINT ["python", "-m", "bot"]' in dockerfile
    assert bot_service["command"] == ["run"]
    assert 'VOLUME ["/data"]' in dockerfile and "BOT_STORAGE_DATA_DIR=/data" in dockerfile


def test_secrets_come_from_the_environment(bot_service):
    env = bot_service["environment"]
    assert re.fullmatch(r"\$\{DISCORD_TOKEN:\?.+\}", env["DISCORD_TOKEN"])
    assert env["BOT_HTTP_TOKEN"] == "${BOT_HTTP_TOKEN:-}"
    text = (ROOT / "compose.yaml").read_text(encoding="utf-8")
    assert not re.search(r"(DISCORD_TOKEN|BOT_HTTP_TOKEN):\s+[A-Za-z0-9]{20,}", text)


def test_http_is_published_on_loopback_only(bot_service):
    ports = bot_service["ports"]
    assert ports and all(str(p).startswith("127.0.0.1:") for p in ports)
    env = bot_service["environment"]
    published = int(str(ports[0]).rsplit(":", 1)[1])
    # the settings the environment gives are valid and match the published port
    overrides = {k: v for k, v in env.items() if k.startswith("BOT_HTTP_") and "$" not in v}
    config = parse_config("", environ=overrides)
    assert config.http.port == published
    assert "EXPOSE 8080" in (ROOT / "Dockerfile").read_text(encoding="utf-8")
