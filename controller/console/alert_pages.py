"""Console pages for alerts."""

from __future__ import annotations
