"""Chaos figures: prints them, asserts nothing.

``python -m tests.benchmarks.chaos [hostile|worker-kills|agent-kills|api-kills|all] [options]``

- **hostile**: the hostile-input sweep of ``tests/integration/test_hostile_inputs.py`` (its
  generator and drivers, imported, not copied): generated hostile values in every field of
  every route of the agent (on a fake Debian sendmail host) and of the controller (SQLite,
  in-memory broker), with an audit hook watching for any process start. Prints
  ``hostile inputs tried: N / reached m4 or a shell: 0 / 5xx: 0`` and the details of any
  failure. Needs no root. ``--full`` gives every controller field every curated string (the
  test gives each 60 of them), which takes a few minutes.

- **worker-kills**: ``--kills`` (30) SIGKILLs of the worker's whole process group at random
  points of set_smarthost jobs on ``--hosts`` (20) agent lab hosts, the worker restarted
  each time (real worker and beat, Redis, PostgreSQL; a 4 s lease and a 1 s sweep): kills
  survived, jobs lost, hosts changed twice, torn configs, and how long a job took to move
  again after each kill (median, max; reference: 2 x the job's timeout_s). Needs root.
- **restarts**: Redis, then PostgreSQL, stopped (~2.5 s) and started again on the same
  port with their data in the middle of set_smarthost jobs (``--restart-jobs``, 2 per
  service, concurrency 2) on ``--restart-hosts`` (10) agent lab hosts: jobs lost, hosts
  failed, changed twice, torn configs, how long each job stalled, and every worker or beat
  exit the driver answered by starting it again (as systemd ``Restart=always`` would).
  Needs root.

- **agent-kills**: ``--agent-kills`` (50) SIGKILLs of one TLS agent lab host's agent at a
  random point (0-1.5 s) of ``PUT /v1/smarthost`` changes alternating two smarthosts, the
  agent restarted each time: sendmail.cf old / new / torn (0), answers of ``GET
  /v1/smarthost`` and ``/v1/status`` that named another smarthost than the cf (0), changes
  refused with 409 after a kill (0). Needs root.

- **api-kills**: ``--api-kills`` (10) SIGKILLs of ``relayfleet-controller serve``'s process
  group mid-``POST /v1/jobs`` (a job over ``--inventory`` (2000) documentation-address
  hosts, PostgreSQL, no worker), each request retried with its Idempotency-Key until
  accepted (a request that died mid-create left nothing behind, so its retry creates; a
  409 "still being handled" would be waited through): kills, keys, jobs per key (1 each).
  Needs root.

Further figures (Redis and PostgreSQL restarts mid-job) go here as sub-commands: register
a function in :data:`COMMANDS` and its arguments in :func:`parser`; ``all`` runs every
registered one.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from tests.integration.test_hostile_inputs import report, run_sweep


def hostile(args: argparse.Namespace) -> int:
    """Run the hostile-input sweep and print its figures; 1 if any rule was broken."""
    # The apps log each refused or failed request; the figures say what matters.
    logging.disable(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="relayfleet-chaos-") as workdir:
        tallies = run_sweep(Path(workdir), strings=None if args.full else 60,
                            agent=not args.controller_only, controller=not args.agent_only)
    total = tallies.pop("total")
    for name, tally in tallies.items():
        print(f"{name}: {tally.summary()}")
    print(f"hostile inputs tried: {total.tried} / reached m4 or a shell: {len(total.reached)} "
          f"/ 5xx: {len(total.server_errors)}")
    print(f"  ({len(total.distinct)} distinct values over {len(total.fields)} route fields; "
          f"refused 4xx: {total.refused}; accepted as valid: {total.accepted}; hostile values "
          f"accepted: {len(total.hostile_accepted)}; bad error envelopes: "
          f"{len(total.bad_envelopes)}; {total.seconds:.1f} s)")
    for title, findings in (("5xx", total.server_errors),
                            ("reached m4 or a shell", total.reached),
                            ("hostile values accepted", total.hostile_accepted),
                            ("bad error envelopes", total.bad_envelopes)):
        if findings:
            print(f"\n== {title}: {len(findings)}\n{report(findings, args.show)}")
    return 1 if total.failures else 0


def worker_kills(args: argparse.Namespace) -> int:
    """SIGKILL the worker ``--kills`` times during set_smarthost jobs on ``--hosts`` agent
    lab hosts (real worker and beat, Redis, PostgreSQL); print what it cost. Needs root."""
    import os

    from controller.migrate import upgrade
    from tests.controller_client import Controller
    from tests.lab.chaos import (
        FAST_RECOVERY_ENV,
        agent_hosts,
        kill_workers_during_changes,
        start_stack,
    )
    from tests.lab.lab import Lab
    from tests.lab.services import PostgresServer, RedisServer

    workdir = Path(tempfile.mkdtemp(prefix="relayfleet-chaos-"))
    redis = RedisServer(workdir / "redis").start()
    pg = PostgresServer().start()
    try:
        env = {"RELAYFLEET_DATABASE_URL": pg.new_database(), "RELAYFLEET_BROKER_URL": redis.url,
               "RELAYFLEET_SECRET_KEY": "relayfleet-chaos-secret-key-0123456789",
               "RELAYFLEET_DATA_DIR": str(workdir), **FAST_RECOVERY_ENV}
        os.environ.update(env)
        upgrade(env["RELAYFLEET_DATABASE_URL"])
        controller = Controller.create()
        with Lab(workdir / "lab") as lab:
            hosts = agent_hosts(lab, controller, args.hosts)
            worker, beat = start_stack(env, workdir)
            try:
                result = kill_workers_during_changes(
                    controller, worker, hosts,
                    [f"[{lab.smarthost.address}]", "smarthost.lab.test"], kills=args.kills)
            finally:
                worker.stop()
                beat.stop()
        print(f"== worker kills ({FAST_RECOVERY_ENV['RELAYFLEET_LEASE_S']} s lease, "
              f"{FAST_RECOVERY_ENV['RELAYFLEET_SWEEP_EVERY_S']} s sweep)")
        print("\n".join(result.lines()))
        broken = result.jobs_lost or result.changed_twice or result.torn_configs
        return 1 if broken else 0
    finally:
        redis.stop()
        pg.stop()


def restarts(args: argparse.Namespace) -> int:
    """Restart Redis, then PostgreSQL (each stopped ~2.5 s, started again on the same port
    with its data) in the middle of ``--restart-jobs`` set_smarthost jobs each, concurrency
    2, on ``--restart-hosts`` agent lab hosts (real worker and beat); print jobs lost, hosts
    failed, changed twice, torn configs, how long each job stalled, and any worker or beat
    the driver had to start again as a supervisor would. Needs root."""
    import os

    from controller.migrate import upgrade
    from tests.controller_client import Controller
    from tests.lab.chaos import FAST_RECOVERY_ENV, agent_hosts, restart_during_changes, start_stack
    from tests.lab.lab import Lab
    from tests.lab.services import PostgresServer, RedisServer

    workdir = Path(tempfile.mkdtemp(prefix="relayfleet-chaos-"))
    redis = RedisServer(workdir / "redis").start()
    pg = PostgresServer().start()
    try:
        env = {"RELAYFLEET_DATABASE_URL": pg.new_database(), "RELAYFLEET_BROKER_URL": redis.url,
               "RELAYFLEET_SECRET_KEY": "relayfleet-chaos-secret-key-0123456789",
               "RELAYFLEET_DATA_DIR": str(workdir), **FAST_RECOVERY_ENV}
        os.environ.update(env)
        upgrade(env["RELAYFLEET_DATABASE_URL"])
        controller = Controller.create()
        with Lab(workdir / "lab") as lab:
            hosts = agent_hosts(lab, controller, args.restart_hosts, prefix="rs")
            worker, beat = start_stack(env, workdir)
            try:
                results = [restart_during_changes(
                    controller, name, server.restart, [worker, beat], hosts,
                    [f"[{lab.smarthost.address}]", "smarthost.lab.test"],
                    jobs=args.restart_jobs)
                    for name, server in (("redis", redis), ("postgresql", pg))]
            finally:
                worker.stop()
                beat.stop()
        broken = 0
        for result in results:
            print(f"== {result.service} restarted mid-job "
                  f"({FAST_RECOVERY_ENV['RELAYFLEET_LEASE_S']} s lease, "
                  f"{FAST_RECOVERY_ENV['RELAYFLEET_SWEEP_EVERY_S']} s sweep, concurrency 2)")
            print("\n".join(result.lines()))
            broken += (result.jobs_lost + result.hosts_failed + result.changed_twice
                       + result.torn_configs + result.missed)
        print(f"worker and beat logs: {workdir}")
        return 1 if broken else 0
    finally:
        redis.stop()
        pg.stop()


def agent_kills(args: argparse.Namespace) -> int:
    """SIGKILL one TLS agent lab host's agent ``--agent-kills`` times mid-``PUT
    /v1/smarthost``, restarting it each time; print torn configs, answers that lied and
    409s after a kill (each must be 0). Needs root."""
    import secrets

    from tests.lab.chaos import kill_agent_during_changes
    from tests.lab.lab import Lab

    workdir = Path(tempfile.mkdtemp(prefix="relayfleet-chaos-"))
    with Lab(workdir / "lab") as lab:
        host = lab.add_host("akill", "debian")
        token = secrets.token_urlsafe(24)
        url = host.start_agent(token, tls=True)
        result = kill_agent_during_changes(
            host, token, url, [f"[{lab.smarthost.address}]", "smarthost.lab.test"],
            kills=args.agent_kills, max_rounds=3 * args.agent_kills)
        host.stop_agent()
        lock_left = (host.mail_dir / ".relayfleet.lock").exists()
    print("== agent kills (one TLS agent lab host, SIGKILL 0-1.5 s into a change)")
    print("\n".join(result.lines()))
    print(f"change lock left behind at the end: {'yes' if lock_left else 'no'}")
    for line in result.details[:args.show] + result.odd_answers[:args.show]:
        print(f"  {line}")
    broken = (result.torn_configs or result.lies or result.named_mc_not_cf
              or result.refused_after_kill or lock_left
              or result.kills < args.agent_kills)
    return 1 if broken else 0


def api_kills(args: argparse.Namespace) -> int:
    """SIGKILL ``relayfleet-controller serve`` ``--api-kills`` times mid-``POST /v1/jobs``
    (a job over ``--inventory`` hosts, PostgreSQL), retrying each request with its
    Idempotency-Key until accepted; print kills, keys and jobs per key (must be 1 each).
    Needs root (PostgreSQL)."""
    import os

    from controller.migrate import upgrade
    from tests.controller_client import Controller
    from tests.lab.chaos import import_documentation_hosts, kill_api_during_job_posts
    from tests.lab.services import PostgresServer, RedisServer

    logging.disable(logging.ERROR)
    workdir = Path(tempfile.mkdtemp(prefix="relayfleet-chaos-"))
    redis = RedisServer(workdir / "redis").start()
    pg = PostgresServer().start()
    try:
        env = {"RELAYFLEET_DATABASE_URL": pg.new_database(), "RELAYFLEET_BROKER_URL": redis.url,
               "RELAYFLEET_SECRET_KEY": "relayfleet-chaos-secret-key-0123456789",
               "RELAYFLEET_DATA_DIR": str(workdir),
               "RELAYFLEET_EGRESS_ALLOW": "loopback,192.0.2.0/24"}
        os.environ.update(env)
        upgrade(env["RELAYFLEET_DATABASE_URL"])
        controller = Controller.create()
        site = controller.site(controller.tenant("Chaos API"), "Big")
        import_documentation_hosts(controller, site, args.inventory)
        result = kill_api_during_job_posts(
            env, workdir, controller.admin,
            {"action": "flush_queue", "target": {"sites": ["Big"]}}, kills=args.api_kills)
    finally:
        redis.stop()
        pg.stop()
    print(f"== API kills (relayfleet-controller serve on PostgreSQL, a job over "
          f"{args.inventory} hosts, SIGKILL of its process group mid-POST)")
    print("\n".join(result.lines()))
    for line in result.odd_answers[:args.show]:
        print(f"  {line}")
    broken = (result.unanswered or result.stray_jobs or result.odd_answers
              or set(result.jobs_per_key.values()) != {1} or result.kills < args.api_kills)
    return 1 if broken else 0


#: sub-command name -> function(args) -> exit status; the chaos suite adds its own here
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "hostile": hostile,
    "worker-kills": worker_kills,
    "restarts": restarts,
    "agent-kills": agent_kills,
    "api-kills": api_kills,
}


def parser() -> argparse.ArgumentParser:
    """The command line: one sub-command per figure (``all`` runs each)."""
    top = argparse.ArgumentParser(prog="python -m tests.benchmarks.chaos",
                                  description=__doc__.split("\n\n")[0] if __doc__ else None)
    sub = top.add_subparsers(dest="command")
    sub.add_parser("all", help="every figure")
    one = sub.add_parser("hostile", help="the hostile-input sweep (agent and controller)")
    kills = sub.add_parser("worker-kills", help="SIGKILL the worker during changes (root)")
    agent = sub.add_parser("agent-kills", help="SIGKILL an agent mid-change (root)")
    api = sub.add_parser("api-kills", help="SIGKILL the API mid-POST /v1/jobs (root)")
    for target in (top, kills):
        target.add_argument("--kills", type=int, default=30, help="how many (default 30)")
        target.add_argument("--hosts", type=int, default=20,
                            help="agent lab hosts (default 20)")
    again = sub.add_parser("restarts", help="restart Redis, then PostgreSQL, mid-job (root)")
    for target in (top, again):
        target.add_argument("--restart-hosts", type=int, default=10,
                            help="agent lab hosts for restarts (default 10)")
        target.add_argument("--restart-jobs", type=int, default=2,
                            help="jobs (one restart each) per service (default 2)")
    for target in (top, agent):
        target.add_argument("--agent-kills", type=int, default=50,
                            help="agent kills mid-change (default 50)")
    for target in (top, api):
        target.add_argument("--api-kills", type=int, default=10,
                            help="API kills mid-POST (default 10)")
        target.add_argument("--inventory", type=int, default=2000,
                            help="hosts the job targets (default 2000)")
    for target in (agent, api):
        target.add_argument("--show", type=int, default=20,
                            help="how many details to print (default 20)")
    for target in (top, one):
        target.add_argument("--full", action="store_true",
                            help="every curated hostile string in every controller field")
        target.add_argument("--show", type=int, default=20,
                            help="how many failures to print in full (default 20)")
        group = target.add_mutually_exclusive_group()
        group.add_argument("--agent-only", action="store_true")
        group.add_argument("--controller-only", action="store_true")
    return top


def main(argv: list[str] | None = None) -> int:
    """Run the chosen figures (``hostile`` by default)."""
    args = parser().parse_args(argv)
    command = args.command or "hostile"
    if command == "all":
        return max(run(args) for run in COMMANDS.values())
    return COMMANDS[command](args)


if __name__ == "__main__":
    sys.exit(main())
