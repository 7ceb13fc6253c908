"""Inventory, fleet, audit, tokens and sign-in commands."""

from __future__ import annotations

import click


def register(group: click.Group) -> None:
    """Add these commands to ``relayfleet``."""
