"""How a lab host is reached by a controller: its POST /v1/hosts body, with the agent
started (https, the installer's self-signed certificate pinned by fingerprint) or sshd
started and a client key authorised."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from tests.lab.lab import LabHost


@dataclass(frozen=True)
class SshLogin:
    """Who logs in over SSH, with which key."""

    user: str
    private_key: str
    public_key: str
    sudo: bool = False


def host_body(host: LabHost, transport: str, *, kind: str | None = None,
              login: SshLogin | None = None, tags: list[str] | None = None) -> dict[str, Any]:
    """Start what ``transport`` needs on ``host`` and return its POST /v1/hosts body;
    ``kind`` is ``mta.kind`` (default: the host's MTA; ``auto`` lets the host tell)."""
    body: dict[str, Any] = {"name": host.fqdn, "address": host.address, "transport": transport,
                            "mta": {"kind": kind or host.mta, "flavour": host.flavour,
                                    "overrides": {}},
                            "tags": tags or [transport, host.layout, host.mta]}
    if transport == "agent":
        token = secrets.token_urlsafe(24)
        url = host.start_agent(token, tls=True, kind=kind)
        body["agent"] = {"url": url, "token": token, "tls_fingerprint": host.agent_fingerprint,
                         "ca_cert": host.agent_cert_pem}
        return body
    if login is None:
        raise ValueError("an SSH host needs a login")
    if host.sshd is None:
        host.ssh_host_key = host.start_sshd()
    host.authorize(login.user, login.public_key)
    body["ssh"] = {"username": login.user, "private_key": login.private_key,
                   "host_key": host.ssh_host_key, "sudo": login.sudo}
    return body
