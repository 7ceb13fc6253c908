"""marshmallow schemas for every agent payload (the controller reads the same shapes).

Request schemas check types and refuse unknown fields; the strict value grammars live in
:mod:`shared.validation` and run as field validators, so the API and the operations
refuse exactly the same values with the same reasons.
"""

from __future__ import annotations

from typing import Any

from marshmallow import (
    RAISE,
    Schema,
    ValidationError,
    fields,
    pre_load,
    validate,
    validates,
    validates_schema,
)

from shared import errors as rf_errors
from shared import validation as rules
from shared.mta import (
    ADDRESS_PART_PATTERN,
    DEFAULT_LOG_LINES,
    MAX_LOG_LINES,
    QUEUE_ID_PATTERN,
    flush_selector_errors,
    hostname_choice_errors,
)
from shared.sendmail.maillog import PROBLEMS


class FullRegexp(validate.Regexp):
    """A pattern the whole value must match (``Regexp`` uses ``re.match``, whose ``$`` also
    matches before a final newline: ``"pbx\\n"`` would pass ``^[a-z]+$``)."""

    def __call__(self, value: Any) -> Any:
        if self.regex.fullmatch(value) is None:
            raise ValidationError(self._format_error(value))
        return value


class WholeInteger(fields.Integer):
    """An integer that refuses fractions (``Integer`` would turn 1.5 into 1)."""

    def _validated(self, value: Any) -> Any:
        if isinstance(value, float) and not value.is_integer():
            raise self.make_error("invalid")
        return super()._validated(value)


def _text_errors(value: Any, path: str = "") -> dict[str, list[str]]:
    """Fields holding text that is not valid Unicode (lone surrogates cannot be stored,
    encrypted or sent anywhere)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return {path or "_schema": ["must be valid UTF-8 text"]}
        return {}
    items = (value.items() if isinstance(value, dict)
             else enumerate(value) if isinstance(value, list) else ())
    errors: dict[str, list[str]] = {}
    for key, item in items:
        errors.update(_text_errors(item, f"{path}.{key}" if path else str(key)))
    return errors


class StrictSchema(Schema):
    """Unknown fields and text that is not valid Unicode are errors."""

    class Meta:
        unknown = RAISE

    @pre_load
    def _valid_text(self, data: Any, **_: Any) -> Any:
        errors = _text_errors(data)
        if errors:
            raise ValidationError(errors)
        return data


def check_grammar(check: Any, value: Any, field: str) -> None:
    """Run one of :mod:`shared.validation`'s grammar checks as a marshmallow validator."""
    try:
        check(value, field)
    except rf_errors.ValidationError as exc:
        raise ValidationError(exc.errors.get(field, [exc.message])) from None


class AuthSchema(StrictSchema):
    """SMTP AUTH credentials for the smarthost (the password is write-only)."""

    username = fields.String(required=True, metadata={"example": "pbx-relay@example.com"})
    password = fields.String(required=True, load_only=True)

    @validates("username")
    def _username(self, value: str, **_: Any) -> None:
        check_grammar(rules.validate_username, value, "username")

    @validates("password")
    def _password(self, value: str, **_: Any) -> None:
        check_grammar(rules.validate_password, value, "password")


class TlsSchema(StrictSchema):
    """TLS towards the smarthost."""

    # None: resolved with the request (may, or encrypt with auth), as the parser does
    mode = fields.String(load_default=None, allow_none=True,
                         validate=validate.OneOf(rules.TLS_MODES), metadata={
        "description": "may: STARTTLS when offered; encrypt: mail waits unless STARTTLS; "
                       "verify: STARTTLS with a certificate that verifies and names the relay. "
                       "Without mode: may, or encrypt when auth is given (may with auth is "
                       "refused)"})
    ca_file = fields.String(load_default=None, allow_none=True, metadata={
        "description": "CA bundle on the host to verify the relay with (default: the "
                       "host's bundle)", "example": "/etc/ssl/certs/ca-certificates.crt"})

    @validates("ca_file")
    def _ca_file(self, value: str | None, **_: Any) -> None:
        if value is not None:
            check_grammar(rules.validate_ca_file, value, "ca_file")


class MasqueradeSchema(StrictSchema):
    """Rewrite the host's own sender addresses to a customer domain."""

    domain = fields.String(required=True, metadata={"example": "ourtest.com"})
    envelope = fields.Boolean(load_default=True, metadata={
        "description": "rewrite the envelope sender too (relays check it), not only headers"})

    @validates("domain")
    def _domain(self, value: str, **_: Any) -> None:
        check_grammar(rules.validate_domain, value, "domain")


class VerifySchema(StrictSchema):
    """Probe delivery after the change or flush: a message to ``to`` through the host's
    own MTA, followed in its maillog until the relay accepts or refuses it."""

    to = fields.String(required=True, metadata={
        "description": "where the probe goes (a mailbox that accepts it)",
        "example": "probe@ourtest.com"})
    from_ = fields.String(load_default=None, allow_none=True, data_key="from",
                          attribute="from", metadata={
        "description": "the probe's sender (default: a local sender of the host, qualified "
                       "and masqueraded as the PBX's mail is)", "example": "pbx1@ourtest.com"})
    timeout_s = WholeInteger(load_default=rules.DEFAULT_VERIFY_TIMEOUT_S, strict=True, metadata={
        "description": "how long to wait for the relay's verdict (seconds)",
        "minimum": rules.VERIFY_TIMEOUT_RANGE[0], "maximum": rules.VERIFY_TIMEOUT_RANGE[1]})

    @validates("timeout_s")
    def _timeout(self, value: int, **_: Any) -> None:
        check_grammar(rules.validate_verify_timeout, value, "timeout_s")

    @validates("to")
    def _to(self, value: str, **_: Any) -> None:
        check_grammar(rules.validate_address, value, "to")

    @validates("from_")
    def _from(self, value: str | None, **_: Any) -> None:
        if value is not None:
            check_grammar(rules.validate_address, value, "from")


class SmarthostRequestSchema(StrictSchema):
    """PUT /v1/smarthost."""

    host = fields.String(required=True, validate=FullRegexp(
        r"^(\[[0-9A-Za-z:.]{2,60}\]|[0-9A-Za-z:.-]{1,253})$"), metadata={
        "description": "RFC 1123 host name, or an address literal like [192.0.2.1]",
        "example": "smtp-relay.gmail.com"})
    port = WholeInteger(load_default=None, allow_none=True, strict=True,
                          validate=validate.Range(1, 65535),
                          metadata={"description": "port; 25 (or none) is the default"})
    mx = fields.Boolean(load_default=False, metadata={
        "description": "look up MX records for host (false: [host], connect to it directly)"})
    mailer = fields.String(load_default="relay", validate=validate.OneOf(rules.MAILERS))
    auth = fields.Nested(AuthSchema, load_default=None, allow_none=True)
    tls = fields.Nested(TlsSchema, load_default=None, allow_none=True)
    masquerade = fields.Nested(MasqueradeSchema, load_default=None, allow_none=True)
    verify = fields.Nested(VerifySchema, load_default=None, allow_none=True, metadata={
        "description": "after the change, send a probe and wait for the relay's verdict; "
                       "a probe not delivered rolls the change back (never on a dry run)"})
    dry_run = fields.Boolean(load_default=False)

    @validates("host")
    def _host(self, value: str, **_: Any) -> None:
        check_grammar(rules.validate_hostname, value, "host")

    @validates_schema
    def _no_clear_credentials(self, data: dict[str, Any], **_: Any) -> None:
        with_auth = data.get("auth") is not None
        mode = (data.get("tls") or {}).get("mode") or rules.default_tls_mode(with_auth)
        if with_auth and mode == "may":
            raise ValidationError({"tls": {"mode": [rules.AUTH_NEEDS_TLS]}})


class HostnameRequestSchema(StrictSchema):
    """POST /v1/hostname: exactly one of fqdn or domain."""

    fqdn = fields.String(load_default=None, allow_none=True, metadata={
        "description": "the host's fully qualified name; its first label must be the host's "
                       "current short name", "example": "pbx1.ourtest.com"})
    domain = fields.String(load_default=None, allow_none=True, metadata={
        "description": "qualify the host's current short name with this domain",
        "example": "ourtest.com"})
    dry_run = fields.Boolean(load_default=False)

    @validates("fqdn")
    def _fqdn(self, value: str | None, **_: Any) -> None:
        if value is not None:
            check_grammar(rules.validate_fqdn, value, "fqdn")

    @validates("domain")
    def _domain(self, value: str | None, **_: Any) -> None:
        if value is not None:
            check_grammar(rules.validate_domain, value, "domain")

    @validates_schema
    def _exactly_one(self, data: dict[str, Any], **_: Any) -> None:
        errors = hostname_choice_errors(data)
        if errors:
            raise ValidationError(errors)


class DryRunSchema(StrictSchema):
    """DELETE /v1/smarthost (the body is optional)."""

    dry_run = fields.Boolean(load_default=False)


class FlushRequestSchema(StrictSchema):
    """POST /v1/queue/flush: at most one of queue_id, recipient, sender."""

    reset_host_status = fields.Boolean(load_default=True)
    queue_id = fields.String(load_default=None, allow_none=True,
                             validate=FullRegexp(QUEUE_ID_PATTERN))
    recipient = fields.String(load_default=None, allow_none=True,
                              validate=FullRegexp(ADDRESS_PART_PATTERN))
    sender = fields.String(load_default=None, allow_none=True,
                           validate=FullRegexp(ADDRESS_PART_PATTERN))
    verify = fields.Nested(VerifySchema, load_default=None, allow_none=True, metadata={
        "description": "after the run, send a probe and wait for the relay's verdict"})

    @validates_schema
    def _one_selector(self, data: dict[str, Any], **_: Any) -> None:
        errors = flush_selector_errors(data)
        if errors:
            raise ValidationError(errors)


class LogQuerySchema(StrictSchema):
    """GET /v1/log query."""

    lines = WholeInteger(load_default=DEFAULT_LOG_LINES,
                           validate=validate.Range(1, MAX_LOG_LINES))


class DiagnoseRequestSchema(StrictSchema):
    """POST /v1/diagnose."""

    domain = fields.String(load_default=None, allow_none=True,
                           metadata={"description": "check this domain's SPF record"})
    public_ip = fields.String(load_default=None, allow_none=True,
                              metadata={"description": "the host's public address for SPF"})

    @validates("domain")
    def _domain(self, value: str | None, **_: Any) -> None:
        if value is not None:
            check_grammar(rules.validate_domain, value, "domain")

    @validates("public_ip")
    def _ip(self, value: str | None, **_: Any) -> None:
        if value is not None:
            check_grammar(rules.validate_ip_address, value, "public_ip")


#: an agent bundle's version: a PEP 440 public version in its normalized form (0.2.0,
#: 1.0rc1, 0.2.0.post1, 0.3.0.dev2), as bundles are named; it names files on hosts, so
#: nothing else passes
AGENT_VERSION_PATTERN = (r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*((a|b|rc)(0|[1-9][0-9]*))?"
                         r"(\.post(0|[1-9][0-9]*))?(\.dev(0|[1-9][0-9]*))?")
#: the port an agent listens on unless a job says otherwise
DEFAULT_AGENT_PORT = 8587


class InstallAgentRequestSchema(StrictSchema):
    """install_agent: which bundle, which port, and whether to replace the agent's token."""

    version = fields.String(load_default=None, allow_none=True,
                            validate=[validate.Length(max=64),
                                      FullRegexp(AGENT_VERSION_PATTERN,
                                                 error="must be a version like 0.2.0")],
                            metadata={"description": "the bundle's version (default: the "
                                                     "newest in the controller's bundle "
                                                     "directory)"})
    port = WholeInteger(load_default=DEFAULT_AGENT_PORT, validate=validate.Range(1, 65535),
                        metadata={"description": "the port the agent listens on"})
    rotate_token = fields.Boolean(load_default=False, metadata={
        "description": "replace the token of an agent already installed"})


def flatten_errors(messages: Any, prefix: str = "") -> dict[str, list[str]]:
    """marshmallow's nested error messages as ``{"auth.password": [reasons]}``."""
    out: dict[str, list[str]] = {}
    items = messages.items() if isinstance(messages, dict) else [("_schema", messages)]
    for key, value in items:
        if isinstance(value, dict):
            out.update(flatten_errors(value, f"{prefix}{key}."))
        else:
            reasons = value if isinstance(value, list) else [value]
            out.setdefault(f"{prefix}{key}", []).extend(str(reason) for reason in reasons)
    return out


# -- answers ---------------------------------------------------------------------------

class StepSchema(Schema):
    """One thing an operation ran or did."""

    name = fields.String(required=True)
    argv = fields.List(fields.String(), required=True)
    exit_code = WholeInteger(allow_none=True, required=True)
    duration_s = fields.Float(required=True)
    ok = fields.Boolean(required=True)
    output = fields.String(required=True)


class SmarthostAuthSchema(Schema):
    """Which user authenticates (never the password)."""

    username = fields.String(required=True)


class SmarthostSchema(Schema):
    """A configured smarthost."""

    host = fields.String(required=True)
    port = WholeInteger(required=True)
    mx = fields.Boolean(required=True)
    mailer = fields.String(required=True)
    auth = fields.Nested(SmarthostAuthSchema, allow_none=True, required=True)
    tls = fields.Nested(TlsSchema, allow_none=True, load_default=None, metadata={
        "description": "the TLS policy towards the smarthost the configuration holds"})
    masquerade = fields.Nested(MasqueradeSchema, allow_none=True, load_default=None, metadata={
        "description": "the domain the host's own sender addresses are rewritten to"})


class OperationSchema(Schema):
    """Common to every operation answer: did it work, and what did it run."""

    ok = fields.Boolean(required=True)
    error = fields.String(allow_none=True, required=True)
    error_kind = fields.String(allow_none=True, required=True)
    steps = fields.List(fields.Nested(StepSchema), required=True)


class SmarthostReadSchema(Schema):
    """GET /v1/smarthost."""

    smarthost = fields.Nested(SmarthostSchema, allow_none=True, required=True)
    config_in_sync = fields.Boolean(required=True)


class DeliveryProbeSchema(Schema):
    """What became of a delivery probe (``verify``)."""

    verified = fields.Boolean(required=True, metadata={
        "description": "the relay the host should use accepted the probe"})
    relay = fields.String(allow_none=True, required=True, metadata={
        "description": "the relay the MTA handed the probe to (null: never tried)"})
    reply = fields.String(allow_none=True, required=True, metadata={
        "description": "the relay's answer, or why there was none"})
    queue_id = fields.String(allow_none=True, required=True)
    message_id = fields.String(required=True)
    waited_s = fields.Float(required=True)


class ChangeResultSchema(OperationSchema):
    """PUT and DELETE /v1/smarthost."""

    changed = fields.Boolean(required=True)
    diff = fields.String(required=True)
    smarthost = fields.Nested(SmarthostSchema, allow_none=True, required=True)
    config_in_sync = fields.Boolean(required=True)
    rolled_back = fields.Boolean(required=True, metadata={
        "description": "a change failed after its swap and every file it had replaced is "
                       "back, byte-identical to the backup (see restored, not_restored)"})
    dry_run = fields.Boolean(required=True)
    backup = fields.String(allow_none=True, required=True, metadata={
        "description": "the backup made before the swap (also when the change then failed)"})
    mta_running = fields.Boolean(allow_none=True, load_default=None, metadata={
        "description": "whether the MTA runs at the end: true after a verified restart, the "
                       "state found after a rollback's restart (retried once); null when the "
                       "change did not restart it or it could not be checked"})
    restored = fields.List(fields.String(), load_default=list, metadata={
        "description": "after a rollback: the files put back byte-identical to the backup "
                       "(or removed, when they did not exist before)"})
    not_restored = fields.List(fields.String(), load_default=list, metadata={
        "description": "after a rollback: the files it could not put back (the error says "
                       "why and what to do); empty when rolled_back is true"})
    delivery = fields.Nested(DeliveryProbeSchema, allow_none=True, load_default=None,
                             metadata={"description": "the delivery probe (verify), if any"})
    delivery_verified = fields.Boolean(allow_none=True, load_default=None, metadata={
        "description": "true: the relay the host should use accepted the probe; absent "
                       "when no probe ran (no verify, a dry run, or a failure before it)"})


class QueuedMessageSchema(Schema):
    """One queued message."""

    id = fields.String(required=True)
    size = WholeInteger(required=True)
    queued_at = fields.String(allow_none=True, required=True)
    sender = fields.String(required=True)
    recipients = fields.List(fields.String(), required=True)
    reason = fields.String(allow_none=True, required=True)
    flags = fields.String(required=True)
    section = fields.String(required=True)
    quarantine = fields.String(allow_none=True, required=True)
    reasons = fields.Dict(keys=fields.String(), values=fields.String(), load_default=dict,
                          metadata={"description": "recipient address -> its delay reason, "
                                                   "for the recipients that have one"})
    processing = fields.Boolean(required=True)


class QueueSchema(Schema):
    """GET /v1/queue."""

    count = WholeInteger(required=True)
    sections = fields.Dict(keys=fields.String(), values=WholeInteger(), required=True)
    messages = fields.List(fields.Nested(QueuedMessageSchema), required=True)


class DeliverySchema(Schema):
    """What a queue run said about one recipient."""

    queue_id = fields.String(allow_none=True, required=True)
    recipient = fields.String(required=True)
    outcome = fields.String(required=True)
    text = fields.String(required=True)


class FlushResultSchema(OperationSchema):
    """POST /v1/queue/flush."""

    before = WholeInteger(required=True, allow_none=True,
                            metadata={"description": "null when the run timed out"})
    after = WholeInteger(required=True)
    deliveries = fields.List(fields.Nested(DeliverySchema), required=True)
    remaining = fields.List(fields.Nested(QueuedMessageSchema), required=True)
    delivery = fields.Nested(DeliveryProbeSchema, allow_none=True, load_default=None,
                             metadata={"description": "the delivery probe (verify), if any"})
    delivery_verified = fields.Boolean(allow_none=True, load_default=None, metadata={
        "description": "true: the relay the host should use accepted the probe; absent "
                       "when no probe ran (no verify, a dry run, or a failure before it)"})


class LogRecordSchema(Schema):
    """One parsed maillog line."""

    timestamp = fields.String(required=True)
    host = fields.String(required=True)
    program = fields.String(required=True)
    pid = WholeInteger(allow_none=True, required=True)
    queue_id = fields.String(allow_none=True, required=True)
    kind = fields.String(required=True)
    fields_ = fields.Dict(keys=fields.String(), values=fields.String(), required=True,
                          attribute="fields", data_key="fields")
    message = fields.String(required=True)
    recipients = fields.List(fields.String(), required=True)
    # not required: agents from before it answer without it
    problem = fields.String(allow_none=True, load_default=None,
                            validate=validate.OneOf(PROBLEMS),
                            metadata={"description": "the relay problem the line shows"})


class ProblemCountSchema(Schema):
    """How many maillog lines show one relay problem."""

    problem = fields.String(required=True, validate=validate.OneOf(PROBLEMS))
    label = fields.String(required=True)
    lines = WholeInteger(required=True)
    deliveries = WholeInteger(required=True, metadata={
        "description": "the part of lines that are delivery attempts (to= lines)"})


class LogSummarySchema(Schema):
    """Counts by stat, by outcome and by relay problem."""

    deliveries = WholeInteger(required=True)
    by_stat = fields.Dict(keys=fields.String(), values=WholeInteger(), required=True)
    sent = WholeInteger(required=True)
    deferred = WholeInteger(required=True)
    bounced = WholeInteger(required=True)
    other = WholeInteger(required=True)
    local_handoffs = WholeInteger(required=True, metadata={
        "description": "sends that only passed mail from the submission program to the MTA"})
    problems = fields.List(fields.Nested(ProblemCountSchema), load_default=list)


class LogSchema(Schema):
    """GET /v1/log."""

    records = fields.List(fields.Nested(LogRecordSchema), required=True)
    summary = fields.Nested(LogSummarySchema, required=True)


class CheckSchema(Schema):
    """One diagnose check (ok is null when it did not apply)."""

    name = fields.String(required=True, metadata={
        "description": "hostname_fqdn, hosts_file, mta_running, config_in_sync, "
                       "smarthost_resolves, smarthost_smtp (data.ehlo_name: the name the MTA "
                       "greets with), smarthost_tls (STARTTLS from the host: version, cipher, "
                       "verified, verify_error, names, name_matches, days_left, "
                       "auth_after_tls), spf; an MTA may add its own (myhostname)"})
    ok = fields.Boolean(allow_none=True, required=True)
    detail = fields.String(required=True)
    data = fields.Dict(required=True)


class DiagnoseSchema(OperationSchema):
    """POST /v1/diagnose."""

    checks = fields.List(fields.Nested(CheckSchema), required=True)


class MtaStateSchema(Schema):
    """The MTA's kind, version and whether it runs."""

    kind = fields.String(required=True)
    version = fields.String(allow_none=True, required=True)
    running = fields.Boolean(required=True)


class QueueReasonSchema(Schema):
    """One deferral text of the queued messages and how many messages give it."""

    text = fields.String(required=True)
    count = WholeInteger(required=True)


class QueueSummarySchema(Schema):
    """Queue size, the age of its oldest message and why its messages wait."""

    count = WholeInteger(required=True)
    oldest_age_s = WholeInteger(allow_none=True, required=True)
    # not required: agents from before it answer without it
    reasons = fields.List(fields.Nested(QueueReasonSchema), load_default=list, metadata={
        "description": "the queued messages' deferral texts grouped, most messages first "
                       "(at most 20)"})


class RecentProblemSchema(Schema):
    """How many recent maillog lines show one relay problem."""

    problem = fields.String(required=True, validate=validate.OneOf(PROBLEMS))
    lines = WholeInteger(required=True)
    deliveries = WholeInteger(required=True)


class UnresolvedSchema(Schema):
    """A delivery failure logged after the last delivery a relay accepted."""

    text = fields.String(required=True)
    outcome = fields.String(required=True, validate=validate.OneOf(("deferred", "bounced")))
    problem = fields.String(allow_none=True, load_default=None, validate=validate.OneOf(PROBLEMS),
                            metadata={"description": "the relay problem the line shows"})
    count = WholeInteger(required=True)


class RecentLogSchema(Schema):
    """A summary of the maillog's recent tail."""

    lines = WholeInteger(required=True, metadata={"description": "maillog lines read"})
    deliveries = WholeInteger(required=True)
    sent = WholeInteger(required=True)
    deferred = WholeInteger(required=True)
    bounced = WholeInteger(required=True)
    local_handoffs = WholeInteger(load_default=0)
    by_stat = fields.Dict(keys=fields.String(), values=WholeInteger(), required=True)
    problems = fields.List(fields.Nested(RecentProblemSchema), required=True)
    unresolved = fields.List(fields.Nested(UnresolvedSchema), load_default=list, metadata={
        "description": "failures logged after the last delivery a relay accepted"})


class HostsFileSchema(Schema):
    """Whether /etc/hosts maps the host's name properly."""

    ok = fields.Boolean(required=True)
    problems = fields.List(fields.String(), required=True)


class StatusSchema(Schema):
    """GET /v1/status."""

    hostname = fields.String(required=True)
    fqdn = fields.String(required=True)
    mta = fields.Nested(MtaStateSchema, required=True)
    smarthost = fields.Nested(SmarthostSchema, allow_none=True, required=True)
    config_in_sync = fields.Boolean(required=True)
    queue = fields.Nested(QueueSummarySchema, required=True)
    hosts_file = fields.Nested(HostsFileSchema, required=True)
    recent = fields.Nested(RecentLogSchema, allow_none=True, load_default=None, metadata={
        "description": "the recent maillog tail summarised (null: the maillog was not read)"})


class HealthSchema(Schema):
    """GET /v1/health."""

    status = fields.String(required=True)
    version = fields.String(required=True)


class InstallAgentResultSchema(OperationSchema):
    """What install_agent did on one host (the token itself is never part of it)."""

    changed = fields.Boolean(required=True)
    dry_run = fields.Boolean(required=True)
    version = fields.String(required=True, metadata={
        "description": "the agent's version on the host now (a dry run: the bundle's)"})
    previous = fields.String(allow_none=True, required=True, metadata={
        "description": "the version installed before (null: none)"})
    fingerprint = fields.String(allow_none=True, load_default=None, metadata={
        "description": "SHA-256 of the agent's certificate, now pinned in the host record"})
    agent_url = fields.String(allow_none=True, load_default=None)
    token = fields.String(allow_none=True, load_default=None, validate=validate.OneOf(
        ["written", "kept", "rotated"]), metadata={
        "description": "what happened to the agent's token: written (a new agent), kept, "
                       "rotated"})
    transport = fields.String(allow_none=True, load_default=None, metadata={
        "description": "how the controller reaches the host now"})
    service = fields.String(allow_none=True, load_default=None, metadata={
        "description": "systemd or daemon (no systemd on the host)"})


class ErrorSchema(Schema):
    """The one error envelope of every relayfleet API."""

    code = WholeInteger(required=True)
    status = fields.String(required=True)
    message = fields.String(required=True)
    errors = fields.Dict(keys=fields.String(), values=fields.List(fields.String()))
