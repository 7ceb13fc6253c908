"""Tenants, sites, hosts and tokens (CRUD, paging, filters, bulk host import)."""

from __future__ import annotations

from typing import Any

from flask import current_app, request
from flask.views import MethodView
from flask_smorest import Blueprint, abort
from sqlalchemy import select

from controller import inventory as inv
from controller import schemas as s
from controller.api import audit_target, fingerprint, stored_answer, who
from controller.config import Settings
from controller.crypto import SecretBox
from controller.db import db
from controller.idempotency import Created, idempotent
from controller.models import Host, Site, Tenant, Token
from shared.errors import HostUnreachable

blp = Blueprint("inventory", __name__, url_prefix="/v1",
                description="The MSP's customers (tenants), their sites and hosts; tokens.")


def _box() -> SecretBox:
    box: SecretBox = current_app.extensions["relayfleet_secrets"]
    return box


@blp.route("/tenants")
class Tenants(MethodView):
    """The MSP's customers."""

    @blp.arguments(s.PageQuerySchema, location="query")
    @blp.response(200, s.TenantPageSchema)
    def get(self, query: dict[str, Any]) -> dict[str, Any]:
        """List the tenants this token sees."""
        stmt = inv.scoped(select(Tenant), Tenant, who()).order_by(Tenant.id)
        return inv.page(db.session, stmt, query["limit"], query["offset"])

    @blp.arguments(s.TenantCreateSchema)
    @blp.response(201, s.TenantCreatedSchema)
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Add a tenant (MSP-wide admin tokens only); the answer holds its callback secret,
        shown only now."""
        tenant, secret = inv.create_tenant(db.session, who(), body["name"], _box())
        audit_target(f"tenant:{tenant.id}", name=tenant.name)
        return {"id": tenant.id, "name": tenant.name, "created_at": tenant.created_at,
                "callback_secret": secret}


@blp.route("/tenants/<int(max=2147483647):tenant_id>")
class TenantById(MethodView):
    """One tenant."""

    @blp.response(200, s.TenantSchema)
    def get(self, tenant_id: int) -> Tenant:
        """Read a tenant."""
        return inv.get_scoped(db.session, Tenant, tenant_id, who())

    @blp.response(204)
    def delete(self, tenant_id: int) -> None:
        """Delete a tenant that has no sites."""
        audit_target(f"tenant:{tenant_id}")
        inv.delete_tenant(db.session, who(), tenant_id)


@blp.route("/tenants/<int(max=2147483647):tenant_id>/callback-secret")
class TenantCallbackSecret(MethodView):
    """The key a tenant's job callbacks are signed with."""

    @blp.response(200, s.CallbackSecretSchema)
    def post(self, tenant_id: int) -> dict[str, Any]:
        """Give the tenant a new callback secret (MSP-wide admins only); the answer holds
        it, shown only now. Callbacks signed from now on use it."""
        audit_target(f"tenant:{tenant_id}", change="callback secret rotated")
        secret = inv.rotate_callback_secret(db.session, who(), tenant_id, _box())
        return {"tenant_id": tenant_id, "callback_secret": secret}


@blp.route("/sites")
class Sites(MethodView):
    """Customer locations."""

    @blp.arguments(s.SiteQuerySchema, location="query")
    @blp.response(200, s.SitePageSchema)
    def get(self, query: dict[str, Any]) -> dict[str, Any]:
        """List sites (filter by tenant_id)."""
        stmt = inv.scoped(select(Site), Site, who()).order_by(Site.id)
        stmt = inv.filtered(stmt, Site, query, "tenant_id")
        return inv.page(db.session, stmt, query["limit"], query["offset"])

    @blp.arguments(s.SiteCreateSchema)
    @blp.response(201, s.SiteSchema)
    def post(self, body: dict[str, Any]) -> Site:
        """Add a site to a tenant."""
        site = inv.create_site(db.session, who(), body["tenant_id"], body["name"])
        audit_target(f"site:{site.id}", name=site.name, tenant_id=site.tenant_id)
        return site


@blp.route("/sites/<int(max=2147483647):site_id>")
class SiteById(MethodView):
    """One site."""

    @blp.response(200, s.SiteSchema)
    def get(self, site_id: int) -> Site:
        """Read a site."""
        return inv.get_scoped(db.session, Site, site_id, who())

    @blp.arguments(s.SiteUpdateSchema)
    @blp.response(200, s.SiteSchema)
    def patch(self, body: dict[str, Any], site_id: int) -> Site:
        """Rename a site."""
        audit_target(f"site:{site_id}")
        who().require("admin")
        site = inv.get_scoped(db.session, Site, site_id, who())
        site.name = body["name"]
        inv.commit_unique(db.session, f"site {body['name']!r}")
        return site

    @blp.response(204)
    def delete(self, site_id: int) -> None:
        """Delete a site that has no hosts."""
        audit_target(f"site:{site_id}")
        inv.delete_site(db.session, who(), site_id)


@blp.route("/hosts")
class Hosts(MethodView):
    """Managed hosts (secrets are write-only)."""

    @blp.arguments(s.HostQuerySchema, location="query")
    @blp.response(200, s.HostPageSchema)
    def get(self, query: dict[str, Any]) -> dict[str, Any]:
        """List hosts (filter by tenant_id, site_id, tag, transport, name)."""
        return inv.page(db.session, inv.host_query(who(), query), query["limit"],
                        query["offset"])

    @blp.arguments(s.HostCreateSchema)
    @blp.response(201, s.HostSchema)
    def post(self, body: dict[str, Any]) -> Any:
        """Add a host (send an Idempotency-Key to make retries safe)."""
        principal = who()

        def create() -> Created:
            host, = inv.create_hosts(db.session, principal, [body], _box())
            return 201, s.HostSchema().dump(host)

        status, doc = idempotent(db.session, principal, request.headers.get("Idempotency-Key"),
                                 fingerprint(),
                                 create)
        audit_target(f"host:{doc.get('id')}", name=doc.get("name"))
        return stored_answer(doc, status)


@blp.route("/hosts/import")
class HostImport(MethodView):
    """Many hosts at once."""

    @blp.arguments(s.HostImportSchema)
    @blp.response(201, s.HostImportResultSchema)
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create up to 1000 hosts; if any row is invalid, none is created and every bad
        row is named (``hosts.3.address``)."""
        rows, errors = s.load_import_rows(body["hosts"])
        hosts = inv.create_hosts(db.session, who(), rows, _box(),
                                 field_prefix="hosts.{index}.", errors=errors)
        audit_target("hosts:import", created=len(hosts))
        return {"created": len(hosts), "items": hosts}


@blp.route("/hosts/<int(max=2147483647):host_id>")
class HostById(MethodView):
    """One host."""

    @blp.response(200, s.HostSchema)
    def get(self, host_id: int) -> Host:
        """Read a host (never its secrets)."""
        return inv.get_scoped(db.session, Host, host_id, who())

    @blp.arguments(s.HostUpdateSchema(partial=s.HOST_FIELDS))
    @blp.response(200, s.HostSchema)
    def patch(self, body: dict[str, Any], host_id: int) -> Host:
        """Change a host."""
        audit_target(f"host:{host_id}")
        return inv.update_host(db.session, who(), host_id, body, _box())

    @blp.response(204)
    def delete(self, host_id: int) -> None:
        """Remove a host from the inventory."""
        audit_target(f"host:{host_id}")
        inv.delete_host(db.session, who(), host_id)


@blp.route("/hosts/<int(max=2147483647):host_id>/ssh/host-key")
class HostSshKey(MethodView):
    """An SSH host's pinned host key."""

    @blp.arguments(s.HostKeyPinSchema)
    @blp.response(200, s.HostSchema)
    def put(self, body: dict[str, Any], host_id: int) -> Host:
        """Pin a new host key on an SSH host without sending its login again (a host that
        was reinstalled); 422 for a host of the agent transport."""
        audit_target(f"host:{host_id}")
        host, old, new = inv.pin_ssh_host_key(db.session, who(), host_id, body["host_key"])
        audit_target(f"host:{host_id}", change="ssh host key pinned", old_fingerprint=old,
                     new_fingerprint=new)
        return host


@blp.route("/ssh/host-key-scan")
class SshHostKeyScan(MethodView):
    """Ask a host for its SSH host key, to confirm and pin."""

    @blp.arguments(s.HostKeyScanSchema)
    @blp.response(200, s.HostKeyScanResultSchema)
    @blp.alt_response(502, schema=s.ErrorSchema,
                      description="nothing at address:port completed an SSH handshake")
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """The key the sshd at ``address``:``port`` offers and its fingerprint, asked by
        the controller itself (admins; within 10 s; the address must pass the egress
        policy). Confirm the fingerprint with the host's administrator before pinning."""
        address, port = body["address"], body["port"]
        audit_target(f"address:{address}", port=port)
        who().require("admin")
        settings: Settings = current_app.config["RELAYFLEET_SETTINGS"]
        # No transaction stays open while the host takes its time (on SQLite every one
        # holds the write lock): nothing was written, the audit row comes afterwards.
        db.session.rollback()
        try:
            key, fp = inv.scan_ssh_host_key(settings.egress_policy, address, port)
        except HostUnreachable as exc:
            abort(502, message=exc.message)
        audit_target(f"address:{address}", fingerprint=fp)
        return {"address": address, "port": port, "host_key": key, "fingerprint": fp}


@blp.route("/tokens")
class Tokens(MethodView):
    """API tokens."""

    @blp.arguments(s.PageQuerySchema, location="query")
    @blp.response(200, s.TokenPageSchema)
    def get(self, query: dict[str, Any]) -> dict[str, Any]:
        """List tokens (admins only; never their secrets)."""
        who().require("admin")
        stmt = inv.scoped(select(Token), Token, who()).order_by(Token.id)
        return inv.page(db.session, stmt, query["limit"], query["offset"])

    @blp.arguments(s.TokenCreateSchema)
    @blp.response(201, s.TokenSchema)
    def post(self, body: dict[str, Any]) -> inv.IssuedToken:
        """Make a token; its secret is in this answer only."""
        row, text = inv.create_token(db.session, who(), name=body["name"], role=body["role"],
                                     tenant_id=body["tenant_id"])
        audit_target(f"token:{row.id}", name=row.name, role=row.role)
        return inv.IssuedToken(row, text)


@blp.route("/tokens/<int(max=2147483647):token_id>")
class TokenById(MethodView):
    """One token."""

    @blp.response(200, s.TokenSchema)
    def get(self, token_id: int) -> Token:
        """Read a token (not its secret)."""
        who().require("admin")
        return inv.get_scoped(db.session, Token, token_id, who())

    @blp.response(200, s.TokenSchema)
    def delete(self, token_id: int) -> Token:
        """Revoke a token."""
        audit_target(f"token:{token_id}")
        return inv.revoke_token(db.session, who(), token_id)
