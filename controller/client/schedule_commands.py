"""The ``relayfleet`` commands for schedules."""

from __future__ import annotations

import click


def register(cli: click.Group) -> None:
    """Add these commands to ``cli``."""
