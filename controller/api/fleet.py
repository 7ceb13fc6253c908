"""Fleet overview, the audit log, Prometheus metrics and the docs page."""

from __future__ import annotations

import html
from typing import Any

from flask import Response, current_app
from flask.views import MethodView
from flask_smorest import Blueprint
from sqlalchemy import select

from controller import inventory as inv
from controller import schemas as s
from controller.api import who
from controller.db import db
from controller.models import AuditEvent, Tenant
from shared import __version__

blp = Blueprint("fleet", __name__, url_prefix="/v1",
                description="What every host looked like last, and who did what.")
meta = Blueprint("meta", __name__, description="Metrics and documentation.")


@blp.route("/fleet")
class Fleet(MethodView):
    """The fleet at a glance."""

    @blp.arguments(s.FleetQuerySchema, location="query")
    @blp.response(200, s.FleetSchema)
    def get(self, query: dict[str, Any]) -> dict[str, Any]:
        """Every host's last known state (queue size, smarthost, reachability) and totals;
        ``holding_mail=true`` lists only hosts with queued mail."""
        result = inv.page(db.session, inv.host_query(who(), query), query["limit"],
                          query["offset"])
        result["summary"] = inv.fleet_summary(db.session, who())
        return result


@blp.route("/whoami")
class Whoami(MethodView):
    """The calling token."""

    @blp.response(200, s.WhoamiSchema)
    def get(self) -> dict[str, Any]:
        """Which token this is: its id, name, role and tenant, and the controller's
        version (any valid token)."""
        principal = who()
        tenant = (db.session.get(Tenant, principal.tenant_id)
                  if principal.tenant_id is not None else None)
        return {"token_id": principal.token_id, "name": principal.name,
                "role": principal.role, "tenant_id": principal.tenant_id,
                "tenant": tenant.name if tenant is not None else None,
                "version": __version__}


@blp.route("/audit")
class Audit(MethodView):
    """The audit log."""

    @blp.arguments(s.AuditQuerySchema, location="query")
    @blp.response(200, s.AuditPageSchema)
    def get(self, query: dict[str, Any]) -> dict[str, Any]:
        """Every mutating call, newest first: token, action, target, outcome."""
        principal = who()
        stmt = select(AuditEvent).order_by(AuditEvent.id.desc())
        if principal.tenant_id is not None:
            stmt = stmt.where(AuditEvent.tenant_id == principal.tenant_id)
        stmt = inv.filtered(stmt, AuditEvent, query, "token_id", "action")
        return inv.page(db.session, stmt, query["limit"], query["offset"])


@meta.route("/metrics")
class Metrics(MethodView):
    """Prometheus metrics."""

    @meta.response(200, content_type="text/plain")
    def get(self) -> Response:
        """Prometheus text format: jobs and host results by state, fleet totals, HTTP."""
        from controller.metrics import render

        return Response(render(who()), mimetype="text/plain; version=0.0.4")


@meta.route("/docs")
class Docs(MethodView):
    """Human-readable API reference, generated from the OpenAPI document."""

    @meta.response(200, content_type="text/html")
    def get(self) -> Response:
        """Every route with its summary, parameters and answers."""
        spec = current_app.extensions["relayfleet_api"].spec.to_dict()
        return Response(render_docs(spec), mimetype="text/html")


def render_docs(spec: dict[str, Any]) -> str:
    """A self-contained HTML page (no CDN) describing ``spec``."""
    esc = html.escape
    rows = []
    for path, methods in sorted(spec.get("paths", {}).items()):
        for method, op in methods.items():
            if method == "parameters":
                continue
            answers = ", ".join(f"{code}" for code in sorted(op.get("responses", {})))
            doc = esc(op.get("description") or op.get("summary") or "")
            rows.append(f"<tr><td><code>{esc(method.upper())}</code></td>"
                        f"<td><code>{esc(path)}</code></td><td>{esc(op.get('summary', ''))}"
                        f"<br><small>{doc}</small></td><td>{esc(answers)}</td></tr>")
    schemas = []
    for name, schema in sorted(spec.get("components", {}).get("schemas", {}).items()):
        props = ", ".join(
            f"<code>{esc(k)}</code>{'*' if k in schema.get('required', []) else ''}"
            for k in schema.get("properties", {}))
        schemas.append(f"<tr><td><b>{esc(name)}</b></td><td>{props}</td></tr>")
    title = esc(spec.get("info", {}).get("title", "relayfleet"))
    version = esc(spec.get("info", {}).get("version", ""))
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{title} API</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:70em}}td{{vertical-align:top;
padding:.3em .6em;border-bottom:1px solid #ddd}}table{{border-collapse:collapse}}</style>
</head><body><h1>{title} API {version}</h1>
<p>Every route but <code>/v1/health</code> needs <code>Authorization: Bearer TOKEN</code>.
Errors are <code>{{code, status, message, errors}}</code>. The machine-readable document is
<a href="/openapi.json">/openapi.json</a>. Fields marked * are required.</p>
<h2>Routes</h2><table><tr><th>method</th><th>path</th><th>what</th><th>answers</th></tr>
{''.join(rows)}</table><h2>Payloads</h2><table>{''.join(schemas)}</table></body></html>"""
