"""``relayfleet-agent``: serve the agent's API, or check its configuration."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from agent.config import AgentConfig, MtaUndetected, ProfileResolver, load_config
from shared.errors import ConfigError, RelayfleetError
from shared.executor import LocalExecutor

DEFAULT_CONFIG = "/etc/relayfleet/agent.toml"


def build_parser() -> argparse.ArgumentParser:
    """The command-line grammar."""
    parser = argparse.ArgumentParser(
        prog="relayfleet-agent",
        description="The relayfleet agent: a small HTTPS API on a mail/PBX host that sets the "
                    "smarthost, flushes the queue and reports what happened.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser("serve", help="run the API server")
    serve.add_argument("--config", default=DEFAULT_CONFIG, help=f"(default {DEFAULT_CONFIG})")
    serve.add_argument("--listen", metavar="ADDR:PORT", help="override the config's listen")
    serve.add_argument("--threads", type=int, default=8, help="worker threads (default 8)")
    check = sub.add_parser("check", help="validate the config, print the MTA kind configured "
                                         "and detected, the resolved profile and the TLS "
                                         "certificate's SHA-256 fingerprint")
    check.add_argument("--config", default=DEFAULT_CONFIG, help=f"(default {DEFAULT_CONFIG})")
    return parser


def serve(config: AgentConfig, threads: int) -> None:
    """Serve the API with cheroot (threaded, optional TLS) until SIGTERM/SIGINT."""
    from cheroot import wsgi

    from agent.app import create_app

    app = create_app(config)
    server = wsgi.Server((config.listen_host, config.listen_port), app,
                         numthreads=threads, server_name="relayfleet-agent")
    if config.tls_cert and config.tls_key:
        from cheroot.ssl.builtin import BuiltinSSLAdapter

        server.ssl_adapter = BuiltinSSLAdapter(config.tls_cert, config.tls_key)

    def stop(signum: int, frame: FrameType | None) -> None:
        # Unwind the serving loop in the main thread; stopping happens in finally.
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    scheme = "https" if config.tls_cert else "http"
    log = logging.getLogger("relayfleet.agent")
    _resolve_profile(app.extensions["relayfleet_profiles"], log)
    _finish_interrupted_change(app.extensions["relayfleet_profiles"], log)
    log.info("listening on %s://%s:%s", scheme, config.listen_host, config.listen_port)
    try:
        server.start()
    finally:
        server.stop()


def _resolve_profile(profiles: ProfileResolver, log: logging.Logger) -> None:
    """Resolve the host profile before serving (``auto`` detects the MTA now); the agent
    serves even when detection fails: operations then answer 503 saying what to fix."""
    try:
        profile = profiles.profile()
    except MtaUndetected as exc:
        log.warning("%s", exc.message)
        return
    log.info("MTA: %s (%s)%s", profile.kind, profile.flavour,
             ", detected" if profiles.settings.auto else "")


def _finish_interrupted_change(profiles: ProfileResolver, log: logging.Logger) -> None:
    """Before serving: undo a change the agent was killed in the middle of (between two
    renames), so that its first answers describe files that agree with each other."""
    if profiles.known_kind is None:
        return  # [mta] kind "auto" and no MTA found yet: _resolve_profile said so
    try:
        undone = profiles.operations().finish_interrupted_change()
    except RelayfleetError as exc:  # the change requests will say it again, with details
        log.error("could not undo an interrupted configuration change: %s", exc.message)
        return
    if undone:
        log.warning("a configuration change was cut by the agent's end: %s", undone)


def _check(config: AgentConfig, refusal: str | None) -> None:
    """``relayfleet-agent check``: the resolved configuration on stdout (JSON), warnings
    and the certificate fingerprint on stderr."""
    description = config.describe(LocalExecutor)
    print(json.dumps(description, indent=2))
    kinds = description["mta_kind"]
    print(f"mta kind: configured {kinds['configured']}, detected "
          f"{kinds['detected'] or 'nothing'}, using {kinds['resolved'] or 'nothing yet'}",
          file=sys.stderr)
    if kinds.get("detection_error") and config.mta.auto:
        print(f"relayfleet-agent: warning: {kinds['detection_error']}", file=sys.stderr)
    elif kinds["detected"] not in (None, kinds["resolved"]):
        print(f"relayfleet-agent: warning: this host runs {kinds['detected']}, but agent.toml "
              f"says [mta] kind = \"{kinds['configured']}\"", file=sys.stderr)
    if description["tls_fingerprint"]:
        # What the controller pins: agent.tls_fingerprint of this host.
        print(f"certificate fingerprint: {description['tls_fingerprint']}", file=sys.stderr)
    if refusal:
        print(f"relayfleet-agent: warning: serve will refuse this: {refusal}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point."""
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config, getattr(args, "listen", None))
    except ConfigError as exc:
        print(f"relayfleet-agent: {exc.message}", file=sys.stderr)
        sys.exit(2)
    refusal = config.refusal_to_serve()
    if args.command == "check":
        _check(config, refusal)
        return
    if refusal:
        print(f"relayfleet-agent: {refusal}", file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(level=config.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(config, args.threads)


if __name__ == "__main__":
    main()
