"""Chaos figures for issue 10: prints them, asserts nothing.

``python -m tests.benchmarks.chaos [hostile] [--full] [--agent-only|--controller-only]``

- **hostile**: the hostile-input sweep of ``tests/integration/test_hostile_inputs.py`` (its
  generator and drivers, imported, not copied): generated hostile values in every field of
  every route of the agent (on a fake Debian sendmail host) and of the controller (SQLite,
  in-memory broker), with an audit hook watching for any process start. Prints
  ``hostile inputs tried: N / reached m4 or a shell: 0 / 5xx: 0`` and the details of any
  failure. Needs no root. ``--full`` gives every controller field every curated string (the
  test gives each 60 of them), which takes a few minutes.

The other chaos figures — worker kills (kills survived, recovery time, hosts changed twice,
jobs lost), Redis and PostgreSQL restarts mid-job, agent kills (torn configs) and the API
killed mid-``POST /v1/jobs`` — are added here by the chaos suite (``tests/lab/chaos.py``,
``tests/integration/test_chaos.py``) as further sub-commands: register a function in
:data:`COMMANDS` and its arguments in :func:`parser`; ``all`` runs every registered one.
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


#: sub-command name -> function(args) -> exit status; the chaos suite adds its own here
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "hostile": hostile,
}


def parser() -> argparse.ArgumentParser:
    """The command line: one sub-command per figure (``all`` runs each)."""
    top = argparse.ArgumentParser(prog="python -m tests.benchmarks.chaos",
                                  description=__doc__.split("\n\n")[0] if __doc__ else None)
    sub = top.add_subparsers(dest="command")
    sub.add_parser("all", help="every figure")
    one = sub.add_parser("hostile", help="the hostile-input sweep (agent and controller)")
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
