"""The ``relayfleet`` commands for policys."""

from __future__ import annotations

import click


def register(cli: click.Group) -> None:
    """Add these commands to ``cli``."""
