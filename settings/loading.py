"""Settings loaded once: `config.toml` read, overridden from the environment, and checked
into the typed sections of `settings.schema`.

Unknown keys, wrong types and out-of-range values are refused at start with the file, the
line and what is allowed. Environment variables ``BOT_<SECTION>_<KEY>`` override the file
(``BOT_ENGINE_MAX_NEW_TOKENS=64``); their values are parsed as TOML values, falling back to
a plain string. Secrets never live here: the Discord token is read from ``DISCORD_TOKEN``
only (see :func:`discord_token`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .checks import KeyLocator, did_you_mean, field_types, parse_env_value, validate
from .schema import CONFIG_ENV, ENV_PREFIX, HTTP_TOKEN_ENV, SECTIONS, TOKEN_ENV, Config


class ConfigError(ValueError):
    """A setting is wrong; the message names the file, line, key and the fix."""

    def __init__(self, problems: list[str]):
        self.problems = sorted(problems, key=_line_of)  # in file order; env and others last
        super().__init__("invalid configuration:\n  " + "\n  ".join(self.problems))


def _line_of(problem: str) -> int:
    match = re.match(r"^[^\n]*?:(\d+):", problem)
    return int(match.group(1)) if match else 1 << 30


def discord_token(environ: Mapping[str, str] | None = None) -> str | None:
    """The bot token, from the environment only; None when unset or blank."""
    value = (environ if environ is not None else os.environ).get(TOKEN_ENV, "").strip()
    return value or None


def default_config_path(environ: Mapping[str, str] | None = None) -> Path:
    env = environ if environ is not None else os.environ
    return Path(env.get(CONFIG_ENV) or "config.toml")


def load_config(path: str | os.PathLike[str] | None = None,
                environ: Mapping[str, str] | None = None) -> Config:
    """Read, override from the environment, and validate. Raises ConfigError."""
    env = dict(os.environ if environ is None else environ)
    config_path = Path(path) if path is not None else default_config_path(env)
    if config_path.exists():
        text = config_path.read_text(encoding="utf-8")
    elif path is None and CONFIG_ENV not in env:
        text = ""  # no config file at all: every default applies
    else:
        raise ConfigError([f"{config_path}: file not found (set {CONFIG_ENV} or pass --config)"])
    return parse_config(text, source=str(config_path), base_dir=config_path.parent, environ=env)


def load_config_or_exit(path: str | os.PathLike[str] | None) -> Config:
    """For command lines: the config, or the problems on stderr and exit status 2."""
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def parse_config(text: str, *, source: str = "config.toml", base_dir: Path | None = None,
                 environ: Mapping[str, str] | None = None) -> Config:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{source}: not valid TOML: {exc}"]) from None
    locate = KeyLocator(text, source)
    problems: list[str] = []
    values: dict[str, dict[str, tuple[Any, str]]] = {name: {} for name in SECTIONS}

    for section, body in raw.items():
        if section not in SECTIONS:
            problems.append(f"{locate.section(section)}: unknown section [{section}]"
                            f"{did_you_mean(section, SECTIONS)}")
            continue
        if not isinstance(body, dict):
            problems.append(f"{locate.key(None, section)}: '{section}' must be a [table]")
            continue
        known = {f.name for f in dataclasses.fields(SECTIONS[section])}
        for key, value in body.items():
            where = locate.key(section, key)
            if section == "discord" and key == "token":
                problems.append(f"{where}: the Discord token is read only from the "
                                f"{TOKEN_ENV} environment variable; remove it from the file")
            elif key not in known:
                problems.append(f"{where}: unknown key [{section}] {key}"
                                f"{did_you_mean(key, known)}")
            else:
                values[section][key] = (value, where)

    for name, value in (environ or {}).items():
        if not name.startswith(ENV_PREFIX) or name in (CONFIG_ENV, HTTP_TOKEN_ENV):
            continue  # (the HTTP token is a secret, not a setting)
        section, _, key = name[len(ENV_PREFIX):].lower().partition("_")
        if section not in SECTIONS:
            continue  # BOT_* variables of other tools are not ours to refuse
        known = {f.name for f in dataclasses.fields(SECTIONS[section])}
        if key not in known:
            problems.append(f"environment variable {name}: unknown key [{section}] {key}"
                            f"{did_you_mean(key, known)}")
            continue
        values[section][key] = (parse_env_value(value), f"environment variable {name}")

    sections: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name not in values[section]:
                continue
            value, where = values[section][f.name]
            checked, problem = validate(value, f, field_types(cls)[f.name])
            if problem:
                problems.append(f"{where}: [{section}] {f.name} = {value!r}: {problem}")
            else:
                kwargs[f.name] = checked
        sections[section] = cls(**kwargs)
    memory = sections["memory"]
    if memory.context_threshold > memory.answer_threshold:
        where = values["memory"].get("context_threshold", (None, source))[1]
        problems.append(f"{where}: [memory] context_threshold = {memory.context_threshold:g} "
                        f"is above answer_threshold = {memory.answer_threshold:g}: notes are "
                        f"for questions less close than a direct answer; lower it")
    if problems:
        raise ConfigError(problems)
    return Config(base_dir=(base_dir or Path.cwd()), source=source, **sections)


def dump_toml(config: Config) -> str:
    """The effective settings as TOML, paths made absolute: what a child process (the
    trainer) must see to work on the same database, adapters and model."""
    lines = [f"# effective settings of a running bot (from {config.source})"]
    for section in SECTIONS:
        lines.append(f"\n[{section}]")
        for key, value in dataclasses.asdict(getattr(config, section)).items():
            if (section, key) == ("storage", "data_dir"):
                value = str(config.data_dir)
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}"
                                for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")
