"""Inventory, fleet, audit, tokens and sign-in commands."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from rich.text import Text

from controller.client import config, importer
from controller.client.api import PAGE_LIMIT, ApiClient, new_idempotency_key
from controller.client.config import Connection
from controller.client.context import Cli, Command, Group, examples, pass_cli
from controller.client.errors import (
    EXIT_DECLINED,
    EXIT_OK,
    ApiRefused,
    UsageProblem,
)
from controller.client.job_commands import job_options, run_on_target
from controller.client.refs import number_or_name, say_which, split_ref
from controller.client.summaries import age_text, relay_text
from controller.client.targets import (
    TargetChoice,
    list_hint,
    named,
    resolve_ref,
    target_options,
)

ROLES = ("viewer", "operator", "admin")
KINDS = ("sendmail", "postfix", "auto")
#: an import's problems printed at most (the rest are counted)
SHOWN_PROBLEMS = 50

# -- shared helpers ------------------------------------------------------------------------


def _page(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Every item of a paged list as one page (what --json prints for a whole list)."""
    return {"items": list(items), "total": len(items), "limit": len(items), "offset": 0}


def _done(cli: Cli, document: Any, text: str, essential: str) -> int:
    """Say what was done: the API's ``document`` with --json, only the essential (an id)
    with -q, else ``text``; the exit code (0)."""
    if cli.out.json_mode:
        cli.out.document(document)
    elif cli.out.quiet:
        cli.out.result(essential)
    else:
        cli.out.say(text)
    return EXIT_OK


def _tell(cli: Cli, text: str | Text, style: str | None = None) -> None:
    """A line of a confirmation dialogue: on stderr, so that stdout stays the result."""
    cli.out.err.print(text, style=style, markup=False)


def _can_ask() -> bool:
    """Whether there is a person at a terminal to answer a question."""
    return sys.stdin.isatty()


def _confirm(cli: Cli, question: str, *, yes: bool, hint: str) -> bool:
    """Whether the operator agrees: --yes, else a y/N prompt; no terminal and no --yes is a
    usage problem (a script must say what it wants)."""
    if yes:
        return True
    if not _can_ask():
        raise UsageProblem(f"{question.rstrip('?')}: no terminal to ask on", hint=hint)
    return click.confirm(question, default=False, err=True)


def _declined(cli: Cli, what: str) -> int:
    """The operator said no: nothing was done, by choice (exit 4, not a job's 1)."""
    _tell(cli, what)
    return EXIT_DECLINED


def _when(stamp: str | None) -> str:
    """``3h 12m ago`` from an API timestamp (``never`` for none)."""
    if not stamp:
        return "never"
    try:
        moment = datetime.fromisoformat(stamp)
    except ValueError:
        return stamp
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # the controller keeps UTC
    seconds = (datetime.now(UTC) - moment).total_seconds()
    return f"{age_text(max(seconds, 0))} ago"


def _tenants(api: ApiClient) -> list[dict[str, Any]]:
    return list(api.items("/v1/tenants"))


def _sites(api: ApiClient, tenant_id: int | None = None) -> list[dict[str, Any]]:
    return list(api.items("/v1/sites", tenant_id=tenant_id))


def _names(items: Iterable[Mapping[str, Any]]) -> dict[int, str]:
    return {int(item["id"]): str(item["name"]) for item in items}


def tenant_id_of(api: ApiClient, ref: str) -> int:
    """A tenant's id from its name or id (``id:3``, ``name:3``)."""
    ident, name = split_ref(ref)
    found = []
    if name is not None:
        tenants = list(_tenants(api))
        found = [t for t in tenants if t["name"] == name] or [
            t for t in tenants if str(t["name"]).casefold() == name.casefold()]
    if ident is not None:
        if name is not None and found:
            raise UsageProblem(number_or_name("tenant", ref), hint=say_which(ref))
        return ident
    if not found:
        raise UsageProblem(f"no tenant named {name!r} in your tenants",
                           hint=list_hint("tenant", str(name)))
    return int(found[0]["id"])


def site_id_of(api: ApiClient, ref: str, tenant: str | None = None) -> int:
    """A site's id from its name or id (sites are named per tenant: ``tenant`` settles a
    name several tenants use)."""
    ident, name = split_ref(ref)
    tenant_id = tenant_id_of(api, tenant) if tenant else None
    sites = [s for s in _sites(api, tenant_id) if s["name"] == name] if name is not None else []
    if ident is not None:
        if name is not None and sites:
            raise UsageProblem(number_or_name("site", ref), hint=say_which(ref))
        return ident
    if not sites:
        within = f" of tenant {tenant}" if tenant else " in your tenants"
        raise UsageProblem(f"no site named {name!r}{within}", hint=list_hint("site", str(name)))
    if len(sites) > 1:
        owners = _names(_tenants(api))
        which = ", ".join(f"{owners.get(s['tenant_id'], s['tenant_id'])}: {s['id']}"
                          for s in sites)
        raise UsageProblem(f"several tenants have a site named {name!r} ({which})",
                           hint=f"give the site's id (id:{sites[0]['id']}), or add --tenant T")
    return int(sites[0]["id"])


def host_of(api: ApiClient, ref: str) -> dict[str, Any]:
    """A host's document from its name or id."""
    value = resolve_ref(api, "host", ref)
    if isinstance(value, int):
        host: dict[str, Any] = api.get(f"/v1/hosts/{value}")
        return host
    found = named(api, "host", value)
    if not found:
        raise UsageProblem(f"no host named {value} in your tenants",
                           hint=list_hint("host", value))
    if len(found) > 1:
        raise UsageProblem(f"several hosts are named {value} (ids "
                           f"{', '.join(str(h['id']) for h in found)})",
                           hint=f"give the id: relayfleet hosts show id:{found[0]['id']}")
    return found[0]


def _client_for(cli: Cli, connection: Connection) -> ApiClient:
    """A client for another connection than the command line's (login checks a new
    token); a client handed in ready-made (tests drive the controller in-process) lends
    its settings and transport."""
    if cli._api is not None:
        return cli._api.with_connection(connection)
    return ApiClient(connection, timeout_s=cli.http_timeout_s, verify=cli.ca_file or True)


# -- login, logout, whoami -----------------------------------------------------------------

@click.command("login", cls=Command, epilog=examples(
    "relayfleet login --profile acme --api https://relayfleet.example.net",
    "relayfleet login --profile lab --api http://127.0.0.1:8000 < token.txt"))
@click.option("--profile", "profile_name", metavar="NAME",
              help="Store the token as this profile (default: RELAYFLEET_PROFILE, else "
                   "'default'); it becomes the default profile.")
@click.option("--api", "login_api", metavar="URL",
              help="The controller (else the root --api, RELAYFLEET_API_URL, or the URL the "
                   "profile already has).")
@pass_cli
def login(cli: Cli, /, *, profile_name: str | None, login_api: str | None) -> int:
    """Check a token with the controller and store it as a profile (file mode 0600).

    The token is read from stdin when stdin is not a terminal, else asked for (hidden).
    """
    name = (profile_name or cli.profile or os.environ.get(config.ENV_PROFILE)
            or config.DEFAULT_PROFILE)
    stored = config.read_profiles().get("profiles", {}).get(name) or {}
    url = login_api or cli.api_url or os.environ.get(config.ENV_API) or stored.get("api")
    if not url:
        raise UsageProblem("which controller? no URL given",
                           hint=f"relayfleet login --profile {name} --api "
                                "https://relayfleet.example.net")
    url = config.check_api_url(url)
    if cli.token or cli.token_file:
        token = cli.token or config.read_token_file(cli.token_file or "-")
    elif not sys.stdin.isatty():
        token = sys.stdin.readline().strip()
        if not token:
            raise UsageProblem("no token on stdin",
                               hint=f"relayfleet login --profile {name} < token.txt")
    else:
        token = str(click.prompt(f"API token for {url}", hide_input=True, err=True)).strip()
    with _client_for(cli, Connection(api=url, token=token, source="login")) as client:
        me: dict[str, Any] = client.get("/v1/whoami")
    path = config.save_profile(name, url, token)
    tenant = me.get("tenant") or "every tenant"
    _done(cli, me, f"signed in to {url} as {me['name']} ({me['role']}, {tenant})", name)
    cli.out.note(f"stored as profile {name} in {path} (the default profile now)")
    return EXIT_OK


@click.command("logout", cls=Command, epilog=examples("relayfleet logout",
                                                      "relayfleet logout --profile acme"))
@click.option("--profile", "profile_name", metavar="NAME",
              help="The profile to forget (default: the default profile).")
@pass_cli
def logout(cli: Cli, /, *, profile_name: str | None) -> int:
    """Forget a stored profile and its token (the token stays valid on the controller)."""
    data = config.read_profiles()
    name = profile_name or cli.profile or config.profile_name(None, data)
    if not config.forget_profile(name):
        known = ", ".join(sorted(data.get("profiles", {}))) or "none"
        raise UsageProblem(f"no profile named {name!r} (profiles: {known})")
    cli.out.note("the token still works on the controller until revoked: relayfleet tokens "
                 "list, then relayfleet tokens revoke ID")
    return _done(cli, {"profile": name, "forgotten": True}, f"forgot profile {name}", name)


@click.command("whoami", cls=Command, epilog=examples(
    "relayfleet whoami", "relayfleet --profile acme whoami", "relayfleet whoami --json"))
@pass_cli
def whoami(cli: Cli, /) -> int:
    """Which token this is (name, role, tenant) and which controller answers."""
    me: dict[str, Any] = cli.api.get("/v1/whoami")
    if cli.out.json_mode:
        cli.out.document(me)
        return EXIT_OK
    tenant = (f"{me['tenant']} (id {me['tenant_id']})" if me.get("tenant_id") is not None
              else "every tenant (MSP-wide)")
    if cli.out.quiet:
        cli.out.result(f"{me['name']} {me['role']}")
        return EXIT_OK
    for label, value in (("token", f"{me['name']} (id {me['token_id']})"),
                         ("role", me["role"]), ("tenant", tenant),
                         ("controller", f"{cli.api.api} (version {me['version']})"),
                         ("settings from", cli.api.connection.source)):
        cli.out.say(f"{label + ':':<15}{value}")
    return EXIT_OK


# -- tenants and sites ---------------------------------------------------------------------

@click.group("tenants", cls=Group, epilog=examples("relayfleet tenants list",
                                                   "relayfleet tenants add 'Acme Dental'"))
def tenants() -> None:
    """The MSP's customers."""


@tenants.command("list", epilog=examples("relayfleet tenants list", "relayfleet tenants list "
                                                                   "--json"))
@pass_cli
def tenants_list(cli: Cli, /) -> int:
    """Every tenant this token sees."""
    items = _tenants(cli.api)
    if cli.out.json_mode:
        cli.out.document(_page(items))
        return EXIT_OK
    cli.out.table(["id", "name", "created"],
                  [(t["id"], t["name"], str(t["created_at"])[:19]) for t in items],
                  empty="no tenants yet: relayfleet tenants add NAME")
    return EXIT_OK


@tenants.command("add", epilog=examples("relayfleet tenants add 'Acme Dental'"))
@click.argument("name")
@pass_cli
def tenants_add(cli: Cli, /, *, name: str) -> int:
    """Add a tenant; prints its job-callback signing secret, shown only this once."""
    tenant: dict[str, Any] = cli.api.post("/v1/tenants", {"name": name})
    if cli.out.json_mode:
        cli.out.document(tenant)
        return EXIT_OK
    cli.out.say(f"added tenant {tenant['name']} (id {tenant['id']})")
    cli.out.note("its callback secret (signs job callbacks, X-Relayfleet-Signature) is "
                 "shown only now: store it where the callback receiver reads it",
                 style="yellow")
    cli.out.result(str(tenant["callback_secret"]))
    return EXIT_OK


@click.group("sites", cls=Group, epilog=examples("relayfleet sites list --tenant acme",
                                                 "relayfleet sites add lyon --tenant acme"))
def sites() -> None:
    """Customer locations (each belongs to a tenant)."""


@sites.command("list", epilog=examples("relayfleet sites list",
                                       "relayfleet sites list --tenant 'Acme Dental'"))
@click.option("--tenant", metavar="T", help="Only this tenant's sites (name or id).")
@pass_cli
def sites_list(cli: Cli, /, *, tenant: str | None) -> int:
    """Sites this token sees, with their tenant."""
    items = _sites(cli.api, tenant_id_of(cli.api, tenant) if tenant else None)
    if cli.out.json_mode:
        cli.out.document(_page(items))
        return EXIT_OK
    owners = _names(_tenants(cli.api)) if items else {}
    cli.out.table(["id", "name", "tenant", "created"],
                  [(s["id"], s["name"], owners.get(s["tenant_id"], s["tenant_id"]),
                    str(s["created_at"])[:19]) for s in items],
                  empty="no sites yet: relayfleet sites add NAME --tenant T")
    return EXIT_OK


@sites.command("add", epilog=examples("relayfleet sites add lyon --tenant acme",
                                      "relayfleet sites add 'Leeds office' --tenant 3"))
@click.argument("name")
@click.option("--tenant", metavar="T", required=True, help="The tenant (name or id).")
@pass_cli
def sites_add(cli: Cli, /, *, name: str, tenant: str) -> int:
    """Add a site to a tenant."""
    site: dict[str, Any] = cli.api.post("/v1/sites", {"tenant_id": tenant_id_of(cli.api, tenant),
                                                      "name": name})
    return _done(cli, site, f"added site {site['name']} (id {site['id']}) to tenant {tenant}",
          str(site["id"]))


# -- hosts ---------------------------------------------------------------------------------

@click.group("hosts", cls=Group, epilog=examples(
    "relayfleet hosts list --site lyon",
    "relayfleet hosts add pbx-lyon-1 --site lyon --address 10.1.0.5 --ssh-user root "
    "--ssh-key-file ~/.ssh/fleet",
    "relayfleet hosts import fleet.csv --dry-run",
    "relayfleet hosts enroll-ssh pbx-lyon-1",
    "relayfleet hosts install-agent --site lyon --yes"))
def hosts() -> None:
    """The managed hosts: list, show, add, import, remove, pin SSH host keys, install the
    agent."""


def _kind_text(host: Mapping[str, Any]) -> str:
    configured = (host.get("mta") or {}).get("kind") or host.get("mta_kind") or "-"
    found = (host.get("last") or {}).get("mta_kind")
    return f"{configured} ({found})" if found and found != configured else str(configured)


def _yes_no(value: bool | None) -> str:
    """yes / NO (shouted: it is what needs attention) / - (not known)."""
    return "-" if value is None else "yes" if value else "NO"


def _relay(last: Mapping[str, Any]) -> str:
    return relay_text(last.get("smarthost")) if last.get("seen_at") else "-"


@hosts.command("list", epilog=examples("relayfleet hosts list",
                                       "relayfleet hosts list --tenant acme --tag pbx",
                                       "relayfleet hosts list --name lyon --transport ssh"))
@click.option("--tenant", metavar="T", help="Only this tenant's hosts (name or id).")
@click.option("--site", metavar="S", help="Only this site's hosts (name or id).")
@click.option("--tag", metavar="X", help="Only hosts with this tag.")
@click.option("--name", "name_text", metavar="TEXT", help="Only hosts whose name contains TEXT.")
@click.option("--transport", type=click.Choice(["agent", "ssh"]), help="Only this transport.")
@pass_cli
def hosts_list(cli: Cli, /, *, tenant: str | None, site: str | None, tag: str | None,
               name_text: str | None, transport: str | None) -> int:
    """Hosts with their site, address, transport, MTA and last known queue and relay."""
    api = cli.api
    query: dict[str, Any] = {"tag": tag, "name": name_text, "transport": transport}
    if site:
        query["site_id"] = site_id_of(api, site, tenant)
    elif tenant:
        query["tenant_id"] = tenant_id_of(api, tenant)
    items = list(api.items("/v1/hosts", **query))
    if cli.out.json_mode:
        cli.out.document(_page(items))
        return EXIT_OK
    tenant_names = _names(_tenants(api)) if items else {}
    site_names = _names(_sites(api)) if items else {}
    rows = []
    for host in items:
        last = host.get("last") or {}
        rows.append((host["id"], host["name"], tenant_names.get(host["tenant_id"]),
                     site_names.get(host["site_id"]), host["address"], host["transport"],
                     _kind_text(host), _when(last.get("seen_at")), last.get("queue_count"),
                     _relay(last)))
    cli.out.table(["id", "name", "tenant", "site", "address", "transport", "kind", "last seen",
                   "queue", "smarthost"], rows,
                  styles=[("yellow" if (h.get("last") or {}).get("queue_count") else None)
                          for h in items],
                  empty="no hosts match" if any(query.values()) or tenant
                  else "no hosts yet: relayfleet hosts add or relayfleet hosts import")
    return EXIT_OK


@hosts.command("show", epilog=examples("relayfleet hosts show pbx-lyon-1",
                                       "relayfleet hosts show 42 --json"))
@click.argument("host_ref", metavar="HOST")
@pass_cli
def hosts_show(cli: Cli, /, *, host_ref: str) -> int:
    """Everything the controller knows of HOST (name or id), never its secrets."""
    host = host_of(cli.api, host_ref)
    if cli.out.json_mode:
        cli.out.document(host)
        return EXIT_OK
    site: dict[str, Any] = cli.api.get(f"/v1/sites/{host['site_id']}")
    tenant: dict[str, Any] = cli.api.get(f"/v1/tenants/{host['tenant_id']}")
    last = host.get("last") or {}
    mta = host.get("mta") or {}
    lines: list[tuple[str, Any]] = [
        ("host", f"{host['name']} (id {host['id']})"),
        ("tenant", f"{tenant['name']} (id {tenant['id']})"),
        ("site", f"{site['name']} (id {site['id']})"),
        ("address", host["address"]), ("transport", host["transport"])]
    agent, ssh = host.get("agent"), host.get("ssh")
    if agent:
        pin = agent.get("tls_fingerprint") or ("plain http" if agent.get("insecure_http")
                                               else "CA-verified TLS")
        lines += [("agent", f"{agent['url']} ({pin}; token "
                            f"{'stored' if agent.get('has_token') else 'missing'})")]
    if ssh:
        lines += [("ssh", f"{ssh['username']}@{host['address']}:{ssh['port']} (auth "
                          f"{ssh.get('auth')}, sudo {'yes' if ssh.get('sudo') else 'no'})"),
                  ("ssh host key", f"{str(ssh.get('host_key', '')).split(' ')[0]} "
                                   f"{importer.key_fingerprint(ssh.get('host_key'))}")]
    lines += [("mta", f"{mta.get('kind')} on {mta.get('flavour')}"
                      + (f", overrides {', '.join(sorted(mta['overrides']))}"
                         if mta.get("overrides") else "")),
              ("tags", ", ".join(host.get("tags") or []) or "-"),
              ("last seen", _when(last.get("seen_at"))
               + (f" (job {last['job_id']})" if last.get("job_id") else ""))]
    if last.get("seen_at"):
        lines += [("reachable", _yes_no(last.get("reachable"))
                   + (f": {last['error']}" if last.get("error") else "")),
                  ("mta found", f"{last.get('mta_kind') or '-'}, running "
                                f"{_yes_no(last.get('mta_running'))}"),
                  ("queue", last.get("queue_count")),
                  ("smarthost", _relay(last)),
                  ("config in sync", _yes_no(last.get("config_in_sync")))]
    for label, value in lines:
        cli.out.say(f"{label + ':':<16}{'-' if value is None else value}")
    return EXIT_OK


@hosts.command("remove", epilog=examples("relayfleet hosts remove pbx-lyon-1",
                                         "relayfleet hosts remove 42 --yes"))
@click.argument("host_ref", metavar="HOST")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_cli
def hosts_remove(cli: Cli, /, *, host_ref: str, yes: bool) -> int:
    """Remove HOST (name or id) from the inventory (past jobs keep its results)."""
    host = host_of(cli.api, host_ref)
    question = f"Remove host {host['name']} (id {host['id']}) from the inventory?"
    if not _confirm(cli, question, yes=yes,
                    hint=f"add --yes: relayfleet hosts remove {host_ref} --yes"):
        return _declined(cli, "nothing removed")
    cli.api.delete(f"/v1/hosts/{host['id']}")
    return _done(cli, {"removed": host["id"], "name": host["name"]},
                 f"removed host {host['name']} (id {host['id']})", str(host["id"]))


#: install_agent's time box per host unless --timeout says otherwise: installing the
#: wheels into a new venv and waiting for its health takes longer than an MTA change
INSTALL_TIMEOUT_S = 600


@hosts.command("install-agent", epilog=examples(
    "relayfleet hosts install-agent --site lyon --dry-run",
    "relayfleet hosts install-agent --site lyon --yes",
    "relayfleet hosts install-agent --host pbx-lyon-1 --version 0.2.0 --port 8587",
    "relayfleet hosts install-agent --tag pbx --rotate-token --yes"))
@target_options
@click.option("--version", "version", metavar="V",
              help="The agent bundle's version (default: the newest the controller has).")
@click.option("--port", type=click.IntRange(1, 65535), metavar="P",
              help="The port the agent listens on (default 8587).")
@click.option("--rotate-token", is_flag=True,
              help="Give an agent already installed a new token (the controller keeps it).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@job_options(dry_run=True)
@pass_cli
def hosts_install_agent(cli: Cli, /, *, version: str | None, port: int | None,
                        rotate_token: bool, yes: bool, **kwargs: Any) -> int:
    """Install or upgrade the relayfleet agent on the TARGET hosts over their SSH login
    (sudo for a login that is not root), then manage them through it (an install_agent
    job; admin tokens only).

    Each host gets the controller's agent bundle, a fresh token and its own TLS
    certificate, whose fingerprint the controller pins. A host whose agent fails its
    health check is rolled back and stays on its transport; its SSH login is kept for
    upgrades. Run with --dry-run first to see the version each host has. Each host's time
    box is 600 s unless --timeout says otherwise (300 s at least).
    """
    params: dict[str, Any] = {key: value for key, value in (
        ("version", version), ("port", port)) if value is not None}
    if rotate_token:
        params["rotate_token"] = True
    if kwargs["timeout_s"] is None:
        kwargs["timeout_s"] = INSTALL_TIMEOUT_S
    if not kwargs.get("dry_run"):
        choice = TargetChoice.from_options(dict(kwargs))
        question = (f"Install the relayfleet agent as root on the hosts of "
                    f"{choice.describe() or 'the target'} and manage them through it?")
        if not _confirm(cli, question, yes=yes,
                        hint="add --yes (or run with --dry-run first)"):
            return _declined(cli, "nothing was installed")
    return run_on_target(cli, "install_agent", params, kwargs)


def _read_file(kind: str, read: Callable[[str], str], name: str) -> str:
    try:
        return read(name)
    except importer.FileProblem as exc:
        raise UsageProblem(f"{kind}: {exc}") from None


def _host_key_option(value: str) -> str:
    """--host-key: the key line, or a file holding it (a .pub file)."""
    if " " not in value.strip() and Path(value).expanduser().is_file():
        value = _read_file("--host-key", importer.read_first_line, value)
    why = importer.host_key_problem(value)
    if why:
        raise UsageProblem(f"--host-key: {why}")
    return value.strip()


def _scanned_key(cli: Cli, address: str, port: int, *, yes: bool, hint: str,
                 pinned: str | None = None, host_name: str | None = None) -> str | None:
    """Ask the controller for the key ``address``:``port`` offers, show it (and how it
    differs from ``pinned``), and return it once confirmed (None: declined)."""
    try:
        scan: dict[str, Any] = cli.api.post("/v1/ssh/host-key-scan",
                                            {"address": address, "port": port})
    except ApiRefused as exc:
        if exc.status == 502:
            exc.hint = exc.hint or hint
        raise
    offered = str(scan["host_key"])
    key_type = offered.split(" ", maxsplit=1)[0]
    who = host_name or address
    _tell(cli, f"{who} ({address}:{port}) offers {key_type} key {scan['fingerprint']}",
          style="bold")
    old = importer.key_fingerprint(pinned)
    if pinned is not None:
        if old == scan["fingerprint"]:
            return offered  # the caller sees it is already pinned
        _tell(cli, f"pinned now:  {str(pinned).split(' ')[0]} key {old}")
        _tell(cli, "WARNING: THE HOST KEY HAS CHANGED. A changed key may mean the host was "
                   "reinstalled, or that someone is intercepting the connection (an attack). "
                   "Confirm the new fingerprint with the host's administrator (ssh-keygen -lf "
                   "/etc/ssh/ssh_host_*_key.pub on the host) before pinning it.",
              style="bold red")
    else:
        _tell(cli, "Check it against the host (ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub) "
                   "before trusting it.", style="yellow")
    if not _confirm(cli, f"Trust this key for {who}?", yes=yes, hint=hint):
        return None
    return offered


@hosts.command("add", epilog=examples(
    "relayfleet hosts add pbx-lyon-1 --site lyon --address 10.1.0.5 --ssh-user root "
    "--ssh-key-file ~/.ssh/fleet --sudo",
    "relayfleet hosts add pbx-lyon-2 --site lyon --address 10.1.0.6 --ssh-user admin "
    "--ssh-key-file key --host-key 'ssh-ed25519 AAAAC3Nz...'",
    "relayfleet hosts add pbx-leeds-1 --site leeds --address 10.2.0.5 --agent-url "
    "https://10.2.0.5:8587 --agent-token-file agent.token --kind postfix --tag pbx"))
@click.argument("name")
@click.option("--site", required=True, metavar="S", help="The host's site (name or id).")
@click.option("--tenant", metavar="T",
              help="The site's tenant, when several tenants have a site of that name.")
@click.option("--address", required=True, metavar="A", help="Host name or IP address.")
@click.option("--agent-url", metavar="U", help="Agent transport: the agent's URL.")
@click.option("--agent-token-file", metavar="F", help="The agent's bearer token ('-': stdin).")
@click.option("--agent-tls-fingerprint", metavar="FP",
              help="Pin the agent's certificate (what relayfleet-agent check prints).")
@click.option("--agent-insecure-http", is_flag=True,
              help="Allow a plain http:// agent URL (a lab; the token crosses in clear).")
@click.option("--ssh-user", metavar="U", help="SSH transport: the login user.")
@click.option("--ssh-key-file", metavar="F", help="The SSH private key to log in with.")
@click.option("--ssh-password-file", metavar="F", help="The SSH password (first line of F).")
@click.option("--ssh-port", type=click.IntRange(1, 65535), default=22, show_default=True)
@click.option("--sudo", is_flag=True, help="Run MTA commands through sudo (a non-root user).")
@click.option("--host-key", metavar="KEY",
              help="The host's SSH public key line ('ssh-ed25519 AAAA...') or a .pub file; "
                   "without it the controller asks the host and you confirm the fingerprint.")
@click.option("--kind", type=click.Choice(KINDS), default="sendmail", show_default=True,
              help="The host's MTA (auto: detected at first contact).")
@click.option("--flavour", metavar="F", help="The host's OS family: debian (default), centos...")
@click.option("--tag", "tags", multiple=True, metavar="X", help="A tag (repeatable).")
@click.option("--yes", is_flag=True, help="Trust the scanned SSH host key without asking.")
@pass_cli
def hosts_add(cli: Cli, /, *, name: str, site: str, tenant: str | None, address: str,
              agent_url: str | None, agent_token_file: str | None,
              agent_tls_fingerprint: str | None, agent_insecure_http: bool,
              ssh_user: str | None, ssh_key_file: str | None, ssh_password_file: str | None,
              ssh_port: int, sudo: bool, host_key: str | None, kind: str,
              flavour: str | None, tags: tuple[str, ...], yes: bool) -> int:
    """Add a host reached through its agent (--agent-url) or over SSH (--ssh-user)."""
    agent_given = any((agent_url, agent_token_file, agent_tls_fingerprint, agent_insecure_http))
    ssh_given = any((ssh_user, ssh_key_file, ssh_password_file, host_key, sudo))
    if agent_given and ssh_given:
        raise UsageProblem("give the agent options (--agent-url ...) or the SSH options "
                           "(--ssh-user ...), not both")
    if not agent_url and not ssh_user:
        raise UsageProblem("say how the controller reaches the host",
                           hint="--agent-url U --agent-token-file F, or --ssh-user U "
                                "--ssh-key-file F")
    body: dict[str, Any] = {"name": name, "address": address,
                            "mta": {"kind": kind, **({"flavour": flavour} if flavour else {})},
                            "tags": list(tags)}
    if agent_url:
        if not agent_token_file:
            raise UsageProblem("the agent's token is needed", hint="add --agent-token-file F")
        agent: dict[str, Any] = {"url": agent_url,
                                 "token": config.read_token_file(agent_token_file)}
        if agent_tls_fingerprint:
            agent["tls_fingerprint"] = agent_tls_fingerprint
        if agent_insecure_http:
            agent["insecure_http"] = True
        body.update(transport="agent", agent=agent)
    else:
        if bool(ssh_key_file) == bool(ssh_password_file):
            raise UsageProblem("give one of --ssh-key-file or --ssh-password-file")
        ssh: dict[str, Any] = {"username": ssh_user, "port": ssh_port, "sudo": sudo}
        if ssh_key_file:
            ssh["private_key"] = _read_file("--ssh-key-file", importer.read_private_key,
                                            ssh_key_file)
        else:
            ssh["password"] = _read_file("--ssh-password-file", importer.read_first_line,
                                         ssh_password_file or "")
        body.update(transport="ssh", ssh=ssh)
    body["site_id"] = site_id_of(cli.api, site, tenant)
    if body["transport"] == "ssh":
        if host_key:
            body["ssh"]["host_key"] = _host_key_option(host_key)
        else:
            scanned = _scanned_key(cli, address, ssh_port, yes=yes, host_name=name,
                                   hint="pass --host-key 'ssh-ed25519 AAAA...' (from the "
                                        "host's administrator), or --yes to trust the "
                                        "scanned key")
            if scanned is None:
                return _declined(cli, "nothing added")
            body["ssh"]["host_key"] = scanned
    host: dict[str, Any] = cli.api.post("/v1/hosts", body,
                                        idempotency_key=new_idempotency_key())
    return _done(cli, host, f"added host {host['name']} (id {host['id']}, {host['transport']})",
          str(host["id"]))


def _refuse(path: Path, problems: Sequence[importer.Problem], *, api: ApiRefused | None = None,
            ) -> UsageProblem | ApiRefused:
    """Every problem in one error: a usage problem (exit 2) for what the CLI found, the
    API's refusal (exit 3) for what it refused."""
    count = len(problems)
    head = (f"the controller refused {path.name}" if api is not None
            else f"{path.name} has {count} problem{'s' if count != 1 else ''}")
    lines = [f"{head}; nothing was created:"] + [f"  {p}" for p in problems[:SHOWN_PROBLEMS]]
    if count > SHOWN_PROBLEMS:
        # a file that is wrong throughout (a wrong column order) is said in a screenful
        lines.append(f"  ... and {count - SHOWN_PROBLEMS} more (fix these first)")
    message = "\n".join(lines)
    hint = "fix the file and run the import again (--dry-run checks it without creating)"
    if api is not None:
        return ApiRefused(api.status, message, hint=hint)
    return UsageProblem(message, hint=hint)


@hosts.command("import", epilog=examples(
    "relayfleet hosts import fleet.csv --dry-run",
    "relayfleet hosts import fleet.csv",
    "relayfleet hosts import hosts.json --json",
    "# fleet.csv:",
    "#   name,site,address,transport,agent_url,agent_token_file,ssh_user,ssh_key_file,"
    "ssh_host_key,tags",
    "#   pbx-lyon-1,lyon,10.1.0.5,agent,https://10.1.0.5:8587,tokens/lyon1,,,,pbx",
    "#   pbx-lyon-2,lyon,10.1.0.6,ssh,,,root,keys/fleet,ssh-ed25519 AAAAC3Nz...,pbx voip"))
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                metavar="FILE.csv|FILE.json")
@click.option("--dry-run", is_flag=True,
              help="Check the file (and its sites and names against the inventory) and show "
                   "what would be created; create nothing.")
@click.option("--allow-outside-files", is_flag=True,
              help="Let the CSV name key and token files outside its own directory (by "
                   "default they must be in it: a CSV from someone else cannot make you "
                   "send another of your files).")
@pass_cli
def hosts_import(cli: Cli, /, *, file: Path, dry_run: bool, allow_outside_files: bool) -> int:
    """Create many hosts from a CSV or JSON file: all of them, or none.

    CSV: a header row (name, site, address, transport; agent_url and agent_token_file for
    agent rows; ssh_user, ssh_key_file or ssh_password_file and ssh_host_key for SSH rows;
    optional tenant, agent_tls_fingerprint, agent_insecure_http, ssh_port, ssh_sudo, kind,
    flavour, tags). Files the CSV names are relative to its directory, and must be
    regular files inside it (at most 64 KiB). A site or tenant that is a number is an id;
    write id:3 or name:3 when one is also named so. Lines starting with # are comments.
    JSON: an array of POST /v1/hosts bodies, "site" (a name) standing for "site_id".
    Every problem of every row is named by its line; at most 1000 hosts per file.
    """
    plan = importer.parse_file(file, allow_outside=allow_outside_files)
    plan_sites: list[dict[str, Any]] = []
    if plan.rows:
        # rows with problems of their own are looked up too: every problem at once
        plan_sites = _sites(cli.api)
        importer.resolve_sites(plan, plan_sites, _tenants(cli.api))
        importer.duplicate_problems(plan)
    site_names = _names(plan_sites)
    if dry_run and plan.rows:
        plan.problems += importer.existing_problems(plan, _hosts_of_sites(cli.api, plan),
                                                    site_names)
    if not plan.ok:
        raise _refuse(file, plan.sorted_problems())
    if dry_run:
        cli.out.table(["where", "name", "site", "address", "transport"],
                      [(row.where, row.body.get("name"), site_names.get(row.body["site_id"]),
                        row.body.get("address"), row.body.get("transport"))
                       for row in plan.rows], title="would create")
        return _done(cli, {"dry_run": True,
                           "hosts": [importer.redacted(row.body) for row in plan.rows]},
                     f"{file.name}: {len(plan.rows)} hosts look right (dry run: nothing "
                     "created; the controller checks the rest when you import)",
                     str(len(plan.rows)))
    try:
        answer: dict[str, Any] = cli.api.post("/v1/hosts/import", {"hosts": plan.bodies()})
    except ApiRefused as exc:
        problems = importer.api_problems(plan, exc.errors)
        if exc.status == 409:
            # Names are unique per site: say which rows collide with hosts already there.
            problems += importer.existing_problems(plan, _hosts_of_sites(cli.api, plan),
                                                   site_names)
        if not problems:
            raise
        raise _refuse(file, sorted(problems, key=lambda p: p.position), api=exc) from None
    created = answer.get("items") or []
    if not cli.out.quiet:
        cli.out.table(["id", "name", "site", "transport"],
                      [(h["id"], h["name"], site_names.get(h["site_id"], h["site_id"]),
                        h["transport"]) for h in created])
    return _done(cli, answer, f"created {answer['created']} hosts", str(answer["created"]))


def _hosts_of_sites(api: ApiClient, plan: importer.Plan) -> list[dict[str, Any]]:
    """The hosts already in the sites the plan adds to."""
    site_ids = sorted({row.body["site_id"] for row in plan.rows
                       if isinstance(row.body.get("site_id"), int)})
    return [host for site_id in site_ids for host in api.items("/v1/hosts", site_id=site_id)]


@hosts.command("enroll-ssh", epilog=examples("relayfleet hosts enroll-ssh pbx-lyon-1",
                                             "relayfleet hosts enroll-ssh 42 --yes"))
@click.argument("host_ref", metavar="HOST")
@click.option("--yes", is_flag=True, help="Pin the offered key without asking.")
@pass_cli
def hosts_enroll_ssh(cli: Cli, /, *, host_ref: str, yes: bool) -> int:
    """Ask HOST's sshd for its key (through the controller), show its fingerprint and the
    pinned one, and pin the offered key once confirmed (a reinstalled host)."""
    host = host_of(cli.api, host_ref)
    ssh = host.get("ssh")
    if host["transport"] != "ssh" or not ssh:
        raise UsageProblem(f"{host['name']} is reached through its agent, not SSH: there is "
                           "no SSH host key to pin",
                           hint=f"relayfleet hosts show {host['name']}")
    offered = _scanned_key(cli, host["address"], int(ssh["port"]), yes=yes,
                           pinned=ssh.get("host_key"), host_name=host["name"],
                           hint=f"add --yes once the fingerprint is confirmed: relayfleet hosts "
                                f"enroll-ssh {host_ref} --yes")
    if offered is None:
        return _declined(cli, "nothing pinned")
    if importer.key_fingerprint(offered) == importer.key_fingerprint(ssh.get("host_key")):
        return _done(cli, host, f"{host['name']} offers the key already pinned; nothing to "
                                "change", str(host["id"]))
    pinned: dict[str, Any] = cli.api.put(f"/v1/hosts/{host['id']}/ssh/host-key",
                                         {"host_key": offered})
    return _done(cli, pinned, f"pinned {importer.key_fingerprint(offered)} on {host['name']}",
          str(host["id"]))


# -- fleet and audit -----------------------------------------------------------------------

@click.command("fleet", cls=Command, epilog=examples(
    "relayfleet fleet", "relayfleet fleet --holding-mail", "relayfleet fleet --out-of-sync",
    "relayfleet fleet --tenant acme --site lyon --json"))
@click.option("--holding-mail", is_flag=True, help="Only hosts with mail in their queue.")
@click.option("--out-of-sync", is_flag=True,
              help="Only hosts whose compiled configuration differs from its source.")
@click.option("--tenant", metavar="T", help="Only this tenant's hosts (name or id).")
@click.option("--site", metavar="S", help="Only this site's hosts (name or id).")
@click.option("--tag", metavar="X", help="Only hosts with this tag.")
@pass_cli
def fleet(cli: Cli, /, *, holding_mail: bool, out_of_sync: bool, tenant: str | None,
          site: str | None, tag: str | None) -> int:
    """The fleet at a glance: totals, then each host's last known queue, relay and state."""
    api = cli.api
    query: dict[str, Any] = {"tag": tag, "holding_mail": True if holding_mail else None,
                             "out_of_sync": True if out_of_sync else None}
    if site:
        query["site_id"] = site_id_of(api, site, tenant)
    elif tenant:
        query["tenant_id"] = tenant_id_of(api, tenant)
    items: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    while True:
        page = api.get("/v1/fleet", limit=PAGE_LIMIT, offset=len(items), **query)
        summary = summary or page["summary"]
        items += page["items"]
        if not page["items"] or len(items) >= page["total"]:
            break
    if cli.out.json_mode:
        cli.out.document({**_page(items), "summary": summary})
        return EXIT_OK
    cli.out.say(Text(
        f"{summary['hosts']} hosts · {summary['holding_mail']} holding mail "
        f"({summary['queued_messages']} queued messages) · {summary['unreachable']} "
        f"unreachable · {summary['without_smarthost']} without smarthost · "
        f"{summary['out_of_sync']} out of sync · {summary['never_seen']} never seen",
        style="bold"))
    if any(value is not None for value in query.values()):
        cli.out.say(f"(totals of every host you see; {len(items)} match the filters)",
                    style="dim")
    site_names = _names(_sites(api)) if items else {}
    rows, styles = [], []
    for host in items:
        last = host.get("last") or {}
        seen = last.get("seen_at") is not None
        rows.append((host["name"], site_names.get(host["site_id"], host["site_id"]),
                     host["transport"], _kind_text(host),
                     _yes_no(last.get("reachable")) if seen else "-",
                     last.get("queue_count"), _relay(last), _yes_no(last.get("config_in_sync")),
                     _when(last.get("seen_at"))))
        styles.append("bold yellow" if last.get("queue_count")
                      else "red" if last.get("reachable") is False else None)
    cli.out.table(["host", "site", "transport", "kind", "reachable", "queue", "smarthost",
                   "in sync", "last seen"], rows, styles=styles,
                  empty="no hosts hold mail" if holding_mail else
                  "no host is out of sync" if out_of_sync else "no hosts match")
    return EXIT_OK


@click.command("audit", cls=Command, epilog=examples(
    "relayfleet audit", "relayfleet audit --limit 100",
    "relayfleet audit --action 'POST /v1/jobs'"))
@click.option("--limit", type=click.IntRange(1, 1000), default=30, show_default=True,
              help="How many events (newest first).")
@click.option("--action", metavar="A", help="Only this call, e.g. 'DELETE /v1/hosts/{host_id}'.")
@pass_cli
def audit(cli: Cli, /, *, limit: int, action: str | None) -> int:
    """Who did what: every mutating call, newest first."""
    page: dict[str, Any] = cli.api.get("/v1/audit", limit=limit, action=action)
    if cli.out.json_mode:
        cli.out.document(page)
        return EXIT_OK
    items = page["items"]
    cli.out.table(["at", "token", "action", "target", "outcome"],
                  [(str(e["at"])[:19], e.get("token_name") or e.get("token_id"), e["action"],
                    e.get("target"), e["outcome"]) for e in items],
                  styles=[("red" if int(e["outcome"]) >= 400 else None) for e in items],
                  empty="nothing audited yet")
    return EXIT_OK


# -- tokens --------------------------------------------------------------------------------

@click.group("tokens", cls=Group, epilog=examples(
    "relayfleet tokens list", "relayfleet tokens create --role operator --tenant acme",
    "relayfleet tokens revoke 7"))
def tokens() -> None:
    """API tokens (admins): list, create, revoke."""


@tokens.command("list", epilog=examples("relayfleet tokens list", "relayfleet tokens list --json"))
@pass_cli
def tokens_list(cli: Cli, /) -> int:
    """Every token this admin sees (never their secrets)."""
    items = list(cli.api.items("/v1/tokens"))
    if cli.out.json_mode:
        cli.out.document(_page(items))
        return EXIT_OK
    owners = _names(_tenants(cli.api)) if any(t.get("tenant_id") for t in items) else {}
    cli.out.table(["id", "name", "role", "tenant", "created", "last used", "revoked"],
                  [(t["id"], t["name"], t["role"],
                    owners.get(t["tenant_id"], t["tenant_id"]) if t.get("tenant_id")
                    else "(all)", str(t["created_at"])[:19],
                    _when(t.get("last_used_at")) if t.get("last_used_at") else "-",
                    str(t["revoked_at"])[:19] if t.get("revoked_at") else "-")
                   for t in items],
                  styles=[("dim" if t.get("revoked_at") else None) for t in items])
    return EXIT_OK


@tokens.command("create", epilog=examples(
    "relayfleet tokens create --role operator --tenant acme --name 'acme helpdesk'",
    "relayfleet tokens create --role viewer -q > viewer.token"))
@click.option("--role", type=click.Choice(ROLES), required=True,
              help="viewer (read), operator (run jobs), admin (inventory, tokens).")
@click.option("--tenant", metavar="T", help="Limit the token to this tenant (name or id).")
@click.option("--name", metavar="N", help="What the token is for (default: ROLE token).")
@pass_cli
def tokens_create(cli: Cli, /, *, role: str, tenant: str | None, name: str | None) -> int:
    """Make a token; it is printed alone on the last line, and only this once."""
    body = {"role": role, "name": name or f"{role} token",
            "tenant_id": tenant_id_of(cli.api, tenant) if tenant else None}
    made: dict[str, Any] = cli.api.post("/v1/tokens", body)
    if cli.out.json_mode:
        cli.out.document(made)
        return EXIT_OK
    cli.out.say(f"token {made['id']} {made['name']!r}: {made['role']}"
                + (f", tenant {tenant}" if tenant else ", every tenant"))
    cli.out.note("the token is shown only now: store it (e.g. relayfleet login --profile NAME "
                 "< file)", style="yellow")
    cli.out.result(str(made["token"]))
    return EXIT_OK


@tokens.command("revoke", epilog=examples("relayfleet tokens revoke 7"))
@click.argument("token_id", type=click.IntRange(1), metavar="ID")
@pass_cli
def tokens_revoke(cli: Cli, /, *, token_id: int) -> int:
    """Revoke a token (calls with it are refused from now on)."""
    token: dict[str, Any] = cli.api.delete(f"/v1/tokens/{token_id}")
    return _done(cli, token, f"revoked token {token['id']} {token['name']!r}", str(token["id"]))


# -- shell completion ----------------------------------------------------------------------

def completion_path() -> Path:
    """Where bash-completion looks for the user's own completions."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "bash-completion" / "completions" / "relayfleet"


@click.group("completion", cls=Group, epilog=examples(
    "relayfleet completion bash --install", "eval \"$(relayfleet completion bash)\""))
def completion() -> None:
    """Shell completion for relayfleet's commands and options."""


@completion.command("bash", epilog=examples("relayfleet completion bash --install",
                                            "relayfleet completion bash > ~/relayfleet.bash"))
@click.option("--install", is_flag=True,
              help="Write it where bash-completion finds it "
                   "(${XDG_DATA_HOME:-~/.local/share}/bash-completion/completions/).")
@click.pass_context
def completion_bash(ctx: click.Context, /, *, install: bool) -> int:
    """Print (or --install) the bash completion script."""
    from click.shell_completion import get_completion_class

    shell = get_completion_class("bash")
    if shell is None:  # pragma: no cover (click always has bash)
        raise UsageProblem("this click has no bash completion")
    root = ctx.find_root().command
    script = shell(root, {}, "relayfleet", "_RELAYFLEET_COMPLETE").source()
    cli = ctx.find_object(Cli) or Cli()
    if not install:
        sys.stdout.write(script)
        return EXIT_OK
    path = completion_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(script, encoding="utf-8")
    except OSError as exc:
        raise UsageProblem(f"cannot write {path}: {exc.strerror or exc}") from None
    return _done(cli, {"installed": str(path)},
                 f"installed bash completion in {path} (new shells load it; this one: "
                 f"source {path})", str(path))


def register(group: click.Group) -> None:
    """Add these commands to ``relayfleet``."""
    for command in (login, logout, whoami, tenants, sites, hosts, fleet, audit, tokens,
                    completion):
        group.add_command(command)
