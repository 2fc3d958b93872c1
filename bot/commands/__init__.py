"""The command core: every operation written once, called by every face (the Discord
cogs, the console, the web page). See `base` for what an operation takes and answers."""

from __future__ import annotations

from .adapters import BASE_CHOICE, AdapterCommands, channel_text
from .base import (
    ADMIN_HELP,
    Attachment,
    Caller,
    Conflict,
    Missing,
    NotAdmin,
    Refused,
    Reply,
    metrics_text,
    plain,
    require_admin,
)
from .data import FORGET_WARNING, DataCommands
from .memory import MemoryCommands
from .review import ReviewCommands
from .services import Services
from .training import Busy, TrainingCommands


class Commands:
    """All operations, grouped as the slash commands are."""

    def __init__(self, services: Services):
        self.services = services
        self.adapters = AdapterCommands(services)
        self.review = ReviewCommands(services)
        self.data = DataCommands(services)
        self.training = TrainingCommands(services)
        self.memory = MemoryCommands(services)


__all__ = [
    "ADMIN_HELP", "BASE_CHOICE", "AdapterCommands", "Attachment", "Busy", "Caller", "Commands",
    "Conflict", "DataCommands", "FORGET_WARNING", "MemoryCommands", "Missing", "NotAdmin",
    "Refused", "Reply",
    "ReviewCommands", "Services", "TrainingCommands", "channel_text", "metrics_text", "plain",
    "require_admin",
]
