"""The ``relayfleet`` commands for doctors: ``relayfleet doctor``."""

from __future__ import annotations

from typing import Any

import click
from rich.text import Text

from controller.client.context import Cli, Command, examples, pass_cli
from controller.client.errors import EXIT_OK
from controller.client.inventory_commands import site_id_of, tenant_id_of


@click.command("doctor", cls=Command, epilog=examples(
    "relayfleet doctor", "relayfleet doctor --tenant acme",
    "relayfleet doctor --site lyon --hosts-per-cause 50", "relayfleet doctor --json"))
@click.option("--tenant", metavar="T", help="Only this tenant's hosts (name or id).")
@click.option("--site", metavar="S", help="Only this site's hosts (name or id).")
@click.option("--hosts-per-cause", type=click.IntRange(0, 100), default=10, show_default=True,
              help="How many hosts each cause lists (most messages first).")
@pass_cli
def doctor(cli: Cli, /, *, tenant: str | None, site: str | None, hosts_per_cause: int) -> int:
    """Why mail waits: the fleet's Deferred and bounce reasons grouped into causes, each
    with its hosts and the action that fixes it (from each host's last collect_status)."""
    api = cli.api
    query: dict[str, Any] = {"hosts_per_cause": hosts_per_cause}
    if site:
        query["site"] = site_id_of(api, site, tenant)
    elif tenant:
        query["tenant"] = tenant_id_of(api, tenant)
    report: dict[str, Any] = api.get("/v1/doctor", **query)
    if cli.out.json_mode:
        cli.out.document(report)
        return EXIT_OK
    causes = report["causes"]
    cli.out.say(Text(
        f"{report['examined']} hosts examined · {report['healthy']} healthy · "
        f"{len(causes)} cause{'' if len(causes) == 1 else 's'} · {report['unreachable']} "
        f"unreachable · {report['unknown']} never looked at", style="bold"))
    if report["unknown"]:
        cli.out.note("hosts never looked at have no causes yet: relayfleet status --all "
                     "(or a tenant, site or tag) looks at them")
    if not causes:
        cli.out.result("no host shows failing mail")
        return EXIT_OK
    for cause in causes:
        action = cause["action"]
        cli.out.say("")
        cli.out.say(Text(f"{cause['title']} [{cause['cause']}]: {cause['hosts']} host"
                         f"{'' if cause['hosts'] == 1 else 's'}, {cause['messages']} message"
                         f"{'' if cause['messages'] == 1 else 's'}", style="bold yellow"))
        fix = f"{action['action']}: {action['hint']}" if action["action"] else action["hint"]
        cli.out.say(f"  fix: {fix}")
        cli.out.table(["host", "site", "messages", "sample reason"],
                      [(h["name"], h["site"], h["count"], h["sample"])
                       for h in cause["examples"]], empty="  (no hosts listed)")
        more = cause["hosts"] - len(cause["examples"])
        if more > 0:
            cli.out.note(f"  ... and {more} more (--hosts-per-cause N lists more)")
    return EXIT_OK


def register(cli: click.Group) -> None:
    """Add these commands to ``cli``."""
    cli.add_command(doctor)
