"""The ``relayfleet`` command: global options, the context every command shares, and the
mapping of problems to exit codes (0 all hosts succeeded, 1 a job ended partial, failed or
cancelled, 2 usage, 3 the API refused or was unreachable)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import click

from controller.client.api import ApiClient
from controller.client.config import ENV_API, ENV_TOKEN, Connection, resolve
from controller.client.errors import EXIT_DETACHED, EXIT_USAGE, CliError
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


@click.group(cls=Group, context_settings=CONTEXT_SETTINGS, epilog=examples(
    "relayfleet login --profile acme --api https://relayfleet.example.net",
    "relayfleet smarthost set relay.example.net:587 --site lyon --no-mx",
    "relayfleet flush --all",
    "relayfleet fleet --holding-mail"))
@click.option("--api", "api_url", metavar="URL", help=f"The controller (or {ENV_API}).")
@click.option("--token", metavar="T", help=f"API token (or {ENV_TOKEN}; prefer --token-file: "
                                           "a flag shows in ps).")
@click.option("--token-file", metavar="F", help="Read the token from this file ('-': stdin).")
@click.option("--profile", metavar="NAME",
              help="A profile stored by `relayfleet login` (or RELAYFLEET_PROFILE).")
@click.option("--ca-file", metavar="PEM", envvar="RELAYFLEET_CA_FILE",
              help="CA bundle to verify an https controller with (or RELAYFLEET_CA_FILE).")
@click.option("--http-timeout", type=click.FloatRange(1, 600), default=30.0, show_default=True,
              help="Seconds to wait for each API answer.")
@click.option("--json", "json_mode", is_flag=True,
              help="Print the API's JSON documents (for scripts and ticketing glue).")
@click.option("-q", "--quiet", is_flag=True, help="Print only ids and verdicts.")
@click.version_option(package_name="relayfleet", prog_name="relayfleet")
@click.pass_context
def cli(ctx: click.Context, /, *, api_url: str | None, token: str | None, token_file: str | None,
        profile: str | None, ca_file: str | None, http_timeout: float, json_mode: bool,
        quiet: bool) -> None:
    """relayfleet: point a fleet's outbound mail at a smarthost, flush queues and see what
    happened, through the relayfleet controller's API.

    Job commands (smarthost, flush, status, diagnose, queue, log, hostname) wait by default
    with live per-host progress and end with a table. Exit codes: 0 every host succeeded;
    1 the job ended partial, failed or cancelled; 2 usage error; 3 the API refused or could
    not be reached.
    """
    state = ctx.ensure_object(Cli)
    state.api_url, state.token, state.token_file = api_url, token, token_file
    state.profile, state.ca_file, state.http_timeout_s = profile, ca_file, http_timeout
    state.json_mode = state.json_mode or json_mode
    state.quiet = state.quiet or quiet
    ctx.call_on_close(state.close)


def _register() -> None:
    from controller.client import inventory_commands, job_commands

    job_commands.register(cli)
    inventory_commands.register(cli)


_register()


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``relayfleet``."""
    try:
        code = cli.main(args=argv, prog_name="relayfleet", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("relayfleet: interrupted", err=True)
        sys.exit(EXIT_DETACHED)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.ClickException as problem:
        problem.show()
        sys.exit(problem.exit_code if problem.exit_code != 1 else EXIT_USAGE)
    except CliError as problem:
        Output(quiet=False).problem(problem)
        sys.exit(problem.exit_code)
    except BrokenPipeError:
        # `relayfleet hosts list | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    sys.exit(code if isinstance(code, int) else 0)
