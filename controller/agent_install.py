"""install_agent: turn a host managed over SSH into one managed through its agent.

The worker runs it itself, over the host's SSH login (pinned host key, ``sudo -n`` for a
login that is not root), whatever the host's transport is now:

1. read the version installed (``/opt/relayfleet/current/VERSION``);
2. the same version as the bundle's, on a host already managed through that agent (pinned
   fingerprint) that answers its health and an authenticated call: nothing to do;
3. otherwise upload the bundle and its ``install.sh`` into a private temporary directory of
   the login user (SFTP), run ``install.sh`` under sudo with a fresh token on stdin (never
   in argv), read its ``RELAYFLEET-INSTALL`` line, and remove the upload;
4. check the agent from here, through the egress policy, trusting only the certificate's
   fingerprint: its health names the bundle's version, and one authenticated call works;
5. only then switch the host's record: transport agent, its URL, the pinned fingerprint,
   and the sealed token when the installer wrote or rotated it. The SSH login is kept (for
   later upgrades). The change travels beside the result (:attr:`AgentInstall.host_change`):
   the ledger writes it with the unit's result, in one transaction.

The token never enters a result, a step, a log line or an error.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import secrets
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from controller.agent_bundle import AgentBundle, find_bundle
from controller.egress import HttpClient, normalise_fingerprint
from controller.transports import AgentTransport, HostSpec, SshTransport
from shared.actions import InstallAgentRequest
from shared.errors import OperationError, RelayfleetError
from shared.executor import CommandResult
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
#: the longest a health or status call from the worker may take
CHECK_TIMEOUT_S = 20.0


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
                 spec: HostSpec) -> list[str]:
    """install.sh's command line on the host (the token goes on stdin, never here)."""
    argv = ["sh", f"{directory}/install.sh", "--bundle", f"{directory}/{bundle.path.name}",
            "--sha256", bundle.sha256, "--token-stdin"]
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


def failure_text(result: CommandResult, report: InstallReport | None,
                 previous: str | None) -> str:
    """Why install.sh failed, and what to do, from its exit code and output."""
    if result.exit_code == EXIT_ROLLED_BACK:
        back = (report.previous if report else None) or previous
        return ("the new version failed its health check and was rolled back to "
                f"{back or 'the state before (no agent)'}; the host stays on its transport; "
                f"see {'/var/log/relayfleet-agent.log'} on the host")
    said = trim_output(result.output_text().strip(), 600) or "no output"
    if result.exit_code == EXIT_USAGE:
        return f"install.sh refused its command line (exit 2): {said}"
    return f"install.sh failed (exit {result.exit_code}): {said}"


class AgentInstall(SshTransport):
    """Runs install_agent on one host over its SSH login (a transport for the lanes).

    :attr:`host_change` holds, after a successful run, the host record's new values (the
    token sealed); the lane hands it to the ledger with the unit's result.
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
        self.host_change: dict[str, Any] | None = None
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
        return self._boxed(timeout_s, lambda: self._install(request, dry_run))

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

    def _install(self, request: InstallAgentRequest, dry_run: bool) -> OperationResult:
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
        token = secrets.token_urlsafe(32)
        self.redact.add(token)
        report = self._run_installer(bundle, request, token, previous)
        if report.port != request.port:
            raise OperationError(
                f"the agent listens on {report.listen} (an upgrade keeps its agent.toml), not "
                f"on port {request.port}: rerun with port {report.port}, or change listen in "
                "/etc/relayfleet/agent.toml first; the host stays on its transport")
        fingerprint = normalise_fingerprint(report.fingerprint)
        if report.kept_token:
            if self.spec.transport != "agent" or not self.spec.agent_token:
                raise OperationError(
                    "an agent is already installed with a token the controller does not "
                    "have: rerun with rotate_token")
            token = self.spec.agent_token
        self._check_agent(url, token, fingerprint, bundle.version)
        change: dict[str, Any] = {"transport": "agent", "agent_url": url,
                                  "agent_tls_fingerprint": fingerprint,
                                  "agent_ca_cert": None, "agent_insecure_http": False}
        if not report.kept_token:
            change["agent_token_sealed"] = self.seal(token)
        self.host_change = change
        # changed: new software, a new token, or the record now reaches the host otherwise
        moved = (self.spec.transport, self.spec.agent_url, self.spec.agent_tls_fingerprint
                 ) != ("agent", url, fingerprint)
        return self._result(
            changed=report.changed or not report.kept_token or moved,
            data={**base, "previous": report.previous if report.changed else previous,
                  "version": report.version, "fingerprint": fingerprint,
                  "token": report.token, "transport": "agent", "service": report.service})

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
                       token: str, previous: str | None) -> InstallReport:
        directory = self._upload(bundle)
        try:
            argv = install_argv(directory, bundle, request, self.spec)
            # install.sh waits for the agent's health itself: give it the host's time box
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
            raise OperationError(self.redact(failure_text(result, report, previous)))
        if report.version != bundle.version:
            raise OperationError(f"install.sh installed {report.version}, not the bundle's "
                                 f"{bundle.version}; the host stays on its transport")
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
