"""Alert rules over the fleet's last known state, and their notices."""

from __future__ import annotations

from controller.config import Settings
from controller.db import Database

#: how many times a notice is retried before it is given up
NOTICE_RETRIES = 5


def tick(database: Database, settings: Settings) -> None:
    """Fire and resolve alerts."""


def deliver(database: Database, settings: Settings, notice_id: int, attempt: int) -> bool:
    """Send one notice; whether it was delivered."""
    return True
