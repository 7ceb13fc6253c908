"""Alert channels: how one notice reaches a signed webhook, an inbox, Slack or Teams.

Webhooks get the notice's JSON document signed like job callbacks (``X-Relayfleet-Signature``
over ``timestamp.body`` with the channel's own key); Slack and Teams incoming webhooks get
``{"text": ...}`` (both accept it; what came from hosts is escaped, never markup); email
goes through the controller's own SMTP server (``RELAYFLEET_SMTP_URL``; a login only over
TLS). Every HTTP POST goes through :func:`controller.callbacks.post` (the egress policy).
What a send answers as its outcome is shown to the tenant: a status or a reason, never a
URL (an incoming webhook's URL is its key) nor a password.
"""

from __future__ import annotations

import json
import logging
import re
import smtplib
import socket
import ssl
import time
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any
from urllib.parse import urlsplit

from controller.callbacks import post
from controller.config import Settings
from controller.crypto import sign_callback

#: one SMTP step (connect, each command): a server that drips cannot hold a worker
NOTICE_DEADLINE_S = 10.0
#: what Teams' markdown would read as markup (a backslash shows each literally)
_TEAMS_MARKDOWN = re.compile(r"[\\`*_{}\[\]()#+!|~-]")
#: the SMTP ports each ``RELAYFLEET_SMTP_URL`` scheme defaults to
SMTP_SCHEMES = {"smtp": 25, "smtp+starttls": 587, "smtps": 465}

log = logging.getLogger("relayfleet.notify")


@dataclass(frozen=True)
class Notice:
    """What one notice says: ``event`` (firing, resolved, test), the webhook's JSON
    ``document``, and the human ``subject`` and ``text`` (email, Slack, Teams)."""

    event: str
    document: dict[str, Any]
    subject: str
    text: str


@dataclass(frozen=True)
class Destination:
    """Where a channel sends: its kind, its URL or address, and (webhook) its key."""

    kind: str
    target: str
    key: bytes | None = None


def target_hint(kind: str, target: str) -> str:
    """What may be shown of a channel's target: an address whole, a URL's scheme and host
    only (the path of a Slack or Teams incoming webhook is its key)."""
    if kind == "email":
        return target
    try:
        parts = urlsplit(target)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # not a URL the schema lets through; say nothing of it
        return "(not a valid URL)"
    return f"{parts.scheme}://{parts.hostname}{port}/…"


def send(settings: Settings, destination: Destination, notice: Notice) -> tuple[bool, str]:
    """Send ``notice`` to ``destination``; whether it was delivered, and how it went."""
    if destination.kind == "email":
        return send_email(settings, destination.target, notice)
    if destination.kind == "webhook":
        body = json.dumps(notice.document, sort_keys=True).encode()
        stamp = str(int(time.time()))
        headers = {"Content-Type": "application/json", "User-Agent": "relayfleet-controller",
                   "X-Relayfleet-Event": f"alert.{notice.event}",
                   "X-Relayfleet-Timestamp": stamp}
        if destination.key is not None:
            headers["X-Relayfleet-Signature"] = sign_callback(destination.key, stamp, body)
        return post(settings, destination.target, body, headers)
    body = json.dumps({"text": chat_text(destination.kind, notice)}).encode()
    return post(settings, destination.target, body,
                {"Content-Type": "application/json", "User-Agent": "relayfleet-controller"})


def slack_escape(text: str) -> str:
    """``text`` as Slack shows it literally: its three control characters as entities (a
    maillog sample's ``<https://x|click>`` or ``<!channel>`` stays text)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def teams_escape(text: str) -> str:
    """``text`` as Teams shows it literally: markdown's characters backslash-escaped and
    HTML's as entities (a sample's ``[click](https://x)`` or ``<img>`` stays text)."""
    escaped = _TEAMS_MARKDOWN.sub(r"\\\g<0>", text)
    return escaped.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def chat_text(kind: str, notice: Notice) -> str:
    """A Slack or Teams message: the subject in bold, then the text; what came from hosts
    (maillog samples, drift values, names) is escaped, never markup."""
    if kind == "teams":
        return f"**{teams_escape(notice.subject)}**\n\n{teams_escape(notice.text)}"
    return f"*{slack_escape(notice.subject)}*\n{slack_escape(notice.text)}"


def smtp_endpoint(url: str) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of ``RELAYFLEET_SMTP_URL``; ValueError saying what is
    wrong with it."""
    if not url:
        raise ValueError("RELAYFLEET_SMTP_URL is not set on the controller: email channels "
                         "cannot send until it is")
    parts = urlsplit(url)
    if parts.scheme not in SMTP_SCHEMES or not parts.hostname:
        raise ValueError("RELAYFLEET_SMTP_URL must read smtp://HOST[:PORT], "
                         "smtp+starttls://HOST[:PORT] or smtps://HOST[:PORT]")
    try:
        port = parts.port or SMTP_SCHEMES[parts.scheme]
    except ValueError:
        raise ValueError("RELAYFLEET_SMTP_URL has a port that is not a number") from None
    return parts.scheme, parts.hostname, port


def sender(settings: Settings) -> str:
    """The From of alert emails: ``RELAYFLEET_SMTP_FROM``, else relayfleet@ this host."""
    return settings.smtp_from or f"relayfleet@{socket.getfqdn()}"


def email_message(settings: Settings, address: str, notice: Notice) -> EmailMessage:
    """The alert email to ``address``."""
    message = EmailMessage()
    origin = sender(settings)
    message["From"] = origin
    message["To"] = address
    message["Subject"] = notice.subject
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid("relayfleet", origin.rpartition("@")[2] or None)
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(notice.text)
    return message


def send_email(settings: Settings, address: str, notice: Notice) -> tuple[bool, str]:
    """Send the notice as an email through the controller's SMTP server."""
    try:
        scheme, host, port = smtp_endpoint(settings.smtp_url)
    except ValueError as exc:
        return False, str(exc)
    if settings.smtp_username and scheme == "smtp":
        # a plain smtp:// session would carry the password in clear
        return False, ("RELAYFLEET_SMTP_USERNAME is set but RELAYFLEET_SMTP_URL is plain "
                       "smtp://: the password would cross the network in clear; use "
                       "smtps:// or smtp+starttls://, or drop the username")
    message = email_message(settings, address, notice)
    where = f"the mail server {host}:{port}"
    try:
        client: smtplib.SMTP
        if scheme == "smtps":
            client = smtplib.SMTP_SSL(host, port, timeout=NOTICE_DEADLINE_S,
                                      context=ssl.create_default_context())
        else:
            client = smtplib.SMTP(host, port, timeout=NOTICE_DEADLINE_S)
        with client:
            client.ehlo()
            if scheme == "smtp+starttls":
                client.starttls(context=ssl.create_default_context())
                client.ehlo()
            if settings.smtp_username:
                client.login(settings.smtp_username, settings.smtp_password)
            client.send_message(message)
    except smtplib.SMTPRecipientsRefused as exc:
        code, reply = next(iter(exc.recipients.values()))
        return False, f"{where} refused {address}: {code} {_text(reply)}"
    except smtplib.SMTPAuthenticationError as exc:
        return False, (f"{where} refused the login (RELAYFLEET_SMTP_USERNAME / "
                       f"RELAYFLEET_SMTP_PASSWORD_FILE): {exc.smtp_code}")
    except smtplib.SMTPResponseException as exc:
        return False, f"{where} answered {exc.smtp_code} {_text(exc.smtp_error)}"
    except (smtplib.SMTPException, OSError) as exc:
        log.info("alert email via %s: %s", where, exc)
        return False, f"{where} could not be reached or dropped the connection"
    return True, f"sent via {host}:{port}"


def _text(reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    return " ".join(text.split())[:300]
