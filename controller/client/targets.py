"""TARGET options (``--all | --tenant T | --site S | --tag X | --host H``, repeatable,
names or ids) and the job target they make.

One kind of option goes to the API as it is (``{"sites": ["lyon", 7]}``), which resolves
names and scopes them to the token, and refuses a name several sites (or hosts) share.
Several kinds together mean their intersection (``--tenant acme --tag pbx``: acme's hosts
tagged pbx): the CLI lists each kind's hosts and sends the host ids they share. A number
is an id; ``id:3`` / ``name:3`` say which when something is also named ``3``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from controller.client.api import ApiClient
from controller.client.errors import ApiRefused, UsageProblem
from controller.client.refs import number_or_name, say_which, split_ref

F = TypeVar("F", bound=Callable[..., Any])

#: option name -> the API's target key
KINDS = {"tenant": "tenants", "site": "sites", "tag": "tags", "host": "hosts"}
LIST_PATHS = {"tenant": "/v1/tenants", "site": "/v1/sites", "host": "/v1/hosts"}


def target_options(function: F) -> F:
    """Add the TARGET options to a command."""
    options = [
        click.option("--all", "all_hosts", is_flag=True,
                     help="Every host the token may touch."),
        click.option("--tenant", multiple=True, metavar="T",
                     help="Hosts of this tenant (name or id; repeatable)."),
        click.option("--site", multiple=True, metavar="S",
                     help="Hosts of this site (name or id; repeatable). A name several "
                          "tenants use needs --tenant T too, or the site's id."),
        click.option("--tag", multiple=True, metavar="X", help="Hosts with this tag (repeatable)."),
        click.option("--host", multiple=True, metavar="H",
                     help="This host (name or id; repeatable). A number is an id; write "
                          "id:3 or name:3 when something is also named so."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


@dataclass(frozen=True)
class TargetChoice:
    """What the TARGET options said."""

    all_hosts: bool = False
    tenant: tuple[str, ...] = ()
    site: tuple[str, ...] = ()
    tag: tuple[str, ...] = ()
    host: tuple[str, ...] = ()

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> TargetChoice:
        """Pop the TARGET options out of a command's keyword arguments."""
        return cls(all_hosts=options.pop("all_hosts"), tenant=options.pop("tenant"),
                   site=options.pop("site"), tag=options.pop("tag"),
                   host=options.pop("host"))

    def given(self) -> dict[str, tuple[str, ...]]:
        """The kinds given, by option name."""
        return {name: getattr(self, name) for name in KINDS if getattr(self, name)}

    def describe(self) -> str:
        """The choice as it was typed (for messages)."""
        if self.all_hosts:
            return "--all"
        return " ".join(f"--{name} {value}" for name, values in self.given().items()
                        for value in values)


def named(api: ApiClient, kind: str, name: str) -> list[dict[str, Any]]:
    """Every tenant, site or host of that exact name the token sees."""
    query = {"name": name} if kind == "host" else {}  # hosts: a "contains" filter
    return [item for item in api.items(LIST_PATHS[kind], **query) if item["name"] == name]


def resolve_ref(api: ApiClient, kind: str, text: str) -> int | str:
    """An id, or a name for the API to resolve (``id:3``, ``name:1``, ``lyon``, ``7``); a
    plain number that is also the name of a ``kind`` the token sees is refused."""
    ident, name = split_ref(text)
    if ident is None:
        return str(name)
    if name is not None and named(api, kind, name):
        raise UsageProblem(number_or_name(kind, text), hint=say_which(text))
    return ident


def build_target(choice: TargetChoice, api: ApiClient) -> dict[str, Any]:
    """The job's ``target`` document."""
    given = choice.given()
    if choice.all_hosts:
        if given:
            raise UsageProblem("--all cannot be combined with --tenant, --site, --tag or "
                               "--host")
        return {"all": True}
    if not given:
        raise UsageProblem("say which hosts", hint="add --all, --tenant T, --site S, --tag X "
                                                   "or --host H")
    if len(given) == 1:
        (name, values), = given.items()
        refs = list(values) if name == "tag" else [resolve_ref(api, name, v) for v in values]
        return {KINDS[name]: refs}
    return {"hosts": sorted(_intersection(given, api))}


def _intersection(given: dict[str, tuple[str, ...]], api: ApiClient) -> set[int]:
    """The hosts every given kind names. A name is looked up within the other kinds given
    (``--tenant acme --site lyon``: acme's lyon); one that still names several sites or
    hosts is refused rather than taking them all."""
    tenants = [ident for value in given.get("tenant", ())
               for ident in _ids("tenant", value, api, {})]
    sites = [ident for value in given.get("site", ())
             for ident in _ids("site", value, api, {"tenant_id": tenants})]
    hosts = [ident for value in given.get("host", ())
             for ident in _ids("host", value, api, {"tenant_id": tenants, "site_id": sites})]
    chosen: set[int] | None = None
    for name, owners in (("tenant", tenants), ("site", sites)):
        if name in given:
            ids = {h["id"] for owner in owners
                   for h in api.items("/v1/hosts", **{f"{name}_id": owner})}
            chosen = ids if chosen is None else chosen & ids
    if "tag" in given:
        ids = {h["id"] for tag in given["tag"] for h in api.items("/v1/hosts", tag=tag)}
        chosen = ids if chosen is None else chosen & ids
    if "host" in given:
        chosen = set(hosts) if chosen is None else chosen & set(hosts)
    if not chosen:
        raise UsageProblem("no host matches all of "
                           + " and ".join(f"--{n} {' '.join(v)}" for n, v in given.items()),
                           hint="relayfleet hosts list with the same options to see each part")
    return chosen


def _ids(kind: str, value: str, api: ApiClient, within: dict[str, list[int]]) -> list[int]:
    """The id a name or id stands for, the name looked up among the items of the owners
    in ``within`` (those given: ``{"tenant_id": [3]}``)."""
    ident, name = split_ref(value)
    found = named(api, kind, name) if name is not None else []
    if ident is not None:
        if found:
            raise UsageProblem(number_or_name(kind, value), hint=say_which(value))
        return [ident]
    if not found:
        raise UsageProblem(f"no {kind} named {name!r} in your tenants",
                           hint=list_hint(kind, str(name)))
    narrowed = [item for item in found
                if all(item.get(key) in owners for key, owners in within.items() if owners)]
    if not narrowed:
        # none within the other kinds given: the intersection says that no host matches
        return [int(item["id"]) for item in found]
    if len(narrowed) > 1:
        ids = ", ".join(str(item["id"]) for item in narrowed)
        narrower = "--tenant T" if kind == "site" else "--site S or --tenant T"
        raise UsageProblem(f"{name!r} names {len(narrowed)} {kind}s (ids {ids})",
                           hint=f"give one id (--{kind} id:{narrowed[0]['id']}), or add "
                                f"{narrower}")
    return [int(narrowed[0]["id"])]


def list_hint(kind: str, name: str) -> str:
    """The list command that finds what was meant."""
    part = name.split(".", maxsplit=1)[0]
    word = next((w for w in reversed(part.split("-")) if w and not w.isdigit()), part)
    if kind == "host":
        return f"relayfleet hosts list --name {word}"
    return f"relayfleet {kind}s list"


_AMBIGUOUS = re.compile(r"'(?P<name>.*)' names (?P<count>\d+) \w+ \(ids (?P<ids>[\d, .]+)\): "
                        r"give the id")


def explain_target_refusal(error: ApiRefused) -> ApiRefused:
    """The API's ``target.hosts: not found: pbx-lyon`` or ``target.sites: 'lyon' names 2
    sites (ids 3, 7): give the id``, said with what to do next."""
    for key, messages in error.errors.items():
        if not key.startswith("target.") or not messages:
            continue
        kind = key.split(".", 1)[1].rstrip("s")
        text = messages[0] if isinstance(messages, list) else str(messages)
        if kind not in ("host", "site", "tenant"):
            continue
        if text.startswith("not found: "):
            missing = text.removeprefix("not found: ").split(",")[0].strip()
            return ApiRefused(error.status, f"no {kind} named {missing} in your tenants",
                              hint=list_hint(kind, missing))
        ambiguous = _AMBIGUOUS.fullmatch(text)
        if ambiguous:
            first = ambiguous["ids"].split(",")[0].strip()
            narrower = "--tenant T --site S" if kind == "site" else "--site S --host H"
            return ApiRefused(error.status, f"--{kind} {text.removesuffix(': give the id')}",
                              hint=f"give one id (--{kind} id:{first}), or narrow it with "
                                   f"{narrower}")
    return error
