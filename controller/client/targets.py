"""TARGET options (``--all | --tenant T | --site S | --tag X | --host H``, repeatable,
names or ids) and the job target they make.

One kind of option goes to the API as it is (``{"sites": ["lyon", 7]}``), which resolves
names and scopes them to the token. Several kinds together mean their intersection
(``--tenant acme --tag pbx``: acme's hosts tagged pbx): the CLI lists each kind's hosts
and sends the host ids they share.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from controller.client.api import ApiClient
from controller.client.errors import ApiRefused, UsageProblem

F = TypeVar("F", bound=Callable[..., Any])

#: option name -> the API's target key
KINDS = {"tenant": "tenants", "site": "sites", "tag": "tags", "host": "hosts"}


def target_options(function: F) -> F:
    """Add the TARGET options to a command."""
    options = [
        click.option("--all", "all_hosts", is_flag=True,
                     help="Every host the token may touch."),
        click.option("--tenant", multiple=True, metavar="T",
                     help="Hosts of this tenant (name or id; repeatable)."),
        click.option("--site", multiple=True, metavar="S",
                     help="Hosts of this site (name or id; repeatable)."),
        click.option("--tag", multiple=True, metavar="X", help="Hosts with this tag (repeatable)."),
        click.option("--host", multiple=True, metavar="H",
                     help="This host (name or id; repeatable)."),
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


def reference(text: str) -> int | str:
    """A name or id as the API takes it: digits are an id."""
    return int(text) if text.isdigit() else text


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
        refs = list(values) if name == "tag" else [reference(v) for v in values]
        return {KINDS[name]: refs}
    return {"hosts": sorted(_intersection(given, api))}


def _intersection(given: dict[str, tuple[str, ...]], api: ApiClient) -> set[int]:
    chosen: set[int] | None = None
    for name, values in given.items():
        ids: set[int] = set()
        for value in values:
            ids |= _hosts_of(name, value, api)
        chosen = ids if chosen is None else chosen & ids
    if not chosen:
        raise UsageProblem("no host matches all of "
                           + " and ".join(f"--{n} {' '.join(v)}" for n, v in given.items()),
                           hint="relayfleet hosts list with the same options to see each part")
    return chosen


def _hosts_of(name: str, value: str, api: ApiClient) -> set[int]:
    if name == "tag":
        return {h["id"] for h in api.items("/v1/hosts", tag=value)}
    if name == "host":
        return set(_ids("host", "/v1/hosts", value, api))
    path = {"tenant": "/v1/tenants", "site": "/v1/sites"}[name]
    return {h["id"] for owner in _ids(name, path, value, api)
            for h in api.items("/v1/hosts", **{f"{name}_id": owner})}


def _ids(kind: str, path: str, value: str, api: ApiClient) -> list[int]:
    """The ids a name or id stands for (every site of that name: sites are named per
    tenant)."""
    ref = reference(value)
    if isinstance(ref, int):
        return [ref]
    found = [item["id"] for item in api.items(path, **({"name": ref} if kind == "host" else {}))
             if item["name"] == ref]
    if not found:
        raise UsageProblem(f"no {kind} named {ref!r} in your tenants",
                           hint=list_hint(kind, ref))
    return found


def list_hint(kind: str, name: str) -> str:
    """The list command that finds what was meant."""
    part = name.split(".", maxsplit=1)[0]
    word = next((w for w in reversed(part.split("-")) if w and not w.isdigit()), part)
    if kind == "host":
        return f"relayfleet hosts list --name {word}"
    return f"relayfleet {kind}s list"


def explain_target_refusal(error: ApiRefused) -> ApiRefused:
    """The API's ``target.hosts: not found: pbx-lyon``, said with what to do next."""
    for key, messages in error.errors.items():
        if not key.startswith("target.") or not messages:
            continue
        kind = key.split(".", 1)[1].rstrip("s")
        text = messages[0] if isinstance(messages, list) else str(messages)
        if text.startswith("not found: ") and kind in ("host", "site", "tenant"):
            missing = text.removeprefix("not found: ").split(",")[0].strip()
            return ApiRefused(error.status, f"no {kind} named {missing} in your tenants",
                              hint=list_hint(kind, missing))
    return error
