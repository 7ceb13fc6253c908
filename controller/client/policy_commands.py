"""The ``relayfleet`` commands for desired state: ``credentials``, ``policy``, ``drift``
and ``remediate``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import click
from rich.text import Text

from controller.client.api import PAGE_LIMIT, ApiClient, new_idempotency_key
from controller.client.context import Cli, Command, Group, examples, pass_cli
from controller.client.errors import EXIT_DETACHED, EXIT_OK, ApiRefused, UsageProblem
from controller.client.inventory_commands import host_of, site_id_of, tenant_id_of
from controller.client.job_commands import read_password
from controller.client.summaries import relay_text
from controller.client.targets import TargetChoice, build_target, target_options
from controller.client.watch import exit_code_for, finish, wait_for

TLS_MODES = ("may", "encrypt", "verify")
#: ``drift``'s exit code when some host drifted (as ``diff`` says "differences found")
EXIT_DRIFTED = 1


# -- credentials ------------------------------------------------------------------------

@click.group("credentials", cls=Group, epilog=examples(
    "relayfleet credentials list",
    "relayfleet credentials add acme-relay --tenant acme --username pbx@acme.example "
    "--password-stdin < pw.txt",
    "relayfleet credentials remove acme-relay --tenant acme"))
def credentials() -> None:
    """Relay logins (SMTP AUTH) that policies name; passwords are write-only."""


def _credential_id(api: ApiClient, name: str, tenant: str | None) -> int:
    tenant_id = tenant_id_of(api, tenant) if tenant else None
    query = {"tenant_id": tenant_id} if tenant_id else {}
    found = [row for row in api.get("/v1/credentials", **query)["items"]
             if row["name"] == name or str(row["id"]) == name]
    if not found:
        raise UsageProblem(f"no credential named {name!r}", hint="relayfleet credentials list")
    if len(found) > 1:
        raise UsageProblem(f"several tenants have a credential named {name!r}",
                           hint="add --tenant T")
    return int(found[0]["id"])


@credentials.command("list", epilog=examples("relayfleet credentials list --tenant acme"))
@click.option("--tenant", metavar="T", help="Only this tenant's (name or id).")
@pass_cli
def credentials_list(cli: Cli, /, *, tenant: str | None) -> int:
    """The credentials you see (never a password)."""
    query = {"tenant_id": tenant_id_of(cli.api, tenant)} if tenant else {}
    doc = cli.api.get("/v1/credentials", **query)
    if cli.out.json_mode:
        cli.out.document(doc)
        return EXIT_OK
    cli.out.table(["id", "name", "tenant", "username", "updated"],
                  [(row["id"], row["name"], row["tenant_id"], row["username"],
                    row.get("updated_at") or row["created_at"]) for row in doc["items"]],
                  empty="no credentials: add one with relayfleet credentials add")
    return EXIT_OK


@credentials.command("add", epilog=examples(
    "relayfleet credentials add acme-relay --tenant acme --username pbx@acme.example "
    "--password-file pw.txt"))
@click.argument("name")
@click.option("--tenant", metavar="T", help="The tenant it belongs to (name or id; a "
                                            "tenant's token: its own).")
@click.option("--username", required=True, metavar="U", help="SMTP AUTH user at the relay.")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
@click.option("--password-file", metavar="F", help="Read the password from a file.")
@pass_cli
def credentials_add(cli: Cli, /, *, name: str, tenant: str | None, username: str,
                    password_stdin: bool, password_file: str | None) -> int:
    """Store a relay login for policies to name (the password is sealed, never shown)."""
    if not (password_stdin or password_file):
        raise UsageProblem("the password is needed", hint="add --password-stdin or "
                                                          "--password-file F")
    body = {"name": name, "username": username,
            "password": read_password(password_file, password_stdin),
            "tenant_id": tenant_id_of(cli.api, tenant) if tenant else None}
    doc = cli.api.post("/v1/credentials", body)
    if cli.out.json_mode:
        cli.out.document(doc)
    elif cli.out.quiet:
        cli.out.result(str(doc["id"]))
    else:
        cli.out.say(f"credential {doc['name']} added (id {doc['id']}, user {doc['username']})")
    return EXIT_OK


@credentials.command("remove", epilog=examples("relayfleet credentials remove acme-relay"))
@click.argument("name")
@click.option("--tenant", metavar="T", help="The tenant it belongs to (name or id).")
@pass_cli
def credentials_remove(cli: Cli, /, *, name: str, tenant: str | None) -> int:
    """Remove a credential no policy uses."""
    credential_id = _credential_id(cli.api, name, tenant)
    cli.api.delete(f"/v1/credentials/{credential_id}")
    if not cli.out.json_mode:
        cli.out.say(f"credential {name} removed")
    return EXIT_OK


# -- policy -----------------------------------------------------------------------------

def _level_options(function: Any) -> Any:
    for option in reversed([
            click.option("--tenant", metavar="T", help="The tenant's policy (name or id)."),
            click.option("--site", metavar="S", help="The site's policy (name or id)."),
            click.option("--host", metavar="H", help="The host's own policy (name or id).")]):
        function = option(function)
    return function


def _level_path(api: ApiClient, tenant: str | None, site: str | None,
                host: str | None) -> tuple[str, str]:
    """(the policy's path, its level in words) from exactly one of the level options."""
    given = [name for name, value in (("--tenant", tenant), ("--site", site),
                                      ("--host", host)) if value]
    if len(given) != 1:
        raise UsageProblem("say which level: exactly one of --tenant T, --site S, --host H",
                           hint="e.g. relayfleet policy show --site lyon")
    if host:
        doc = host_of(api, host)
        return f"/v1/hosts/{doc['id']}/policy", f"host {doc['name']}"
    if site:
        site_id = site_id_of(api, site, tenant)
        return f"/v1/sites/{site_id}/policy", f"site {site}"
    tenant_id = tenant_id_of(api, str(tenant))
    return f"/v1/tenants/{tenant_id}/policy", f"tenant {tenant}"


def _own(api: ApiClient, path: str) -> dict[str, Any] | None:
    """A level's own policy (None: it has none)."""
    try:
        doc: dict[str, Any] = api.get(path)
    except ApiRefused as exc:
        if exc.status == 404:
            return None
        raise
    return doc


def _smarthost_words(smarthost: Mapping[str, Any] | None) -> str:
    if smarthost is None:
        return "none (direct delivery)"
    parts = []
    for key, value in smarthost.items():
        shown = value
        if isinstance(value, Mapping):
            shown = value.get("mode") if key == "tls" else value.get("domain")
        parts.append(f"{key}={shown}")
    return ", ".join(parts) or "(nothing)"


@click.group("policy", cls=Group, epilog=examples(
    "relayfleet policy set --tenant acme --relay relay.acme.example:587 --credential "
    "acme-relay --auto-remediate",
    "relayfleet policy set --site lyon --port 2525",
    "relayfleet policy show --host pbx-lyon-1",
    "relayfleet policy clear --site lyon"))
def policy() -> None:
    """What hosts' smarthost should be, per tenant, site or host (inherited field by
    field: host > site > tenant)."""


@policy.command("show", epilog=examples("relayfleet policy show --tenant acme",
                                        "relayfleet policy show --host pbx-lyon-1 --json"))
@_level_options
@pass_cli
def policy_show(cli: Cli, /, *, tenant: str | None, site: str | None,
                host: str | None) -> int:
    """A level's own policy; for a host, also its effective policy and drift."""
    path, words = _level_path(cli.api, tenant, site, host)
    own = _own(cli.api, path)
    desired = cli.api.get(path.replace("/policy", "/desired")) if host else None
    if cli.out.json_mode:
        cli.out.document({"policy": own, "desired": desired})
        return EXIT_OK
    if own is None:
        cli.out.say(f"{words} has no policy of its own")
    else:
        rows = []
        if "smarthost" in own:
            rows.append(("smarthost", _smarthost_words(own["smarthost"])))
        if "credential" in own:
            rows.append(("credential", own["credential"] or "none"))
        for key in ("auto_remediate", "remediate_per_hour"):
            if own.get(key) is not None:
                rows.append((key, own[key]))
        cli.out.table(["field", f"{words} sets"], rows, empty="(it sets nothing)")
    if desired is not None:
        _show_desired(cli, desired)
    return EXIT_OK


def _show_desired(cli: Cli, desired: Mapping[str, Any]) -> None:
    if not desired["defined"]:
        cli.out.say("effective: no level says what its smarthost must be")
        return
    relay = relay_text(desired["smarthost"]) if desired["smarthost"] else "no smarthost"
    login = f" with {desired['credential']}" if desired["credential"] else ""
    cli.out.say(Text(f"effective: {relay}{login}", style="bold"))
    cli.out.table(["field", "from"], sorted(desired["sources"].items()))
    if desired.get("problem"):
        cli.out.alert(f"the policy {desired['problem']}")
    drift = desired.get("drift")
    if drift:
        cli.out.table(["drifted", "want", "has"],
                      [(d["field"], d["want"], d["have"]) for d in drift],
                      styles=["red"] * len(drift))
    elif drift is not None:
        cli.out.say("in line with its policy")
    if desired.get("stuck"):
        cli.out.alert("stuck: its drift outlived its last two automatic remediations; they "
                      "leave it alone until the drift changes or you run relayfleet remediate")


@policy.command("set", epilog=examples(
    "relayfleet policy set --tenant acme --relay relay.acme.example:587 --tls encrypt",
    "relayfleet policy set --site lyon --credential lyon-relay",
    "relayfleet policy set --host pbx-old --no-smarthost",
    "relayfleet policy set --tenant acme --auto-remediate --per-hour 10"))
@_level_options
@click.option("--relay", metavar="RELAY[:PORT]", help="The smarthost's host (and port).")
@click.option("--port", type=click.IntRange(1, 65535), help="The smarthost's port.")
@click.option("--mx/--no-mx", default=None, help="Look up the relay's MX records.")
@click.option("--tls", "tls_mode", type=click.Choice(TLS_MODES), help="STARTTLS policy.")
@click.option("--tls-ca-file", metavar="PATH", help="CA bundle on the hosts (--tls verify).")
@click.option("--masquerade", metavar="DOMAIN", help="Send the hosts' own mail as @DOMAIN.")
@click.option("--no-smarthost", is_flag=True, help="Hosts must deliver directly.")
@click.option("--credential", metavar="NAME", help="SMTP AUTH with this credential.")
@click.option("--no-credential", is_flag=True, help="No SMTP AUTH.")
@click.option("--auto-remediate/--no-auto-remediate", default=None,
              help="Remediate drifted hosts without being asked.")
@click.option("--per-hour", type=click.IntRange(0, 10000), metavar="N",
              help="Tenant only: at most N automatic remediations an hour (default 20).")
@click.option("--replace", is_flag=True,
              help="Replace the level's policy with only what is given here (default: "
                   "change only the fields given).")
@pass_cli
def policy_set(cli: Cli, /, *, tenant: str | None, site: str | None, host: str | None,
               relay: str | None, port: int | None, mx: bool | None, tls_mode: str | None,
               tls_ca_file: str | None, masquerade: str | None, no_smarthost: bool,
               credential: str | None, no_credential: bool, auto_remediate: bool | None,
               per_hour: int | None, replace: bool) -> int:
    """Set fields of a level's policy (the others stay; hosts inherit what no level below
    sets)."""
    from controller.client.job_commands import parse_relay

    path, words = _level_path(cli.api, tenant, site, host)
    body: dict[str, Any] = {} if replace else dict(_own(cli.api, path) or {})
    body = {key: body[key] for key in ("smarthost", "credential", "auto_remediate",
                                       "remediate_per_hour") if key in body}
    part: dict[str, Any] = {}
    if relay:
        part["host"], relay_port = parse_relay(relay)
        if relay_port is not None:
            part["port"] = relay_port
    if port is not None:
        part["port"] = port
    if mx is not None:
        part["mx"] = mx
    if tls_mode or tls_ca_file:
        part["tls"] = {"mode": tls_mode, "ca_file": tls_ca_file}
    if masquerade:
        part["masquerade"] = {"domain": masquerade}
    if no_smarthost:
        if part:
            raise UsageProblem("--no-smarthost cannot go with smarthost fields")
        body["smarthost"] = None
    elif part:
        body["smarthost"] = {**(body.get("smarthost") or {}), **part}
    if credential and no_credential:
        raise UsageProblem("give --credential NAME or --no-credential, not both")
    if credential or no_credential:
        body["credential"] = credential
    if auto_remediate is not None:
        body["auto_remediate"] = auto_remediate
    if per_hour is not None:
        body["remediate_per_hour"] = per_hour
    doc = cli.api.put(path, body)
    if cli.out.json_mode:
        cli.out.document(doc)
    else:
        cli.out.say(f"policy of {words} set; its hosts' drift was checked again "
                    "(relayfleet drift)")
    return EXIT_OK


@policy.command("clear", epilog=examples("relayfleet policy clear --site lyon"))
@_level_options
@pass_cli
def policy_clear(cli: Cli, /, *, tenant: str | None, site: str | None,
                 host: str | None) -> int:
    """Remove a level's own policy (its hosts inherit from the levels above)."""
    path, words = _level_path(cli.api, tenant, site, host)
    cli.api.delete(path)
    if not cli.out.json_mode:
        cli.out.say(f"policy of {words} cleared")
    return EXIT_OK


# -- drift and remediation --------------------------------------------------------------

@click.command("drift", cls=Command, epilog=examples(
    "relayfleet drift", "relayfleet drift --tenant acme", "relayfleet drift --json"))
@click.option("--tenant", metavar="T", help="Only this tenant's hosts (name or id).")
@click.option("--site", metavar="S", help="Only this site's hosts (name or id).")
@click.option("--tag", metavar="X", help="Only hosts with this tag.")
@pass_cli
def drift(cli: Cli, /, *, tenant: str | None, site: str | None, tag: str | None) -> int:
    """The hosts that differ from their policy, and how (exit 1 when any does)."""
    api = cli.api
    query: dict[str, Any] = {"drifted": True, "tag": tag}
    if site:
        query["site_id"] = site_id_of(api, site, tenant)
    elif tenant:
        query["tenant_id"] = tenant_id_of(api, tenant)
    items: list[dict[str, Any]] = []
    while True:
        page = api.get("/v1/fleet", limit=PAGE_LIMIT, offset=len(items), **query)
        items += page["items"]
        if not page["items"] or len(items) >= page["total"]:
            break
    if cli.out.json_mode:
        cli.out.document({"items": items, "total": len(items)})
    else:
        rows = [(host["name"], d["field"], d["want"], d["have"])
                for host in items for d in host["drift"] or []]
        cli.out.table(["host", "field", "want", "has"], rows,
                      empty="no host has drifted from its policy")
        if items:
            cli.out.note(f"{len(items)} drifted host{'s' if len(items) != 1 else ''}: "
                         "relayfleet remediate --all (or a narrower target)")
    return EXIT_DRIFTED if items else EXIT_OK


@click.command("remediate", cls=Command, epilog=examples(
    "relayfleet remediate --tenant acme", "relayfleet remediate --host pbx-lyon-1 --dry-run",
    "relayfleet remediate --all --no-wait"))
@target_options
@click.option("--dry-run", is_flag=True, help="Show each host's diff; change nothing.")
@click.option("--no-wait", is_flag=True, help="Print the jobs and return at once.")
@pass_cli
def remediate(cli: Cli, /, *, dry_run: bool, no_wait: bool, **kwargs: Any) -> int:
    """Bring the drifted hosts of TARGET back in line with their policy (one job per
    distinct policy); waits for the jobs."""
    target = build_target(TargetChoice.from_options(kwargs), cli.api)
    body: dict[str, Any] = {"target": target}
    if dry_run:
        body["options"] = {"dry_run": True}
    answer = cli.api.post("/v1/remediate", body, idempotency_key=new_idempotency_key())
    jobs = answer["jobs"]
    if not cli.out.json_mode:
        for skip in answer.get("skipped", []):
            cli.out.alert(f"{skip['host']} left alone: {skip['reason']}")
    if no_wait or not jobs:
        if cli.out.json_mode:
            cli.out.document(answer)
        else:
            for job in jobs:
                cli.out.say(f"job {job['id']}: {job['action']} on {job['hosts']} host"
                            f"{'s' if job['hosts'] != 1 else ''}")
            cli.out.say(f"{answer['in_line']} in line, {answer['unknown']} with no complete "
                        "policy or never seen" + ("" if jobs else ": nothing to remediate"))
        return EXIT_OK
    code = EXIT_OK
    finished = []
    for job in jobs:
        if not cli.out.json_mode:
            cli.out.say(f"job {job['id']}: {job['action']} on {job['hosts']} drifted host"
                        f"{'s' if job['hosts'] != 1 else ''}")
        doc = wait_for(cli.api, cli.out, int(job["id"]))
        if doc is None:
            return EXIT_DETACHED
        finished.append(doc)
        if not cli.out.json_mode:
            finish(cli.out, doc)
        code = max(code, exit_code_for(doc))
    if cli.out.json_mode:
        cli.out.document({**answer, "finished": finished})
    return code


def register(cli: click.Group) -> None:
    """Add these commands to ``cli``."""
    for command in (credentials, policy, drift, remediate):
        cli.add_command(command)
