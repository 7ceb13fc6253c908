"""The ``relayfleet`` command: global options, and the mapping of problems to exit codes
(0 all hosts succeeded, 1 a job ended partial, failed or cancelled, 2 usage, 3 the API
refused or could not be reached, 4 a confirmation declined, 70 an internal error, 130
interrupted)."""

from __future__ import annotations

import os
import sys

import click

from controller.client import (
    alert_commands,
    doctor_commands,
    inbound_commands,
    inventory_commands,
    job_commands,
    policy_commands,
    schedule_commands,
)
from controller.client.config import ENV_API, ENV_TOKEN
from controller.client.context import CONTEXT_SETTINGS, Cli, Group, examples
from controller.client.errors import EXIT_DETACHED, EXIT_INTERNAL, EXIT_USAGE, CliError
from controller.client.output import Output


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
    with live per-host progress and end with a table. Tenants, sites and hosts are named
    by name or id: a number is an id; write id:3 or name:3 when one is also named 3.

    Exit codes: 0 every host succeeded; 1 the job ended partial, failed or cancelled; 2
    usage error; 3 the API refused or could not be reached; 4 you declined a confirmation
    (nothing was done); 70 internal error (a bug: please report it); 130 interrupted (a
    job keeps running: relayfleet jobs watch ID).
    """
    state = ctx.ensure_object(Cli)
    state.api_url, state.token, state.token_file = api_url, token, token_file
    state.profile, state.ca_file, state.http_timeout_s = profile, ca_file, http_timeout
    state.json_mode = state.json_mode or json_mode
    state.quiet = state.quiet or quiet
    ctx.call_on_close(state.close)


job_commands.register(cli)
inventory_commands.register(cli)
for commands in (policy_commands, schedule_commands, alert_commands, doctor_commands,
                 inbound_commands):
    commands.register(cli)


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
    except Exception as exc:  # the last resort: exit 1 is a job's outcome
        click.echo(f"relayfleet: internal error: {type(exc).__name__}: {exc} (please report "
                   "it, with the command line: it is a bug in relayfleet)", err=True)
        sys.exit(EXIT_INTERNAL)
    sys.exit(code if isinstance(code, int) else 0)
