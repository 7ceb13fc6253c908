"""What every ``relayfleet`` command shares: the :class:`Cli` state (connection settings,
output, API client), the command classes that give each command ``--json`` and ``-q``
and keep its examples' line breaks, and :func:`examples`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import click

from controller.client.api import ApiClient
from controller.client.config import Connection, resolve
from controller.client.output import Output

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@dataclass
class Cli:
    """What every command shares: the connection settings, the output, the API client."""

    api_url: str | None = None
    token: str | None = None
    token_file: str | None = None
    profile: str | None = None
    ca_file: str | None = None
    http_timeout_s: float = 30.0
    json_mode: bool = False
    quiet: bool = False
    _api: ApiClient | None = field(default=None, repr=False)
    _out: Output | None = field(default=None, repr=False)

    @property
    def out(self) -> Output:
        """The output, in the mode the options asked for."""
        if self._out is None:
            self._out = Output(json_mode=self.json_mode, quiet=self.quiet)
        return self._out

    def connection(self) -> Connection:
        """Where to send calls, from flags > environment > profile."""
        return resolve(self.api_url, self.token, self.token_file, self.profile)

    @property
    def api(self) -> ApiClient:
        """The controller's API (connects on first call)."""
        if self._api is None:
            self._api = ApiClient(self.connection(), timeout_s=self.http_timeout_s,
                                  verify=self.ca_file or True)
        return self._api

    def close(self) -> None:
        """Close the API client if one was opened."""
        if self._api is not None:
            self._api.close()


pass_cli = click.make_pass_decorator(Cli)


def _output_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """``--json`` and ``-q`` on every command too (``relayfleet jobs show 5 --json``)."""

    def set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
        if value:
            ctx.ensure_object(Cli).json_mode = True

    def set_quiet(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
        if value:
            ctx.ensure_object(Cli).quiet = True

    function = click.option("--json", "json_flag", is_flag=True, expose_value=False,
                            callback=set_json, is_eager=True,
                            help="Print the API's JSON document (for scripts).")(function)
    return click.option("-q", "--quiet", "quiet_flag", is_flag=True, expose_value=False,
                        callback=set_quiet, is_eager=True,
                        help="Print only the essential (ids, the verdict).")(function)


class Command(click.Command):
    """A command that also takes --json and -q."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _output_options(self)  # click's option decorators append to a Command's params

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Examples keep their line breaks."""
        if self.epilog:
            formatter.write_paragraph()
            for line in self.epilog.splitlines():
                formatter.write(f"{line}\n")


class Group(click.Group):
    """A group whose commands and sub-groups are :class:`Command` and :class:`Group`."""

    command_class = Command

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Examples keep their line breaks."""
        Command.format_epilog(self, ctx, formatter)  # type: ignore[arg-type]


Group.group_class = Group


def examples(*lines: str) -> str:
    """An epilog of example command lines."""
    return "Examples:\n" + "\n".join(f"  {line}" for line in lines)
