"""``relayfleet-controller``: serve the API, run a worker, migrate, make tokens."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent.config import parse_listen
from shared.errors import ConfigError, RelayfleetError

ENVIRONMENT = """environment:
  RELAYFLEET_DATABASE_URL   SQLAlchemy URL (default: SQLite in ~/.local/share/relayfleet)
                            e.g. postgresql+psycopg://relayfleet:PASS@db/relayfleet
  RELAYFLEET_BROKER_URL     Redis for the job queue (default redis://127.0.0.1:6379/0)
  RELAYFLEET_SECRET_KEY     encrypts stored secrets; keep it safe and the same everywhere
                            (default: a key generated once in the data directory)
  RELAYFLEET_SECRET_KEY_OLD the previous key(s), comma-separated, while rotating: set the
                            new key and this everywhere, run rotate-secret-key, then drop it
"""


def build_parser() -> argparse.ArgumentParser:
    """The command-line grammar."""
    parser = argparse.ArgumentParser(
        prog="relayfleet-controller", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="The relayfleet controller: inventory, tokens and jobs that set "
                    "smarthosts and flush queues across a fleet of mail/PBX hosts.",
        epilog=ENVIRONMENT)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser("serve", help="serve the API (gunicorn)")
    serve.add_argument("--listen", default="127.0.0.1:8080", metavar="ADDR:PORT",
                       help="where to listen (default 127.0.0.1:8080)")
    serve.add_argument("--workers", type=int, default=2 * (os.cpu_count() or 1),
                       help="gunicorn processes (default: 2 per CPU)")
    serve.add_argument("--threads", type=int, default=4,
                       help="threads per process (default 4)")
    worker = sub.add_parser("worker", help="run a Celery worker that executes jobs")
    worker.add_argument("--concurrency", type=int, default=max(4, 2 * (os.cpu_count() or 1)),
                        help="lane tasks run at once (each runs up to 25 hosts in threads)")
    worker.add_argument("--loglevel", default="INFO")
    beat = sub.add_parser("beat", help="run the scheduler: the sweeper (stalled jobs), status "
                          "collections, schedules, alerts and remediations")
    beat.add_argument("--loglevel", default="INFO")
    sub.add_parser("init-db", help="create or migrate the database schema")
    token = sub.add_parser("token", help="manage API tokens")
    token_sub = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    create = token_sub.add_parser(
        "create", help="make a token; it is printed alone on the last line of stdout")
    create.add_argument("--role", required=True, choices=("admin", "operator", "viewer"))
    create.add_argument("--tenant", metavar="NAME",
                        help="limit the token to this tenant (created if missing)")
    create.add_argument("--name", default=None, help="a label for the token")
    sub.add_parser("callback-secret",
                   help="print the key callbacks of MSP-wide jobs (no tenant) are signed "
                        "with (HMAC-SHA256); tenants' jobs use the tenant's own key")
    bundle = sub.add_parser(
        "agent-bundle", help="build the offline agent bundle (wheels for every supported "
                             "Python, install.sh) and its .sha256; needs PyPI")
    bundle.add_argument("--out", metavar="DIR", type=Path,
                        help="where to write it (default: RELAYFLEET_AGENT_BUNDLE_DIR, else "
                             "agent-bundles in the data directory)")
    bundle.add_argument("--version", metavar="V",
                        help="the agent's version (default: this controller's)")
    bundle.add_argument("--python", metavar="X.Y", action="append", dest="pythons",
                        help="a Python the bundle serves (repeatable; default: 3.9 to 3.13)")
    bundle.add_argument("--wheel-cache", metavar="DIR", type=Path,
                        help="keep downloaded dependency wheels here and reuse them")
    sub.add_parser("rotate-secret-key",
                   help="re-seal every stored secret with RELAYFLEET_SECRET_KEY (the old "
                        "key in RELAYFLEET_SECRET_KEY_OLD); safe to run again")
    return parser


def _app() -> Any:
    from controller.app import create_app

    return create_app()


def serve(listen: str, workers: int, threads: int) -> None:
    """Run the API under gunicorn (threads, so slow clients do not block others)."""
    from gunicorn.app.base import BaseApplication

    from controller import gunicorn_conf

    host, port = parse_listen(listen)
    # Before the app (and prometheus_client) is imported: every worker counts into it.
    gunicorn_conf.prepare_metrics_dir()
    app = _app()

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in gunicorn_conf.settings(f"{host}:{port}", workers, threads,
                                                     known=self.cfg.settings).items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            return app

    Server().run()


def worker(concurrency: int, loglevel: str) -> None:
    """Run a Celery worker bound to the controller app."""
    app = _app()
    celery = app.extensions["celery"]
    celery.worker_main([*_banner_off(), "worker", f"--loglevel={loglevel}",
                        f"--concurrency={concurrency}", "--without-gossip", "--without-mingle",
                        "-Q", "relayfleet"])


def beat(loglevel: str, data_dir: str) -> None:
    """Run Celery beat for the controller's periodic tasks."""
    app = _app()
    celery = app.extensions["celery"]
    celery.start([*_banner_off(), "beat", f"--loglevel={loglevel}",
                  f"--schedule={os.path.join(data_dir, 'celerybeat-schedule')}",
                  "--scheduler=controller.healthcheck:HeartbeatScheduler"])


def _banner_off() -> list[str]:
    """Celery's global --quiet when logs are JSON lines (its start-up banner is printed,
    not logged)."""
    from controller import logs

    return ["--quiet"] if logs.log_format() == "json" else []


def init_db() -> str:
    """Migrate the configured database to the latest schema; return the revision."""
    from controller.config import load_settings
    from controller.migrate import current, upgrade

    url = load_settings().database_url
    upgrade(url)
    return current(url) or "?"


def token_create(role: str, tenant: str | None, name: str | None) -> str:
    """Make a token (and its tenant if named and missing); return the token text."""
    from sqlalchemy import select

    from controller.auth import issue_token
    from controller.db import db
    from controller.inventory import new_tenant
    from controller.models import Tenant

    app = _app()
    with app.app_context(), db.transaction() as session:
        tenant_id = None
        if tenant:
            row = session.scalar(select(Tenant).where(Tenant.name == tenant))
            if row is None:
                row, secret = new_tenant(tenant, app.extensions["relayfleet_secrets"])
                session.add(row)
                session.flush()
                print(f"made tenant {tenant}; its callback secret (shown only now): {secret}")
            tenant_id = row.id
        _row, text = issue_token(session, name=name or f"{role} (cli)", role=role,
                                 tenant_id=tenant_id)
    return text


def agent_bundle(out: Path | None, version: str | None, pythons: Sequence[str] | None,
                 wheel_cache: Path | None) -> str:
    """Build the agent bundle; the lines describing it."""
    from controller.agent_bundle import SUPPORTED_PYTHONS, build_bundle, describe
    from controller.config import load_settings

    built = build_bundle(out or load_settings().agent_bundle_dir, version=version,
                         pythons=pythons or SUPPORTED_PYTHONS, cache_dir=wheel_cache)
    return describe(built)


def _sealed_columns() -> list[Any]:
    """Every column that holds a secret sealed with the controller's key."""
    from controller.models import (
        AlertChannel,
        Credential,
        Host,
        InboundHook,
        Job,
        Schedule,
        Tenant,
    )

    return [Host.agent_token_sealed, Host.ssh_private_key_sealed, Host.ssh_passphrase_sealed,
            Host.ssh_password_sealed, Job.params_sealed, Tenant.callback_key_sealed,
            Credential.password_sealed, Schedule.params_sealed, AlertChannel.target_sealed,
            AlertChannel.secret_sealed, InboundHook.secret_sealed]


def rotate_secret_key(settings: Any, batch: int = 500) -> dict[str, int]:
    """Re-seal every stored secret with the current key; how many were re-sealed per
    column (and ``already current``). Batches commit on their own: an interrupted run is
    finished by running it again, which leaves secrets already re-sealed alone."""
    from sqlalchemy import select, update

    from controller.crypto import SecretBox
    from controller.db import make_engine

    box = SecretBox(settings.secret_key, settings.old_secret_keys)
    counts: dict[str, int] = {"already current": 0}
    engine = make_engine(settings.database_url)
    try:
        for column in _sealed_columns():
            model, name = column.class_, f"{column.class_.__tablename__}.{column.key}"
            counts[name], last = 0, 0
            while True:
                with engine.begin() as conn:
                    rows = conn.execute(select(model.id, column).where(
                        model.id > last, column.is_not(None)).order_by(model.id)
                        .limit(batch)).all()
                    for row_id, sealed in rows:
                        fresh = box.reseal(sealed)
                        if fresh is None:
                            counts["already current"] += 1
                            continue
                        # Only the sealed form changes, not what it holds (no job state).
                        conn.execute(update(model).where(model.id == row_id,
                                                         column == sealed)
                                     .values({column.key: fresh}))
                        counts[name] += 1
                if len(rows) < batch:
                    break
                last = rows[-1][0]
    finally:
        engine.dispose()
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    args = build_parser().parse_args(argv)
    try:
        from controller import logs

        logs.configure(logging.INFO)  # RELAYFLEET_LOG_FORMAT: text or json
        if args.command == "serve":
            serve(args.listen, args.workers, args.threads)
        elif args.command == "worker":
            worker(args.concurrency, args.loglevel)
        elif args.command == "beat":
            from controller.config import default_data_dir

            data_dir = default_data_dir()
            data_dir.mkdir(parents=True, exist_ok=True)
            beat(args.loglevel, str(data_dir))
        elif args.command == "init-db":
            print(f"database schema at revision {init_db()}")
        elif args.command == "token":
            text = token_create(args.role, args.tenant, args.name)
            print(f"made a {args.role} token"
                  + (f" for tenant {args.tenant}" if args.tenant else " for the whole MSP")
                  + "; it is shown only now:")
            print(text)
        elif args.command == "callback-secret":
            from controller.callbacks import callback_key
            from controller.config import load_settings

            print(callback_key(load_settings()).decode())
        elif args.command == "agent-bundle":
            print(agent_bundle(args.out, args.version, args.pythons, args.wheel_cache))
        elif args.command == "rotate-secret-key":
            from controller.config import load_settings

            counts = rotate_secret_key(load_settings())
            current = counts.pop("already current")
            for name, count in counts.items():
                print(f"{name}: {count} re-sealed")
            print(f"re-sealed {sum(counts.values())} secrets with the current key; "
                  f"{current} already were")
    except (ConfigError, RelayfleetError) as exc:
        print(f"relayfleet-controller: {exc.message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
