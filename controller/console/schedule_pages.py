"""Console pages for schedules."""

from __future__ import annotations
