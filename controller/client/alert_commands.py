"""The ``relayfleet alerts`` commands: alerts, their rules and their channels."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import click

from controller.client.api import ApiClient
from controller.client.context import Cli, Group, examples, pass_cli
from controller.client.errors import EXIT_JOB_NOT_ALL_OK, EXIT_OK, UsageProblem
from controller.client.inventory_commands import tenant_id_of

CHANNEL_KINDS = ("webhook", "email", "slack", "teams")
RULE_KINDS = ("queue_count", "oldest_age", "unreachable", "drift", "cause")


def _page(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {"items": list(items), "total": len(items), "limit": len(items), "offset": 0}


def _find(api: ApiClient, path: str, ref: str, what: str, tenant: str | None) -> int:
    """An id from an id or a name (``tenant`` settles a name several tenants use)."""
    query = {"tenant_id": tenant_id_of(api, tenant)} if tenant else {}
    rows = list(api.items(path, **query))
    found = [row for row in rows if str(row["id"]) == ref] or [
        row for row in rows if row["name"] == ref]
    if not found:
        raise UsageProblem(f"no alert {what} {ref!r}",
                           hint=f"relayfleet alerts {what}s list")
    if len(found) > 1:
        raise UsageProblem(f"several tenants have an alert {what} named {ref!r}",
                           hint="add --tenant T, or give its id")
    return int(found[0]["id"])


@click.group("alerts", cls=Group, epilog=examples(
    "relayfleet alerts list --firing",
    "relayfleet alerts channels add noc --kind email --address noc@msp.example",
    "relayfleet alerts rules add 'queue over 50' --kind queue_count --threshold 50 "
    "--channel noc"))
def alerts() -> None:
    """Alerts on the fleet's state: what fired, the rules, and where notices go."""


@alerts.command("list", epilog=examples("relayfleet alerts list --firing",
                                        "relayfleet alerts list --host pbx-lyon-1 --json"))
@click.option("--firing", is_flag=True, help="Only the alerts still open.")
@click.option("--rule", metavar="R", help="Only this rule's (name or id).")
@click.option("--host", metavar="H", help="Only this host's (name or id).")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True,
              help="At most this many, newest first.")
@pass_cli
def alerts_list(cli: Cli, /, *, firing: bool, rule: str | None, host: str | None,
                limit: int) -> int:
    """Alerts, newest first; exit 1 with --firing when some are open (for scripts)."""
    query: dict[str, Any] = {"limit": limit}
    if firing:
        query["state"] = "firing"
    if rule:
        query["rule"] = rule
    if host:
        query["host"] = host
    doc = cli.api.get("/v1/alerts", **query)
    items = doc["items"]
    if cli.out.json_mode:
        cli.out.document(doc)
    else:
        cli.out.table(
            ["id", "state", "rule", "host", "site", "fired", "resolved", "notices"],
            [(a["id"], a["state"], a["rule"], a["host"], a["site"] or "-",
              str(a["fired_at"])[:19], str(a["resolved_at"] or "-")[:19],
              ", ".join(f"{n['channel'] or n['channel_id']} {n['event']}: {n['state']}"
                        for n in a["notices"]) or "-") for a in items],
            styles=[("red" if a["state"] == "firing" else None) for a in items],
            empty="no alerts" + (" firing" if firing else ""))
    return EXIT_JOB_NOT_ALL_OK if firing and items else EXIT_OK


# -- channels --------------------------------------------------------------------------------

@alerts.group("channels", cls=Group, epilog=examples(
    "relayfleet alerts channels list",
    "relayfleet alerts channels add noc-hook --kind webhook --url https://noc.msp.example/hook",
    "relayfleet alerts channels test noc-hook"))
def channels() -> None:
    """Where alert notices go: signed webhooks, email, Slack, Teams."""


@channels.command("list", epilog=examples("relayfleet alerts channels list --tenant acme"))
@click.option("--tenant", metavar="T", help="Only this tenant's (name or id).")
@pass_cli
def channels_list(cli: Cli, /, *, tenant: str | None) -> int:
    """The channels you see (their targets as hints only)."""
    query = {"tenant_id": tenant_id_of(cli.api, tenant)} if tenant else {}
    items = list(cli.api.items("/v1/alert-channels", **query))
    if cli.out.json_mode:
        cli.out.document(_page(items))
        return EXIT_OK
    cli.out.table(["id", "name", "kind", "target", "tenant"],
                  [(c["id"], c["name"], c["kind"], c["target_hint"],
                    c["tenant_id"] or "(all)") for c in items],
                  empty="no channels: relayfleet alerts channels add NAME --kind ...")
    return EXIT_OK


@channels.command("add", epilog=examples(
    "relayfleet alerts channels add noc-hook --kind webhook --url https://noc.msp.example/hook",
    "relayfleet alerts channels add noc --kind email --address noc@msp.example --tenant acme",
    "relayfleet alerts channels add chat --kind slack --url-file slack-url.txt"))
@click.argument("name")
@click.option("--kind", type=click.Choice(CHANNEL_KINDS), required=True,
              help="webhook (signed JSON), email, slack or teams (an incoming webhook).")
@click.option("--url", metavar="URL", help="webhook, slack, teams: where to POST.")
@click.option("--url-file", type=click.File("r"), metavar="F",
              help="Read the URL from a file ('-': stdin): a Slack or Teams URL is a key.")
@click.option("--address", metavar="A", help="email: who gets the notices.")
@click.option("--tenant", metavar="T", help="The tenant it belongs to (name or id; a "
                                            "tenant's token: its own).")
@pass_cli
def channels_add(cli: Cli, /, *, name: str, kind: str, url: str | None, url_file: Any,
                 address: str | None, tenant: str | None) -> int:
    """Add a channel; a webhook's signing secret is printed last, and only this once."""
    if url_file is not None:
        url = url_file.read().strip()
    body: dict[str, Any] = {"name": name, "kind": kind,
                            "tenant_id": tenant_id_of(cli.api, tenant) if tenant else None}
    if kind == "email":
        if not address:
            raise UsageProblem("an email channel needs --address", hint="--address noc@...")
        body["address"] = address
    else:
        if not url:
            raise UsageProblem(f"a {kind} channel needs --url or --url-file",
                               hint="--url https://...")
        body["url"] = url
    made: dict[str, Any] = cli.api.post("/v1/alert-channels", body)
    if cli.out.json_mode:
        cli.out.document(made)
        return EXIT_OK
    cli.out.say(f"added {made['kind']} channel {made['name']} (id {made['id']}) -> "
                f"{made['target_hint']}")
    if made.get("secret"):
        cli.out.note("its signing secret (X-Relayfleet-Signature: sha256 HMAC over "
                     "'timestamp.body') is shown only now: store it where the receiver "
                     "reads it", style="yellow")
        cli.out.result(str(made["secret"]))
    else:
        cli.out.result(str(made["id"]))
    return EXIT_OK


@channels.command("remove", epilog=examples("relayfleet alerts channels remove noc-hook"))
@click.argument("channel")
@click.option("--tenant", metavar="T", help="The channel's tenant, if several use the name.")
@pass_cli
def channels_remove(cli: Cli, /, *, channel: str, tenant: str | None) -> int:
    """Remove a channel: rules stop sending to it."""
    channel_id = _find(cli.api, "/v1/alert-channels", channel, "channel", tenant)
    cli.api.delete(f"/v1/alert-channels/{channel_id}")
    cli.out.say(f"removed channel {channel} (id {channel_id})")
    return EXIT_OK


@channels.command("test", epilog=examples("relayfleet alerts channels test noc-hook"))
@click.argument("channel")
@click.option("--tenant", metavar="T", help="The channel's tenant, if several use the name.")
@pass_cli
def channels_test(cli: Cli, /, *, channel: str, tenant: str | None) -> int:
    """Send a test notice now; exit 1 if the channel did not take it."""
    channel_id = _find(cli.api, "/v1/alert-channels", channel, "channel", tenant)
    doc: dict[str, Any] = cli.api.post(f"/v1/alert-channels/{channel_id}/test")
    if cli.out.json_mode:
        cli.out.document(doc)
    elif doc["delivered"]:
        cli.out.say(f"test notice delivered to {channel} ({doc['outcome']})", style="green")
    else:
        cli.out.say(f"test notice NOT delivered to {channel}: {doc['outcome']}", style="red")
    return EXIT_OK if doc["delivered"] else EXIT_JOB_NOT_ALL_OK


# -- rules -----------------------------------------------------------------------------------

def _condition(rule: Mapping[str, Any]) -> str:
    kind, threshold = rule["kind"], rule.get("threshold")
    if kind == "queue_count":
        return f"queue > {threshold} messages"
    if kind == "oldest_age":
        return f"oldest message > {threshold} s"
    if kind == "unreachable":
        return f"{threshold} failed checks in a row"
    if kind == "cause":
        return f"doctor names {rule.get('cause') or 'any cause'}"
    return "differs from its policy"


@alerts.group("rules", cls=Group, epilog=examples(
    "relayfleet alerts rules list",
    "relayfleet alerts rules add stuck --kind oldest_age --threshold 3600 --channel noc",
    "relayfleet alerts rules remove stuck"))
def rules() -> None:
    """Conditions on each host's last known state that fire alerts."""


@rules.command("list", epilog=examples("relayfleet alerts rules list --json"))
@click.option("--tenant", metavar="T", help="Only this tenant's (name or id).")
@pass_cli
def rules_list(cli: Cli, /, *, tenant: str | None) -> int:
    """The rules you see, with how many alerts each has open."""
    query = {"tenant_id": tenant_id_of(cli.api, tenant)} if tenant else {}
    items = list(cli.api.items("/v1/alert-rules", **query))
    if cli.out.json_mode:
        cli.out.document(_page(items))
        return EXIT_OK
    cli.out.table(["id", "name", "condition", "scope", "channels", "enabled", "firing"],
                  [(r["id"], r["name"], _condition(r),
                    ", ".join(f"{k}: {','.join(map(str, v))}" for k, v in r["scope"].items())
                    or "all hosts", ", ".join(c["name"] for c in r["channels"]),
                    "yes" if r["enabled"] else "no", r["firing"]) for r in items],
                  styles=[("red" if r["firing"] else None) for r in items],
                  empty="no rules: relayfleet alerts rules add NAME --kind ... --channel C")
    return EXIT_OK


@rules.command("add", epilog=examples(
    "relayfleet alerts rules add 'queue over 50' --kind queue_count --threshold 50 "
    "--channel noc --channel chat",
    "relayfleet alerts rules add down --kind unreachable --threshold 3 --channel noc "
    "--tenant acme --site Leeds",
    "relayfleet alerts rules add 'bad login' --kind cause --cause auth_failed --channel noc"))
@click.argument("name")
@click.option("--kind", type=click.Choice(RULE_KINDS), required=True,
              help="queue_count, oldest_age (seconds), unreachable (checks in a row), drift, "
                   "cause.")
@click.option("--threshold", type=click.IntRange(0), help="Fires above this (queue_count, "
              "oldest_age) or at this (unreachable, default 3).")
@click.option("--cause", metavar="KEY", help="kind cause: the doctor's cause key (default: "
                                             "any cause).")
@click.option("--channel", "channel_refs", multiple=True, required=True, metavar="C",
              help="A channel to notify (name or id); repeat for several.")
@click.option("--site", "sites", multiple=True, metavar="S",
              help="Only hosts of this site (name or id); repeatable.")
@click.option("--tag", "tags", multiple=True, metavar="TAG",
              help="Only hosts with this tag; repeatable (any of them).")
@click.option("--tenant", metavar="T", help="The tenant whose hosts it watches (name or id; "
                                            "a tenant's token: its own).")
@click.option("--disabled", is_flag=True, help="Add it switched off.")
@pass_cli
def rules_add(cli: Cli, /, *, name: str, kind: str, threshold: int | None,
              cause: str | None, channel_refs: tuple[str, ...], sites: tuple[str, ...],
              tags: tuple[str, ...], tenant: str | None, disabled: bool) -> int:
    """Add a rule; alerts fire and resolve at the controller's next tick."""
    scope: dict[str, Any] = {}
    if sites:
        scope["sites"] = [int(s) if s.isdigit() else s for s in sites]
    if tags:
        scope["tags"] = list(tags)
    body: dict[str, Any] = {
        "name": name, "kind": kind, "channels": [int(c) if c.isdigit() else c
                                                 for c in channel_refs],
        "scope": scope, "enabled": not disabled,
        "tenant_id": tenant_id_of(cli.api, tenant) if tenant else None}
    if threshold is not None:
        body["threshold"] = threshold
    if cause is not None:
        body["cause"] = cause
    made: dict[str, Any] = cli.api.post("/v1/alert-rules", body)
    if cli.out.json_mode:
        cli.out.document(made)
        return EXIT_OK
    cli.out.say(f"added rule {made['name']} (id {made['id']}): {_condition(made)} -> "
                + ", ".join(c["name"] for c in made["channels"]))
    cli.out.result(str(made["id"]))
    return EXIT_OK


@rules.command("remove", epilog=examples("relayfleet alerts rules remove 'queue over 50'"))
@click.argument("rule")
@click.option("--tenant", metavar="T", help="The rule's tenant, if several use the name.")
@pass_cli
def rules_remove(cli: Cli, /, *, rule: str, tenant: str | None) -> int:
    """Remove a rule and its alerts."""
    rule_id = _find(cli.api, "/v1/alert-rules", rule, "rule", tenant)
    cli.api.delete(f"/v1/alert-rules/{rule_id}")
    cli.out.say(f"removed rule {rule} (id {rule_id})")
    return EXIT_OK


def register(cli: click.Group) -> None:
    """Add these commands to ``cli``."""
    cli.add_command(alerts)
