"""Inbound ticketing webhooks: a signed payload becomes a job."""

from __future__ import annotations
