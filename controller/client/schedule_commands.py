"""The ``relayfleet`` commands for schedules and status collection."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import click

from controller.client.context import Cli, Group, examples, pass_cli
from controller.client.errors import EXIT_OK, UsageProblem
from controller.client.inventory_commands import tenant_id_of
from controller.client.refs import number_or_name, say_which, split_ref
from controller.client.targets import TargetChoice, build_target, target_options
from shared.actions import JOB_ACTIONS


def _page(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"items": items, "total": len(items), "limit": len(items), "offset": 0}


def schedule_of(cli: Cli, ref: str) -> dict[str, Any]:
    """A schedule's document (with its next runs) from its id or name (a number that is
    both asks for ``id:N`` or ``name:N``, as for tenants, sites and hosts)."""
    ident, name = split_ref(ref)
    named = ([s for s in cli.api.items("/v1/schedules") if s["name"] == name]
             if name is not None else [])
    # a plain number naming a schedule too is ambiguous, unless that schedule has that id
    if ident is not None and named and [s["id"] for s in named] != [ident]:
        raise UsageProblem(number_or_name("schedule", ref), hint=say_which(ref))
    if ident is not None:
        found: dict[str, Any] = cli.api.get(f"/v1/schedules/{ident}")
        return found
    if not named:
        raise UsageProblem(f"no schedule named {ref!r}", hint="relayfleet schedules list")
    if len(named) > 1:
        raise UsageProblem(f"several schedules are named {ref!r} (ids "
                           f"{', '.join(str(s['id']) for s in named)})", hint="give the id")
    one: dict[str, Any] = cli.api.get(f"/v1/schedules/{named[0]['id']}")
    return one


def _target_text(target: Mapping[str, Any]) -> str:
    (kind, refs), = target.items() if target else (("?", "?"),)
    if kind == "all":
        return "all hosts"
    return f"{kind} {', '.join(str(r) for r in refs)}"


def _show(cli: Cli, doc: Mapping[str, Any]) -> None:
    lines: list[tuple[str, Any]] = [
        ("schedule", f"{doc['name']} (id {doc['id']})"),
        ("runs", f"{doc['action']} on {_target_text(doc['target'])}"),
        ("when", f"{doc['cron']} ({doc['timezone']})"),
        ("enabled", "yes" if doc["enabled"] else "no"),
        ("params", json.dumps(doc["params"]) if doc["params"] else "-"),
        ("options", json.dumps(doc["options"]) if doc["options"] else "-"),
        ("last run", f"{str(doc['last_run_at'])[:19]} (job {doc['last_job_id']})"
         if doc.get("last_run_at") else "-"),
        ("last error", doc.get("last_error") or "-")]
    for label, value in lines:
        cli.out.say(f"{label + ':':<12}{value}")
    runs = doc.get("next_runs") or []
    if doc["enabled"] and runs:
        cli.out.say("next runs:")
        for run in runs:
            cli.out.say(f"  {run['local']}   ({run['utc'][:16].replace('T', ' ')} UTC)")


@click.group("schedules", cls=Group, epilog=examples(
    "relayfleet schedules list",
    "relayfleet schedules add nightly-flush --action flush_queue --site lyon "
    "--cron '30 2 * * *' --timezone Europe/Paris",
    "relayfleet schedules show nightly-flush", "relayfleet schedules disable nightly-flush"))
def schedules() -> None:
    """Jobs the controller runs by itself at the times a cron expression names."""


@schedules.command("list", epilog=examples("relayfleet schedules list",
                                           "relayfleet schedules list --json"))
@pass_cli
def schedules_list(cli: Cli, /) -> int:
    """Every schedule this token sees, with its next run."""
    items = list(cli.api.items("/v1/schedules"))
    if cli.out.json_mode:
        cli.out.document(_page(items))
        return EXIT_OK
    cli.out.table(["id", "name", "action", "target", "cron", "zone", "next run (UTC)",
                   "last job", "error"],
                  [(s["id"], s["name"], s["action"], _target_text(s["target"]), s["cron"],
                    s["timezone"],
                    str(s["next_run_at"])[:16].replace("T", " ") if s["next_run_at"]
                    else "(disabled)", s["last_job_id"] or "-",
                    (s["last_error"] or "-")[:60]) for s in items],
                  styles=[(None if s["enabled"] else "dim") for s in items],
                  empty="no schedules yet: relayfleet schedules add NAME --action A "
                        "--cron EXPR TARGET")
    return EXIT_OK


@schedules.command("add", epilog=examples(
    "relayfleet schedules add nightly-flush --action flush_queue --all --cron '30 2 * * *' "
    "--timezone Europe/Paris",
    "relayfleet schedules add weekday-status --action collect_status --tag pbx "
    "--cron '0 8 * * mon-fri'",
    "relayfleet schedules add relay-lyon --action set_smarthost --site lyon "
    "--params '{\"host\": \"relay.example.net\", \"port\": 587}' --cron @weekly"))
@click.argument("name")
@click.option("--action", type=click.Choice(JOB_ACTIONS), required=True,
              help="The job's action.")
@click.option("--cron", required=True, metavar="EXPR",
              help="minute hour day-of-month month day-of-week, e.g. '30 2 * * *'.")
@click.option("--timezone", "zone", default="UTC", show_default=True, metavar="ZONE",
              help="IANA time zone the expression is read in (Europe/Paris).")
@click.option("--params", "params_json", metavar="JSON", default="{}",
              help="The action's params as JSON (as in POST /v1/jobs).")
@click.option("--concurrency", type=click.IntRange(1, 1000), help="Hosts worked on at once.")
@click.option("--timeout", "timeout_s", type=click.IntRange(5, 3600), metavar="S",
              help="Time box for each host.")
@click.option("--disabled", is_flag=True, help="Store it without running it yet.")
@target_options
@pass_cli
def schedules_add(cli: Cli, /, *, name: str, action: str, cron: str, zone: str,
                  params_json: str, concurrency: int | None, timeout_s: int | None,
                  disabled: bool, **target: Any) -> int:
    """Add a schedule; it runs as this token (its role and tenants)."""
    try:
        params = json.loads(params_json)
    except json.JSONDecodeError as exc:
        raise UsageProblem(f"--params is not JSON: {exc.msg}",
                           hint="e.g. --params '{\"host\": \"relay.example.net\"}'") from None
    if not isinstance(params, dict):
        raise UsageProblem("--params must be a JSON object", hint="e.g. --params '{}'")
    options = {key: value for key, value in (("concurrency", concurrency),
                                             ("timeout_s", timeout_s)) if value is not None}
    body = {"name": name, "action": action, "target": build_target(
        TargetChoice.from_options(target), cli.api), "params": params, "options": options,
        "cron": cron, "timezone": zone, "enabled": not disabled}
    made: dict[str, Any] = cli.api.post("/v1/schedules", body)
    if cli.out.json_mode:
        cli.out.document(made)
    elif cli.out.quiet:
        cli.out.result(str(made["id"]))
    else:
        cli.out.say(f"added schedule {made['name']} (id {made['id']})")
        _show(cli, made)
    return EXIT_OK


@schedules.command("show", epilog=examples("relayfleet schedules show nightly-flush",
                                           "relayfleet schedules show 3 --json"))
@click.argument("ref", metavar="SCHEDULE")
@pass_cli
def schedules_show(cli: Cli, /, *, ref: str) -> int:
    """A schedule (name or id), its last run and its next five runs."""
    doc = schedule_of(cli, ref)
    if cli.out.json_mode:
        cli.out.document(doc)
    else:
        _show(cli, doc)
    return EXIT_OK


@schedules.command("remove", epilog=examples("relayfleet schedules remove nightly-flush"))
@click.argument("ref", metavar="SCHEDULE")
@pass_cli
def schedules_remove(cli: Cli, /, *, ref: str) -> int:
    """Delete a schedule (the jobs it started stay)."""
    doc = schedule_of(cli, ref)
    cli.api.delete(f"/v1/schedules/{doc['id']}")
    if cli.out.json_mode:
        cli.out.document({"removed": doc["id"], "name": doc["name"]})
    else:
        cli.out.say(f"removed schedule {doc['name']} (id {doc['id']})")
    return EXIT_OK


def _switch(cli: Cli, ref: str, enabled: bool) -> int:
    doc = schedule_of(cli, ref)
    changed: dict[str, Any] = cli.api.patch(f"/v1/schedules/{doc['id']}", {"enabled": enabled})
    if cli.out.json_mode:
        cli.out.document(changed)
        return EXIT_OK
    state = "enabled" if enabled else "disabled"
    cli.out.say(f"{state} schedule {changed['name']} (id {changed['id']})"
                + (f"; next run {changed['next_runs'][0]['local']}"
                   if enabled and changed.get("next_runs") else ""))
    return EXIT_OK


@schedules.command("enable", epilog=examples("relayfleet schedules enable nightly-flush"))
@click.argument("ref", metavar="SCHEDULE")
@pass_cli
def schedules_enable(cli: Cli, /, *, ref: str) -> int:
    """Run a schedule again (as this token from now on); clears its last error."""
    return _switch(cli, ref, True)


@schedules.command("disable", epilog=examples("relayfleet schedules disable nightly-flush"))
@click.argument("ref", metavar="SCHEDULE")
@pass_cli
def schedules_disable(cli: Cli, /, *, ref: str) -> int:
    """Stop running a schedule (kept, to enable again)."""
    return _switch(cli, ref, False)


@click.group("status-collection", cls=Group, epilog=examples(
    "relayfleet status-collection show acme", "relayfleet status-collection set acme 300",
    "relayfleet status-collection set acme 0"))
def status_collection() -> None:
    """How often the controller collects each host's status by itself (per tenant)."""


def _say_collection(cli: Cli, tenant: str, doc: Mapping[str, Any]) -> None:
    if cli.out.json_mode:
        cli.out.document(doc)
        return
    if not doc["enabled"]:
        cli.out.say(f"tenant {tenant}: status collection is off ({doc['hosts']} hosts)")
        return
    cli.out.say(f"tenant {tenant}: every host's status every {doc['every_s']} s "
                f"({doc['hosts']} hosts, about {doc['hosts_per_tick']} per {doc['tick_s']} s "
                "tick)" + (f"; last tick {str(doc['last_tick_at'])[:19]}"
                           if doc.get("last_tick_at") else ""))


@status_collection.command("show", epilog=examples("relayfleet status-collection show acme"))
@click.argument("tenant", metavar="TENANT")
@pass_cli
def status_collection_show(cli: Cli, /, *, tenant: str) -> int:
    """A tenant's status interval (name or id)."""
    doc = cli.api.get(f"/v1/tenants/{tenant_id_of(cli.api, tenant)}/status-collection")
    _say_collection(cli, tenant, doc)
    return EXIT_OK


@status_collection.command("set", epilog=examples("relayfleet status-collection set acme 300",
                                                  "relayfleet status-collection set acme 0"))
@click.argument("tenant", metavar="TENANT")
@click.argument("seconds", type=click.IntRange(0, 7 * 86400), metavar="SECONDS")
@pass_cli
def status_collection_set(cli: Cli, /, *, tenant: str, seconds: int) -> int:
    """Collect each of TENANT's hosts once per SECONDS (0: off); admins."""
    doc = cli.api.put(f"/v1/tenants/{tenant_id_of(cli.api, tenant)}/status-collection",
                      {"every_s": seconds})
    _say_collection(cli, tenant, doc)
    return EXIT_OK


def register(cli: click.Group) -> None:
    """Add these commands to ``cli``."""
    cli.add_command(schedules)
    cli.add_command(status_collection)
