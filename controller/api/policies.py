"""Desired state: smarthost policies, relay credentials, drift and remediation."""

from __future__ import annotations

from typing import Any

from flask import current_app, request
from flask.views import MethodView
from flask_smorest import Blueprint

from controller import policy as svc
from controller import policy_schemas as ps
from controller import schemas as s
from controller.api import audit_target, fingerprint, stored_answer, who
from controller.config import Settings
from controller.crypto import SecretBox
from controller.db import db
from controller.idempotency import Created, idempotent
from controller.models import Credential
from shared.errors import ValidationError

blp = Blueprint("policies", __name__, url_prefix="/v1",
                description=(
                    "Desired state: smarthost policies, relay credentials, drift and remediation."))


def _box() -> SecretBox:
    box: SecretBox = current_app.extensions["relayfleet_secrets"]
    return box


# -- credentials ------------------------------------------------------------------------

@blp.route("/credentials")
class Credentials(MethodView):
    """Relay logins (SMTP AUTH) policies name; passwords are write-only."""

    @blp.arguments(ps.CredentialQuerySchema, location="query")
    @blp.response(200, ps.CredentialListSchema)
    def get(self, query: dict[str, Any]) -> dict[str, Any]:
        """List the credentials this token sees (admins; never a password)."""
        who().require("admin")
        return {"items": svc.list_credentials(db.session, who(), query.get("tenant_id"))}

    @blp.arguments(ps.CredentialCreateSchema)
    @blp.response(201, ps.CredentialSchema)
    def post(self, body: dict[str, Any]) -> Credential:
        """Add a credential to a tenant (admins); the password is sealed, never shown."""
        row = svc.create_credential(db.session, who(), _box(), tenant_id=body["tenant_id"],
                                    name=body["name"], username=body["username"],
                                    password=body["password"])
        audit_target(f"credential:{row.id}", name=row.name, tenant_id=row.tenant_id)
        return row


@blp.route("/credentials/<int(max=2147483647):credential_id>")
class CredentialById(MethodView):
    """One credential."""

    @blp.response(200, ps.CredentialSchema)
    def get(self, credential_id: int) -> Credential:
        """Read a credential (admins; never its password)."""
        who().require("admin")
        return svc.get_credential(db.session, who(), credential_id)

    @blp.arguments(ps.CredentialUpdateSchema)
    @blp.response(200, ps.CredentialSchema)
    def patch(self, body: dict[str, Any], credential_id: int) -> Credential:
        """Change the user name or password (admins); hosts using it are checked for drift
        again (a new user name is drift until they are remediated)."""
        audit_target(f"credential:{credential_id}", changed=sorted(body))
        return svc.update_credential(db.session, who(), _box(), credential_id, body)

    @blp.response(204)
    def delete(self, credential_id: int) -> None:
        """Remove a credential no policy uses (admins)."""
        audit_target(f"credential:{credential_id}")
        svc.delete_credential(db.session, who(), credential_id)


# -- policies ---------------------------------------------------------------------------

@blp.route("/policies")
class Policies(MethodView):
    """Every level's own policy."""

    @blp.arguments(ps.PolicyQuerySchema, location="query")
    @blp.response(200, ps.PolicyListSchema)
    def get(self, query: dict[str, Any]) -> dict[str, Any]:
        """List the policies this token sees, tenant levels first (filter by tenant_id)."""
        rows = svc.list_policies(db.session, who(), query.get("tenant_id"))
        return {"items": [svc.policy_doc(db.session, row) for row in rows]}


def _get(kind: str, object_id: int) -> dict[str, Any]:
    level = svc.level_of(db.session, who(), kind, object_id)
    return svc.policy_doc(db.session, svc.get_policy(db.session, level))


def _put(kind: str, object_id: int, body: dict[str, Any]) -> dict[str, Any]:
    audit_target(f"{kind}:{object_id}", change="policy set")
    who().require("admin")
    if not isinstance(request.get_json(silent=True), dict):
        # a null (or missing) body would otherwise read as "sets nothing" and empty it
        raise ValidationError.for_field(
            "_schema", "send the level's policy as a JSON object ({} sets nothing; DELETE "
                       "clears it)")
    level = svc.level_of(db.session, who(), kind, object_id)
    return svc.policy_doc(db.session, svc.put_policy(db.session, who(), level, body))


def _delete(kind: str, object_id: int) -> None:
    audit_target(f"{kind}:{object_id}", change="policy cleared")
    who().require("admin")
    svc.delete_policy(db.session, who(), svc.level_of(db.session, who(), kind, object_id))


@blp.route("/tenants/<int(max=2147483647):tenant_id>/policy")
class TenantPolicy(MethodView):
    """A tenant's policy: what every host of the tenant inherits."""

    @blp.response(200, ps.PolicySchema)
    def get(self, tenant_id: int) -> dict[str, Any]:
        """Read the tenant's own policy (404: it has none)."""
        return _get("tenant", tenant_id)

    @blp.arguments(ps.PolicyPutSchema)
    @blp.response(200, ps.PolicySchema)
    def put(self, body: dict[str, Any], tenant_id: int) -> dict[str, Any]:
        """Set the tenant's policy (admins); its hosts' drift is computed again."""
        return _put("tenant", tenant_id, body)

    @blp.response(204)
    def delete(self, tenant_id: int) -> None:
        """Clear the tenant's policy (admins)."""
        _delete("tenant", tenant_id)


@blp.route("/sites/<int(max=2147483647):site_id>/policy")
class SitePolicy(MethodView):
    """A site's policy: overrides the tenant's, field by field."""

    @blp.response(200, ps.PolicySchema)
    def get(self, site_id: int) -> dict[str, Any]:
        """Read the site's own policy (404: it has none)."""
        return _get("site", site_id)

    @blp.arguments(ps.PolicyPutSchema)
    @blp.response(200, ps.PolicySchema)
    def put(self, body: dict[str, Any], site_id: int) -> dict[str, Any]:
        """Set the site's policy (admins); its hosts' drift is computed again."""
        return _put("site", site_id, body)

    @blp.response(204)
    def delete(self, site_id: int) -> None:
        """Clear the site's policy (admins)."""
        _delete("site", site_id)


@blp.route("/hosts/<int(max=2147483647):host_id>/policy")
class HostPolicy(MethodView):
    """A host's own policy: overrides its site's and tenant's, field by field."""

    @blp.response(200, ps.PolicySchema)
    def get(self, host_id: int) -> dict[str, Any]:
        """Read the host's own policy (404: it has none)."""
        return _get("host", host_id)

    @blp.arguments(ps.PolicyPutSchema)
    @blp.response(200, ps.PolicySchema)
    def put(self, body: dict[str, Any], host_id: int) -> dict[str, Any]:
        """Set the host's own policy (admins); its drift is computed again."""
        return _put("host", host_id, body)

    @blp.response(204)
    def delete(self, host_id: int) -> None:
        """Clear the host's own policy (admins)."""
        _delete("host", host_id)


@blp.route("/hosts/<int(max=2147483647):host_id>/desired")
class HostDesired(MethodView):
    """What the host should look like."""

    @blp.response(200, ps.DesiredSchema)
    def get(self, host_id: int) -> dict[str, Any]:
        """The host's effective policy (its levels combined), the level each field came
        from, and its drift as last computed."""
        return svc.desired(db.session, who(), host_id)


# -- remediation ------------------------------------------------------------------------

@blp.route("/remediate")
class Remediate(MethodView):
    """Bring drifted hosts back in line."""

    @blp.arguments(ps.RemediateSchema)
    @blp.response(202, ps.RemediationSchema)
    @blp.alt_response(409, schema=s.ErrorSchema,
                      description="the same Idempotency-Key is still being handled")
    @blp.alt_response(503, schema=s.ErrorSchema, description="the job queue is unreachable")
    def post(self, body: dict[str, Any]) -> Any:
        """Start one set_smarthost (or remove_smarthost) job per distinct effective policy
        over the drifted hosts of ``target`` (operators); hosts in line or with no complete
        policy are counted, not touched; hosts a change job still runs on are listed in
        ``skipped``. No canary or wave_size. Send ``Idempotency-Key``."""
        principal = who()
        principal.require("operator")
        settings: Settings = current_app.config["RELAYFLEET_SETTINGS"]
        # the job schema fills the defaults again: only what the caller gave goes on
        options = {key: value for key, value in body["options"].items() if value is not None}

        def create() -> Created:
            answer = svc.remediate(db.session, principal, box=_box(), database=db,
                                   settings=settings, target=body["target"], options=options)
            return 202, ps.RemediationSchema().dump(answer)

        status, doc = idempotent(db.session, principal, request.headers.get("Idempotency-Key"),
                                 fingerprint(), create)
        audit_target("remediate", jobs=[job["id"] for job in doc.get("jobs", [])])
        return stored_answer(doc, status)
