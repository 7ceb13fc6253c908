"""The ``relayfleet inbound`` commands: ticketing webhooks that start jobs."""

from __future__ import annotations

import json
from typing import IO, Any

import click

from controller.client import importer
from controller.client.api import ApiClient
from controller.client.context import Cli, Group, examples, pass_cli
from controller.client.errors import EXIT_OK, UsageProblem
from controller.client.inventory_commands import tenant_id_of
from controller.client.refs import number_or_name, say_which, split_ref


def _hooks(api: ApiClient) -> list[dict[str, Any]]:
    return list(api.items("/v1/inbound-hooks"))


def hook_of(api: ApiClient, ref: str) -> dict[str, Any]:
    """A hook from its id or name (``id:3``, ``name:3``)."""
    ident, name = split_ref(ref)
    hooks = _hooks(api)
    named = [h for h in hooks if name is not None and h["name"] == name]
    if ident is not None:
        if named:
            raise UsageProblem(number_or_name("inbound hook", ref), hint=say_which(ref))
        found = [h for h in hooks if h["id"] == ident]
    else:
        found = named
    if not found:
        raise UsageProblem(f"no inbound hook {ref!r} among yours",
                           hint="relayfleet inbound list")
    if len(found) > 1:
        raise UsageProblem(f"{len(found)} hooks are named {ref!r} (in different tenants)",
                           hint="give its id: relayfleet inbound list")
    return found[0]


def _pair(option: str, text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise UsageProblem(f"{option} takes NAME=VALUE, not {text!r}")
    return name, value


def _fixed(text: str) -> Any:
    """A fixed value as typed: JSON when it reads as JSON (true, 120), else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def build_mapping(*, allow: tuple[str, ...], action: str | None, action_from: str | None,
                  host: str | None, host_from: str | None, params: tuple[str, ...],
                  params_from: tuple[str, ...], reference_from: str | None) -> dict[str, Any]:
    """A hook's mapping from the command's flags (the API checks it)."""
    if (action is None) == (action_from is None):
        raise UsageProblem("give one of --action ACTION or --action-from POINTER",
                           hint="relayfleet inbound add --help")
    if (host is None) == (host_from is None):
        raise UsageProblem("give one of --host HOST or --host-from POINTER",
                           hint="relayfleet inbound add --help")
    mapping: dict[str, Any] = {
        "actions": list(allow or ([action] if action else [])),
        "action": {"value": action} if action else {"pointer": action_from},
        "host": {"value": host} if host else {"pointer": host_from},
        "params": {**{name: {"value": _fixed(value)}
                      for name, value in (_pair("--param", p) for p in params)},
                   **{name: {"pointer": value}
                      for name, value in (_pair("--param-from", p) for p in params_from)}}}
    if reference_from:
        mapping["reference"] = {"pointer": reference_from}
    return mapping


@click.group("inbound", cls=Group, epilog=examples(
    "relayfleet inbound list",
    "relayfleet inbound add acme-zendesk --tenant acme --format zendesk "
    "--secret-file zendesk-secret.txt --allow flush_queue --allow collect_status "
    "--action-from /ticket/action --host-from /ticket/host --reference-from /ticket/id "
    "--callback-url https://bridge.example.net/relayfleet",
    "relayfleet inbound rotate-secret acme-zendesk --secret-file new-secret.txt"))
def inbound() -> None:
    """Ticketing webhooks (admins): a signed ticket payload starts a job."""


@inbound.command("list", epilog=examples("relayfleet inbound list",
                                         "relayfleet inbound list --tenant acme --json"))
@click.option("--tenant", metavar="T", help="Only this tenant's hooks (name or id).")
@pass_cli
def inbound_list(cli: Cli, /, *, tenant: str | None) -> int:
    """Every hook this admin sees (never their secrets)."""
    tenant_id = tenant_id_of(cli.api, tenant) if tenant else None
    items = list(cli.api.items("/v1/inbound-hooks", tenant_id=tenant_id))
    if cli.out.json_mode:
        cli.out.document({"items": items, "total": len(items), "limit": len(items),
                          "offset": 0})
        return EXIT_OK
    cli.out.table(["id", "name", "tenant", "format", "allows", "url", "callback", "enabled"],
                  [(h["id"], h["name"], h["tenant_id"], h["format"],
                    h["mapping"].get("actions"), h["url"], h.get("callback_url"),
                    h["enabled"]) for h in items],
                  styles=[(None if h["enabled"] else "dim") for h in items],
                  empty="no inbound hooks yet: relayfleet inbound add --help")
    return EXIT_OK


def _secret(name: str | None) -> str | None:
    if name is None:
        return None
    try:
        return importer.read_first_line(name)
    except importer.FileProblem as exc:
        raise UsageProblem(f"--secret-file: {exc}") from None


def _show_secret(cli: Cli, secret: str | None, url: str) -> None:
    if secret:
        cli.out.note("its signing secret is shown only now: give it to the sender (it signs "
                     f"each request to {url})", style="yellow")
        cli.out.result(secret)


@inbound.command("add", epilog=examples(
    "relayfleet inbound add acme-zendesk --tenant acme --format zendesk --secret-file "
    "zendesk-secret.txt --allow flush_queue --action-from /ticket/action --host-from "
    "/ticket/host --param reset_host_status=true",
    "relayfleet inbound add acme-glue --tenant acme --format generic --action flush_queue "
    "--host-from /host",
    "relayfleet inbound add acme-zendesk --tenant acme --format zendesk --secret-file "
    "zendesk-secret.txt --mapping-file mapping.json"))
@click.argument("name")
@click.option("--tenant", metavar="T", required=True, help="The tenant (name or id).")
@click.option("--format", "fmt", type=click.Choice(["zendesk", "generic"]), required=True,
              help="zendesk: Zendesk's webhook signature; generic: X-Relayfleet-Signature.")
@click.option("--secret-file", metavar="F",
              help="The signing secret (zendesk: the one Zendesk shows; '-': stdin).")
@click.option("--callback-url", metavar="URL", help="Gets each job's result, signed.")
@click.option("--allow", multiple=True, metavar="ACTION",
              help="An action the hook may start (repeatable; default: --action's).")
@click.option("--action", metavar="ACTION", help="Always this action.")
@click.option("--action-from", metavar="POINTER", help="The action from the payload "
                                                       "(a JSON pointer: /ticket/action).")
@click.option("--host", metavar="HOST", help="Always this host (name or id).")
@click.option("--host-from", metavar="POINTER", help="The host(s) from the payload.")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE",
              help="A fixed job param (repeatable; JSON values: true, 120).")
@click.option("--param-from", "params_from", multiple=True, metavar="NAME=POINTER",
              help="A job param from the payload (repeatable).")
@click.option("--reference-from", metavar="POINTER",
              help="A ticket id from the payload: added to the callback URL.")
@click.option("--mapping-file", type=click.File("r"), metavar="F",
              help="The whole mapping as JSON ('-': stdin) instead of the flags above.")
@pass_cli
def inbound_add(cli: Cli, /, *, name: str, tenant: str, fmt: str, secret_file: str | None,
                callback_url: str | None, allow: tuple[str, ...], action: str | None,
                action_from: str | None, host: str | None, host_from: str | None,
                params: tuple[str, ...], params_from: tuple[str, ...],
                reference_from: str | None, mapping_file: IO[str] | None) -> int:
    """Add a hook; prints its URL (and its secret when the controller made it, only now)."""
    if mapping_file is not None:
        if any((allow, action, action_from, host, host_from, params, params_from,
                reference_from)):
            raise UsageProblem("--mapping-file replaces the mapping flags: give one or the "
                               "other")
        try:
            mapping = json.load(mapping_file)
        except ValueError as exc:
            raise UsageProblem(f"--mapping-file: not JSON ({exc})") from None
    else:
        mapping = build_mapping(allow=allow, action=action, action_from=action_from,
                                host=host, host_from=host_from, params=params,
                                params_from=params_from, reference_from=reference_from)
    body: dict[str, Any] = {"name": name, "tenant_id": tenant_id_of(cli.api, tenant),
                            "format": fmt, "mapping": mapping, "callback_url": callback_url}
    secret = _secret(secret_file)
    if secret is not None:
        body["secret"] = secret
    made: dict[str, Any] = cli.api.post("/v1/inbound-hooks", body)
    if cli.out.json_mode:
        cli.out.document(made)
        return EXIT_OK
    url = cli.api.api.rstrip("/") + made["url"]
    cli.out.say(f"added inbound hook {made['name']} (id {made['id']}): POST {url}")
    _show_secret(cli, made.get("secret"), url)
    return EXIT_OK


@inbound.command("remove", epilog=examples("relayfleet inbound remove acme-zendesk"))
@click.argument("hook_ref", metavar="HOOK")
@pass_cli
def inbound_remove(cli: Cli, /, *, hook_ref: str) -> int:
    """Remove HOOK (name or id) and revoke its token; its jobs keep their results."""
    hook = hook_of(cli.api, hook_ref)
    cli.api.delete(f"/v1/inbound-hooks/{hook['id']}")
    if cli.out.json_mode:
        cli.out.document({"removed": hook["id"], "name": hook["name"]})
    elif cli.out.quiet:
        cli.out.result(str(hook["id"]))
    else:
        cli.out.say(f"removed inbound hook {hook['name']} (id {hook['id']}); its token is "
                    "revoked")
    return EXIT_OK


@inbound.command("rotate-secret", epilog=examples(
    "relayfleet inbound rotate-secret acme-glue",
    "relayfleet inbound rotate-secret acme-zendesk --secret-file new-secret.txt"))
@click.argument("hook_ref", metavar="HOOK")
@click.option("--secret-file", metavar="F",
              help="The new secret (zendesk: reset it in Zendesk first; '-': stdin).")
@pass_cli
def inbound_rotate_secret(cli: Cli, /, *, hook_ref: str, secret_file: str | None) -> int:
    """Give HOOK a new signing secret; requests signed with the old one are refused."""
    hook = hook_of(cli.api, hook_ref)
    secret = _secret(secret_file)
    answer: dict[str, Any] = cli.api.post(f"/v1/inbound-hooks/{hook['id']}/rotate-secret",
                                          {"secret": secret} if secret else {})
    if cli.out.json_mode:
        cli.out.document(answer)
        return EXIT_OK
    cli.out.say(f"inbound hook {hook['name']} (id {hook['id']}) has a new secret")
    _show_secret(cli, answer.get("secret"), cli.api.api.rstrip("/") + hook["url"])
    return EXIT_OK


def register(cli: click.Group) -> None:
    """Add these commands to ``cli``."""
    cli.add_command(inbound)

