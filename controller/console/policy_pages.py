"""Console pages for policys."""

from __future__ import annotations
