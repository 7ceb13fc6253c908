"""What beat starts: spread status collections and operator schedules."""

from __future__ import annotations

from controller.config import Settings
from controller.db import Database


def tick(database: Database, settings: Settings) -> None:
    """Beat's step for this module."""
