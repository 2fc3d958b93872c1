"""Logging set-up with secret redaction.

Secrets are removed when a log record is *created* (a record factory), so no
handler, formatter or test capture can ever see them, including in tracebacks
and in third-party loggers such as discord.py's.
"""

from __future__ import annotations

import logging
import threading

REDACTED = "[REDACTED]"

_lock = threading.Lock()
_secrets: set[str] = set()
_installed = False


def redact(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def register_secret(value: str | None) -> None:
    """From now on, `value` is replaced by [REDACTED] in every log record."""
    if not value or len(value) < 6:  # very short strings would redact ordinary words
        return
    with _lock:
        _secrets.add(value)
        _install_factory()


def _install_factory() -> None:
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if not _secrets:
            return record
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        if record.exc_info and record.exc_info[0] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text = redact(text)
            record.exc_info = None  # the formatter must use the redacted text
        return record

    logging.setLogRecordFactory(factory)
    _installed = True


def configure_logging(level: str = "INFO") -> None:
    """Console logging for the bot and trainer processes."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
    )
    # these are chatty at INFO and say nothing a bot operator needs
    for noisy in ("httpx", "urllib3", "filelock", "datasets"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    # bitsandbytes suggests a CPU kernel fetched from a hub at run time; we never
    # download at run time, so the suggestion is noise on every start
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
