"""install_agent: turn a host managed over SSH into one managed through its agent.

The worker runs it itself, over the host's SSH login (pinned host key, ``sudo -n`` for a
login that is not root), whatever the host's transport is now:

1. read the version installed (``/opt/relayfleet/current/VERSION``);
2. the same version as the bundle's, on a host already managed through that agent (pinned
   fingerprint) that answers its health and an authenticated call: nothing to do;
3. otherwise take the host's change lock (the one MTA changes take, see
   :mod:`shared.hostlock`), so no other install and no MTA change runs meanwhile;
4. read the ``agent.toml`` an earlier install left (install.sh keeps it): refuse, before
   anything changes, one that listens on another port or serves plain HTTP;
5. upload the bundle and its ``install.sh`` into a private temporary directory of the login
   user (SFTP), run ``install.sh`` under sudo and ``timeout`` (ending before the host's time
   box does) with a fresh token on stdin (never in argv), read its ``RELAYFLEET-INSTALL``
   line, and remove the upload;
6. check the agent from here, through the egress policy, trusting only the certificate's
   fingerprint: its health names the bundle's version, and one authenticated call works;
7. only then switch the host's record: transport agent, its URL, the pinned fingerprint,
   and the sealed token when the installer wrote or rotated it. The SSH login is kept (for
   later upgrades). The switch travels beside the result (:attr:`AgentInstall.agent_switch`):
   the ledger applies it with the unit's result, in one transaction. When install.sh gave
   the agent a new token but a later step fails, the switch carries the token alone: the
   host stays on its transport, and the controller still has the token the agent has.

The token never enters a result, a step, a log line or an error.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import secrets
import tarfile
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from agent.config import DEFAULT_LISTEN, parse_listen
from controller.agent_bundle import AgentBundle, find_bundle
from controller.egress import HttpClient, normalise_fingerprint
from controller.transports import AgentSwitch, AgentTransport, HostSpec, SshTransport
from shared.actions import InstallAgentRequest
from shared.errors import ChangeInProgress, ConfigError, OperationError, RelayfleetError
from shared.executor import CommandResult
from shared.hostlock import HostLock
from shared.mta import NoParams
from shared.results import OperationResult, Redactor, Step, trim_output

ACTION = "install_agent"
#: where install.sh keeps the version that runs (a symlink to versions/V)
CURRENT_VERSION_FILE = "/opt/relayfleet/current/VERSION"
#: the last line install.sh prints: this prefix, a space, one JSON object
REPORT_PREFIX = "RELAYFLEET-INSTALL "
#: install.sh's exit code when the new version failed its health check and was rolled back
EXIT_ROLLED_BACK = 3
#: install.sh's exit code for a command line it refuses
EXIT_USAGE = 2
#: install.sh's exit code when another install.sh runs on the host (it changed nothing)
EXIT_BUSY = 4
#: the longest a health or status call from the worker may take
CHECK_TIMEOUT_S = 20.0
#: the agent's configuration, kept by install.sh once written
AGENT_CONFIG = "/etc/relayfleet/agent.toml"
#: what install.sh's ``timeout`` leaves of the host's time box: the agent's two checks from
#: here, removing the upload, and slack; the box's own cut then never lands inside install.sh
AFTER_INSTALLER_S = 2 * CHECK_TIMEOUT_S + 30
#: ``timeout`` sends SIGKILL this long after its SIGTERM if install.sh is still running:
#: long enough for the rollback its SIGTERM starts (stop, switch back, start, one health
#: wait), and still inside the time box (AFTER_INSTALLER_S is longer)
KILL_AFTER_S = 60
#: the least time install.sh is started with (else the host fails before anything changes)
MIN_INSTALLER_S = 60
#: ``timeout``'s exit codes: install.sh ended by its SIGTERM, or by the SIGKILL after it
EXIT_TIMED_OUT = (124, 137)


@dataclass(frozen=True)
class InstallReport:
    """What install.sh's ``RELAYFLEET-INSTALL`` line says."""

    version: str
    previous: str | None
    changed: bool
    token: str
    fingerprint: str
    listen: str
    rolled_back: bool
    service: str

    @property
    def port(self) -> int | None:
        """The port of ``listen`` (None when it does not end in one)."""
        tail = self.listen.rpartition(":")[2]
        return int(tail) if tail.isdigit() else None

    @property
    def kept_token(self) -> bool:
        """Whether the agent kept the token it had (install.sh wrote no new one)."""
        return self.token == "kept"  # noqa: S105 (a state's name, not a secret)


def parse_report(stdout: str) -> InstallReport | None:
    """The ``RELAYFLEET-INSTALL`` line of install.sh's output (its last such line), or
    ``None`` when there is none or it is not the documented object."""
    lines = [line for line in stdout.splitlines() if line.startswith(REPORT_PREFIX)]
    if not lines:
        return None
    try:
        doc = json.loads(lines[-1][len(REPORT_PREFIX):])
        report = InstallReport(
            version=str(doc["version"]),
            previous=None if doc["previous"] is None else str(doc["previous"]),
            changed=bool(doc["changed"]), token=str(doc["token"]),
            fingerprint=str(doc["fingerprint"]), listen=str(doc["listen"]),
            rolled_back=bool(doc["rolled_back"]), service=str(doc["service"]))
    except (ValueError, KeyError, TypeError):
        return None
    if report.token not in ("written", "kept", "rotated"):
        return None
    return report


def agent_url(address: str, port: int) -> str:
    """``https://ADDRESS:PORT`` (an IPv6 address in brackets)."""
    try:
        literal = ipaddress.ip_address(address).version == 6
    except ValueError:
        literal = False
    return f"https://[{address}]:{port}" if literal else f"https://{address}:{port}"


def install_argv(directory: str, bundle: AgentBundle, request: InstallAgentRequest,
                 spec: HostSpec, limit_s: int) -> list[str]:
    """install.sh's command line on the host, ended by ``timeout`` after ``limit_s`` seconds
    (the token goes on stdin, never here)."""
    argv = ["timeout", "-k", str(KILL_AFTER_S), str(limit_s), "sh", f"{directory}/install.sh",
            "--bundle", f"{directory}/{bundle.path.name}", "--sha256", bundle.sha256,
            "--token-stdin"]
    if request.rotate_token:
        argv.append("--rotate-token")
    return [*argv, "--listen", f"0.0.0.0:{request.port}", "--mta", spec.mta_kind,
            "--flavour", spec.mta_flavour]


def install_script(bundle: AgentBundle) -> bytes:
    """The bundle's own install.sh (the bundle's SHA-256 was checked when it was found)."""
    member = f"relayfleet-agent-{bundle.version}/install.sh"
    try:
        with tarfile.open(bundle.path, "r:gz") as archive:
            handle = archive.extractfile(member)
            if handle is None:
                raise KeyError(member)
            return handle.read()
    except (KeyError, OSError, tarfile.TarError) as exc:
        raise OperationError(f"the agent bundle {bundle.path.name} has no readable "
                             f"{member}: rebuild it (relayfleet-controller agent-bundle)"
                             ) from exc


def agent_log_hint(service: str | None) -> str:
    """Where the agent's own log is on the host, for the service manager that runs it."""
    if service == "systemd":
        return "journalctl -u relayfleet-agent on the host"
    if service is None:
        return ("journalctl -u relayfleet-agent on the host (/var/log/relayfleet-agent.log "
                "where there is no systemd)")
    return "/var/log/relayfleet-agent.log on the host"


def failure_text(result: CommandResult, report: InstallReport | None,
                 previous: str | None, limit_s: int | None = None) -> str:
    """Why install.sh failed, and what to do, from its exit code and output."""
    if result.exit_code == EXIT_ROLLED_BACK:
        back = (report.previous if report else None) or previous
        return ("the new version failed its health check and was rolled back to "
                f"{back or 'the state before (no agent)'}; the host stays on its transport; "
                f"see {agent_log_hint(report.service if report else None)}")
    said = trim_output(result.output_text().strip(), 600) or "no output"
    if limit_s is not None and result.exit_code in EXIT_TIMED_OUT:
        return (f"install.sh did not finish within {limit_s} s and was stopped (give the job "
                f"a longer timeout_s); the host stays on its transport: {said}")
    if result.exit_code == EXIT_BUSY:
        return ("another change is running on this host (another install.sh): install_agent "
                "changed nothing; try again when it has finished")
    if result.exit_code == EXIT_USAGE:
        return f"install.sh refused its command line (exit 2): {said}"
    return f"install.sh failed (exit {result.exit_code}): {said}"


class AgentInstall(SshTransport):
    """Runs install_agent on one host over its SSH login (a transport for the lanes).

    :attr:`agent_switch` holds, after a successful run, the switch to the agent (the token
    sealed); after a failure past install.sh, the agent's new token alone (if it got one).
    The lane hands it to the ledger with the unit's result.
    """

    def __init__(self, spec: HostSpec, pool: Any, *, bundle_dir: Path,
                 seal: Callable[[str], str], lock_owner: str | None = None,
                 http: HttpClient | None = None) -> None:
        super().__init__(spec, pool, lock_owner)
        from shared.ssh import SshExecutor

        self.bundle_dir = bundle_dir
        self.seal = seal
        self.http = http
        #: the login user's own commands (its temporary directory, the upload): no sudo
        self.login = SshExecutor(replace(self.executor.target, sudo=False), pool)
        self.agent_switch: AgentSwitch | None = None
        self.steps: list[Step] = []
        self.redact = Redactor()

    def cut(self) -> None:
        """Cut both connections (the login's and the one running commands as root)."""
        super().cut()
        self.login.abort()

    def close(self) -> None:
        """Give both connections back to the pool."""
        super().close()
        self.login.close()

    def run(self, action: str, request: Any, *, dry_run: bool,
            timeout_s: float) -> OperationResult:
        """Install or upgrade the agent within ``timeout_s`` seconds (see the module)."""
        if not isinstance(request, InstallAgentRequest):
            raise OperationError(f"{action} is not {ACTION}")
        self._check_login()
        deadline = time.monotonic() + timeout_s
        return self._boxed(timeout_s, lambda: self._install(request, dry_run, deadline))

    # -- the steps ------------------------------------------------------------------------
    def _check_login(self) -> None:
        spec = self.spec
        missing = ("no SSH key or password is stored for it"
                   if not (spec.ssh_private_key or spec.ssh_password)
                   else "no SSH host key is pinned for it" if not spec.ssh_host_key else None)
        if missing:
            raise OperationError(f"install_agent needs the host's SSH login: {missing}; give "
                                 "the host its ssh settings (relayfleet hosts import, or "
                                 "PATCH /v1/hosts/ID) and pin its key (relayfleet hosts "
                                 "enroll-ssh)")
        if spec.mta_overrides:
            raise OperationError("install_agent cannot carry this host's MTA overrides ("
                                 f"{', '.join(sorted(spec.mta_overrides))}) into the agent's "
                                 "configuration; install the agent by hand with them")

    def _bundle(self, version: str | None) -> AgentBundle:
        try:
            return find_bundle(self.bundle_dir, version)
        except (RelayfleetError, ValueError, OSError) as exc:
            text = exc.message if isinstance(exc, RelayfleetError) else str(exc)
            raise OperationError(f"no agent bundle to install: {text}") from None

    def _installed(self) -> str | None:
        result = self.executor.run(["cat", CURRENT_VERSION_FILE], timeout=30)
        text = result.stdout.decode("utf-8", "replace").strip()
        return (text or None) if result.exit_code == 0 else None

    def _install(self, request: InstallAgentRequest, dry_run: bool,
                 deadline: float) -> OperationResult:
        bundle = self._bundle(request.version)
        previous = self._installed()
        url = agent_url(self.spec.address, request.port)
        base = {"version": bundle.version, "previous": previous, "agent_url": url,
                "dry_run": dry_run}
        if dry_run:
            return self._result(changed=previous != bundle.version or
                                self.spec.transport != "agent", data={
                                    **base, "fingerprint": self.spec.agent_tls_fingerprint,
                                    "transport": self.spec.transport})
        if (previous == bundle.version and not request.rotate_token
                and self._already_managed(url, bundle.version)):
            return self._result(changed=False, data={
                **base, "previous": previous, "fingerprint": self.spec.agent_tls_fingerprint,
                "token": "kept", "transport": "agent"})
        lock = HostLock(self.executor, self._profile().home, self.lock_owner)
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(lock.held())
            except ChangeInProgress as exc:
                raise ChangeInProgress("another change is running on this host (it holds "
                                       f"{lock.path}): install_agent changed nothing; try "
                                       "again when it has finished") from exc
            self._step("change lock", output=f"{lock.path} held")
            return self._install_locked(bundle, request, previous=previous, url=url,
                                        base=base, deadline=deadline)

    def _install_locked(self, bundle: AgentBundle, request: InstallAgentRequest, *,
                        previous: str | None, url: str, base: dict[str, Any],
                        deadline: float) -> OperationResult:
        """Steps 4 to 7 of the module's list, the host's change lock held."""
        self._check_kept_config(request)
        token = secrets.token_urlsafe(32)
        self.redact.add(token)
        report = self._run_installer(bundle, request, token, previous, deadline)
        sealed = None if report.kept_token else self.seal(token)
        if sealed is not None:
            # The agent has this token now, whatever fails below: keep it (the host stays
            # on its transport), or the next run could not talk to its agent.
            self.agent_switch = AgentSwitch(url, report.fingerprint, sealed, checked=False)
        if report.version != bundle.version:
            raise OperationError(f"install.sh installed {report.version}, not the bundle's "
                                 f"{bundle.version}; the host stays on its transport")
        if report.port != request.port:
            raise OperationError(
                f"the agent listens on {report.listen}, not on port {request.port}: rerun "
                f"with port {report.port}, or change listen in {AGENT_CONFIG}; the host "
                "stays on its transport")
        try:
            fingerprint = normalise_fingerprint(report.fingerprint)
        except ValueError:
            raise OperationError(
                f"the agent reports no TLS certificate fingerprint ({report.fingerprint!r}): "
                f"give it tls_cert and tls_key in {AGENT_CONFIG}; the host stays on its "
                "transport") from None
        if report.kept_token:
            if self.spec.transport != "agent" or not self.spec.agent_token:
                raise OperationError(
                    "an agent is already installed with a token the controller does not "
                    "have: rerun with rotate_token")
            token = self.spec.agent_token
        self._check_agent(url, token, fingerprint, bundle.version)
        self.agent_switch = AgentSwitch(url, fingerprint, sealed, checked=True)
        # changed: new software, a new token, or the record now reaches the host otherwise
        moved = (self.spec.transport, self.spec.agent_url, self.spec.agent_tls_fingerprint
                 ) != ("agent", url, fingerprint)
        return self._result(
            changed=report.changed or not report.kept_token or moved,
            data={**base, "previous": report.previous if report.changed else previous,
                  "version": report.version, "fingerprint": fingerprint,
                  "token": report.token, "transport": "agent", "service": report.service})

    def _check_kept_config(self, request: InstallAgentRequest) -> None:
        """Refuse, before install.sh runs, an ``agent.toml`` it would keep that the switch
        cannot use: another port than the job's, or plain HTTP (nothing is changed yet)."""
        raw = self.executor.read_file_if_exists(AGENT_CONFIG)
        if raw is None:
            return  # install.sh writes one with the job's port and TLS
        keep = (f"install.sh keeps {AGENT_CONFIG}; nothing was changed and the host stays "
                "on its transport")
        try:
            doc = tomllib.loads(raw.decode("utf-8"))
            listen = str(doc.get("listen", DEFAULT_LISTEN))
            port = parse_listen(listen)[1]
        except (UnicodeDecodeError, tomllib.TOMLDecodeError, ConfigError) as exc:
            why = exc.message if isinstance(exc, ConfigError) else str(exc)
            raise OperationError(f"{AGENT_CONFIG} on the host cannot be read ({why}): fix "
                                 f"or remove it; {keep}") from None
        if port != request.port:
            raise OperationError(
                f"the agent's {AGENT_CONFIG} says listen = {listen!r}, not port "
                f"{request.port}: rerun with port {port}, or change listen there first; "
                f"{keep}")
        plain = doc.get("plain_http", doc.get("insecure_http", False)) is True
        if plain or not doc.get("tls_cert"):
            raise OperationError(
                f"the agent's {AGENT_CONFIG} serves plain HTTP ("
                f"{'plain_http = true' if plain else 'no tls_cert'}), and install_agent pins "
                "a TLS certificate: set tls_cert = \"/etc/relayfleet/agent.crt\" and tls_key "
                "= \"/etc/relayfleet/agent.key\" there (install.sh makes the pair) and "
                f"remove plain_http, or remove the file to have a new one written; {keep}")
        self._step("read agent.toml", argv=["cat", AGENT_CONFIG],
                   output=f"listen = {listen!r}, TLS")

    def _already_managed(self, url: str, version: str) -> bool:
        """Whether the host is already managed through this agent, which answers."""
        spec = self.spec
        if (spec.transport != "agent" or spec.agent_url != url or not spec.agent_token
                or not spec.agent_tls_fingerprint):
            return False
        try:
            self._check_agent(url, spec.agent_token, spec.agent_tls_fingerprint, version)
        except RelayfleetError as exc:
            self._step("check the agent", ok=False, output=exc.message)
            return False
        return True

    def _run_installer(self, bundle: AgentBundle, request: InstallAgentRequest,
                       token: str, previous: str | None, deadline: float) -> InstallReport:
        directory = self._upload(bundle)
        try:
            # install.sh waits for the agent's health itself: it gets what is left of the
            # host's time box, less the checks after it, so ``timeout`` stops it (and its
            # own traps clean up) before the box cuts the connection under it
            limit_s = int(deadline - time.monotonic() - AFTER_INSTALLER_S)
            if limit_s < MIN_INSTALLER_S:
                raise OperationError(
                    f"only {max(limit_s, 0)} s of the host's time box are left for install.sh "
                    f"(it needs {MIN_INSTALLER_S} s at least): give the job a longer "
                    "timeout_s; nothing was changed")
            argv = install_argv(directory, bundle, request, self.spec, limit_s)
            result = self.executor.run(argv, input=f"{token}\n".encode(), timeout=None)
        finally:
            self.login.run(["rm", "-rf", "--", directory], timeout=60)
        report = parse_report(result.stdout.decode("utf-8", "replace"))
        self._step("install.sh", argv=argv, exit_code=result.exit_code, ok=result.ok,
                   output=result.output_text(), duration_s=result.duration_s)
        if result.exit_code != 0 or report is None:
            if result.exit_code == 0:
                raise OperationError("install.sh ended without its RELAYFLEET-INSTALL line; "
                                     "the host stays on its transport")
            raise OperationError(self.redact(failure_text(result, report, previous,
                                                          limit_s)))
        return report

    def _upload(self, bundle: AgentBundle) -> str:
        """The bundle and its install.sh in a fresh private directory of the login user."""
        made = self.login.run(["mktemp", "-d", "-t", "relayfleet-install.XXXXXXXX"],
                              timeout=30)
        directory = made.stdout.decode().strip()
        if (made.exit_code != 0 or not directory.startswith("/")
                or "relayfleet-install." not in directory):
            raise OperationError("cannot make a temporary directory on the host: "
                                 f"{made.output_text().strip()[:300]}")
        try:
            self.login.write_file(f"{directory}/install.sh", install_script(bundle),
                                  mode=0o600)
            self.login.put_file(bundle.path, f"{directory}/{bundle.path.name}")
        except Exception:
            # (a cut connection cannot clean up: the next run makes a directory of its own)
            with contextlib.suppress(RelayfleetError):
                self.login.run(["rm", "-rf", "--", directory], timeout=60)
            raise
        self._step("upload", argv=["sftp", bundle.path.name],
                   output=f"{bundle.size} bytes to {directory}")
        return directory

    def _check_agent(self, url: str, token: str, fingerprint: str, version: str) -> None:
        """The agent answers from here: health names ``version``, and a call with the
        token works (through the egress policy, trusting only the fingerprint)."""
        spec = replace(self.spec, transport="agent", agent_url=url, agent_token=token,
                       agent_tls_fingerprint=fingerprint, agent_ca_cert=None,
                       agent_insecure_http=False)
        agent = AgentTransport(spec, self.http)
        health = agent.health(CHECK_TIMEOUT_S)
        if health.get("version") != version:
            raise OperationError(f"the agent at {url} reports version "
                                 f"{health.get('version')!r}, not {version}; the host stays "
                                 "on its transport")
        status = agent.run("collect_status", NoParams(), dry_run=False,
                           timeout_s=CHECK_TIMEOUT_S)
        if not status.ok:
            raise OperationError(f"the agent at {url} answers, but its status failed: "
                                 f"{status.error}; the host stays on its transport")
        self.mta_kind = agent.mta_kind
        self._step("check the agent", argv=["GET", f"{url}/v1/health", "GET",
                                            f"{url}/v1/status"],
                   output=f"version {version}, status ok")

    # -- results --------------------------------------------------------------------------
    def _step(self, name: str, *, argv: list[str] | None = None, exit_code: int | None = None,
              ok: bool = True, output: str = "", duration_s: float = 0.0) -> None:
        self.steps.append(Step(name, argv or [], exit_code, duration_s, ok,
                               trim_output(self.redact(output))))

    def _result(self, *, changed: bool, data: dict[str, Any]) -> OperationResult:
        return OperationResult(ACTION, ok=True, steps=list(self.steps), changed=changed,
                               data=data)
