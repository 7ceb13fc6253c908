"""The fleet doctor: names the causes behind hosts' Deferred and bounce reasons.

Every status look (``collect_status``) reports the queued messages' deferral texts
(``queue.reasons``) and the failures its maillog shows since the last delivery a relay
accepted (``recent.unresolved``). :func:`host_causes` turns them into named causes
(:data:`CAUSES`), stored on the host (``Host.causes``); :func:`fleet_report` groups the
fleet's hosts by cause, each with the action that fixes it (``GET /v1/doctor``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from controller import inventory as inv
from controller.auth import Principal
from controller.models import Host, Site, Tenant
from shared.reasons import clip
from shared.sendmail.maillog import line_problem

#: examples listed per cause unless asked otherwise, and at most
DEFAULT_HOSTS_PER_CAUSE = 10
MAX_HOSTS_PER_CAUSE = 100
#: a sample reason is cut to this length
MAX_SAMPLE = 300


@dataclass(frozen=True)
class Cause:
    """One named cause: what it means and what fixes it."""

    key: str
    title: str
    #: the relayfleet action that fixes it (None: nothing relayfleet can change)
    action: str | None
    hint: str

    def to_dict(self) -> dict[str, Any]:
        """The cause's public form: ``{cause, title, action: {action, hint}}``."""
        return {"cause": self.key, "title": self.title,
                "action": {"action": self.action, "hint": self.hint}}


#: every cause, in the order the doctor lists causes touching as many hosts
CAUSES: dict[str, Cause] = {c.key: c for c in (
    Cause("no_smarthost", "No smarthost: recipients' mail servers refuse or cannot be reached",
          "set_smarthost",
          "point the host at the MSP's relay: set_smarthost with the relay's host, port and "
          "account"),
    Cause("ehlo_refused", "The relay refuses the host's EHLO name (not fully qualified)",
          "fix_hostname",
          "give the host a fully qualified name: fix_hostname with the customer's domain"),
    Cause("tls_verify_failed", "The relay's certificate does not verify",
          "set_smarthost",
          "check the relay's name and CA: set_smarthost with the name its certificate "
          "carries and tls.ca_file, or tls.mode encrypt if the relay cannot be verified"),
    Cause("tls_required", "TLS is required but not used (STARTTLS not offered or failed)",
          "set_smarthost",
          "use the relay's submission port with tls.mode encrypt or verify, or a relay that "
          "offers STARTTLS"),
    Cause("auth_failed", "The relay refused the login (wrong or missing password)",
          "set_smarthost",
          "set_smarthost again with the relay account's current username and password"),
    Cause("host_lookup_failed", "A host name does not resolve (relay or recipient domain)",
          "set_smarthost",
          "check the smarthost's name (diagnose shows what the host resolves); fix DNS or "
          "set_smarthost with a name that resolves"),
    Cause("local_mta_refused",
          "The host's own MTA refuses local mail (it stays in sendmail's client queue)", None,
          "start the host's MTA daemon, or wait for its load to drop: sendmail refuses "
          "connections above its RefuseLA load average (read_log shows \"rejecting "
          "connections on daemon\"); then flush_queue, which runs the client queue too"),
    Cause("relay_unreachable", "The relay cannot be reached (connection refused or timed out)",
          None,
          "check the relay's host and port and the site's firewall (diagnose probes the "
          "relay from the host), then flush_queue"),
    Cause("sender_refused", "The relay refuses the sender's domain",
          "set_smarthost",
          "set_smarthost with masquerade.domain set to a domain the relay accepts "
          "(the customer's)"),
    Cause("relaying_denied", "The relay refuses to relay for the host",
          "set_smarthost",
          "give the relay account (auth) or ask the relay's owner to allow the site's "
          "address; then flush_queue"),
    Cause("other", "Other deferrals and bounces", None,
          "read the samples; read_log and queue_list show each message's reason"),
)}

_SENDER_RE = re.compile(
    r"Sender address rejected|sender (?:address )?(?:rejected|refused|denied)"
    r"|\b5\.1\.[78]\b|Domain of sender address|not owned by a customer domain", re.IGNORECASE)
_LOOKUP_RE = re.compile(
    r"Host unknown|Name server|host not found|Host or domain name not found|No such host"
    r"|Name or service not known|host name lookup|lookup failure|MX lookup", re.IGNORECASE)
_CONNECT_RE = re.compile(
    r"Connection refused|timed out|No route to host|Network is unreachable|Connection reset"
    r"|lost connection|connection dropped|Host is down", re.IGNORECASE)
#: sendmail's submission program (MSP) handing mail to the host's own MTA on loopback
_LOCAL_MTA_RE = re.compile(
    r"Connection refused by (?:\[(?:127\.0\.0\.1|::1|IPv6:::1)\]|localhost\b)", re.IGNORECASE)
#: the agents' line problems that are causes of the same name
_PROBLEM_CAUSES = frozenset({"tls_verify_failed", "tls_required", "auth_failed",
                             "ehlo_refused", "relaying_denied"})


def classify(text: str, has_smarthost: bool, problem: str | None = None) -> str:
    """The cause key of one deferral or bounce text (``problem``: the relay problem the
    agent named on its log line, when known)."""
    if _SENDER_RE.search(text):
        return "sender_refused"
    if problem is None:
        problem = line_problem("delivery", {"stat": text}, text)
    if problem in _PROBLEM_CAUSES:
        return problem
    if _LOOKUP_RE.search(text):
        return "host_lookup_failed"
    if _LOCAL_MTA_RE.search(text):
        # (not the relay: no smarthost fixes it, and no relay's firewall is at fault)
        return "local_mta_refused"
    if _CONNECT_RE.search(text):
        return "relay_unreachable" if has_smarthost else "no_smarthost"
    # without a smarthost the refusals come from recipients' servers: a smarthost fixes them
    return "other" if has_smarthost else "no_smarthost"


def host_causes(status_data: Mapping[str, Any], smarthost: Mapping[str, Any] | None
                ) -> list[dict[str, Any]]:
    """A status look's named causes, ``[{cause, count, sample}]``, most messages first:
    the queued messages by their deferral text, plus the bounces the maillog shows since
    the last delivery a relay accepted (they left the queue); [] when nothing fails."""
    has_smarthost = bool(smarthost)
    counts: dict[str, int] = {}
    samples: dict[str, tuple[int, str]] = {}

    def add(cause: str, count: int, text: str) -> None:
        counts[cause] = counts.get(cause, 0) + count
        if count > samples.get(cause, (0, ""))[0]:
            samples[cause] = (count, clip(text, MAX_SAMPLE))

    recent = status_data.get("recent") or {}
    logged = [f for f in recent.get("unresolved") or () if isinstance(f, Mapping)]
    queue = status_data.get("queue") or {}
    for reason in queue.get("reasons") or ():
        text, count = str(reason.get("text", "")), int(reason.get("count") or 0)
        if not text or count <= 0:
            continue
        # sendmail's mailq cuts a long reason ("... closing connection. (EH"): the same
        # failure logged whole names the cause
        whole = next((f for f in logged if str(f.get("text", "")).startswith(text)), None)
        if whole is not None:
            text, problem = str(whole["text"]), whole.get("problem")
            add(classify(text, has_smarthost, problem), count, text)
        else:
            add(classify(text, has_smarthost), count, text)
    for failure in logged:
        # deferred attempts are the queued messages already counted
        if failure.get("outcome") == "bounced" and int(failure.get("count") or 0) > 0:
            text = str(failure.get("text", ""))
            add(classify(text, has_smarthost, failure.get("problem")), int(failure["count"]),
                text)
    order = list(CAUSES)
    return [{"cause": cause, "count": counts[cause], "sample": samples[cause][1]}
            for cause in sorted(counts, key=lambda c: (-counts[c], order.index(c)))]


def _hosts_per_cause(filters: Mapping[str, Any]) -> int:
    value = filters.get("hosts_per_cause")
    return DEFAULT_HOSTS_PER_CAUSE if value is None else int(value)


def fleet_report(session: Session, principal: Principal, filters: Mapping[str, Any]
                 ) -> dict[str, Any]:
    """The fleet's hosts grouped by cause (``filters``: ``tenant``, ``site`` ids,
    ``hosts_per_cause``): ``{examined, healthy, unknown, unreachable, causes: [{cause,
    title, action, hosts, messages, examples: [{id, name, site, count, sample}]}]}``.

    A host with no stored causes (never looked at) is unknown; one whose causes are [] is
    healthy. Another tenant's tenant or site is 404, as everywhere.
    """
    stmt = (inv.scoped(select(Host.id, Host.name, Site.name, Host.causes, Host.last_reachable)
                       .join(Site, Site.id == Host.site_id), Host, principal)
            .order_by(Host.id))
    if filters.get("tenant") is not None:
        inv.get_scoped(session, Tenant, int(filters["tenant"]), principal)
        stmt = stmt.where(Host.tenant_id == int(filters["tenant"]))
    if filters.get("site") is not None:
        inv.get_scoped(session, Site, int(filters["site"]), principal)
        stmt = stmt.where(Host.site_id == int(filters["site"]))
    per_cause = _hosts_per_cause(filters)
    examined = healthy = unknown = unreachable = 0
    hosts: dict[str, list[dict[str, Any]]] = {}
    messages: dict[str, int] = {}
    for host_id, name, site, causes, reachable in session.execute(stmt):
        examined += 1
        unreachable += reachable is False
        if causes is None:
            unknown += 1
            continue
        if not causes:
            healthy += 1
            continue
        for entry in _valid(causes):
            key = entry["cause"]
            messages[key] = messages.get(key, 0) + entry["count"]
            hosts.setdefault(key, []).append({"id": host_id, "name": name, "site": site,
                                              "count": entry["count"],
                                              "sample": entry["sample"]})
    order = list(CAUSES)
    report = []
    for key in sorted(hosts, key=lambda k: (-len(hosts[k]), -messages[k], order.index(k))):
        examples = sorted(hosts[key], key=lambda h: (-h["count"], h["id"]))[:per_cause]
        report.append({**CAUSES[key].to_dict(), "hosts": len(hosts[key]),
                       "messages": messages[key], "examples": examples})
    return {"examined": examined, "healthy": healthy, "unknown": unknown,
            "unreachable": unreachable, "causes": report}


def _valid(causes: Sequence[Any]) -> list[dict[str, Any]]:
    """Stored causes that name a known cause (a row written by another version may not)."""
    out = []
    for entry in causes:
        if isinstance(entry, Mapping) and entry.get("cause") in CAUSES:
            out.append({"cause": entry["cause"], "count": int(entry.get("count") or 0),
                        "sample": str(entry.get("sample") or "")})
    return out
