"""Sign-in, the session cookie, CSRF tokens and role checks for the console (to be
written)."""

from __future__ import annotations
