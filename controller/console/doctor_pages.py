"""Console pages for doctors."""

from __future__ import annotations
