"""Inbound ticketing webhooks: a signed payload becomes a job.

A hook belongs to one tenant. Its requests arrive at ``POST /v1/inbound/{public_id}``
without a bearer token: the hook's signing secret authenticates them instead.

Signatures (checked in constant time, over the raw body as received):

- ``zendesk``: Zendesk's webhook signing. ``X-Zendesk-Webhook-Signature`` is
  ``base64(HMAC-SHA256(secret, TIMESTAMP + BODY))`` with TIMESTAMP the
  ``X-Zendesk-Webhook-Signature-Timestamp`` header as sent (ISO 8601, e.g.
  ``2026-12-03T10:00:00Z``). Zendesk makes the secret; the admin copies it from the webhook
  in Zendesk's Admin Center ("Reveal secret").
- ``generic``: the controller's own format, as its job callbacks are signed:
  ``X-Relayfleet-Timestamp`` (epoch seconds) and ``X-Relayfleet-Signature:
  sha256=HEX(HMAC-SHA256(secret, TIMESTAMP + "." + BODY))``.

A request whose timestamp is more than the window (``RELAYFLEET_INBOUND_WINDOW_S``) away
from the controller's clock is refused, and so is one whose signature was already seen
(:class:`controller.models.InboundDelivery`): deliveries are kept twice the window (and a
minute), past which the timestamp alone refuses a replay. A replay of an accepted request
starts nothing and answers 200 with the job the first one started (Zendesk retries a
delivery whose answer it lost, and pauses a webhook that gets many error answers).

The mapping (stored per hook) says how a payload becomes a job document::

    {"actions": ["flush_queue", "collect_status"],         # the allow-list
     "action": {"pointer": "/ticket/action"},              # or {"value": "flush_queue"}
     "host": {"pointer": "/ticket/host"},                  # a host name or id, or a list
     "params": {"reset_host_status": {"value": true}},     # each a pointer or a value
     "options": {"timeout_s": {"value": 120}},
     "reference": {"pointer": "/ticket/id"}}               # added to the callback URL

Pointers are JSON pointers (RFC 6901) into the payload. The document built is checked
exactly as ``POST /v1/jobs`` checks one (controller.jobs.load_body, then
controller.jobs.start_job as the hook's own operator token): nothing from the payload
reaches a host unvalidated.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from controller.auth import Principal, issue_token
from controller.config import Settings
from controller.crypto import SecretBox
from controller.db import Database, utcnow
from controller.errors import Conflict, NotFound, PermissionDenied
from controller.inventory import commit_unique, scoped
from controller.models import InboundDelivery, InboundHook, Job, Tenant, Token
from shared.actions import JOB_ACTIONS, job_action
from shared.errors import ValidationError

FORMATS = ("zendesk", "generic")
ZENDESK_SIGNATURE = "X-Zendesk-Webhook-Signature"
ZENDESK_TIMESTAMP = "X-Zendesk-Webhook-Signature-Timestamp"
GENERIC_SIGNATURE = "X-Relayfleet-Signature"
GENERIC_TIMESTAMP = "X-Relayfleet-Timestamp"
#: the actions a hook may allow: its jobs run as an operator token, so none that needs
#: an admin (installing the agent)
INBOUND_ACTIONS: tuple[str, ...] = tuple(
    name for name in JOB_ACTIONS if job_action(name).role in ("viewer", "operator"))
#: hosts one request may name
MAX_HOSTS = 50
#: what a reference (a ticket id) may hold: it goes into the callback URL's query
REFERENCE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
#: kept past twice the window: clocks, and a request still in its transaction
PURGE_MARGIN_S = 60
#: a header value longer than this is no signature or timestamp of ours
_MAX_HEADER = 200
_HEX_SIGNATURE = re.compile(r"sha256=([0-9a-fA-F]{64})")
_EPOCH = re.compile(r"[0-9]{1,12}")
#: what a signed timestamp too large for a datetime stands for: outside any window
FAR_FUTURE = dt.datetime.max.replace(tzinfo=dt.UTC)


class BadSignature(Exception):
    """The request is not signed with the hook's secret (answered without detail)."""


class OutsideWindow(Exception):
    """The signature is right but its timestamp is too far from the controller's clock."""

    def __init__(self, skew_s: float, window_s: int) -> None:
        super().__init__(f"the request's timestamp is {abs(skew_s):.0f} s "
                         f"{'behind' if skew_s > 0 else 'ahead of'} the controller's clock; "
                         f"at most {window_s} s is accepted: check the sender's clock")
        self.skew_s = skew_s


@dataclass(frozen=True)
class Verified:
    """A request whose signature holds: the SHA-256 of its MAC (what a replay repeats)."""

    digest: str
    timestamp: dt.datetime


# -- signatures -------------------------------------------------------------------------

def new_secret() -> str:
    """A fresh random signing secret."""
    return secrets.token_urlsafe(32)


def mac(fmt: str, secret: bytes, timestamp: str, body: bytes) -> bytes:
    """The HMAC-SHA256 a request of format ``fmt`` is signed with: over timestamp + body
    (zendesk) or timestamp + "." + body (generic); what signing and checking both use."""
    signed = timestamp.encode("utf-8", "surrogateescape")
    if fmt != "zendesk":
        signed += b"."
    return hmac.new(secret, signed + body, hashlib.sha256).digest()


def zendesk_signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """Zendesk's ``X-Zendesk-Webhook-Signature``: base64 HMAC-SHA256 over timestamp + body."""
    return base64.b64encode(mac("zendesk", secret, timestamp, body)).decode("ascii")


def sign(fmt: str, secret: bytes, body: bytes, when: dt.datetime) -> dict[str, str]:
    """The headers a sender of format ``fmt`` puts on ``body`` (what tests and the docs'
    examples send)."""
    if fmt == "zendesk":
        stamp = when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {ZENDESK_TIMESTAMP: stamp, ZENDESK_SIGNATURE: zendesk_signature(secret, stamp,
                                                                               body)}
    stamp = str(int(when.timestamp()))
    return {GENERIC_TIMESTAMP: stamp,
            GENERIC_SIGNATURE: "sha256=" + mac(fmt, secret, stamp, body).hex()}


def _presented_mac(fmt: str, header: str) -> bytes | None:
    """The MAC bytes a signature header carries (``None``: not a signature of ``fmt``)."""
    if fmt == "zendesk":
        try:
            raw = base64.b64decode(header.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            return None
        return raw if len(raw) == hashlib.sha256().digest_size else None
    match = _HEX_SIGNATURE.fullmatch(header)
    return bytes.fromhex(match.group(1)) if match else None


def _parse_timestamp(fmt: str, text: str) -> dt.datetime | None:
    """The moment a signed timestamp names (``None``: unreadable)."""
    if fmt == "generic":
        if not _EPOCH.fullmatch(text):
            return None
        try:
            return dt.datetime.fromtimestamp(int(text), dt.UTC)
        except (ValueError, OverflowError, OSError):
            # past the years a datetime holds (twelve digits reach year 33658): far
            # outside any window, and answered so
            return FAR_FUTURE
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    # Zendesk sends UTC with a "Z"; a stamp without a zone is read as UTC too
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def verify(fmt: str, secret: bytes, headers: Mapping[str, str], body: bytes, *,
           now: dt.datetime, window_s: int) -> Verified:
    """Check a request's signature (constant time) and then its timestamp.

    :class:`BadSignature` when the signature is missing, malformed or wrong;
    :class:`OutsideWindow` when it is right but the timestamp is not within ``window_s``
    of ``now``."""
    names = (ZENDESK_SIGNATURE, ZENDESK_TIMESTAMP) if fmt == "zendesk" else (
        GENERIC_SIGNATURE, GENERIC_TIMESTAMP)
    signature, stamp = (headers.get(name, "") for name in names)
    if not signature or not stamp or len(signature) > _MAX_HEADER or len(stamp) > _MAX_HEADER:
        raise BadSignature
    expected = mac(fmt, secret, stamp, body)
    presented = _presented_mac(fmt, signature)
    # compare_digest on equal lengths: the time taken says nothing of how much matched
    if not hmac.compare_digest(expected, presented if presented is not None
                               else bytes(len(expected))) or presented is None:
        raise BadSignature
    moment = _parse_timestamp(fmt, stamp)
    if moment is None:
        raise BadSignature
    skew = (now - moment).total_seconds()
    if abs(skew) > window_s:
        raise OutsideWindow(skew, window_s)
    return Verified(hashlib.sha256(expected).hexdigest(), moment)


# -- mapping ----------------------------------------------------------------------------

def resolve_pointer(document: Any, pointer: str) -> Any:
    """The value a JSON pointer (RFC 6901) names in ``document``; :class:`LookupError`
    when there is none."""
    if pointer == "":
        return document
    if not pointer.startswith("/"):
        raise LookupError(pointer)
    value = document
    for raw in pointer[1:].split("/"):
        token = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(value, dict):
            if token not in value:
                raise LookupError(pointer)
            value = value[token]
        elif isinstance(value, list) and re.fullmatch(r"0|[1-9][0-9]{0,6}", token):
            index = int(token)
            if index >= len(value):
                raise LookupError(pointer)
            value = value[index]
        else:
            raise LookupError(pointer)
    return value


def _source(payload: Any, source: Mapping[str, Any], field: str) -> Any:
    """A mapped field's value: fixed, or read from the payload."""
    if "value" in source:
        return source["value"]
    pointer = str(source["pointer"])
    try:
        return resolve_pointer(payload, pointer)
    except LookupError:
        raise ValidationError.for_field(
            field, f"the payload has nothing at {pointer} (the hook's mapping reads {field} "
                   "from there): send it, or change the mapping") from None


def _with_reference(url: str, reference: str) -> str:
    """``url`` with ``reference=...`` in its query (a receiver finds its ticket by it)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
             if k != "reference"]
    query.append(("reference", reference))
    return urlunsplit(parts._replace(query=urlencode(query)))


def build_job(mapping: Mapping[str, Any], payload: Any,
              callback_url: str | None) -> dict[str, Any]:
    """The job document a payload maps to (not yet validated: ``load_body`` does that);
    :class:`ValidationError` names what the payload lacks or the allow-list refuses."""
    action = _source(payload, mapping["action"], "action")
    allowed = list(mapping["actions"])
    if not isinstance(action, str) or action not in allowed:
        shown = action if isinstance(action, str) and len(action) <= 40 else "that value"
        raise ValidationError.for_field(
            "action", f"{shown!s} is not an action this hook allows (allowed: "
                      f"{', '.join(allowed)})")
    hosts = _source(payload, mapping["host"], "host")
    hosts = hosts if isinstance(hosts, list) else [hosts]
    if not hosts or len(hosts) > MAX_HOSTS or not all(
            isinstance(h, str | int) and not isinstance(h, bool) for h in hosts):
        raise ValidationError.for_field(
            "host", f"must be a host name or id, or a list of 1-{MAX_HOSTS} of them")
    document: dict[str, Any] = {
        "action": action, "target": {"hosts": hosts},
        "params": {name: _source(payload, source, f"params.{name}")
                   for name, source in (mapping.get("params") or {}).items()},
        "options": {name: _source(payload, source, f"options.{name}")
                    for name, source in (mapping.get("options") or {}).items()},
        "callback_url": callback_url}
    if callback_url and mapping.get("reference"):
        reference = _source(payload, mapping["reference"], "reference")
        text = str(reference) if isinstance(reference, str | int) and not isinstance(
            reference, bool) else ""
        if not REFERENCE_RE.fullmatch(text):
            raise ValidationError.for_field(
                "reference", "must be 1-64 letters, digits, '.', '_', ':' or '-' (a ticket "
                             "id)")
        document["callback_url"] = _with_reference(callback_url, text)
    return document


# -- hooks ------------------------------------------------------------------------------

def hook_url(hook: InboundHook) -> str:
    """The path a ticketing system posts to."""
    return f"/v1/inbound/{hook.public_id}"


def get_hook(session: Session, who: Principal, hook_id: int) -> InboundHook:
    """A hook the principal sees (404 otherwise: another tenant's hook does not exist)."""
    hook: InboundHook | None = session.scalar(scoped(
        select(InboundHook).where(InboundHook.id == hook_id), InboundHook, who))
    if hook is None:
        raise NotFound(f"inbound hook {hook_id} not found")
    return hook


def hook_query(who: Principal, tenant_id: int | None) -> Any:
    """The hooks the principal sees (of one tenant when given), oldest first."""
    query = scoped(select(InboundHook), InboundHook, who).order_by(InboundHook.id)
    if tenant_id is not None:
        query = query.where(InboundHook.tenant_id == tenant_id)
    return query


def _hook_token_name(name: str) -> str:
    return f"inbound hook {name}"[:100]


def create_hook(session: Session, who: Principal, data: Mapping[str, Any],
                box: SecretBox) -> tuple[InboundHook, str | None]:
    """Add a tenant's hook with its own operator token (a row only: its secret is never
    shown, the hook's jobs run as it) and its signing secret; answer the hook and the
    secret when the controller made it (``None`` when the admin gave it)."""
    who.require("admin")
    tenant_id = int(data["tenant_id"])
    if not who.sees(tenant_id) or session.get(Tenant, tenant_id) is None:
        # as everywhere else: another tenant (or none) does not exist for this token
        raise NotFound(f"tenant {tenant_id} not found: see GET /v1/tenants")
    given = data.get("secret")
    if data["format"] == "zendesk" and not given:
        raise ValidationError.for_field(
            "secret", "a zendesk hook verifies with the signing secret Zendesk made: copy it "
                      "from the webhook in Zendesk (Admin Center > Apps and integrations > "
                      "Webhooks > the webhook > Signing secret > Reveal secret)")
    secret = given or new_secret()
    token, _text = issue_token(session, name=_hook_token_name(data["name"]), role="operator",
                               tenant_id=tenant_id, created_by=who.token_id or None)
    hook = InboundHook(public_id=secrets.token_hex(16), tenant_id=tenant_id,
                       token_id=token.id, name=data["name"], format=data["format"],
                       secret_sealed=box.seal(secret) or "", mapping=dict(data["mapping"]),
                       callback_url=data.get("callback_url"), enabled=True)
    session.add(hook)
    commit_unique(session, f"inbound hook {data['name']!r} of tenant {tenant_id}")
    return hook, None if given else secret


def update_hook(session: Session, who: Principal, hook_id: int,
                data: Mapping[str, Any]) -> InboundHook:
    """Change a hook's name, mapping, callback URL or whether it is enabled."""
    who.require("admin")
    hook = get_hook(session, who, hook_id)
    if "mapping" in data:
        hook.mapping = dict(data["mapping"])
    for key in ("name", "callback_url", "enabled"):
        if key in data:
            setattr(hook, key, data[key])
    if "name" in data and hook.token_id is not None:
        token = session.get(Token, hook.token_id)
        if token is not None:
            token.name = _hook_token_name(data["name"])
    commit_unique(session, f"inbound hook {hook.name!r} of tenant {hook.tenant_id}")
    return hook


def rotate_secret(session: Session, who: Principal, hook_id: int, box: SecretBox,
                  given: str | None) -> str | None:
    """Give a hook a new signing secret (requests signed with the old one are refused from
    now on); answer it when the controller made it."""
    who.require("admin")
    hook = get_hook(session, who, hook_id)
    if hook.format == "zendesk" and not given:
        raise ValidationError.for_field(
            "secret", "reset the secret in Zendesk (the webhook's Signing secret > Reset), "
                      "then send the new one here")
    secret = given or new_secret()
    hook.secret_sealed = box.seal(secret) or ""
    session.commit()
    return None if given else secret


def delete_hook(session: Session, who: Principal, hook_id: int) -> None:
    """Remove a hook and revoke its token (its past jobs keep their results)."""
    who.require("admin")
    hook = get_hook(session, who, hook_id)
    if hook.token_id is not None:
        token = session.get(Token, hook.token_id)
        if token is not None and token.revoked_at is None:
            token.revoked_at = utcnow()
    session.delete(hook)
    session.commit()


# -- receiving --------------------------------------------------------------------------

def find_hook(session: Session, public_id: str) -> InboundHook | None:
    """The hook a URL names (``None``: no such hook)."""
    if not re.fullmatch(r"[0-9a-f]{32}", public_id):
        return None
    return session.scalar(select(InboundHook).where(InboundHook.public_id == public_id))


def hook_principal(session: Session, hook: InboundHook) -> Principal:
    """Who the hook's jobs run as: its own operator token (403 when the hook is disabled
    or its token revoked)."""
    if not hook.enabled:
        raise PermissionDenied(f"inbound hook {hook.id} is disabled: an admin enables it "
                               f"again (PATCH /v1/inbound-hooks/{hook.id} {{\"enabled\": true}})")
    token = session.get(Token, hook.token_id) if hook.token_id is not None else None
    if token is None or token.revoked_at is not None:
        raise PermissionDenied(f"inbound hook {hook.id}: its token was revoked, so it starts "
                               "no job: remove the hook and add it again")
    now = utcnow()
    if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
        token.last_used_at = now
    return Principal(token.id, token.name, token.role, token.tenant_id)


def record_delivery(session: Session, hook: InboundHook, verified: Verified) -> InboundDelivery:
    """Note an accepted request (flushed: a second one with the same signature fails on
    the unique index; the caller turns that into :func:`replayed`)."""
    delivery = InboundDelivery(hook_id=hook.id, signature_sha256=verified.digest)
    session.add(delivery)
    session.flush()
    return delivery


def replayed_job(session: Session, hook_id: int, verified: Verified) -> Job:
    """The job an already accepted request started: a sender retrying a delivery whose
    answer it lost gets that job back, and nothing new starts. :class:`Conflict` when
    that job is gone."""
    job_id = session.scalar(select(InboundDelivery.job_id).where(
        InboundDelivery.hook_id == hook_id,
        InboundDelivery.signature_sha256 == verified.digest))
    job = session.get(Job, job_id) if job_id is not None else None
    if job is None:
        raise Conflict("this request was already accepted and its job is gone: a signed "
                       "request is accepted once; sign a new one to run again")
    return job


def purge_deliveries(database: Database, settings: Settings) -> int:
    """Forget accepted requests older than twice the window plus a margin (their
    timestamps alone refuse them now: one up to the window ahead of the clock was
    accepted, and stays acceptable for up to twice the window); the sweeper calls this."""
    cutoff = utcnow() - dt.timedelta(seconds=2 * settings.inbound_window_s + PURGE_MARGIN_S)
    with database.transaction() as session:
        done = session.execute(delete(InboundDelivery).where(
            InboundDelivery.received_at < cutoff))
    return int(getattr(done, "rowcount", 0))
