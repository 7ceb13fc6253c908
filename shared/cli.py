"""``relayfleet-ops``: run one MTA operation on this host and print its JSON result.

For engineers on a box and for the lab; the agent and the controller call the same
operations. Request bodies are JSON (``--json -`` reads standard input, so a password
never has to appear in a process list).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from shared.errors import RelayfleetError, ValidationError
from shared.executor import Executor, LocalExecutor
from shared.mta import operations_for, parse_flush_request, validate_log_lines
from shared.profile import build_profile
from shared.results import OperationResult
from shared.validation import parse_smarthost_request

EXIT_FAILED = 1
EXIT_INVALID = 2


def _body(raw: str | None) -> Any:
    if raw is None:
        return {}
    text = sys.stdin.read() if raw == "-" else raw
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError.for_field("body", f"not valid JSON: {exc.msg}") from exc


def build_parser() -> argparse.ArgumentParser:
    """The command-line grammar."""
    parser = argparse.ArgumentParser(
        prog="relayfleet-ops",
        description="Run one relayfleet MTA operation on this host and print the JSON result.",
    )
    parser.add_argument("--flavour", default="debian", choices=["debian", "rhel"],
                        help="host profile defaults (paths, restart command, maillog)")
    parser.add_argument("--mta", default="sendmail", choices=["sendmail", "postfix"])
    parser.add_argument("--profile-json", metavar="JSON",
                        help='profile overrides, e.g. \'{"restart": ["systemctl", "restart", '
                             '"sendmail"]}\'')
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("read-smarthost", help="show the smarthost in sendmail.mc and sendmail.cf")
    for name, text in (("set-smarthost", "point outbound mail at a smarthost"),
                       ("remove-smarthost", "go back to direct delivery")):
        cmd = sub.add_parser(name, help=text)
        if name == "set-smarthost":
            cmd.add_argument("--json", required=True, metavar="BODY",
                             help='{"host": ..., "port": 2525, "mx": false, "auth": {...}} '
                                  "or - to read it from standard input")
        cmd.add_argument("--dry-run", action="store_true", help="print the diff, change nothing")
    sub.add_parser("queue", help="list queued messages")
    flush = sub.add_parser("flush", help="run the queue now")
    flush.add_argument("--json", metavar="BODY",
                       help='{"reset_host_status": true, "queue_id"|"recipient"|"sender": ...}')
    log = sub.add_parser("log", help="parse the tail of the maillog")
    log.add_argument("--lines", type=int, default=200)
    diag = sub.add_parser("diagnose", help="run the delivery checklist")
    diag.add_argument("--domain", help="check this domain's SPF record covers --public-ip")
    diag.add_argument("--public-ip")
    sub.add_parser("status", help="hostname, MTA, smarthost, queue and /etc/hosts in one look")
    return parser


def run(argv: Sequence[str] | None = None,
        executor: Executor | None = None) -> tuple[int, dict[str, Any]]:
    """Parse ``argv``, run the operation, return (exit code, JSON document).

    The operation runs on this machine unless another ``executor`` (SSH) is given.
    """
    args = build_parser().parse_args(argv)
    try:
        overrides = _body(args.profile_json)
        profile = build_profile(args.mta, args.flavour, overrides)
        with executor or LocalExecutor() as host:
            ops = operations_for(host, profile)
            result: OperationResult
            if args.command == "read-smarthost":
                result = ops.read_smarthost()
            elif args.command == "set-smarthost":
                request = parse_smarthost_request(_body(args.json))
                result = ops.set_smarthost(request, dry_run=args.dry_run)
            elif args.command == "remove-smarthost":
                result = ops.remove_smarthost(dry_run=args.dry_run)
            elif args.command == "queue":
                result = ops.queue_list()
            elif args.command == "flush":
                result = ops.queue_flush(parse_flush_request(_body(args.json)))
            elif args.command == "log":
                result = ops.read_log(validate_log_lines(args.lines))
            elif args.command == "diagnose":
                result = ops.diagnose(domain=args.domain, public_ip=args.public_ip)
            else:
                result = ops.status()
    except ValidationError as exc:
        return EXIT_INVALID, {"ok": False, "error_kind": exc.kind, "error": exc.message,
                              "errors": exc.errors}
    except RelayfleetError as exc:
        return EXIT_FAILED, {"ok": False, "error_kind": exc.kind, "error": exc.message}
    return (0 if result.ok else EXIT_FAILED), result.to_dict()


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point."""
    code, doc = run(argv)
    json.dump(doc, sys.stdout, indent=2)
    sys.stdout.write("\n")
    sys.exit(code)


if __name__ == "__main__":
    main()
