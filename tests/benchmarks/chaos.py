"""Chaos figures: prints them, asserts nothing.

``python -m tests.benchmarks.chaos [hostile|worker-kills|all] [options]``

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

Further figures (Redis and PostgreSQL restarts mid-job, agent kills, the API killed
mid-``POST /v1/jobs``) go here as sub-commands: register a function in :data:`COMMANDS`
and its arguments in :func:`parser`; ``all`` runs every registered one.
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


#: sub-command name -> function(args) -> exit status; the chaos suite adds its own here
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "hostile": hostile,
    "worker-kills": worker_kills,
}


def parser() -> argparse.ArgumentParser:
    """The command line: one sub-command per figure (``all`` runs each)."""
    top = argparse.ArgumentParser(prog="python -m tests.benchmarks.chaos",
                                  description=__doc__.split("\n\n")[0] if __doc__ else None)
    sub = top.add_subparsers(dest="command")
    sub.add_parser("all", help="every figure")
    one = sub.add_parser("hostile", help="the hostile-input sweep (agent and controller)")
    kills = sub.add_parser("worker-kills", help="SIGKILL the worker during changes (root)")
    for target in (top, kills):
        target.add_argument("--kills", type=int, default=30, help="how many (default 30)")
        target.add_argument("--hosts", type=int, default=20,
                            help="agent lab hosts (default 20)")
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
