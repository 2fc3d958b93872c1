"""Storage errors: each message names the thing and how to fix it."""


class StorageError(Exception):
    """Base class for everything storage refuses."""


class SchemaTooNewError(StorageError):
    """The database was written by a newer version of this program."""


class MigrationError(StorageError):
    """A migration file failed; the database stays at the last good version."""


class UnknownAdapterError(StorageError, LookupError):
    def __init__(self, name: str, known: list[str]):
        self.name, self.known = name, known
        listing = ", ".join(known) if known else "none yet (create one with /adapter create)"
        super().__init__(f"unknown adapter {name!r}; known adapters: {listing}")


class AdapterExistsError(StorageError):
    def __init__(self, name: str):
        super().__init__(f"adapter {name!r} already exists; pick another name or use it")


class InvalidAdapterNameError(StorageError, ValueError):
    pass


class UnknownVersionError(StorageError, LookupError):
    pass


class PairsFileError(StorageError, ValueError):
    """A line of a pairs JSONL file is not usable; names the file and line."""
