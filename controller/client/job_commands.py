"""Commands that run jobs (smarthost, flush, status, diagnose, queue, log, hostname) and
follow them (jobs list/show/watch/cancel/retry)."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import click
from rich.text import Text

from controller.client.api import new_idempotency_key
from controller.client.context import Cli, Command, Group, examples, pass_cli
from controller.client.errors import EXIT_DETACHED, EXIT_OK, UsageProblem
from controller.client.output import Output
from controller.client.targets import TargetChoice, build_target, resolve_ref, target_options
from controller.client.watch import (
    FINAL_JOB_STATES,
    STATE_STYLES,
    UNIT_STATES,
    JobOptions,
    exit_code_for,
    finish,
    follow,
    run_job,
    start_job,
    wait_for,
)

F = TypeVar("F", bound=Callable[..., Any])


def job_options(*, dry_run: bool = False) -> Callable[[F], F]:
    """The options every job command takes (and ``--dry-run`` for changes)."""

    def decorate(function: F) -> F:
        options = [
            click.option("--concurrency", type=click.IntRange(1, 1000), metavar="N",
                         help="Hosts worked on at once (the controller's default: 20)."),
            click.option("--max-failures", type=click.IntRange(0), metavar="N",
                         help="Start no new host once more than N hosts failed."),
            click.option("--timeout", "timeout_s", type=click.IntRange(5, 3600), metavar="S",
                         help="Time box for each host, in seconds (default 120)."),
            click.option("--no-wait", is_flag=True,
                         help="Print the job id and return at once."),
            click.option("--cancel-on-interrupt", is_flag=True,
                         help="Ctrl-C cancels the job instead of detaching from it."),
        ]
        if dry_run:
            options.insert(0, click.option(
                "--dry-run", is_flag=True,
                help="Change nothing: show each host's diff of what would change."))
        for option in reversed(options):
            function = option(function)
        return function

    return decorate


@dataclass
class RolloutOptions(JobOptions):
    """Job options with a rollout in waves (``--canary``, ``--wave-size``)."""

    canary: int | str | None = None
    wave_size: int | None = None

    def api_options(self) -> dict[str, Any]:
        """The job's ``options`` document, waves included when given."""
        options = super().api_options()
        if self.canary is not None:
            options["canary"] = self.canary
        if self.wave_size is not None:
            options["wave_size"] = self.wave_size
        return options


def _canary(text: str | None) -> int | str | None:
    """``--canary``'s value: a number of hosts, or a percentage kept as ``"P%"``."""
    if text is None:
        return None
    if re.fullmatch(r"[1-9][0-9]{0,5}", text):
        return int(text)
    if re.fullmatch(r"([1-9][0-9]?|100)%", text):
        return text
    raise UsageProblem(f"--canary {text}: give a number of hosts (e.g. 2) or a percentage "
                       "(e.g. 10%)")


def rollout_options(*, verify: bool) -> Callable[[F], F]:
    """``--canary`` and ``--wave-size`` (and ``--verify-to`` where the action can probe
    delivery) for the commands that change hosts, and flush."""

    def decorate(function: F) -> F:
        options = [
            click.option("--canary", metavar="N|P%",
                         help="Roll out in waves: first N hosts (or P% of them); the next "
                              "wave starts only when every earlier host succeeded."),
            click.option("--wave-size", type=click.IntRange(1), metavar="N",
                         help="Hosts per wave after the canary (default: all the rest)."),
        ]
        if verify:
            options.insert(0, click.option(
                "--verify-to", metavar="ADDRESS",
                help="After the change, send a probe to ADDRESS through each host and wait "
                     "for the relay's verdict (a probe not delivered fails the host; a "
                     "smarthost change is rolled back). Needed with --canary."))
        for option in reversed(options):
            function = option(function)
        return function

    return decorate


def _verify_params(params: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """``params`` with ``verify`` when ``--verify-to`` was given."""
    to = kwargs.pop("verify_to", None)
    if to:
        params["verify"] = {"to": to}
    return params


def _take_job_options(kwargs: dict[str, Any]) -> JobOptions:
    common: dict[str, Any] = {
        "concurrency": kwargs.pop("concurrency"), "max_failures": kwargs.pop("max_failures"),
        "timeout_s": kwargs.pop("timeout_s"), "dry_run": kwargs.pop("dry_run", False),
        "wait": not kwargs.pop("no_wait"),
        "cancel_on_interrupt": kwargs.pop("cancel_on_interrupt")}
    if "canary" in kwargs or "wave_size" in kwargs:
        return RolloutOptions(**common, canary=_canary(kwargs.pop("canary", None)),
                              wave_size=kwargs.pop("wave_size", None))
    return JobOptions(**common)


def run_on_target(cli: Cli, action: str, params: dict[str, Any],
                   kwargs: dict[str, Any]) -> int:
    """Build the target and the options from a command's arguments and run the job."""
    choice = TargetChoice.from_options(kwargs)
    options = _take_job_options(kwargs)
    target = build_target(choice, cli.api)
    return run_job(cli.api, cli.out, action, target=target, params=params, options=options)


def parse_relay(text: str) -> tuple[str, int | None]:
    """``relay.example.net:587`` / ``[192.0.2.1]:25`` / ``relay.example.net`` → (host,
    port)."""
    host, port = text, None
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise UsageProblem(f"{text!r}: an address literal needs its closing ]")
        host, rest = text[:close + 1], text[close + 1:]
        if rest:
            if not rest.startswith(":"):
                raise UsageProblem(f"{text!r}: expected :PORT after ]")
            port = _port(rest[1:], text)
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        port = _port(port_text, text)
    if not host or host == "[]":
        raise UsageProblem("the relay's name is empty", hint="e.g. relay.example.net:587")
    return host, port


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise UsageProblem(f"{whole!r}: the port must be a number from 1 to 65535")
    return int(text)


def read_password(from_file: str | None, from_stdin: bool) -> str:
    """The relay password from a file or stdin (never from a flag: flags show in ps)."""
    if from_file and from_stdin:
        raise UsageProblem("give --password-stdin or --password-file, not both")
    try:
        if from_stdin:
            text = sys.stdin.readline()
        else:
            with open(from_file or "", encoding="utf-8") as handle:
                text = handle.readline()
    except OSError as exc:
        raise UsageProblem(f"cannot read the password file: {exc.strerror}") from None
    password = text.rstrip("\r\n")
    if not password:
        raise UsageProblem("the password is empty")
    return password


# -- smarthost ---------------------------------------------------------------------------

@click.group(cls=Group, epilog=examples(
    "relayfleet smarthost show --site lyon",
    "relayfleet smarthost set relay.example.net:587 --tenant acme --no-mx",
    "relayfleet smarthost remove --host pbx-lyon-1 --dry-run"))
def smarthost() -> None:
    """Show, set or remove the smarthost (relay) of hosts."""


@smarthost.command("show", epilog=examples("relayfleet smarthost show --tenant acme",
                                           "relayfleet smarthost show --host pbx-lyon-1 --json"))
@target_options
@job_options()
@pass_cli
def smarthost_show(cli: Cli, /, **kwargs: Any) -> int:
    """Read each host's smarthost as its MTA has it now (a collect_status job)."""
    return run_on_target(cli, "collect_status", {}, kwargs)


@smarthost.command("set", epilog=examples(
    "relayfleet smarthost set relay.lab.test:2525 --site lyon --no-mx",
    "relayfleet smarthost set smtp-relay.gmail.com:587 --tenant acme --auth-user pbx@acme.fr "
    "--password-stdin < pw.txt",
    "relayfleet smarthost set relay.example.net --all --tls verify --dry-run",
    "relayfleet smarthost set relay.example.net --tag pbx --masquerade acme.fr",
    "relayfleet smarthost set relay.example.net:587 --tenant acme --verify-to probe@acme.fr "
    "--canary 10% --wave-size 20"))
@click.argument("relay", metavar="RELAY[:PORT]")
@target_options
@click.option("--mx/--no-mx", default=False, show_default=True,
              help="Look up the relay's MX records (--no-mx: connect to RELAY itself).")
@click.option("--mailer", type=click.Choice(["relay", "smtp", "esmtp", "smtp8", "dsmtp"]),
              help="sendmail's mailer for the relay (default relay).")
@click.option("--auth-user", metavar="U", help="SMTP AUTH user name at the relay.")
@click.option("--password-stdin", is_flag=True, help="Read the AUTH password from stdin.")
@click.option("--password-file", metavar="F", help="Read the AUTH password from a file.")
@click.option("--tls", "tls_mode", type=click.Choice(["may", "encrypt", "verify"]),
              help="STARTTLS: may (opportunistic), encrypt (required), verify (required, "
                   "certificate checked). Default: may, or encrypt with --auth-user.")
@click.option("--tls-ca-file", metavar="PATH",
              help="CA bundle on the hosts to verify the relay with (with --tls verify).")
@click.option("--masquerade", metavar="DOMAIN",
              help="Send the hosts' own mail as @DOMAIN (relays check the sender domain).")
@click.option("--masquerade-headers-only", is_flag=True,
              help="Rewrite only the From: headers, not the envelope sender.")
@rollout_options(verify=True)
@job_options(dry_run=True)
@pass_cli
def smarthost_set(cli: Cli, /, *, relay: str, mx: bool, mailer: str | None, auth_user: str | None,
                  password_stdin: bool, password_file: str | None, tls_mode: str | None,
                  tls_ca_file: str | None, masquerade: str | None,
                  masquerade_headers_only: bool, **kwargs: Any) -> int:
    """Point outbound mail of the TARGET hosts at RELAY (a set_smarthost job).

    The request is the whole relay configuration: what it leaves out (AUTH, masquerade)
    relayfleet removes. Run with --dry-run first to see each host's diff.
    """
    host, port = parse_relay(relay)
    params: dict[str, Any] = {"host": host, "mx": mx}
    if port is not None:
        params["port"] = port
    if mailer:
        params["mailer"] = mailer
    if auth_user:
        params["auth"] = {"username": auth_user,
                          "password": read_password(password_file, password_stdin)}
    elif password_stdin or password_file:
        raise UsageProblem("a password needs --auth-user")
    if tls_mode or tls_ca_file:
        params["tls"] = {key: value for key, value in
                         (("mode", tls_mode), ("ca_file", tls_ca_file)) if value}
    if masquerade:
        params["masquerade"] = {"domain": masquerade, "envelope": not masquerade_headers_only}
    elif masquerade_headers_only:
        raise UsageProblem("--masquerade-headers-only needs --masquerade DOMAIN")
    return run_on_target(cli, "set_smarthost", _verify_params(params, kwargs), kwargs)


@smarthost.command("remove", epilog=examples("relayfleet smarthost remove --site lyon --dry-run"))
@target_options
@rollout_options(verify=False)
@job_options(dry_run=True)
@pass_cli
def smarthost_remove(cli: Cli, /, **kwargs: Any) -> int:
    """Go back to direct delivery on the TARGET hosts (a remove_smarthost job)."""
    return run_on_target(cli, "remove_smarthost", {}, kwargs)


# -- one-shot actions --------------------------------------------------------------------

@click.command("flush", cls=Command, epilog=examples(
    "relayfleet flush --all",
    "relayfleet flush --tenant acme --recipient boss@acme.fr",
    "relayfleet flush --host pbx-lyon-1 --queue-id 4B1C2D3E4F",
    "relayfleet flush --site lyon --verify-to probe@acme.fr --canary 1"))
@target_options
@click.option("--queue-id", metavar="ID", help="Only this message.")
@click.option("--recipient", metavar="R", help="Only messages to this address or domain.")
@click.option("--sender", metavar="S", help="Only messages from this address or domain.")
@click.option("--keep-host-status", is_flag=True,
              help="Do not forget remembered relay failures first (sendmail's "
                   "-OTimeout.hoststatus=0m is used by default).")
@rollout_options(verify=True)
@job_options()
@pass_cli
def flush(cli: Cli, /, *, queue_id: str | None, recipient: str | None, sender: str | None,
          keep_host_status: bool, **kwargs: Any) -> int:
    """Deliver what the TARGET hosts hold now (a flush_queue job)."""
    params: dict[str, Any] = {key: value for key, value in (
        ("queue_id", queue_id), ("recipient", recipient), ("sender", sender)) if value}
    if keep_host_status:
        params["reset_host_status"] = False
    return run_on_target(cli, "flush_queue", _verify_params(params, kwargs), kwargs)


@click.command("status", cls=Command, epilog=examples("relayfleet status --all",
                                         "relayfleet status --site lyon --json"))
@target_options
@job_options()
@pass_cli
def status(cli: Cli, /, **kwargs: Any) -> int:
    """Hostname, MTA, smarthost and queue of the TARGET hosts (a collect_status job; the
    fleet view is updated from it)."""
    return run_on_target(cli, "collect_status", {}, kwargs)


@click.command("diagnose", cls=Command, epilog=examples("relayfleet diagnose --host pbx-lyon-1",
                                           "relayfleet diagnose --tenant acme --domain acme.fr"))
@target_options
@click.option("--domain", metavar="D", help="Also check this sender domain's SPF record.")
@click.option("--public-ip", metavar="IP", help="The hosts' public address, for SPF.")
@job_options()
@pass_cli
def diagnose(cli: Cli, /, *, domain: str | None, public_ip: str | None, **kwargs: Any) -> int:
    """Run the delivery checklist on the TARGET hosts: name, /etc/hosts, MTA, relay reachable,
    STARTTLS, SPF (a diagnose job)."""
    params = {key: value for key, value in (("domain", domain), ("public_ip", public_ip))
              if value}
    return run_on_target(cli, "diagnose", params, kwargs)


@click.command("hostname", cls=Command, epilog=examples(
    "relayfleet hostname --host pbx-lyon-1 --fqdn pbx-lyon-1.acme.fr --dry-run",
    "relayfleet hostname --site lyon --domain acme.fr"))
@target_options
@click.option("--fqdn", metavar="NAME", help="The host's full name (one host).")
@click.option("--domain", metavar="D", help="Qualify each host's own short name with D.")
@rollout_options(verify=False)
@job_options(dry_run=True)
@pass_cli
def hostname(cli: Cli, /, *, fqdn: str | None, domain: str | None, **kwargs: Any) -> int:
    """Make the TARGET hosts' names fully qualified in /etc/hosts, as relays expect of the
    EHLO name (a fix_hostname job)."""
    if bool(fqdn) == bool(domain):
        raise UsageProblem("give exactly one of --fqdn NAME or --domain D")
    params = {"fqdn": fqdn} if fqdn else {"domain": domain}
    return run_on_target(cli, "fix_hostname", params, kwargs)


def _one_host_job(cli: Cli, action: str, host: str, params: dict[str, Any],
                  show: Callable[[Output, Mapping[str, Any]], None]) -> int:
    """Run an action on one host, wait (progress on a terminal), and show its answer in
    detail; a failure is reported as any job's."""
    accepted, _ = start_job(cli.api, cli.out, action,
                            target={"hosts": [resolve_ref(cli.api, "host", host)]},
                            params=params, options=JobOptions())
    if accepted is None:
        return EXIT_DETACHED
    job = wait_for(cli.api, cli.out, int(accepted["id"]), host_lines=False)
    if job is None:
        return EXIT_DETACHED
    results = job.get("results") or []
    if cli.out.json_mode or len(results) != 1 or results[0]["status"] != "succeeded":
        finish(cli.out, job)
        return exit_code_for(job)
    show(cli.out, results[0]["data"] or {})
    return EXIT_OK


def show_queue(out: Output, data: Mapping[str, Any]) -> None:
    """A host's queue as a table."""
    messages = data.get("messages") or []
    out.table(["id", "queued", "from", "to", "why it waits"],
              [(m["id"], m.get("queued_at"), m["sender"], m["recipients"], m.get("reason"))
               for m in messages],
              title=f"{data.get('count', len(messages))} queued", empty="the queue is empty")


def show_log(out: Output, data: Mapping[str, Any]) -> None:
    """A host's recent maillog: deliveries coloured by outcome, problems named."""
    for record in data.get("records") or []:
        stat = (record.get("fields") or {}).get("stat", "")
        style = ("red" if record.get("problem") or stat.startswith(("Deferred", "deferred"))
                 else "green" if stat.startswith(("Sent", "sent")) else "")
        text = f"{record['timestamp']} {record['program']} {record['message']}"
        if record.get("problem"):
            text += f"   [{record['problem']}]"
        out.say(Text(text, style=style))
    summary = data.get("summary") or {}
    out.say(Text(f"{summary.get('sent', 0)} sent, {summary.get('deferred', 0)} deferred, "
                 f"{summary.get('bounced', 0)} bounced", style="bold"))
    for problem in summary.get("problems") or []:
        out.say(Text(f"  {problem['label']}: {problem['lines']} lines", style="yellow"))


@click.command("queue", cls=Command, epilog=examples("relayfleet queue pbx-lyon-1",
                                        "relayfleet queue 42 --json"))
@click.argument("host", metavar="HOST")
@pass_cli
def queue(cli: Cli, /, *, host: str) -> int:
    """List the messages HOST (name or id) holds, and why each waits."""
    return _one_host_job(cli, "queue_list", host, {}, show_queue)


@click.command("log", cls=Command, epilog=examples("relayfleet log pbx-lyon-1",
                                      "relayfleet log pbx-lyon-1 --lines 500"))
@click.argument("host", metavar="HOST")
@click.option("--lines", type=click.IntRange(1, 10000), default=200, show_default=True,
              help="How many maillog lines to read.")
@pass_cli
def log(cli: Cli, /, *, host: str, lines: int) -> int:
    """Show the tail of HOST's maillog, Deferred and relay problems highlighted."""
    return _one_host_job(cli, "read_log", host, {"lines": lines}, show_log)


# -- jobs ---------------------------------------------------------------------------------

@click.group("jobs", cls=Group, epilog=examples("relayfleet jobs list --status running",
                                                "relayfleet jobs watch 42",
                                                "relayfleet jobs retry 42"))
def jobs() -> None:
    """List, follow, cancel and retry jobs."""


@jobs.command("list", epilog=examples("relayfleet jobs list",
                                      "relayfleet jobs list --status partial --limit 5"))
@click.option("--status", type=click.Choice(["queued", "running", "succeeded", "failed",
                                             "partial", "cancelled"]))
@click.option("--action", metavar="A", help="Only this action (e.g. flush_queue).")
@click.option("--limit", type=click.IntRange(1, 500), default=20, show_default=True)
@pass_cli
def jobs_list(cli: Cli, /, *, status: str | None, action: str | None, limit: int) -> int:
    """The newest jobs, with their counts."""
    page = cli.api.get("/v1/jobs", status=status, action=action, limit=limit)
    if cli.out.json_mode:
        cli.out.document(page)
        return EXIT_OK
    rows = []
    for job in page["items"]:
        counts = job["counts"]
        rows.append((job["id"], job["action"], job["status"],
                     f"{counts['succeeded']}/{counts['total']}",
                     counts["failed"] + counts["unreachable"], job["created_at"][:19]))
    cli.out.table(["id", "action", "status", "ok/total", "failed", "created"], rows,
                  styles=[STATE_STYLES.get(job["status"]) for job in page["items"]],
                  empty="no jobs yet")
    return EXIT_OK


@jobs.command("show", epilog=examples("relayfleet jobs show 42", "relayfleet jobs show 42 --json",
                                      "relayfleet jobs show 42 --status failed"))
@click.argument("job_id", type=click.IntRange(1), metavar="ID")
@click.option("--status", "host_status", type=click.Choice(UNIT_STATES), default=None,
              help="Only the hosts in this state (the counts stay the whole job's): which "
                   "of 5,000 hosts failed, without the 4,990 that did not.")
@pass_cli
def jobs_show(cli: Cli, /, *, job_id: int, host_status: str | None) -> int:
    """A job's state and every host's result (exit code as if you had waited for it)."""
    job = cli.api.get(f"/v1/jobs/{job_id}", host_status=host_status)
    finish(cli.out, job)
    return exit_code_for(job) if job["status"] in FINAL_JOB_STATES else EXIT_OK


@jobs.command("watch", epilog=examples("relayfleet jobs watch 42"))
@click.argument("job_id", type=click.IntRange(1), metavar="ID")
@click.option("--cancel-on-interrupt", is_flag=True, help="Ctrl-C cancels the job.")
@pass_cli
def jobs_watch(cli: Cli, /, *, job_id: int, cancel_on_interrupt: bool) -> int:
    """Follow a job live until it ends."""
    return follow(cli.api, cli.out, job_id, cancel_on_interrupt=cancel_on_interrupt)


@jobs.command("cancel", epilog=examples("relayfleet jobs cancel 42"))
@click.argument("job_id", type=click.IntRange(1), metavar="ID")
@pass_cli
def jobs_cancel(cli: Cli, /, *, job_id: int) -> int:
    """Start no more hosts of a job (those running finish)."""
    job = cli.api.post(f"/v1/jobs/{job_id}/cancel")
    if cli.out.json_mode:
        cli.out.document(job)
    else:
        cli.out.say(f"job {job_id}: {job['status']} (hosts already running finish; "
                    f"relayfleet jobs watch {job_id} to see them end)")
    return EXIT_OK


@jobs.command("retry", epilog=examples("relayfleet jobs retry 42", "relayfleet jobs retry 42 "
                                                                    "--no-wait"))
@click.argument("job_id", type=click.IntRange(1), metavar="ID")
@click.option("--no-wait", is_flag=True, help="Print the new job's id and return.")
@pass_cli
def jobs_retry(cli: Cli, /, *, job_id: int, no_wait: bool) -> int:
    """Run a job again on its failed and unreachable hosts (a new job)."""
    # a key: a retry after a lost answer does not start a second new job
    accepted = cli.api.post(f"/v1/jobs/{job_id}/retry", idempotency_key=new_idempotency_key())
    if no_wait:
        if cli.out.json_mode:
            cli.out.document(accepted)
        else:
            cli.out.result(str(accepted["id"]))
        return EXIT_OK
    return follow(cli.api, cli.out, int(accepted["id"]))


def register(group: click.Group) -> None:
    """Add these commands to ``relayfleet``."""
    for command in (smarthost, flush, status, diagnose, hostname, queue, log, jobs):
        group.add_command(command)
