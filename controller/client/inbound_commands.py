"""The ``relayfleet`` commands for inbounds."""

from __future__ import annotations

import click


def register(cli: click.Group) -> None:
    """Add these commands to ``cli``."""
