"""How the CLI talks to people and to scripts: tables and colour on a terminal, plain
text in a pipe or with NO_COLOR, the API's JSON document with ``--json``, little with
``-q``."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from controller.client.errors import CliError


class Output:
    """Where results, progress and errors go, and in which form."""

    def __init__(self, *, json_mode: bool = False, quiet: bool = False) -> None:
        self.json_mode = json_mode
        self.quiet = quiet
        no_color = bool(os.environ.get("NO_COLOR"))
        # In a pipe, rich would assume 80 columns and wrap table cells: a log or a grep
        # reads whole lines better. Lines never wrap mid-word, so commands stay copyable.
        piped_width = int(os.environ.get("COLUMNS", "0") or 0) or 160
        # Text from the API (names, relays like [relay.example]:25) is printed as it is:
        # never read as rich markup or :emoji: codes.
        self.out = Console(no_color=no_color, highlight=False, soft_wrap=True, emoji=False,
                           width=None if sys.stdout.isatty() else piped_width)
        self.err = Console(stderr=True, no_color=no_color, highlight=False, soft_wrap=True,
                           emoji=False, width=None if sys.stderr.isatty() else piped_width)

    @property
    def live(self) -> bool:
        """Whether live progress may be drawn (a terminal, no --json, no -q, colour on)."""
        return (self.out.is_terminal and not self.json_mode and not self.quiet
                and not os.environ.get("NO_COLOR"))

    def document(self, doc: Any) -> None:
        """Print an API document as JSON (what ``--json`` prints)."""
        sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
        sys.stdout.flush()

    def say(self, text: str | Text, style: str | None = None) -> None:
        """A line for people (not printed with --json or -q); plain text, never markup."""
        if not self.json_mode and not self.quiet:
            self.out.print(text, style=style, markup=False)

    def result(self, text: str) -> None:
        """The one line a quiet run still prints (a job id, a created id)."""
        if not self.json_mode:
            self.out.print(text, markup=False)

    def note(self, text: str, style: str | None = "dim") -> None:
        """A remark on stderr (hints, how to follow a detached job); silent with -q."""
        if not self.quiet:
            self.err.print(text, style=style, markup=False)

    def alert(self, text: str, style: str | None = "yellow") -> None:
        """A remark on stderr that -q does not silence (how to follow a detached job)."""
        self.err.print(text, style=style, markup=False)

    def problem(self, error: CliError) -> None:
        """An error on stderr, with what to do next."""
        self.err.print(Text(f"relayfleet: {error.message}", style="bold red"))
        errors = getattr(error, "errors", None)
        if errors:
            for field, messages in sorted(_flatten(errors)):
                self.err.print(Text(f"  {field}: {messages}", style="red"))
        if error.hint:
            self.err.print(Text(f"  try: {error.hint}", style="yellow"))

    def table(self, columns: Sequence[str], rows: Iterable[Sequence[Any]], *,
              title: str | None = None, styles: Sequence[str | None] | None = None,
              empty: str = "nothing to show") -> None:
        """Rows as a table (``styles``: one rich style per row, e.g. red for failures)."""
        if self.json_mode:
            return
        rows = list(rows)
        if not rows:
            self.say(empty, style="dim")
            return
        table = Table(*columns, title=Text(title) if title else None, title_justify="left",
                      show_edge=False, header_style="bold", pad_edge=False)
        for index, row in enumerate(rows):
            style = styles[index] if styles else None
            table.add_row(*(cell if isinstance(cell, Text) else Text(_cell(cell)) for cell in row),
                          style=style)
        self.out.print(table)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(str(item) for item in value) or "-"
    return str(value)


def _flatten(errors: Any, prefix: str = "") -> Iterable[tuple[str, str]]:
    if isinstance(errors, dict):
        for key, value in errors.items():
            yield from _flatten(value, f"{prefix}{key}." if prefix or key else prefix)
    elif isinstance(errors, list) and all(isinstance(item, str) for item in errors):
        yield prefix.rstrip(".") or "request", "; ".join(errors)
    else:
        yield prefix.rstrip(".") or "request", str(errors)
