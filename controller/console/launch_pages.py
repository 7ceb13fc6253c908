"""Launch, audit, tokens and API docs pages (to be written)."""

from __future__ import annotations
