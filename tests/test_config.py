"""Config: every kind of bad value is refused with its key and line; env overrides; secrets."""

from __future__ import annotations

import dataclasses
import logging
import re
import tomllib

import pytest

import settings as cfg
from settings import ConfigError, discord_token, load_config, parse_config
from settings.logs import REDACTED, register_secret
from tests.conftest import ROOT

BAD_VALUES = [
    # (toml text, the words the message must contain, line of the bad key)
    ("[engine]\nmax_new_tokens = \"many\"\n", "expected an integer", 2),
    ("[engine]\nmax_new_tokens = 0\n", "out of range: allowed 1 to 8192", 2),
    ("[engine]\n\ntemperature = 5\n", "out of range: allowed 0.0 to 2.0", 3),
    ("[engine]\ntemperature = true\n", "expected a number", 2),
    ("[model]\nallow_download = \"yes\"\n", "expected true or false", 2),
    ("[model]\ndevice = \"tpu\"\n", "not one of 'auto', 'cpu', 'cuda'", 2),
    ("[discord]\nadmin_role_ids = [1, \"two\"]\n", "item 1: expected an integer", 2),
    ("[discord]\nadmin_role_ids = 5\n", "expected a list of integers", 2),
    ("[discord]\nchannel_answer_mode = { \"123\" = \"sometimes\" }\n", "is not 'mention' or", 2),
    ("[discord]\nchannel_answer_mode = { \"general\" = \"all\" }\n", "is not a channel id", 2),
    ("[training]\nschedule = \"every night\"\n", "not a cron expression", 2),
    ("[training]\ntimezone = \"Mars/Olympus\"\n", "unknown time zone", 2),
    ("[training]\nmethod = \"dpo\"\n", "not one of 'lora', 'qlora', 'full'", 2),
    ("[engine]\nmax_new_tokens = 10\nmax_new_token = 5\n", "did you mean 'max_new_tokens'", 3),
    ("[egnine]\nmax_new_tokens = 5\n", "unknown section [egnine]", 1),
    ("[discord]\ntoken = \"abc.def.ghi\"\n", "read only from the DISCORD_TOKEN", 2),
]


@pytest.mark.parametrize(("text", "expected", "line"), BAD_VALUES,
                         ids=[b[1].split(":")[0][:30] for b in BAD_VALUES])
def test_bad_value_names_key_and_line(text, expected, line):
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="config.toml")
    message = str(caught.value)
    assert expected in message
    assert f"config.toml:{line}:" in message


def test_invalid_toml_reports_position():
    with pytest.raises(ConfigError, match=r"not valid TOML.*line 2"):
        parse_config("[engine]\nmax_new_tokens = = 3\n")


def test_all_problems_reported_at_once():
    with pytest.raises(ConfigError) as caught:
        parse_config("[engine]\nmax_new_tokens = -1\ntop_p = 7\n[feedback]\nmin_score = 0\n")
    assert len(caught.value.problems) == 3


def test_sub_table_error_points_at_its_header():
    text = "[discord]\nanswer_mode = \"all\"\n\n[discord.channel_answer_mode]\nabc = \"all\"\n"
    with pytest.raises(ConfigError, match=r"config.toml:4: .*not a channel id"):
        parse_config(text, source="config.toml")


def test_valid_values_are_typed():
    config = parse_config("[engine]\ntemperature = 1\n[discord]\n"
                          "channel_answer_mode = { \"42\" = \"all\" }\n")
    assert config.engine.temperature == 1.0 and isinstance(config.engine.temperature, float)
    assert config.answer_mode_for(42) == "all"
    assert config.answer_mode_for(43) == "mention"


def test_environment_overrides_file():
    config = parse_config("[engine]\nmax_new_tokens = 10\n",
                          environ={"BOT_ENGINE_MAX_NEW_TOKENS": "64",
                                   "BOT_DISCORD_ADMIN_ROLE_IDS": "[1, 2]",
                                   "BOT_MODEL_SYSTEM_PROMPT": "Be terse.",
                                   "BOT_UNRELATED_THING": "ignored"})
    assert config.engine.max_new_tokens == 64
    assert config.discord.admin_role_ids == [1, 2]
    assert config.model.system_prompt == "Be terse."


@pytest.mark.parametrize(("name", "value", "expected"), [
    ("BOT_ENGINE_MAX_NEW_TOKENS", "lots", "environment variable BOT_ENGINE_MAX_NEW_TOKENS"),
    ("BOT_ENGINE_MAX_NEW_TOKEN", "5", "did you mean 'max_new_tokens'"),
    ("BOT_TRAINING_EPOCHS", "0", "out of range"),
])
def test_bad_environment_override_is_named(name, value, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)):
        parse_config("", environ={name: value})


def test_relative_paths_resolve_against_config_file(tmp_path):
    path = tmp_path / "conf" / "bot.toml"
    path.parent.mkdir()
    path.write_text("[storage]\ndata_dir = \"state\"\n")
    config = load_config(path, environ={})
    assert config.database_path == tmp_path / "conf" / "state" / "bot.sqlite3"
    assert config.model_cache_dir == tmp_path / "conf" / "state" / "models"


def test_missing_explicit_config_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.toml", environ={})


def test_shipped_config_lists_every_setting_at_its_default():
    """config.toml is the documentation of every key: none missing, none drifting."""
    raw = tomllib.loads((ROOT / "config.toml").read_text())
    for section, key, default, help_text in cfg.describe_settings():
        assert key in raw.get(section, {}), f"config.toml lacks [{section}] {key}"
        assert raw[section][key] == default, f"[{section}] {key} differs from its default"
        assert help_text, f"[{section}] {key} has no help text"
    loaded = load_config(ROOT / "config.toml", environ={})
    for section in cfg.SECTIONS:
        assert dataclasses.asdict(getattr(loaded, section)) == dataclasses.asdict(
            cfg.SECTIONS[section]())


def test_token_only_from_environment():
    assert discord_token({"DISCORD_TOKEN": "  "}) is None
    assert discord_token({"DISCORD_TOKEN": "abc.def"}) == "abc.def"
    config = parse_config("", environ={"DISCORD_TOKEN": "abc.def"})
    assert "abc.def" not in repr(config)


def test_token_never_appears_in_logs(caplog):
    token = "MTIzNDU2Nzg5MDEy.GhIjKl.secret-token-value-for-tests"
    register_secret(token)
    logger = logging.getLogger("bot.test")
    with caplog.at_level(logging.DEBUG):
        logger.info("connecting with %s", token)
        logger.warning(f"token in an f-string {token}")
        try:
            raise RuntimeError(f"login failed for {token}")
        except RuntimeError:
            logger.exception("failure")
        logging.getLogger("discord.http").debug("headers: %r", {"Authorization": f"Bot {token}"})
    assert caplog.records, "nothing was logged: the test would prove nothing"
    assert token not in caplog.text
    assert REDACTED in caplog.text
    for record in caplog.records:
        assert token not in record.getMessage()
        assert token not in (record.exc_text or "")


def test_bot_start_with_token_logs_no_token(caplog, monkeypatch, tmp_path):
    """The real entry point with a token set: the token shows in no log line."""
    from bot.__main__ import main

    token = "OTg3NjU0MzIxMDk4.AbCdEf.another-secret-for-tests"
    monkeypatch.setenv("DISCORD_TOKEN", token)
    config_path = tmp_path / "c.toml"
    config_path.write_text(f'[storage]\ndata_dir = "{tmp_path.as_posix()}"\n'
                           '[logging]\nlevel = "DEBUG"\n')
    with caplog.at_level(logging.DEBUG):
        main(["--config", str(config_path), "healthcheck"])
        logging.getLogger("bot").debug("environment: %s", dict(DISCORD_TOKEN=token))
    assert token not in caplog.text


def test_configuration_reference_is_current():
    """docs/configuration.md is regenerated with `python -m bot settings > docs/...`."""
    documented = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert documented == cfg.settings_markdown(), (
        "docs/configuration.md is stale: run `python -m bot settings > docs/configuration.md`")
    assert documented.count("\n| `") == len(cfg.describe_settings())


def test_dumped_settings_load_back_identically(tmp_path):
    from settings import dump_toml

    original = parse_config('[discord]\nchannel_answer_mode = { "42" = "all" }\n'
                            'channel_system_prompt = { "7" = "Say \\"hi\\" — ünïcode" }\n'
                            'admin_role_ids = [1, 2]\n[engine]\ntemperature = 0.7\n'
                            '[storage]\ndata_dir = "rel/data"\n', base_dir=tmp_path)
    path = tmp_path / "elsewhere" / "dumped.toml"
    path.parent.mkdir()
    path.write_text(dump_toml(original), encoding="utf-8")
    loaded = load_config(path, environ={})
    assert loaded.data_dir == original.data_dir == (tmp_path / "rel" / "data").resolve()
    for section in cfg.SECTIONS:
        assert getattr(loaded, section) == getattr(original, section) or section == "storage"
    assert dataclasses.replace(loaded.storage, data_dir="x") == \
        dataclasses.replace(original.storage, data_dir="x")


def test_memory_notes_threshold_above_the_answer_threshold_is_refused_with_its_line():
    with pytest.raises(ConfigError, match=r"config.toml:3: \[memory\] context_threshold = 0.9 "
                                          r"is above answer_threshold = 0.85"):
        parse_config("[memory]\nenabled = true\ncontext_threshold = 0.9\n")
    assert parse_config("[memory]\ncontext_threshold = 0.85\n").memory.context_threshold == 0.85
