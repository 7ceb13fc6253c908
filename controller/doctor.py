"""The fleet doctor: names the causes behind hosts' Deferred and bounce reasons."""

from __future__ import annotations
