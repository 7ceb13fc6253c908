"""marshmallow schemas for every controller payload.

Requests refuse unknown fields. Secrets (agent tokens, SSH keys and passwords, SMTP AUTH
passwords) are ``load_only``: accepted, never dumped. Job params reuse the agent's request
schemas (:mod:`shared.schemas`), so a value the agent would refuse is refused here first.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from flask import current_app, has_app_context
from marshmallow import (
    Schema,
    ValidationError,
    fields,
    missing,
    post_load,
    validate,
    validates,
    validates_schema,
)

from controller.egress import EgressPolicy, normalise_fingerprint
from controller.ledger import JobState, UnitState
from controller.models import ROLES, TRANSPORTS, Host
from controller.policy import drifted as policy_drifted
from shared import errors as rf_errors
from shared import validation as rules
from shared.actions import INSTALL_MIN_TIMEOUT_S, JOB_ACTIONS, min_timeout_s, params_summary
from shared.profile import FLAVOURS, MTA_KINDS, PROFILE_KINDS, check_settings
from shared.schemas import (
    ErrorSchema,
    FullRegexp,
    StepSchema,
    StrictSchema,
    WholeInteger,
)

__all__ = ["ErrorSchema"]

NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,99}$"
HOST_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$"
TAG_RE = r"^[A-Za-z0-9][A-Za-z0-9_.:=-]{0,63}$"
MAX_IMPORT = 1000
MAX_TARGET_ITEMS = 10000
#: ids are 32-bit on every backend; larger numbers name nothing
MAX_ID = 2**31 - 1


def _id(**kwargs: Any) -> fields.Integer:
    return WholeInteger(validate=validate.Range(1, MAX_ID), **kwargs)


def name_field(**kwargs: Any) -> fields.String:
    """A field for an object's name: 1-100 letters, digits, spaces, ".", "_" or "-"."""
    return fields.String(validate=FullRegexp(
        NAME_RE, error="1-100 letters, digits, spaces, '.', '_' or '-', starting with a "
                       "letter or digit"), **kwargs)


_JOB_STATES = [state.value for state in JobState]
_UNIT_STATES = [state.value for state in UnitState]

class PageQuerySchema(StrictSchema):
    """Paging for every list."""

    limit = WholeInteger(load_default=100, validate=validate.Range(1, 1000))
    offset = WholeInteger(load_default=0, validate=validate.Range(0, 10**9))


class PageSchema(Schema):
    """A page of a list: ``items`` and where it sits in the whole."""

    total = WholeInteger(required=True)
    limit = WholeInteger(required=True)
    offset = WholeInteger(required=True)


class NestedFrom(fields.Nested):
    """A nested object that ``source`` builds from the object being dumped (for answers).

    Like ``fields.Function``, but the value is dumped through ``nested`` and documented as
    that schema's ``$ref``; a ``Function`` field would be documented as an untyped value.
    """

    def __init__(self, nested: type[Schema], source: Callable[[Any], Any],
                 **kwargs: Any) -> None:
        super().__init__(nested, **kwargs)
        self.source = source

    def get_value(self, obj: Any, attr: str,
                  accessor: Callable[[Any, str, Any], Any] | None = None,
                  default: Any = missing) -> Any:
        """The nested object, built from the whole of ``obj``."""
        return self.source(obj)


# -- tenants and sites -----------------------------------------------------------------

class TenantCreateSchema(StrictSchema):
    """POST /v1/tenants."""

    name = name_field(required=True, metadata={"example": "Acme Dental"})


class TenantSchema(Schema):
    """A tenant."""

    id = WholeInteger(required=True)
    name = fields.String(required=True)
    created_at = fields.DateTime(required=True)


class TenantCreatedSchema(TenantSchema):
    """POST /v1/tenants: the tenant, and its callback secret (shown in this answer only)."""

    callback_secret = fields.String(required=True, metadata={
        "description": "the key this tenant's job callbacks are signed with "
                       "(X-Relayfleet-Signature); shown only now"})


class CallbackSecretSchema(Schema):
    """POST /v1/tenants/{id}/callback-secret: the tenant's new key, shown only now."""

    tenant_id = WholeInteger(required=True)
    callback_secret = fields.String(required=True)


class TenantPageSchema(PageSchema):
    """GET /v1/tenants."""

    items = fields.List(fields.Nested(TenantSchema), required=True)


class SiteCreateSchema(StrictSchema):
    """POST /v1/sites."""

    tenant_id = _id(required=True, strict=True)
    name = name_field(required=True, metadata={"example": "Leeds office"})


class SiteUpdateSchema(StrictSchema):
    """PATCH /v1/sites/{id}."""

    name = name_field(required=True)


class SiteSchema(Schema):
    """A site."""

    id = WholeInteger(required=True)
    tenant_id = WholeInteger(required=True)
    name = fields.String(required=True)
    created_at = fields.DateTime(required=True)


class SiteQuerySchema(PageQuerySchema):
    """GET /v1/sites filters."""

    tenant_id = _id()


class SitePageSchema(PageSchema):
    """GET /v1/sites."""

    items = fields.List(fields.Nested(SiteSchema), required=True)


# -- hosts -----------------------------------------------------------------------------

def host_address(value: str) -> None:
    """A host's address (a name or an IP address), as hosts and the SSH key scan take it."""
    try:
        rules.validate_hostname(value, "address")
    except rf_errors.ValidationError as exc:
        raise ValidationError(exc.errors["address"]) from None


def _check_egress(url: str) -> None:
    """Refuse a URL the egress policy refuses without a lookup (an IP literal, localhost);
    names are checked again, resolved, each time they are used."""
    policy = (current_app.config["RELAYFLEET_SETTINGS"].egress_policy
              if has_app_context() else EgressPolicy())
    why = policy.check_literal(url)
    if why is not None:
        raise ValidationError(f"refused by egress policy ({why} address)")


def check_http_url(value: str, max_len: int) -> None:
    """An http(s) URL the controller may POST to (a job's or hook's callback, an alert
    channel): a host, no user or password, a port from 1 to 65535, at most ``max_len``
    characters, not refused by the egress policy; marshmallow's ValidationError otherwise."""
    problem = len(value) > max_len
    if not problem:
        try:
            parts = urlsplit(value)
            problem = (parts.scheme not in ("http", "https") or not parts.hostname
                       or bool(parts.username) or parts.password is not None
                       or parts.port == 0)
        except ValueError:  # a bad IPv6 literal, a port out of range or not a number
            problem = True
    if problem:
        raise ValidationError(f"must be an http(s) URL without user or password, with a "
                              f"valid port (at most {max_len} characters)")
    _check_egress(value)


class AgentAccessSchema(StrictSchema):
    """How to reach the host's agent; ``token`` is write-only."""

    url = fields.String(required=True, metadata={"example": "https://10.0.0.5:8587"})
    token = fields.String(load_only=True, validate=validate.Length(16, 512))
    ca_cert = fields.String(allow_none=True, validate=validate.Length(max=20000), metadata={
        "description": "PEM CA certificate the agent's TLS certificate must chain to"})
    tls_fingerprint = fields.String(allow_none=True, metadata={
        "description": "SHA-256 fingerprint of the agent's certificate (what `relayfleet-agent "
                       "check` prints): pins it, like an SSH host key; a different "
                       "certificate is refused before anything is sent"})
    insecure_http = fields.Boolean(metadata={
        "description": "allow a plain http:// URL: the token and SMTP AUTH passwords then "
                       "cross the network in clear (a lab, a loopback agent)"})
    has_token = fields.Boolean(dump_only=True)

    @validates("url")
    def _url(self, value: str, **_: Any) -> None:
        parts = urlsplit(value)
        if (parts.scheme not in ("http", "https") or not parts.hostname or parts.username
                or parts.password or parts.query or parts.fragment
                or parts.path not in ("", "/") or len(value) > 500):
            raise ValidationError("must be http(s)://HOST[:PORT] with no user, path or query")
        try:
            _port = parts.port
        except ValueError:
            raise ValidationError("the port must be a number from 1 to 65535") from None
        _check_egress(value)

    @validates("tls_fingerprint")
    def _fingerprint(self, value: str | None, **_: Any) -> None:
        if value is not None:
            try:
                normalise_fingerprint(value)
            except ValueError as exc:
                raise ValidationError(str(exc)) from None

    @validates("ca_cert")
    def _ca(self, value: str | None, **_: Any) -> None:
        if value is not None and "-----BEGIN CERTIFICATE-----" not in value:
            raise ValidationError("must be a PEM certificate")


#: bcrypt rounds an encrypted OpenSSH key may ask for (ssh-keygen's default is 16; each
#: round costs tens of milliseconds, and the key is opened while the request waits)
MAX_KEY_KDF_ROUNDS = 64


def _bcrypt_rounds(text: str) -> int | None:
    """The bcrypt rounds an OpenSSH-format private key's passphrase asks for, read from
    its header without decrypting (``None``: not that format, or not encrypted)."""
    import base64
    import binascii
    import struct

    begin, end = "-----BEGIN OPENSSH PRIVATE KEY-----", "-----END OPENSSH PRIVATE KEY-----"
    if begin not in text or end not in text:
        return None
    body = text.split(begin, 1)[1].split(end, 1)[0]
    try:
        blob = base64.b64decode("".join(body.split()), validate=True)
        magic = b"openssh-key-v1\x00"
        if not blob.startswith(magic):
            return None
        offset, strings = len(magic), []
        for _ in range(3):  # cipher name, KDF name, KDF options
            (length,) = struct.unpack_from(">I", blob, offset)
            strings.append(blob[offset + 4:offset + 4 + length])
            offset += 4 + length
        if strings[1] != b"bcrypt":
            return None
        (salt_length,) = struct.unpack_from(">I", strings[2], 0)
        (rounds,) = struct.unpack_from(">I", strings[2], 4 + salt_length)
    except (binascii.Error, struct.error, ValueError):
        return None  # not readable here: paramiko refuses it with its own reason
    return int(rounds)


def _check_host_key(value: str) -> None:
    """Refuse a host key line paramiko cannot read (``TYPE BASE64 [comment]``)."""
    from shared.ssh import parse_public_key

    try:
        parse_public_key(value)
    except rf_errors.RelayfleetError as exc:
        raise ValidationError(exc.message) from None


class SshAccessSchema(StrictSchema):
    """How to log in over SSH; ``private_key``, ``passphrase`` and ``password`` are
    write-only. ``host_key`` pins the host's key (``ssh-ed25519 AAAA...``)."""

    port = WholeInteger(load_default=22, validate=validate.Range(1, 65535))
    username = fields.String(required=True, validate=FullRegexp(
        r"^[a-z_][a-z0-9_.-]{0,31}$", error="must be a POSIX user name"))
    private_key = fields.String(load_only=True, validate=validate.Length(max=20000))
    passphrase = fields.String(load_only=True, validate=validate.Length(max=1024))
    password = fields.String(load_only=True, validate=validate.Length(1, 1024))
    host_key = fields.String(required=True, validate=validate.Length(max=20000))
    sudo = fields.Boolean(load_default=False)
    auth = fields.String(dump_only=True, metadata={"description": "key or password"})

    @validates("host_key")
    def _host_key(self, value: str, **_: Any) -> None:
        _check_host_key(value)

    @validates_schema
    def _one_way_in(self, data: dict[str, Any], partial: Any = None, **_: Any) -> None:
        if partial:
            return
        if bool(data.get("private_key")) == bool(data.get("password")):
            raise ValidationError("give exactly one of private_key or password", "private_key")
        if data.get("private_key"):
            from shared.ssh import load_private_key

            rounds = _bcrypt_rounds(data["private_key"])
            if rounds is not None and rounds > MAX_KEY_KDF_ROUNDS:
                raise ValidationError(
                    f"the key's passphrase is stretched with {rounds} bcrypt rounds; at most "
                    f"{MAX_KEY_KDF_ROUNDS} are accepted (ssh-keygen -p -a 16 re-encrypts it)",
                    "private_key")
            try:
                load_private_key(data["private_key"], data.get("passphrase"))
            except rf_errors.RelayfleetError as exc:
                raise ValidationError(exc.message, "private_key") from None


class MtaSchema(StrictSchema):
    """Which MTA the host runs and where its files are (SPEC §2 profile keys), as
    configured; what the host was found running is ``last.mta_kind``."""

    kind = fields.String(load_default="sendmail", validate=validate.OneOf(MTA_KINDS), metadata={
        "description": "the host's MTA. auto: detected at first contact (the running one, "
                       "else the only one configured); over SSH the kind found is remembered "
                       "(last.mta_kind) and reused until the host's mta, transport or "
                       "address changes; an agent host runs what its agent.toml says"})
    flavour = fields.String(load_default="debian", validate=validate.OneOf(FLAVOURS))
    overrides = fields.Dict(keys=fields.String(), load_default=dict, metadata={
        "description": "profile keys of the kind (sendmail: mail_dir, mc, cf, restart, ...; "
                       "postfix: config_dir, main_cf, sasl_passwd, reload, ...); auto takes "
                       "both kinds' keys and each kind reads its own"})

    @validates_schema
    def _profile(self, data: dict[str, Any], **_: Any) -> None:
        try:
            check_settings(data.get("kind", "sendmail"), data.get("flavour", "debian"),
                           data.get("overrides") or {})
        except rf_errors.RelayfleetError as exc:
            raise ValidationError(exc.message, "overrides") from None


class CauseCountSchema(Schema):
    """One named cause on a host: how many messages show it and one of their texts."""

    cause = fields.String(required=True)
    count = WholeInteger(required=True)
    sample = fields.String(required=True)


class HostLastSchema(Schema):
    """What the controller last learnt about the host."""

    # dumped from the Host row itself, whose columns say ``last_*``
    seen_at = fields.DateTime(allow_none=True, attribute="last_seen_at")
    reachable = fields.Boolean(allow_none=True, attribute="last_reachable")
    error = fields.String(allow_none=True, attribute="last_error")
    job_id = WholeInteger(allow_none=True, attribute="last_job_id")
    queue_count = WholeInteger(allow_none=True)
    queue_oldest_age_s = WholeInteger(allow_none=True, metadata={
        "description": "how long the oldest queued message has waited (seconds)"})
    causes = fields.List(fields.Nested(CauseCountSchema), allow_none=True, metadata={
        "description": "why mail waits or bounces, as named causes (GET /v1/doctor): "
                       "[{cause, count, sample}]; [] none; null never looked at"})
    unreachable_streak = WholeInteger(allow_none=True, metadata={
        "description": "jobs in a row that could not reach the host (0: the last one did)"})
    smarthost = fields.Dict(allow_none=True)
    config_in_sync = fields.Boolean(allow_none=True)
    mta_running = fields.Boolean(allow_none=True)
    mta_kind = fields.String(
        allow_none=True, attribute="mta_detected_kind",
        validate=validate.OneOf(PROFILE_KINDS), metadata={
            "description": "the MTA the host was last found running: reported by its agent "
                           "(GET /v1/status mta.kind), or detected over SSH for mta.kind "
                           "auto; null until a job has told"})


class HostCreateSchema(StrictSchema):
    """POST /v1/hosts: give ``agent`` for the agent transport, ``ssh`` for SSH."""

    name = fields.String(required=True, validate=FullRegexp(
        HOST_NAME_RE, error="1-253 letters, digits, '.', '_' or '-'"),
        metadata={"example": "pbx01.acme.example"})
    site_id = _id(required=True, strict=True)
    address = fields.String(required=True, validate=host_address,
                            metadata={"example": "10.0.0.5"})
    transport = fields.String(required=True, validate=validate.OneOf(TRANSPORTS))
    agent = fields.Nested(AgentAccessSchema, allow_none=True)
    ssh = fields.Nested(SshAccessSchema, allow_none=True)
    mta = fields.Nested(MtaSchema, load_default=lambda: {"kind": "sendmail",
                                                         "flavour": "debian",
                                                         "overrides": {}})
    tags = fields.List(fields.String(validate=FullRegexp(
        TAG_RE, error="1-64 letters, digits or '_.:=-'")), load_default=list,
        validate=validate.Length(max=50))

    @validates_schema
    def _transport_access(self, data: dict[str, Any], partial: Any = None, **_: Any) -> None:
        transport = data.get("transport")
        if partial and transport is None:
            return
        if transport == "agent":
            agent = data.get("agent")
            if not agent:
                raise ValidationError("required for the agent transport", "agent")
            if not partial and not agent.get("token"):
                raise ValidationError("the agent's bearer token is required", "agent.token")
        if transport == "ssh" and not data.get("ssh"):
            raise ValidationError("required for the ssh transport", "ssh")


class HostUpdateSchema(HostCreateSchema):
    """PATCH /v1/hosts/{id}: any subset of the create fields. A nested ``agent``, ``ssh`` or
    ``mta`` object is checked whole and replaces the stored one (``ssh`` needs its key or
    password again; ``agent`` keeps its stored token unless the URL changes)."""

    @validates_schema
    def _something(self, data: dict[str, Any], **_: Any) -> None:
        if not data:
            raise ValidationError("give at least one field to change", "_schema")


#: the top-level host fields a PATCH may leave out (nested objects are never partial)
HOST_FIELDS = ("name", "site_id", "address", "transport", "agent", "ssh", "mta", "tags")


def _agent_access(host: Host) -> dict[str, Any] | None:
    """The host's agent settings; the token only as whether one is stored."""
    if not host.agent_url:
        return None
    access: dict[str, Any] = {"url": host.agent_url, "ca_cert": host.agent_ca_cert,
                              "has_token": host.agent_token_sealed is not None}
    # Shown when set only: most hosts have neither, and the answer stays as it was.
    if host.agent_tls_fingerprint:
        access["tls_fingerprint"] = host.agent_tls_fingerprint
    if host.agent_insecure_http:
        access["insecure_http"] = True
    return access


def _ssh_access(host: Host) -> dict[str, Any] | None:
    """The host's SSH settings; the key or password only as which of them is stored."""
    if not host.ssh_username:
        return None
    return {"port": host.ssh_port, "username": host.ssh_username,
            "host_key": host.ssh_host_key, "sudo": host.ssh_sudo,
            "auth": "password" if host.ssh_password_sealed else "key"}


def _mta(host: Host) -> dict[str, Any]:
    """The host's MTA profile keys."""
    return {"kind": host.mta_kind, "flavour": host.mta_flavour,
            "overrides": host.mta_overrides}


def _itself(host: Host) -> Host:
    """The host (for nested schemas that read its columns directly)."""
    return host


class HostSchema(Schema):
    """A host as the API shows it (dumped from a Host row): never a secret."""

    id = WholeInteger(required=True)
    name = fields.String(required=True)
    tenant_id = WholeInteger(required=True)
    site_id = WholeInteger(required=True)
    address = fields.String(required=True)
    transport = fields.String(required=True)
    # The nested schemas are also the request schemas, whose field names are not the
    # row's column names: their objects are built from the row (secrets never are).
    agent = NestedFrom(AgentAccessSchema, _agent_access, allow_none=True)
    ssh = NestedFrom(SshAccessSchema, _ssh_access, allow_none=True)
    mta = NestedFrom(MtaSchema, _mta, required=True)
    tags = fields.List(fields.String(), required=True)
    created_at = fields.DateTime(required=True)
    last = NestedFrom(HostLastSchema, _itself, required=True)


class HostQuerySchema(PageQuerySchema):
    """GET /v1/hosts filters."""

    tenant_id = _id()
    site_id = _id()
    tag = fields.String(validate=FullRegexp(TAG_RE))
    transport = fields.String(validate=validate.OneOf(TRANSPORTS))
    name = fields.String(validate=validate.Length(1, 253),
                         metadata={"description": "names containing this text"})


class HostPageSchema(PageSchema):
    """GET /v1/hosts."""

    items = fields.List(fields.Nested(HostSchema), required=True)


class HostKeyScanSchema(StrictSchema):
    """POST /v1/ssh/host-key-scan: where to ask for an SSH host key."""

    # No example: API fuzzers send examples as they are, and this route dials them.
    address = fields.String(required=True, validate=host_address, metadata={
        "description": "as a host's address: a name or an IP address"})
    port = WholeInteger(load_default=22, strict=True, validate=validate.Range(1, 65535))


class HostKeyScanResultSchema(Schema):
    """The key a host's sshd offered, to confirm (by its fingerprint) and pin."""

    address = fields.String(required=True)
    port = WholeInteger(required=True)
    host_key = fields.String(required=True, metadata={
        "example": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA...",
        "description": "one line, as ssh.host_key accepts it"})
    fingerprint = fields.String(required=True, metadata={
        "example": "SHA256:2l6rUuBq...", "description": "what ssh-keygen -lf prints"})


class HostKeyPinSchema(StrictSchema):
    """PUT /v1/hosts/{id}/ssh/host-key: the SSH host key to pin from now on."""

    host_key = fields.String(required=True, validate=validate.Length(max=20000), metadata={
        "example": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA..."})

    @validates("host_key")
    def _host_key(self, value: str, **_: Any) -> None:
        _check_host_key(value)


class HostImportSchema(StrictSchema):
    """POST /v1/hosts/import: all rows are created, or none; every problem of every row is
    named at once (``hosts.3.address``)."""

    # Rows are checked one by one in the service (with the inventory at hand), so that
    # grammar errors and inventory errors (unknown site, duplicate name) come back together.
    hosts = fields.List(fields.Dict(), required=True, validate=validate.Length(1, MAX_IMPORT),
                        metadata={"description": "objects shaped as for POST /v1/hosts"})


def load_import_rows(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any] | None],
                                                           dict[str, list[str]]]:
    """Validate each import row; return the loaded rows (``None`` where invalid) and the
    errors keyed ``hosts.N.field``."""
    loaded: list[dict[str, Any] | None] = []
    errors: dict[str, list[str]] = {}
    schema = HostCreateSchema()
    for index, row in enumerate(rows):
        try:
            loaded.append(schema.load(row))
        except ValidationError as exc:
            loaded.append(None)
            _flatten_into(errors, exc.messages, f"hosts.{index}.")
    return loaded, errors


def _flatten_into(out: dict[str, list[str]], messages: Any, prefix: str) -> None:
    if isinstance(messages, dict):
        for key, value in messages.items():
            _flatten_into(out, value, f"{prefix}{key}.")
    else:
        out.setdefault(prefix.rstrip("."), []).extend(str(m) for m in messages)


class HostImportResultSchema(Schema):
    """What an import created."""

    created = WholeInteger(required=True)
    items = fields.List(fields.Nested(HostSchema), required=True)


# -- tokens ----------------------------------------------------------------------------

class TokenCreateSchema(StrictSchema):
    """POST /v1/tokens."""

    name = name_field(required=True)
    role = fields.String(required=True, validate=validate.OneOf(ROLES))
    tenant_id = _id(load_default=None, allow_none=True, strict=True)


class TokenSchema(Schema):
    """A token; ``token`` (the secret) is only in the answer to its creation."""

    id = WholeInteger(required=True)
    name = fields.String(required=True)
    role = fields.String(required=True)
    tenant_id = WholeInteger(allow_none=True, required=True)
    created_at = fields.DateTime(required=True)
    last_used_at = fields.DateTime(allow_none=True)
    revoked_at = fields.DateTime(allow_none=True)
    token = fields.String(metadata={"description": "shown once, when the token is made"})


class TokenPageSchema(PageSchema):
    """GET /v1/tokens."""

    items = fields.List(fields.Nested(TokenSchema), required=True)


class WhoamiSchema(Schema):
    """GET /v1/whoami: the calling token, its tenant, and the controller's version."""

    token_id = WholeInteger(required=True)
    name = fields.String(required=True)
    role = fields.String(required=True, validate=validate.OneOf(ROLES))
    tenant_id = WholeInteger(allow_none=True, required=True, metadata={
        "description": "null: an MSP-wide token"})
    tenant = fields.String(allow_none=True, required=True, metadata={
        "description": "the tenant's name (null: an MSP-wide token)"})
    version = fields.String(required=True, metadata={"description": "the controller's version"})


# -- jobs ------------------------------------------------------------------------------

_REF = fields.Raw(metadata={"description": "an id (integer) or a name (string)"})


class TargetSchema(StrictSchema):
    """Which hosts: exactly one of ``hosts``, ``sites``, ``tenants``, ``tags``, ``all``."""

    hosts = fields.List(_REF, validate=validate.Length(1, MAX_TARGET_ITEMS))
    sites = fields.List(_REF, validate=validate.Length(1, 1000))
    tenants = fields.List(_REF, validate=validate.Length(1, 1000))
    tags = fields.List(fields.String(validate=FullRegexp(TAG_RE)),
                       validate=validate.Length(1, 100))
    all = fields.Boolean(validate=validate.Equal(True, error="all must be true when given"))

    @validates_schema
    def _exactly_one(self, data: dict[str, Any], **_: Any) -> None:
        if len(data) != 1:
            raise ValidationError("give exactly one of hosts, sites, tenants, tags, all",
                                  "target")
        # Hosts are named like DNS names; tenants and sites like people name them
        # ("Acme Dental"): each kind's references follow its own names' grammar.
        for key, pattern in (("hosts", HOST_NAME_RE), ("sites", NAME_RE),
                             ("tenants", NAME_RE)):
            for ref in data.get(key, []):
                if isinstance(ref, bool) or not isinstance(ref, int | str) or (
                        isinstance(ref, str) and not re.fullmatch(pattern, ref)) or (
                        isinstance(ref, int) and not 1 <= ref <= MAX_ID):
                    raise ValidationError("each item must be an id or a name", key)


#: each host's time box when a job gives none (an action may ask more: min_timeout_s)
DEFAULT_TIMEOUT_S = 120


#: the actions a job may roll out in waves (those that change hosts, and flush_queue)
ROLLOUT_ACTIONS = ("set_smarthost", "remove_smarthost", "fix_hostname", "flush_queue")
#: the rollout actions whose canary must prove delivery (params.verify)
VERIFIED_CANARY_ACTIONS = ("set_smarthost", "flush_queue")
#: what a host's time box must hold besides a delivery probe's wait: the change's reads and
#: build, its activation (a restart or reload, then up to 10 s waiting for the daemon), the
#: probe's clean-up (10 s at most) and, when the probe fails, the rollback (files back, a
#: rebuild, a second restart and its 10 s wait), over SSH round trips. A sendmail restart
#: takes a few seconds, so 60 s covers a normal change and its rollback with room to
#: spare (not a restart that hangs to the profile's command_timeout_s: the box cuts it).
#: The default probe wait (60 s) leaves the default 120 s box exactly this margin.
PROBE_MARGIN_S = 60
_CANARY_PERCENT = re.compile(r"([1-9][0-9]?|100)%")
MAX_WAVE = 10**6


_CANARY_INVALID = ("must be a number of hosts (1 or more) or a percentage such as \"10%\" "
                   "(1% to 100%)")


class Canary(fields.Field[Any]):
    """``options.canary``: a number of hosts (1 or more) or a share of them (``"10%"``)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_WAVE:
            return value
        if isinstance(value, str):
            if value.isdigit() and 1 <= int(value) <= MAX_WAVE:
                return int(value)
            if _CANARY_PERCENT.fullmatch(value):
                return value
        raise ValidationError(_CANARY_INVALID)


class OptionsSchema(StrictSchema):
    """How to run a job."""

    concurrency = WholeInteger(load_default=20, strict=True, validate=validate.Range(1, 1000),
                                 metadata={"description": "hosts worked on at once"})
    max_failures = WholeInteger(load_default=None, allow_none=True, strict=True,
                                  validate=validate.Range(0, 10**6), metadata={
        "description": "start no new host once more hosts than this failed"})
    dry_run = fields.Boolean(load_default=False, metadata={
        "description": "set/remove_smarthost: report the diff, change nothing"})
    # (None when not given: the job fills in its action's default, see JobCreateSchema)
    timeout_s = WholeInteger(load_default=None, allow_none=False, strict=True,
                             validate=validate.Range(5, 3600), metadata={
        "description": f"time box for each host (default {DEFAULT_TIMEOUT_S} s; "
                       f"install_agent: at least and by default {INSTALL_MIN_TIMEOUT_S} s)"})
    canary = Canary(load_default=None, allow_none=True, metadata={
        "description": "roll out in waves, starting with this many hosts (N, or \"P%\" of "
                       "them, at least one): the next wave starts only when every host of "
                       "the earlier ones succeeded; on a failure the rest are skipped. For "
                       f"{', '.join(ROLLOUT_ACTIONS)}; set_smarthost and flush_queue need "
                       "params.verify; not with max_failures", "example": "10%",
        "oneOf": [{"type": "integer", "minimum": 1}, {"type": "string",
                                                       "pattern": "^([1-9][0-9]?|100)%$"}]})
    wave_size = WholeInteger(load_default=None, allow_none=True, strict=True,
                             validate=validate.Range(1, MAX_WAVE), metadata={
        "description": "hosts per wave after the canary (default: all the rest in one "
                       "wave; without canary the first wave is the canary, so set_smarthost "
                       "and flush_queue need params.verify; not with max_failures)"})


#: the options of a job sent without any, loaded once (every value is a scalar: a shallow
#: copy per request is a fresh document, for a fraction of a load's CPU)
_DEFAULT_OPTIONS: dict[str, Any] = OptionsSchema().load({})


class JobCreateSchema(StrictSchema):
    """POST /v1/jobs (send an Idempotency-Key header)."""

    action = fields.String(required=True, validate=validate.OneOf(JOB_ACTIONS))
    target = fields.Nested(TargetSchema, required=True)
    params = fields.Dict(keys=fields.String(), load_default=dict,
                         metadata={"description": params_summary()})
    options = fields.Nested(OptionsSchema, load_default=lambda: dict(_DEFAULT_OPTIONS))

    @validates_schema
    def _time_box(self, data: dict[str, Any], **_: Any) -> None:
        action, options = data.get("action"), data.get("options") or {}
        least = min_timeout_s(action) if action in JOB_ACTIONS else None
        given = options.get("timeout_s")
        if least is not None and given is not None and given < least:
            raise ValidationError(
                f"{action} needs at least {least} s per host: install.sh builds a "
                "virtualenv and may wait for two health checks before it rolls back, and a "
                "box cut shorter leaves the host half installed", "options.timeout_s")

    @validates_schema
    def _probe_time(self, data: dict[str, Any], **_: Any) -> None:
        action, options = data.get("action"), data.get("options") or {}
        verify = (data.get("params") or {}).get("verify")
        if action not in VERIFIED_CANARY_ACTIONS or not isinstance(verify, dict):
            return
        probe = verify.get("timeout_s", rules.DEFAULT_VERIFY_TIMEOUT_S)
        if isinstance(probe, bool) or not isinstance(probe, int):
            return  # the params' own checks say what is wrong with it
        box = options.get("timeout_s") or DEFAULT_TIMEOUT_S
        if box < probe + PROBE_MARGIN_S:
            raise ValidationError(
                f"{box} s per host leaves no room for the {action} and its {probe} s delivery "
                f"probe: give at least {probe + PROBE_MARGIN_S} s, or a shorter "
                "params.verify.timeout_s", "options.timeout_s")

    @validates_schema
    def _rollout(self, data: dict[str, Any], **_: Any) -> None:
        action, options = data.get("action"), data.get("options") or {}
        if options.get("canary") is None and options.get("wave_size") is None:
            return
        field = "options.canary" if options.get("canary") is not None else "options.wave_size"
        if action not in ROLLOUT_ACTIONS:
            raise ValidationError(
                f"waves are for actions that change hosts and for flush_queue "
                f"({', '.join(ROLLOUT_ACTIONS)}), not {action}: leave canary and wave_size "
                "out", field)
        if options.get("max_failures") is not None:
            raise ValidationError(
                "max_failures does not go with canary or wave_size: a rollout in waves "
                "already stops at the first failed host (the hosts not started are "
                "skipped); leave max_failures out", "options.max_failures")
        verify = (data.get("params") or {}).get("verify")
        if action in VERIFIED_CANARY_ACTIONS and not verify:
            # (wave_size alone makes the first wave the canary: it needs the probe too)
            raise ValidationError(
                f"a {action} canary (canary or wave_size) needs params.verify "
                f"({{\"to\": ADDRESS}}): without a delivery probe a canary cannot show "
                "that mail still flows; add verify, or leave canary and wave_size out",
                "params.verify")

    @validates_schema
    def _probe_recipients(self, data: dict[str, Any], **_: Any) -> None:
        verify = (data.get("params") or {}).get("verify")
        if data.get("action") not in VERIFIED_CANARY_ACTIONS or not isinstance(verify, dict):
            return
        allowed = (current_app.config["RELAYFLEET_SETTINGS"].probe_allow
                   if has_app_context() else ())
        if not allowed:
            return
        for key in ("to", "from"):
            address = verify.get(key)
            if not isinstance(address, str) or "@" not in address:
                continue  # absent, or the params' own checks say what is wrong with it
            domain = address.rsplit("@", 1)[1].strip().rstrip(".").lower()
            if not any(domain == name or domain.endswith(f".{name}") for name in allowed):
                raise ValidationError(
                    f"probes may only be addressed within {', '.join(allowed)} on this "
                    f"controller (RELAYFLEET_PROBE_ALLOW): use an address there, or ask its "
                    "administrator to add the domain", f"params.verify.{key}")

    @post_load
    def _default_time_box(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        options = data["options"]
        if options.get("timeout_s") is None:
            options["timeout_s"] = min_timeout_s(data["action"]) or DEFAULT_TIMEOUT_S
        return data
    callback_url = fields.String(load_default=None, allow_none=True, metadata={
        "description": "gets the final job document, signed (X-Relayfleet-Signature)"})

    @validates("callback_url")
    def _callback(self, value: str | None, **_: Any) -> None:
        if value is not None:
            check_http_url(value, 2000)


class CountsSchema(Schema):
    """How many hosts are in each state."""

    total = WholeInteger(required=True)
    pending = WholeInteger(required=True)
    running = WholeInteger(required=True)
    succeeded = WholeInteger(required=True)
    failed = WholeInteger(required=True)
    unreachable = WholeInteger(required=True)
    skipped = WholeInteger(required=True)


class HostResultSchema(Schema):
    """One host's part of a job."""

    host_id = WholeInteger(required=True)
    host = fields.String(required=True, attribute="host_name")
    status = fields.String(required=True, validate=validate.OneOf(_UNIT_STATES))
    error = fields.String(allow_none=True, required=True)
    changed = fields.Boolean(allow_none=True, required=True)
    attempts = WholeInteger(required=True)
    wave = WholeInteger(load_default=0, metadata={
        "description": "the rollout wave (options.canary, wave_size): 0 is the canary; 0 "
                       "for every host of a job without waves"})
    data = fields.Dict(allow_none=True, required=True, metadata={
        "description": "the action's answer, the same over the agent and SSH: the fields of "
                       "its result schema (SetSmarthostResult, FlushQueueResult, ...) other "
                       "than ok, error, error_kind, steps, changed and rolled_back"})
    steps = fields.List(fields.Nested(StepSchema), allow_none=True, required=True)
    started_at = fields.DateTime(allow_none=True, required=True)
    finished_at = fields.DateTime(allow_none=True, required=True)


class JobAcceptedSchema(Schema):
    """202 answer to POST /v1/jobs."""

    id = WholeInteger(required=True)
    status = fields.String(required=True)
    total = WholeInteger(required=True)
    links = fields.Dict(keys=fields.String(), values=fields.String(), required=True)


class JobSchema(Schema):
    """A job, its counts and (on GET /v1/jobs/{id}) every host's result."""

    id = WholeInteger(required=True)
    action = fields.String(required=True)
    status = fields.String(required=True, validate=validate.OneOf(_JOB_STATES))
    tenant_id = WholeInteger(allow_none=True, required=True)
    target = fields.Dict(required=True)
    params = fields.Dict(required=True)
    options = fields.Dict(required=True)
    callback_url = fields.String(allow_none=True, required=True)
    callback_state = fields.String(allow_none=True, required=True)
    retry_of = WholeInteger(allow_none=True, required=True)
    origin = fields.String(required=True, metadata={
        "description": "what started it: api (a token: API, CLI, console), schedule, "
                       "remediate, inbound (a ticketing webhook)"})
    schedule_id = WholeInteger(allow_none=True, required=True)
    inbound_hook_id = WholeInteger(allow_none=True, required=True)
    counts = fields.Nested(CountsSchema, required=True)
    created_at = fields.DateTime(required=True)
    started_at = fields.DateTime(allow_none=True, required=True)
    finished_at = fields.DateTime(allow_none=True, required=True)
    links = fields.Dict(keys=fields.String(), values=fields.String(), required=True)
    results = fields.List(fields.Nested(HostResultSchema))
    results_next = fields.String(allow_none=True, metadata={
        "description": "with results_limit: the URL of the next page of results (null on "
                       "the last page)"})


class JobGetQuerySchema(StrictSchema):
    """GET /v1/jobs/{id} options."""

    results = fields.Boolean(load_default=True, metadata={
        "description": "false: counts and status only (cheap to poll on big jobs)"})
    host_status = fields.String(validate=validate.OneOf(_UNIT_STATES), metadata={
        "description": "only the results of hosts in this state (e.g. failed)"})
    results_limit = fields.Integer(validate=validate.Range(1, 5000), metadata={
        "description": "at most this many results, in target order; results_next gives "
                       "the next page (default: every result at once)"})
    results_after = fields.Integer(validate=validate.Range(0, 2**31 - 1), metadata={
        "description": "the page after this position (from results_next)"})


class JobQuerySchema(PageQuerySchema):
    """GET /v1/jobs filters."""

    status = fields.String(validate=validate.OneOf(_JOB_STATES))
    action = fields.String(validate=validate.OneOf(JOB_ACTIONS))


class JobPageSchema(PageSchema):
    """GET /v1/jobs (without per-host results)."""

    items = fields.List(fields.Nested(JobSchema), required=True)


# -- fleet and audit -------------------------------------------------------------------

class FleetHostSchema(Schema):
    """One host's last known state (dumped from a Host row)."""

    host_id = WholeInteger(required=True, attribute="id")
    name = fields.String(required=True)
    tenant_id = WholeInteger(required=True)
    site_id = WholeInteger(required=True)
    transport = fields.String(required=True)
    mta_kind = fields.String(required=True, validate=validate.OneOf(MTA_KINDS), metadata={
        "description": "the MTA kind as configured (the host's mta.kind: sendmail, postfix "
                       "or auto); the kind found running is last.mta_kind"})
    last = NestedFrom(HostLastSchema, _itself, required=True)
    drift = fields.List(fields.Dict(), allow_none=True, required=True, metadata={
        "description": "how the last known state differs from the host's policy: "
                       "[{field, want, have}]; [] in line; null: no complete policy applies "
                       "or the host was never seen (GET /v1/hosts/{id}/desired)"})
    drifted = fields.Function(policy_drifted, required=True, metadata={
        "type": "boolean", "description": "the host differs from its policy"})


class FleetSummarySchema(Schema):
    """Counts over the caller's whole fleet."""

    hosts = WholeInteger(required=True)
    never_seen = WholeInteger(required=True)
    unreachable = WholeInteger(required=True)
    holding_mail = WholeInteger(required=True)
    queued_messages = WholeInteger(required=True)
    without_smarthost = WholeInteger(required=True)
    out_of_sync = WholeInteger(required=True)


class FleetQuerySchema(HostQuerySchema):
    """GET /v1/fleet filters (those of /v1/hosts, whether only hosts holding mail, whether
    only hosts whose configuration is known to differ from what it should be)."""

    holding_mail = fields.Boolean()
    out_of_sync = fields.Boolean(metadata={
        "description": "true: only hosts whose compiled configuration differs from their "
                       "source (config_in_sync false; never-seen hosts are not counted)"})
    drifted = fields.Boolean(metadata={
        "description": "true: only hosts known to differ from their policy (drift not empty)"})


class FleetSchema(PageSchema):
    """GET /v1/fleet."""

    summary = fields.Nested(FleetSummarySchema, required=True)
    items = fields.List(fields.Nested(FleetHostSchema), required=True)


class AuditEventSchema(Schema):
    """One audited call."""

    id = WholeInteger(required=True)
    at = fields.DateTime(required=True)
    token_id = WholeInteger(allow_none=True, required=True)
    token_name = fields.String(allow_none=True, required=True)
    tenant_id = WholeInteger(allow_none=True, required=True)
    action = fields.String(required=True)
    target = fields.String(allow_none=True, required=True)
    outcome = WholeInteger(required=True, metadata={"description": "HTTP status answered"})
    detail = fields.Dict(allow_none=True, required=True)


class AuditQuerySchema(PageQuerySchema):
    """GET /v1/audit filters."""

    token_id = _id()
    action = fields.String(validate=validate.Length(1, 100))


class AuditPageSchema(PageSchema):
    """GET /v1/audit."""

    items = fields.List(fields.Nested(AuditEventSchema), required=True)
