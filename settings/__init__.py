"""Settings, logging and the file layout: what both processes (the bot and the trainer)
and the benchmarks share. Nothing here imports `bot`, `trainer` or torch."""

from .loading import (
    ConfigError,
    default_config_path,
    discord_token,
    dump_toml,
    load_config,
    load_config_or_exit,
    parse_config,
)
from .reference import describe_settings, settings_markdown
from .schema import (
    CONFIG_ENV,
    DEFAULT_MODEL_ALIAS,
    ENV_PREFIX,
    HTTP_TOKEN_ENV,
    SECTIONS,
    TOKEN_ENV,
    Config,
    DiscordConfig,
    EngineConfig,
    FeedbackConfig,
    HttpConfig,
    LoggingConfig,
    MemoryConfig,
    ModelConfig,
    StorageConfig,
    TrainingConfig,
    WebConfig,
)

__all__ = [
    "CONFIG_ENV", "DEFAULT_MODEL_ALIAS", "ENV_PREFIX", "HTTP_TOKEN_ENV", "SECTIONS", "TOKEN_ENV",
    "Config", "ConfigError", "DiscordConfig", "EngineConfig", "FeedbackConfig", "HttpConfig",
    "LoggingConfig", "MemoryConfig", "ModelConfig", "StorageConfig", "TrainingConfig", "WebConfig",
    "default_config_path", "discord_token", "dump_toml", "load_config", "load_config_or_exit",
    "describe_settings", "parse_config", "settings_markdown",
]
