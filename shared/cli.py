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

from shared.actions import ACTIONS, Action
from shared.errors import RelayfleetError, ValidationError
from shared.executor import Executor, LocalExecutor
from shared.mta import DEFAULT_LOG_LINES, detect_kind, operations_for
from shared.mta_kind import resolve_profile
from shared.profile import FLAVOURS, MTA_KINDS, check_settings

EXIT_FAILED = 1
EXIT_INVALID = 2
#: sub-commands in the order --help lists them
_COMMANDS = ("read-smarthost", "set-smarthost", "remove-smarthost", "queue", "flush", "log",
             "diagnose", "status", "fix-hostname")
_BY_COMMAND: dict[str, Action[Any]] = {action.command: action for action in ACTIONS.values()}


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
    parser.add_argument("--flavour", default="debian", choices=FLAVOURS,
                        help="host profile defaults (paths, restart command, maillog)")
    parser.add_argument("--mta", default="sendmail", choices=MTA_KINDS,
                        help="the host's MTA; auto: the one running (else the only one "
                             "configured), detected before the operation")
    parser.add_argument("--profile-json", metavar="JSON",
                        help='profile overrides, e.g. \'{"restart": ["systemctl", "restart", '
                             '"sendmail"]}\'')
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = {name: sub.add_parser(name, help=_BY_COMMAND[name].summary)
                for name in _COMMANDS}
    commands["set-smarthost"].add_argument(
        "--json", required=True, metavar="BODY",
        help='{"host": ..., "port": 2525, "mx": false, "auth": {...}} '
             "or - to read it from standard input")
    for name, cmd in commands.items():
        if _BY_COMMAND[name].changes_host:
            cmd.add_argument("--dry-run", action="store_true",
                             help="print the diff, change nothing")
    commands["flush"].add_argument(
        "--json", metavar="BODY",
        help='{"reset_host_status": true, "queue_id"|"recipient"|"sender": ...}')
    # Options named after request fields go into the request (see _request_data).
    commands["log"].add_argument("--lines", type=int, default=DEFAULT_LOG_LINES)
    commands["diagnose"].add_argument(
        "--domain", help="check this domain's SPF record covers --public-ip")
    commands["diagnose"].add_argument("--public-ip")
    commands["fix-hostname"].add_argument(
        "--fqdn", help="the host's full name (its first label is the current short name)")
    commands["fix-hostname"].add_argument(
        "--domain", help="qualify the current short name with this domain instead")
    return parser


def _request_data(args: argparse.Namespace, action: Action[Any]) -> Any:
    """The request as JSON: the --json body, or the options named after its fields."""
    if getattr(args, "json", None) is not None:
        return _body(args.json)
    fields = action.params_schema().fields
    return {name: value for name, value in vars(args).items()
            if name in fields and name != "dry_run" and value is not None}


def run(argv: Sequence[str] | None = None,
        executor: Executor | None = None) -> tuple[int, dict[str, Any]]:
    """Parse ``argv``, run the operation, return (exit code, JSON document).

    The operation runs on this machine unless another ``executor`` (SSH) is given.
    """
    args = build_parser().parse_args(argv)
    action = _BY_COMMAND[args.command]
    try:
        overrides = _body(args.profile_json)
        if not isinstance(overrides, dict):
            raise ValidationError.for_field("profile_json", "must be a JSON object")
        check_settings(args.mta, args.flavour, overrides)
        request = action.parse(_request_data(args, action))
        with executor or LocalExecutor() as host:
            profile = resolve_profile(args.mta, args.flavour, overrides,
                                      lambda: detect_kind(host))
            result = action.run(operations_for(host, profile), request,
                                dry_run=getattr(args, "dry_run", False))
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
