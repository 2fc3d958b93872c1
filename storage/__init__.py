"""SQLite storage: turns, votes, review, adapters and versions, training runs.

Knows SQL and nothing about Discord or torch. `Database` is the async
repository of the bot; `SyncStore` is the trainer's synchronous path.
"""

from .db import Database
from .errors import (
    AdapterExistsError,
    InvalidAdapterNameError,
    MigrationError,
    PairsFileError,
    SchemaTooNewError,
    StorageError,
    UnknownAdapterError,
    UnknownVersionError,
)
from .migrations import latest_version
from .pairs import pairs_jsonl, read_pairs_jsonl, write_pairs_jsonl
from .records import (
    BASE_ADAPTER,
    DIRECT_SCOPE,
    Adapter,
    AdapterVersion,
    Pair,
    ResolvedAdapter,
    ReviewItem,
    TrainingRun,
    Turn,
    VoteResult,
    previous_version,
    scope_of,
    validate_adapter_key,
    validate_adapter_name,
)
from .sync import SyncStore

__all__ = [
    "BASE_ADAPTER", "DIRECT_SCOPE", "Adapter", "AdapterExistsError", "AdapterVersion", "Database",
    "InvalidAdapterNameError", "MigrationError", "Pair", "PairsFileError", "ResolvedAdapter",
    "ReviewItem", "SchemaTooNewError", "StorageError", "SyncStore", "TrainingRun", "Turn",
    "UnknownAdapterError", "UnknownVersionError", "VoteResult", "latest_version",
    "previous_version", "scope_of", "validate_adapter_key",
    "pairs_jsonl", "read_pairs_jsonl", "validate_adapter_name", "write_pairs_jsonl",
]
