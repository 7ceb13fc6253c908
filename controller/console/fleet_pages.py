"""Fleet, host, jobs and job pages (to be written)."""

from __future__ import annotations
