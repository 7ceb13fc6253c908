"""Lab hosts: real sendmail and Postfix boxes on this machine, each in its own namespaces.

A :class:`Lab` owns a bridge in the root network namespace, a DNS server for the lab
(dnsmasq: A, MX and SPF TXT records), and SMTP sinks acting as smarthosts: one that
accepts, one that refuses, one that never answers; :meth:`Lab.start_relay` adds
relay-grade smarthosts (STARTTLS with certificates from the lab's CA, AUTH, Google-style
refusals: :mod:`tests.lab.relay`), and :meth:`LabHost.trust_lab_ca` makes a host trust that
CA. Each :class:`LabHost` is a network
namespace with a veth into the bridge, plus a holder process in its own mount and UTS
namespaces; per-host files are bind-mounted over ``/etc/mail``, ``/etc/hosts``,
``/etc/resolv.conf``, the queues, ``/run``, ``/var/log``, ``/dev/log`` and the agent's
``/opt/relayfleet`` and ``/etc/relayfleet``, so Debian's
real sendmail runs inside with default paths and its own hostname. A syslog receiver
per host turns ``/dev/log`` datagrams into that host's real maillog.

A Postfix host (``add_host(..., mta="postfix")``) runs Debian's real ``postfix`` package,
unpacked (never installed: it conflicts with ``sendmail-bin``) into
``/var/cache/relayfleet-lab/postfix-VERSION/``. Its mount namespace overlays that tree on
``/usr`` (so postfix's ``/usr/sbin/sendmail``, ``postconf``, ``postqueue`` and
``/usr/lib/postfix/sbin/*`` replace sendmail's) and gives the host a writable ``/etc``,
``/var/spool`` and ``/var/lib`` of its own (overlayfs, upper directories in the host's
directory); sendmail's files are removed from its view. The host gets the ``postfix``
user and ``postdrop`` group in its own ``/etc``, a Debian- or RHEL-style main.cf and
master.cf, ``postfix set-permissions`` and ``postfix check``, then ``postfix start``.
Files inside such a host are read from the root namespace through
``/proc/HOLDER/root`` (:meth:`LabHost.fs`).

Everything a lab creates is recorded under ``/run/relayfleet-lab/<pid>/`` and removed
by :meth:`Lab.close`, and also by the next lab if the process that made it died.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config import certificate_fingerprint
from tests.lab.labca import CA_FILE_NAME, SYSTEM_BUNDLE, SYSTEM_CERTS, LabCA
from tests.lab.relay import MODES as RELAY_MODES
from tests.lab.relay import RELAY_PORT, Relay

FILES = Path(__file__).parent / "files"
STATE_ROOT = Path("/run/relayfleet-lab")
REPO_ROOT = Path(__file__).resolve().parents[2]
SINK_PORT = 2525
DOMAIN = "lab.test"
#: the seed story's domain: its MX refuses connections, so mail to it is deferred
SEED_DOMAIN = "ourtest.com"
MTAS = ("sendmail", "postfix")
#: where the lab keeps Debian's postfix .deb and its unpacked tree (bootstrap.sh fills it)
CACHE_DIR = Path(os.environ.get("RELAYFLEET_LAB_CACHE", "/var/cache/relayfleet-lab"))
#: a Postfix host's queues that hold mail (what :meth:`LabHost.queue_files` lists)
POSTFIX_QUEUES = ("maildrop", "incoming", "active", "deferred", "hold")
#: the Debian packages whose files a Postfix host must not see (it is a Postfix box)
SENDMAIL_PACKAGES = ("sendmail", "sendmail-bin", "sendmail-base", "sendmail-cf")
#: a Postfix host's private, writable trees: (mount point, the package's part, upper name)
_POSTFIX_OVERLAYS = (("/usr", "usr", "usr"), ("/etc", "etc", "etc"),
                     ("/var/spool", "var/spool", "spool"), ("/var/lib", "var/lib", "lib"))


class LabError(RuntimeError):
    """The lab could not be built or driven."""


_BOOTSTRAP_HINT = ("run `bash deploy/dev/bootstrap.sh` as root (it downloads Debian's postfix "
                   f"package into {CACHE_DIR}), or `cd {CACHE_DIR} && apt-get download postfix`")


def postfix_package() -> Path:
    """The unpacked tree of Debian's postfix package (unpacked once, from the cached .deb;
    the .deb is downloaded with ``apt-get download postfix`` if the cache has none)."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    debs = sorted(CACHE_DIR.glob("postfix_*.deb"))
    if not debs:
        proc = sh(["apt-get", "download", "postfix"], check=False, timeout=300, cwd=CACHE_DIR)
        debs = sorted(CACHE_DIR.glob("postfix_*.deb"))
        if not debs:
            raise LabError(f"Debian's postfix package is not in {CACHE_DIR} and `apt-get "
                           f"download postfix` failed ({proc.returncode}: "
                           f"{proc.stderr.decode(errors='replace').strip()[-300:]}); "
                           f"{_BOOTSTRAP_HINT}")
    deb = debs[0]
    for other in debs[1:]:
        if sh(["dpkg", "--compare-versions", _deb_version(other), "gt", _deb_version(deb)],
              check=False).returncode == 0:
            deb = other
    target = CACHE_DIR / f"postfix-{_deb_version(deb)}"
    if (target / ".unpacked").exists():
        return target
    staging = CACHE_DIR / f".{target.name}.{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    sh(["dpkg-deb", "-x", str(deb), str(staging)], timeout=300)
    (staging / ".unpacked").write_text(deb.name + "\n")
    if target.exists() and not (target / ".unpacked").exists():
        shutil.rmtree(target, ignore_errors=True)  # a crashed unpack
    try:
        staging.rename(target)
    except OSError:  # another lab unpacked it meanwhile
        shutil.rmtree(staging, ignore_errors=True)
    if not (target / "usr" / "sbin" / "postfix").exists():
        raise LabError(f"{target} holds no usr/sbin/postfix; remove it and {_BOOTSTRAP_HINT}")
    return target


def _deb_version(deb: Path) -> str:
    return sh(["dpkg-deb", "-f", str(deb), "Version"]).stdout.decode().strip()


def sh(argv: Sequence[str], *, check: bool = True, input: bytes | None = None,
       timeout: float = 60, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run a command in the root namespaces."""
    proc = subprocess.run(list(argv), input=input, capture_output=True, timeout=timeout,
                          check=False, cwd=cwd)
    if check and proc.returncode != 0:
        raise LabError(f"{shlex.join(argv)} exited {proc.returncode}: "
                       f"{proc.stderr.decode(errors='replace').strip()}")
    return proc


def _pid_alive(pid: int) -> bool:
    """Whether the process runs: a zombie does not (a killed MTA daemon, a child of PID 1,
    stays one until PID 1 reaps it, which here takes more than a second)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # the state follows the command name, which may hold spaces and parentheses
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _free_subnet() -> int:
    routes = sh(["ip", "-4", "route", "show"]).stdout.decode()
    used = {p for p in STATE_ROOT.glob("*/subnet")} if STATE_ROOT.exists() else set()
    taken = {int(p.read_text()) for p in used if p.read_text().strip().isdigit()}
    for n in range(201, 251):
        if f"10.{n}.0." not in routes and n not in taken:
            return n
    raise LabError("no free 10.X.0.0/24 subnet for a lab")


@dataclass
class Sink:
    """An SMTP sink the lab runs on one of the bridge's addresses."""

    name: str
    address: str
    mode: str
    spool: Path
    process: subprocess.Popen[bytes] | None = None

    def messages(self) -> list[dict[str, Any]]:
        """Every message accepted so far, oldest first."""
        return [json.loads(p.read_text()) for p in sorted(self.spool.glob("*.json"))]


@dataclass
class LabHost:
    """One lab mail host (see the module docstring)."""

    lab: Lab
    name: str
    layout: str
    address: str
    index: int
    root: Path
    netns: str
    veth: str
    holder_pid: int = 0
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    sshd: subprocess.Popen[bytes] | None = None
    agent: subprocess.Popen[bytes] | None = None
    #: the TLS agent's certificate (PEM) and its ``sha256:`` fingerprint, once started
    agent_cert_pem: str | None = None
    agent_fingerprint: str | None = None
    ssh_host_key: str = ""
    #: the MTA the host runs: ``sendmail`` or ``postfix``
    mta: str = "sendmail"
    #: closed (its holder may linger as a zombie a while: not a sign of life)
    closed: bool = False
    #: the lab CA's trust directory is bound over the host's /etc/ssl/certs
    trusts_lab_ca: bool = False

    @property
    def fqdn(self) -> str:
        """The host's fully qualified name."""
        return f"{self.name}.{DOMAIN}"

    @property
    def flavour(self) -> str:
        """The relayfleet host-profile flavour matching this layout."""
        return "rhel" if self.layout == "centos" else "debian"

    @property
    def maillog(self) -> Path:
        """The maillog file as seen from the root namespace."""
        return self.root / "log" / ("maillog" if self.layout == "centos" else "mail.log")

    def fs(self, path: str) -> Path:
        """A path inside the host (its mounts: overlays, binds) seen from the root namespace,
        through the namespace holder's ``/proc/PID/root``. Valid while the host is up."""
        if not self.holder_pid:
            raise LabError(f"{self.name}: the host has no namespaces yet")
        return Path(f"/proc/{self.holder_pid}/root") / path.lstrip("/")

    @property
    def config_dir(self) -> Path:
        """The MTA's configuration directory (``/etc/mail`` or ``/etc/postfix``) as seen from
        the root namespace."""
        if self.mta == "postfix":
            return self.fs("/etc/postfix")
        return self.root / "etc-mail"

    @property
    def mail_dir(self) -> Path:
        """The host's /etc/mail (sendmail) or /etc/postfix (Postfix) seen from the root
        namespace: the same as :attr:`config_dir`."""
        return self.config_dir

    @property
    def queue_dir(self) -> Path:
        """The MTA queue (``/var/spool/mqueue`` or ``/var/spool/postfix``) seen from the
        root namespace."""
        if self.mta == "postfix":
            return self.fs("/var/spool/postfix")
        return self.root / "mqueue"

    def nsenter(self, argv: Sequence[str]) -> list[str]:
        """``argv`` prefixed to run inside this host's namespaces."""
        return ["nsenter", "-t", str(self.holder_pid), "-m", "-u", "-n", "--", *argv]

    def run(self, argv: Sequence[str], *, check: bool = True, input: bytes | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
        """Run a command inside the host."""
        return sh(self.nsenter(argv), check=check, input=input, timeout=timeout)

    def popen(self, argv: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
        """Start a long-running process inside the host (killed by :meth:`close`)."""
        with open(log, "ab") as out:
            proc = subprocess.Popen(self.nsenter(argv), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self.processes.append(proc)
        return proc

    # -- mail ----------------------------------------------------------------------
    def send_mail(self, to: Sequence[str], subject: str = "voicemail",
                  body: str = "You have a new voicemail.", queue_only: bool = False) -> None:
        """Submit a message the way a PBX does: ``sendmail -oi -f sender rcpt...``.

        ``queue_only`` puts it straight into the sendmail queue without a delivery attempt
        (``-Am -odq``), so that only a queue run will try it. Postfix's sendmail ignores both
        flags and Postfix has no such mode: its queue manager tries the message at once
        (mail to the seed domain is deferred all the same), so it is not passed there.
        """
        message = (f"From: voicemail@{self.fqdn}\nTo: {', '.join(to)}\nSubject: {subject}\n\n"
                   f"{body}\n").encode()
        mode = ["-Am", "-odq"] if queue_only and self.mta == "sendmail" else []
        self.run(["/usr/sbin/sendmail", *mode, "-oi", "-f", f"voicemail@{self.fqdn}", *to],
                 input=message, timeout=60)

    def mailq(self) -> str:
        """The raw output of ``mailq`` inside the host."""
        return self.run(["mailq"], check=False).stdout.decode(errors="replace")

    def queue_files(self) -> list[str]:
        """The messages in the MTA queue: sendmail's control files (``qf*``), or Postfix's
        queue files as ``QUEUE/ID`` (``deferred/4Yx...``) in its maildrop, incoming, active,
        deferred and hold queues."""
        if self.mta == "postfix":
            spool = self.queue_dir
            return sorted(f"{queue}/{p.name}" for queue in POSTFIX_QUEUES
                          for p in (spool / queue).rglob("*") if p.is_file())
        return sorted(p.name for p in (self.root / "mqueue").glob("qf*"))

    def postqueue(self) -> list[dict[str, Any]]:
        """Postfix's queue as ``postqueue -j`` prints it: one dict per message (``queue_name``,
        ``queue_id``, ``arrival_time``, ``message_size``, ``forced_expire``, ``sender``,
        ``recipients: [{address, delay_reason?}]``)."""
        proc = self.run(["postqueue", "-j"], check=False, timeout=30)
        if proc.returncode != 0:
            raise LabError(f"{self.name}: postqueue -j exited {proc.returncode}: "
                           f"{proc.stderr.decode(errors='replace').strip()}")
        return [json.loads(line) for line in proc.stdout.decode().splitlines() if line.strip()]

    def postconf(self, *args: str) -> str:
        """Run ``postconf ARGS...`` inside a Postfix host; return its output."""
        return self.run(["postconf", *args], timeout=30).stdout.decode()

    def wait_for(self, predicate: Any, timeout: float = 30, what: str = "condition") -> None:
        """Poll ``predicate()`` until true or fail with ``what``."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise LabError(f"{self.name}: timed out waiting for {what}")
            time.sleep(0.2)

    def wait_deferred(self, count: int = 1, timeout: float = 30) -> str:
        """Wait until ``count`` messages sit in the MTA queue marked deferred; return mailq.

        Postfix: messages in its ``deferred`` queue, from ``postqueue -j``."""
        def ready() -> bool:
            if self.mta == "postfix":
                with contextlib.suppress(LabError, json.JSONDecodeError):
                    deferred = [m for m in self.postqueue() if m.get("queue_name") == "deferred"]
                    return len(deferred) >= count
                return False
            return self.mailq().count("(Deferred") >= count
        self.wait_for(ready, timeout, f"{count} deferred message(s)")
        return self.mailq()

    def read_maillog(self) -> str:
        """The host's maillog so far."""
        return self.maillog.read_text(errors="replace") if self.maillog.exists() else ""

    # -- relayfleet ----------------------------------------------------------------
    def ops(self, command: str, *args: str, body: Any = None, timeout: float = 240,
            profile: dict[str, Any] | None = None,
            kind: str | None = None, wrap: Sequence[str] = ()) -> tuple[int, dict[str, Any]]:
        """Run ``relayfleet-ops COMMAND`` inside the host (LocalExecutor, the real MTA);
        ``--mta`` is the host's MTA unless ``kind`` says otherwise; ``wrap``: an argv prefix
        that runs it (a sandbox)."""
        argv = [sys.executable, "-m", "shared.cli", "--flavour", self.flavour,
                "--mta", kind or self.mta]
        if profile:
            argv += ["--profile-json", json.dumps(profile)]
        argv += [command, *args]
        if body is not None:
            argv += ["--json", "-"]
        proc = self.run([*wrap, "env", f"PYTHONPATH={REPO_ROOT}", *argv], check=False,
                        input=json.dumps(body).encode() if body is not None else None,
                        timeout=timeout)
        try:
            doc = json.loads(proc.stdout)
        except json.JSONDecodeError as exc:
            raise LabError(f"relayfleet-ops {command} printed no JSON (exit {proc.returncode}): "
                           f"{proc.stdout[-500:]!r} {proc.stderr[-2000:]!r}") from exc
        return proc.returncode, doc

    def file_snapshot(self, *names: str) -> dict[str, bytes | None]:
        """The bytes of files in the MTA's configuration directory (/etc/mail or
        /etc/postfix: ``sendmail.mc``, ``main.cf``, ``sasl_passwd.db``...; None if absent)."""
        out: dict[str, bytes | None] = {}
        for name in names:
            path = self.config_dir / name
            out[name] = path.read_bytes() if path.exists() else None
        return out

    # -- sshd ----------------------------------------------------------------------
    def start_sshd(self) -> str:
        """Run the host's own sshd on its address; return its public host key line."""
        key = self.root / "ssh_host_ed25519_key"
        if not key.exists():
            sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", self.fqdn, "-f", str(key)])
        # Under the host's own /run: sshd reads a user's keys as that user, who could not
        # get through the lab's private work directory to reach them.
        keys_dir = self.root / "run" / "authorized_keys"
        keys_dir.mkdir(exist_ok=True)
        keys_dir.chmod(0o755)
        config = self.root / "sshd_config"
        config.write_text("\n".join([
            f"ListenAddress {self.address}", "Port 22", f"HostKey {key}",
            "PidFile /run/sshd.pid", "AuthorizedKeysFile /run/authorized_keys/%u", "StrictModes no",
            "UsePAM no", "PasswordAuthentication yes", "KbdInteractiveAuthentication no",
            "PermitRootLogin yes", "AllowTcpForwarding yes", "LogLevel VERBOSE",
            "MaxStartups 200", "MaxSessions 50", "Subsystem sftp internal-sftp", ""]))
        # root's shell start-up file is this machine's (it may run pyenv and the like on
        # every SSH command: 0.3 s each), not the managed host's: the host gets an empty one.
        self.run(["sh", "-c", "[ ! -f /root/.bashrc ] || mount --bind /dev/null /root/.bashrc"])
        self.sshd = self.popen(["/usr/sbin/sshd", "-D", "-f", str(config), "-E",
                                str(self.root / "sshd.log")], self.root / "sshd.out")
        _wait_port(self.address, 22, self.sshd, timeout=15)
        return " ".join(Path(f"{key}.pub").read_text().split()[:2])

    def stop_sshd(self) -> None:
        """Stop the host's sshd and its open sessions (the host stays up)."""
        if self.sshd is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.sshd.pid, signal.SIGKILL)
            self.sshd.wait(timeout=10)
            self.sshd = None
        # Per-connection sshd processes outlive the listener; find them by namespace.
        pids = sh(["ip", "netns", "pids", self.netns], check=False).stdout.decode().split()
        for pid in pids:
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == "sshd":
                    os.kill(int(pid), signal.SIGKILL)

    def authorize(self, user: str, public_key_line: str) -> None:
        """Let ``user`` log in with this public key."""
        path = self.root / "run" / "authorized_keys" / user
        with path.open("a") as fh:
            fh.write(public_key_line.strip() + "\n")

    def sshd_log(self) -> str:
        """What the host's sshd logged."""
        path = self.root / "sshd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def disable_python(self) -> None:
        """Make every python on the host fail, like an old PBX without one."""
        stub = self.root / "no-python"
        stub.write_text("#!/bin/sh\necho 'python: not installed on this host' >&2\nexit 127\n")
        stub.chmod(0o755)
        script = "".join(
            f'[ -e {p} ] && mount --bind {shlex.quote(str(stub))} {p}\n'
            for p in ("/usr/bin/python3", "/usr/local/bin/python3", "/usr/bin/python",
                      shlex.quote(os.path.realpath(sys.executable))))
        self.run(["sh", "-c", script + "true"])

    # -- agent ---------------------------------------------------------------------
    def start_agent(self, token: str, port: int = 8587, extra_config: str = "",
                    tls: tuple[Path, Path] | bool | None = None, mta_config: str = "",
                    kind: str | None = None) -> str:
        """Run ``relayfleet-agent serve`` inside the host; return its base URL once healthy.

        ``tls=True`` serves https with a key and self-signed certificate made by the
        installer's ``make-cert.sh`` (its fingerprint in :attr:`agent_fingerprint`, its PEM
        in :attr:`agent_cert_pem`); without TLS the agent says ``insecure_http = true``.
        agent.toml's ``[mta] kind`` is the host's MTA unless ``kind`` (e.g. ``"auto"``) says
        otherwise; ``mta_config`` adds lines to that table.
        """
        token_file = self.root / "agent.token"
        token_file.write_text(token + "\n")
        token_file.chmod(0o600)
        if tls is True:
            tls = (self.root / "agent.crt", self.root / "agent.key")
            sh(["sh", str(REPO_ROOT / "deploy" / "agent" / "make-cert.sh"), str(tls[0]),
                str(tls[1]), self.fqdn, self.address])
        if tls:
            self.agent_cert_pem = tls[0].read_text()
            self.agent_fingerprint = certificate_fingerprint(self.agent_cert_pem)
            tls_lines = f'tls_cert = "{tls[0]}"\ntls_key = "{tls[1]}"\n'
        else:
            tls_lines = "insecure_http = true\n"
        config = self.root / "agent.toml"
        config.write_text(
            f'listen = "{self.address}:{port}"\ntoken_file = "{token_file}"\n{tls_lines}'
            f'{extra_config}\n[mta]\nkind = "{kind or self.mta}"\nflavour = "{self.flavour}"\n'
            f"{mta_config}")
        self.popen(["env", f"PYTHONPATH={REPO_ROOT}", sys.executable, "-m", "agent.cli",
                    "serve", "--config", str(config)], self.root / "agent.log")
        scheme = "https" if tls else "http"
        url = f"{scheme}://{self.address}:{port}"
        self.agent = self.processes[-1]
        _wait_port(self.address, port, self.agent, timeout=30)
        return url

    def stop_agent(self) -> None:
        """Stop the host's agent (as if its service were down)."""
        if self.agent is not None and self.agent.poll() is None:
            os.killpg(self.agent.pid, signal.SIGTERM)
            self.agent.wait(timeout=10)
        self.agent = None

    # -- lifecycle -----------------------------------------------------------------
    def start_mta(self) -> None:
        """Start the MTA the way the layout's init system does: sendmail's init script or
        ``service``; Postfix through Debian's init script (it copies the chroot's files,
        then ``postfix start``) or, RHEL-style, ``postfix start``."""
        if self.mta == "postfix":
            if self.layout == "centos":
                self.run(["postfix", "start"])
            else:
                self.run(["/etc/init.d/postfix", "start"])
            # `master -t` exits 0 when no master holds the lock (`postfix status` would log).
            master = "/usr/lib/postfix/sbin/master"
            self.wait_for(lambda: self.run([master, "-t"], check=False).returncode != 0,
                          15, "postfix to run")
        elif self.layout == "centos":
            self.run(["service", "sendmail", "start"])
        else:
            self.run(["/etc/init.d/sendmail", "start"])

    def stop_mta(self) -> None:
        """Stop the MTA."""
        if self.mta == "postfix":
            self.run(["postfix", "stop"], check=False, timeout=60)
        else:
            self.run(["/etc/init.d/sendmail", "stop"], check=False, timeout=60)

    def trust_lab_ca(self) -> str:
        """Make the host trust the lab CA: the lab's trust directory (the machine's
        /etc/ssl/certs plus the CA, hashed and in the bundle) is bound read-only over the
        host's ``/etc/ssl/certs``; the machine's own stays untouched. Return the bundle's path
        inside the host (``/etc/ssl/certs/ca-certificates.crt``: the default, now with the lab
        CA). An MTA already running reads it at its next restart or reload."""
        if not self.trusts_lab_ca:
            trust = shlex.quote(str(self.lab.ca.trust_dir()))
            target = shlex.quote(str(SYSTEM_CERTS))
            self.run(["sh", "-c", f"mount --bind {trust} {target} && "
                      f"mount -o remount,bind,ro {target}"])
            self.trusts_lab_ca = True
        return str(SYSTEM_BUNDLE)

    @property
    def lab_ca_file(self) -> str:
        """The lab CA alone as a file inside a host that trusts it."""
        return str(SYSTEM_CERTS / CA_FILE_NAME)

    def link_down(self) -> None:
        """Cut the host off the lab network (its veth's root side goes down)."""
        sh(["ip", "link", "set", self.veth, "down"])

    def link_up(self) -> None:
        """Reconnect the host."""
        sh(["ip", "link", "set", self.veth, "up"])

    def close(self) -> None:
        """Stop everything inside the host and remove its namespaces and link."""
        self.closed = True
        # No graceful MTA stop: every process of the host is SIGKILLed with its namespaces,
        # and Debian's sendmail script sleeps 2 s while stopping (a lab test closes
        # hundreds of hosts).
        for proc in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                proc.wait(timeout=5)
        _teardown_netns(self.netns, self.veth)


def _teardown_netns(netns: str, veth: str) -> None:
    pids = sh(["ip", "netns", "pids", netns], check=False).stdout.decode().split()
    for pid in pids:
        _kill(int(pid))
    deadline = time.monotonic() + 5
    while any(_pid_alive(int(p)) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    sh(["ip", "link", "del", veth], check=False)
    sh(["ip", "netns", "del", netns], check=False)


#: Debian's sendmail init script waits fixed 2 s steps for what it started or stopped
#: (:func:`prompt_init_script`)
DEBIAN_INIT_SCRIPT = Path("/etc/init.d/sendmail")
_STARTED_WAIT = re.compile(r"(\t\t\$CMD &\n\t\t#\n\t\t# Update permissions on smsocket\n\t\t)"
                           r"sleep 2;")
_STOPPED_WAIT = re.compile(r"(\t\$(STOP_\w+_CMD) --signal TERM --quiet --oknodo > /dev/null;\n"
                           r"\t#\n\t# Now we have to wait until sendmail has _really_ "
                           r"stopped\.\n\t#\n\t)sleep 2;")


def prompt_init_script(script: str) -> str:
    """Debian's sendmail init script with its fixed waits made polls, for lab hosts.

    Starting the daemon, it sleeps 2 s before fixing its MSP socket file's mode; stopping
    one, 2 s before it looks whether the daemon is gone (so a restart sleeps 4 s). Here
    each sleep becomes a poll, 0.1 s at a time and never longer than the 2 s it replaces,
    for what it waits for: the daemon's pid file written and port 25 open (the daemon
    listening), and the daemon gone. Everything else is Debian's script as shipped; the
    lab binds the result over a Debian-layout host's ``/etc/init.d/sendmail``. A lab test
    starts or restarts sendmail a few times, and these waits were most of a lab host's
    start."""
    listening = ('[ -s "$MTAL_PIDFILE" ] && grep -q "^ *[0-9]*: [0-9A-F]*:0019 [0-9A-F]*:0000 0A" '
                 '/proc/net/tcp /proc/net/tcp6 2>/dev/null')
    started, found = _STARTED_WAIT.subn(
        lambda m: (f"{m.group(1)}_rf_n=0; until {listening} || [ $_rf_n -ge 20 ]; do "
                   "sleep 0.1; _rf_n=$((_rf_n + 1)); done;"), script)
    stopped, stops = _STOPPED_WAIT.subn(
        lambda m: (f"{m.group(1)}_rf_n=0; while ${m.group(2)} --test --quiet > /dev/null "
                   "&& [ $_rf_n -lt 20 ]; do sleep 0.1; _rf_n=$((_rf_n + 1)); done;"), started)
    if found != 1 or stops != 3:
        raise LabError(f"{DEBIAN_INIT_SCRIPT} is not the script the lab knows (waits found: "
                       f"{found} start, {stops} stop); adapt prompt_init_script")
    return stopped


class Lab:
    """A set of lab hosts on one bridge with DNS and smarthost sinks (see module docstring)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.hosts: list[LabHost] = []
        self.sinks: dict[str, Sink] = {}
        self.relays: dict[str, Relay] = {}
        self._ca: LabCA | None = None
        self._relays_started = 0
        self.processes: list[subprocess.Popen[bytes]] = []
        self.net = 0
        self.state = STATE_ROOT / str(os.getpid())
        self.bridge = ""
        self.dnsmasq: subprocess.Popen[bytes] | None = None
        self._sendmail_paths: list[str] | None = None

    # -- addresses -----------------------------------------------------------------
    @property
    def network(self) -> str:
        """The lab subnet (CIDR): what a controller's RELAYFLEET_EGRESS_ALLOW lets in."""
        return f"10.{self.net}.0.0/24"

    def ip(self, last: int) -> str:
        """An address on the lab subnet."""
        return f"10.{self.net}.0.{last}"

    @property
    def gateway(self) -> str:
        """The bridge's address: the lab's DNS server."""
        return self.ip(1)

    @property
    def smarthost(self) -> Sink:
        """The sink that accepts everything (``smarthost.lab.test``)."""
        return self.sinks["smarthost"]

    def __enter__(self) -> Lab:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Build the bridge, DNS and sinks."""
        for tool in ("ip", "nsenter", "unshare", "dnsmasq", "m4", "make", "/usr/sbin/sendmail"):
            if shutil.which(tool) is None:
                raise LabError(f"{tool} is missing; install the lab's Debian packages (README)")
        if os.geteuid() != 0:
            raise LabError("the lab needs root (network and mount namespaces)")
        reap_stale_labs()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.net = _free_subnet()
        self.state.mkdir(parents=True, exist_ok=True)
        (self.state / "subnet").write_text(str(self.net))
        self.bridge = f"rfbr{self.net}"
        (self.state / "bridge").write_text(self.bridge)
        sh(["ip", "link", "add", self.bridge, "type", "bridge"])
        sh(["ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge])
        for last in (2, 3, 4, 5):
            sh(["ip", "addr", "add", f"{self.ip(last)}/24", "dev", self.bridge])
        sh(["ip", "link", "set", self.bridge, "up"])
        if not Path("/dev/log").exists():
            # A mount point for each host's own /dev/log socket.
            Path("/dev/log").touch()
        self._start_sink("smarthost", self.ip(3), "accept")
        self._start_sink("refuse", self.ip(4), "refuse-mail")
        self._start_sink("blackhole", self.ip(5), "hang")
        self._start_dns()

    def _init_script(self) -> Path:
        """The Debian-layout hosts' sendmail init script (:func:`prompt_init_script`),
        written once per lab."""
        path = self.workdir / "init-sendmail-debian"
        if not path.exists():
            path.write_text(prompt_init_script(DEBIAN_INIT_SCRIPT.read_text()))
            path.chmod(0o755)
        return path

    def _start_sink(self, name: str, address: str, mode: str) -> None:
        spool = self.workdir / "sinks" / name
        spool.mkdir(parents=True, exist_ok=True)
        sink = Sink(name, address, mode, spool)
        with open(self.workdir / f"sink-{name}.log", "ab") as log:
            sink.process = subprocess.Popen(
                [sys.executable, "-m", "tests.lab.sink", "--listen", f"{address}:{SINK_PORT}",
                 "--spool", str(spool), "--mode", mode, "--auth"],
                cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(sink.process)
        self._note_root_process(sink.process.pid)
        self.sinks[name] = sink
        _wait_port(address, SINK_PORT, sink.process)

    def _hosts_file(self) -> Path:
        return self.workdir / "dns-hosts"

    def _write_dns_hosts(self) -> None:
        lines = [f"{h.address} {h.fqdn} {h.name}" for h in self.hosts]
        lines += [f"{r.address} {r.fqdn}" for r in self.relays.values()]
        self._hosts_file().write_text("\n".join(lines) + "\n")

    def _start_dns(self) -> None:
        self._write_dns_hosts()
        # the whole subnet: a long session lab numbers its hosts up to .253
        seed_spf = f"v=spf1 ip4:{self.ip(0)}/24 -all"
        argv = [
            "dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--bind-interfaces",
            f"--listen-address={self.gateway}", "--except-interface=lo",
            f"--pid-file={self.workdir / 'dnsmasq.pid'}", "--log-facility=-",
            f"--local=/{DOMAIN}/", f"--local=/{SEED_DOMAIN}/", "--local=/example.net/",
            f"--addn-hosts={self._hosts_file()}",
            f"--host-record=mx.{SEED_DOMAIN},{self.ip(2)}",
            f"--mx-host={SEED_DOMAIN},mx.{SEED_DOMAIN},10",
            f"--host-record=smarthost.{DOMAIN},{self.ip(3)}",
            f"--host-record=refuse.{DOMAIN},{self.ip(4)}",
            f"--host-record=blackhole.{DOMAIN},{self.ip(5)}",
            f"--host-record=closed.{DOMAIN},{self.ip(2)}",
            f"--txt-record={SEED_DOMAIN},{seed_spf}",
            "--txt-record=example.net,v=spf1 ip4:192.0.2.0/24 -all",
            "--user=root", "--cache-size=0",
        ]
        log = open(self.workdir / "dnsmasq.log", "ab")  # noqa: SIM115 - lives as long as dnsmasq
        self.dnsmasq = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        self.processes.append(self.dnsmasq)
        self._note_root_process(self.dnsmasq.pid)
        _wait_port(self.gateway, 53, self.dnsmasq, udp=True)

    def _note_root_process(self, pid: int) -> None:
        """Remember a process of the root namespace (a sink, dnsmasq), so that the next lab
        kills it if this one dies without tearing down: an orphaned sink still bound to the
        lab's address would take the next lab's mail."""
        with open(self.state / "pids", "a") as pids:
            pids.write(f"{pid} {_start_ticks(pid)}\n")

    @property
    def ca(self) -> LabCA:
        """The lab's certificate authority (``WORKDIR/ca``, made on first use)."""
        if self._ca is None:
            self._ca = LabCA(self.workdir / "ca")
        return self._ca

    def start_relay(self, name: str, mode: str = "gmail", *,
                    credentials: tuple[str, str] | None = None,
                    refuse_unqualified_ehlo: bool = False, senders_domain: str | None = None,
                    port: int = RELAY_PORT) -> Relay:
        """Start a relay-grade smarthost ``NAME.lab.test`` (see :mod:`tests.lab.relay` for
        the modes) on an address of its own on the bridge, with a lab-CA certificate naming
        it (``wrongname``: naming ``other.lab.test``); return once its port answers and DNS
        knows it. :meth:`stop_relay` or :meth:`close` removes it."""
        if mode not in RELAY_MODES:
            raise LabError(f"unknown relay mode {mode!r} (one of {', '.join(RELAY_MODES)})")
        taken = {*self.relays, *self.sinks, *(h.name for h in self.hosts), "other"}
        if name in taken or not re.fullmatch(r"[a-z][a-z0-9-]{0,30}", name):
            raise LabError(f"relay name {name!r} is taken or not a DNS label")
        if mode == "cleartext-auth" and credentials is None:
            raise LabError("a cleartext-auth relay needs credentials")
        self._relays_started += 1
        fqdn = f"{name}.{DOMAIN}"
        relay = Relay(name, mode, self._free_relay_address(), port, fqdn,
                      self.workdir / "relays" / f"{name}-{self._relays_started}",
                      credentials=credentials, refuse_unqualified_ehlo=refuse_unqualified_ehlo,
                      senders_domain=senders_domain)
        if mode != "cleartext-auth":
            relay.cert_names = [f"other.{DOMAIN}"] if mode == "wrongname" else [fqdn]
            relay.cert, relay.key = self.ca.issue(f"{name}-{self._relays_started}",
                                                  relay.cert_names)
        sh(["ip", "addr", "add", f"{relay.address}/24", "dev", self.bridge])
        self.relays[name] = relay
        process = relay.launch(self.workdir / f"relay-{name}.log", REPO_ROOT)
        self.processes.append(process)
        self._note_root_process(process.pid)
        self._write_dns_hosts()
        if self.dnsmasq is not None:
            self.dnsmasq.send_signal(signal.SIGHUP)
        try:
            _wait_port(relay.address, port, process)
            self._wait_dns(fqdn, relay.address)
        except LabError:
            self.stop_relay(relay)
            raise
        return relay

    def stop_relay(self, relay: Relay | str) -> None:
        """Stop a relay and take its address and DNS name off the lab."""
        found = self.relays.pop(relay if isinstance(relay, str) else relay.name, None)
        if found is None:
            return
        process = found.process
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
            if process in self.processes:
                self.processes.remove(process)
        sh(["ip", "addr", "del", f"{found.address}/24", "dev", self.bridge], check=False)
        self._write_dns_hosts()
        if self.dnsmasq is not None:
            self.dnsmasq.send_signal(signal.SIGHUP)

    def _free_relay_address(self) -> str:
        """The highest address on the subnet no host, relay or test has taken: hosts count
        up from .10, relays down from .254."""
        on_bridge = sh(["ip", "-4", "-o", "addr", "show", "dev", self.bridge]).stdout.decode()
        used = {h.address for h in self.hosts} | {r.address for r in self.relays.values()}
        for last in range(254, 10 + len(self.hosts), -1):
            address = self.ip(last)
            if address not in used and f" {address}/" not in on_bridge:
                return address
        raise LabError("no free address on the lab subnet for a relay")

    def _wait_dns(self, fqdn: str, address: str, timeout: float = 10) -> None:
        """Wait until the lab's DNS answers ``fqdn`` with ``address`` (dnsmasq rereads its
        hosts file on SIGHUP, a moment later)."""
        import dns.exception
        import dns.resolver

        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [self.gateway]
        resolver.lifetime = 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(dns.exception.DNSException):
                if address in {a.to_text() for a in resolver.resolve(fqdn, "A")}:
                    return
            time.sleep(0.05)
        raise LabError(f"the lab's DNS does not answer {fqdn} -> {address} after {timeout}s")

    def ensure_ssh_user(self) -> tuple[str, str]:
        """A non-root login (``rflab``) with passwordless ``sudo`` and a fresh password.

        It exists on this machine, but only lab hosts' sshd (inside the lab's network
        namespaces) accept logins.
        """
        user = "rflab"
        if sh(["id", "-u", user], check=False).returncode != 0:
            sh(["useradd", "--create-home", "--shell", "/bin/sh", user])
        password = "Lab-" + os.urandom(9).hex()
        sh(["chpasswd"], input=f"{user}:{password}\n".encode())
        sudoers = Path("/etc/sudoers.d/relayfleet-lab")
        sudoers.write_text(f"{user} ALL=(root) NOPASSWD: ALL\n")
        sudoers.chmod(0o440)
        for host in self.hosts:
            if (host.mta == "postfix" and not host.closed and host.holder_pid
                    and _pid_alive(host.holder_pid)):
                _sync_account(host, user, sudoers)
        return user, password

    def add_host(self, name: str, layout: str = "debian", start: bool = True,
                 mta: str = "sendmail", trust_lab_ca: bool = False) -> LabHost:
        """Create, boot and register a lab host (``layout``: ``debian`` or ``centos``;
        ``mta``: ``sendmail`` or ``postfix``; ``trust_lab_ca``: see
        :meth:`LabHost.trust_lab_ca`, done before the MTA starts)."""
        if layout not in ("debian", "centos"):
            raise LabError(f"unknown layout {layout!r}")
        if mta not in MTAS:
            raise LabError(f"unknown mta {mta!r} (one of {', '.join(MTAS)})")
        package = postfix_package() if mta == "postfix" else None
        index = len(self.hosts)
        address = self.ip(10 + index)
        if any(r.address == address for r in self.relays.values()):
            raise LabError(f"{address} is a relay's: the lab subnet is full")
        host = LabHost(self, name, layout, address, index, self.workdir / "hosts" / name,
                       netns=f"rf{self.net}-{name}"[:15], veth=f"rf{self.net}v{index}", mta=mta)
        self.hosts.append(host)
        with (self.state / "netns").open("a") as netns:
            netns.write(f"{host.netns} {host.veth}\n")
        self._build_files(host)
        self._build_namespaces(host, package)
        if package is not None:
            self._setup_postfix(host, package)
        self._write_dns_hosts()
        if self.dnsmasq is not None:
            self.dnsmasq.send_signal(signal.SIGHUP)
        if trust_lab_ca:
            host.trust_lab_ca()
        if start:
            host.start_mta()
        return host

    def _build_files(self, host: LabHost) -> None:
        root = host.root
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        (root / "hosts").write_text(
            f"127.0.0.1\tlocalhost\n{host.address}\t{host.fqdn} {host.name}\n"
            "::1\tlocalhost ip6-localhost ip6-loopback\n")
        (root / "resolv.conf").write_text(f"search {DOMAIN}\nnameserver {self.gateway}\n")
        if host.mta == "postfix":
            for sub in ("run/lock", "run/sshd", "log", "mail"):
                (root / sub).mkdir(parents=True, exist_ok=True)
            # Postfix's local(8) delivers to /var/mail/USER: the host's own, not the machine's.
            real = os.stat("/var/mail")
            os.chown(root / "mail", real.st_uid, real.st_gid)
            os.chmod(root / "mail", real.st_mode & 0o7777)
            for _, _, upper in _POSTFIX_OVERLAYS:
                (root / "overlay" / "upper" / upper).mkdir(parents=True)
                (root / "overlay" / "work" / upper).mkdir(parents=True)
            (root / "log" / ("maillog" if host.layout == "centos" else "mail.log")).touch()
            return
        etc_mail = root / "etc-mail"
        shutil.copytree("/etc/mail", etc_mail, symlinks=True)
        for stale in ("sendmail.cf.errors", ".relayfleet.lock", ".relayfleet-backup"):
            path = etc_mail / stale
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        for sub in ("run/sendmail", "run/lock", "run/sshd", "log", "mqueue", "mqueue-client"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        if host.layout == "centos":
            shutil.copy(FILES / "centos-sendmail.mc", etc_mail / "sendmail.mc")
            shutil.copy(FILES / "centos-Makefile", etc_mail / "Makefile")
            shutil.copy(FILES / "centos-init-sendmail", root / "init-sendmail")
            for name in ("mailertable", "virtusertable"):
                (etc_mail / name).write_text("")
            (etc_mail / "local-host-names").write_text(f"{host.fqdn}\n")
            for stale in ("sendmail.cf",):
                (etc_mail / stale).unlink()
            # CentOS keeps its queue root-owned and private.
            os.chown(root / "mqueue", 0, 0)
            os.chmod(root / "mqueue", 0o700)
            (root / "log" / "maillog").touch()
        else:
            shutil.chown(root / "mqueue", "smmta", "smmsp")
            os.chmod(root / "mqueue", 0o2750)
            (root / "log" / "mail.log").touch()
        shutil.chown(root / "mqueue-client", "smmsp", "smmsp")
        os.chmod(root / "mqueue-client", 0o2770)

    def _build_namespaces(self, host: LabHost, package: Path | None = None) -> None:
        peer = f"{host.veth}p"
        sh(["ip", "netns", "add", host.netns])
        sh(["ip", "link", "add", host.veth, "type", "veth", "peer", "name", peer])
        sh(["ip", "link", "set", peer, "netns", host.netns])
        sh(["ip", "link", "set", host.veth, "master", self.bridge])
        sh(["ip", "link", "set", host.veth, "up"])
        in_ns = ["ip", "netns", "exec", host.netns]
        sh([*in_ns, "ip", "link", "set", "lo", "up"])
        sh([*in_ns, "ip", "addr", "add", f"{host.address}/24", "dev", peer])
        sh([*in_ns, "ip", "link", "set", peer, "up"])
        sh([*in_ns, "ip", "route", "add", "default", "via", self.gateway])
        pidfile = host.root / "holder.pid"
        holder = subprocess.Popen(
            [*in_ns, "unshare", "--mount", "--uts", "--fork", "--propagation", "private",
             "sh", "-c", f'echo $$ > {shlex.quote(str(pidfile))}; exec sleep infinity'],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        host.processes.append(holder)
        deadline = time.monotonic() + 10
        while not (pidfile.exists() and pidfile.read_text().strip()):
            if time.monotonic() > deadline or holder.poll() is not None:
                raise LabError(f"{host.name}: namespace holder did not start")
            time.sleep(0.02)
        host.holder_pid = int(pidfile.read_text())
        syslog = subprocess.Popen(
            [sys.executable, "-m", "tests.lab.syslogd", "--socket", str(host.root / "log.sock"),
             "--out", str(host.maillog), "--hostname", host.name],
            cwd=REPO_ROOT, stdin=subprocess.DEVNULL, start_new_session=True)
        host.processes.append(syslog)
        # It lives in the root namespaces: the next lab kills it if this one dies untidily.
        self._note_root_process(syslog.pid)
        deadline = time.monotonic() + 10
        while not (host.root / "log.sock").exists():
            if time.monotonic() > deadline:
                raise LabError(f"{host.name}: syslog receiver did not start")
            time.sleep(0.02)
        root = host.root
        script = "set -e\n"
        if package is not None:
            # The package on top of the real tree; the host's changes in its own upper dir.
            for target, part, upper in _POSTFIX_OVERLAYS:
                dirs = (package / part, Path(target), root / "overlay" / "upper" / upper,
                        root / "overlay" / "work" / upper)
                if any(ch in str(d) for d in dirs for ch in ":,="):
                    raise LabError(f"{host.name}: overlayfs cannot take a path with ':', ',' "
                                   f"or '=' ({', '.join(map(str, dirs))})")
                options = (f"lowerdir={dirs[0]}:{dirs[1]},upperdir={dirs[2]},"
                           f"workdir={dirs[3]}")
                script += (f"mount -t overlay -o {shlex.quote(options)} "
                           f"relayfleet-lab {shlex.quote(target)}\n")
            binds = [(root / "mail", "/var/mail")]
        else:
            binds = [(root / "etc-mail", "/etc/mail"),
                     (root / "mqueue", "/var/spool/mqueue"),
                     (root / "mqueue-client", "/var/spool/mqueue-client")]
        # The agent's install (install.sh, install_agent) writes these: each host its own.
        for private in ("opt-relayfleet", "etc-relayfleet"):
            (root / private).mkdir(mode=0o755, exist_ok=True)
        # Mount points (on the machine's own tree, but for a Postfix host's /etc overlay).
        script += "mkdir -p /opt/relayfleet /etc/relayfleet\n"
        binds += [
            (root / "opt-relayfleet", "/opt/relayfleet"),
            (root / "etc-relayfleet", "/etc/relayfleet"),
            (root / "hosts", "/etc/hosts"),
            (root / "resolv.conf", "/etc/resolv.conf"),
            (root / "run", "/run"),
            (root / "log", "/var/log"),
            (root / "log.sock", "/dev/log"),
        ]
        if host.layout == "centos" and package is None:
            binds.append((root / "init-sendmail", "/etc/init.d/sendmail"))
        elif package is None:
            binds.append((self._init_script(), str(DEBIAN_INIT_SCRIPT)))
        script += "".join(
            f"mount --bind {shlex.quote(str(src))} {shlex.quote(dst)}\n" for src, dst in binds)
        script += f"hostname {shlex.quote(host.name)}\n"
        host.run(["sh", "-c", script])

    # -- Postfix hosts -------------------------------------------------------------
    def _sendmail_leftovers(self, package: Path) -> list[str]:
        """What the sendmail packages put under the host's writable trees (files, sendmail's
        own directories, the alternatives that lead into them and the links to those), less
        what the postfix package itself provides: a Postfix host must not look like a
        sendmail one (no /etc/mail, no /etc/init.d/sendmail, no sendmail's newaliases)."""
        if self._sendmail_paths is not None:
            return self._sendmail_paths
        installed = [p for p in SENDMAIL_PACKAGES
                     if b"ok installed" in sh(["dpkg-query", "-W", "-f=${Status}", p],
                                               check=False).stdout]
        listed = sh(["dpkg", "-L", *installed]).stdout.decode().splitlines() if installed else []
        listed += ["/var/lib/sendmail", "/etc/mail", "/var/spool/mqueue",
                   "/var/spool/mqueue-client"]
        paths: set[str] = set()
        dirs: list[str] = []
        writable = (*(f"{target}/" for target, _, _ in _POSTFIX_OVERLAYS), "/lib/")
        for path in listed:
            if not path.startswith(writable) or os.path.lexists(package / path.lstrip("/")):
                continue
            if os.path.islink(path) or os.path.isfile(path):
                paths.add(path)
            elif os.path.isdir(path) and ("sendmail" in path or "mqueue" in path
                                          or path == "/etc/mail"):
                paths.add(path)
                dirs.append(path + "/")
        gone: set[str] = set()
        for alt in Path("/etc/alternatives").iterdir():
            target = os.readlink(alt) if alt.is_symlink() else ""
            if target in paths or target.startswith(tuple(dirs)):
                gone.add(str(alt))
        paths |= gone
        for where in ("/usr/bin", "/usr/sbin", "/usr/lib", "/usr/share/man/man1",
                      "/usr/share/man/man5", "/usr/share/man/man8"):
            with os.scandir(where) as entries:
                for entry in entries:
                    if (entry.is_symlink() and os.readlink(entry.path) in gone
                            and not os.path.lexists(package / entry.path.lstrip("/"))):
                        paths.add(entry.path)
        self._sendmail_paths = sorted(paths)
        return self._sendmail_paths

    def _setup_postfix(self, host: LabHost, package: Path) -> None:
        """Install Postfix in the host's own trees the way its distribution's package does."""
        host.run(["xargs", "-0", "rm", "-rf", "--"],
                 input="\0".join(self._sendmail_leftovers(package)).encode())
        share = package / "usr" / "share" / "postfix"
        config = host.fs("/etc/postfix")
        (config / "dynamicmaps.cf").write_text(_dynamicmaps(package))
        master = (share / "master.cf.dist").read_text()
        for name in ("main.cf", "master.cf"):  # for postmulti; both distributions ship them
            (config / f"{name}.proto").write_text((share / f"{name}.dist").read_text())
        if host.layout == "centos":
            host.run(["sh", "-c", _RHEL_POSTFIX_SETUP])
            # RHEL ships upstream's master.cf: no service chrooted.
            (config / "master.cf").write_text(_CHROOT_COLUMN.sub(r"\1n\2", master))
            shutil.copy(FILES / "centos-postfix-main.cf", config / "main.cf")
        else:
            (config / "master.cf").write_text(master)
            host.run(["sh", "-c", _debian_postfix_setup(host)])
        # Postfix pauses, 300 ms at a time, until a main.cf written in the last second has
        # "cooled down": date the freshly built one a few seconds back (saves ~2 s a host).
        cooled = time.time() - 5
        os.utime(config / "main.cf", (cooled, cooled))
        host.run(["newaliases"])
        # Debian's postfix-files lists $meta_directory/makedefs.out, but the package keeps it
        # in /usr/share/postfix: `postfix set-permissions` stops at "chown: cannot access
        # '/etc/postfix/makedefs.out'" on a real Debian 12 too. RHEL ships it in /etc/postfix.
        makedefs = config / "makedefs.out"
        shutil.copy(share / "makedefs.out", makedefs)
        host.run(["postfix", "set-permissions"])
        if host.layout != "centos":
            makedefs.unlink()
        check = host.run(["postfix", "check"], check=False)
        output = check.stdout + check.stderr
        (host.root / "postfix-check.log").write_bytes(output)
        if check.returncode != 0:
            raise LabError(f"{host.name}: postfix check exited {check.returncode}: "
                           f"{output.decode(errors='replace').strip()}")
        # The receiver takes every facility: groupadd's and useradd's lines (auth) are not
        # maillog lines. The log starts with Postfix's own start.
        with host.maillog.open("r+b") as log:
            log.truncate(0)

    def close(self) -> None:
        """Tear the lab down, whatever state it is in."""
        for host in reversed(self.hosts):
            with contextlib.suppress(Exception):
                host.close()
        for proc in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                proc.wait(timeout=5)
        if self.bridge:
            sh(["ip", "link", "del", self.bridge], check=False)
        shutil.rmtree(self.state, ignore_errors=True)


#: a master.cf service line's chroot column (the fifth) when it says ``y``
_CHROOT_COLUMN = re.compile(r"^((?:[^#\s]\S*)\s+(?:\S+\s+){3})y(\s)", re.MULTILINE)

#: RHEL's postfix package, done over Debian's binaries: its users and groups (%pre, fixed ids
#: 89/90 when free), its file names (sendmail.postfix & co behind the ``mta``
#: alternative, /usr/libexec/postfix, /usr/lib64/postfix) and its TLS files
_RHEL_POSTFIX_SETUP = r"""set -e
if getent group 89 >/dev/null; then groupadd -r postfix; else groupadd -g 89 -r postfix; fi
if getent group 90 >/dev/null; then groupadd -r postdrop; else groupadd -g 90 -r postdrop; fi
if getent passwd 89 >/dev/null; then uid=; else uid="-u 89"; fi
useradd -d /var/spool/postfix -s /sbin/nologin -g postfix -G mail -M -r $uid postfix
rm -f /etc/init.d/postfix /etc/insserv.conf.d/postfix
mkdir -p /usr/libexec /usr/lib64 /etc/pki/tls/certs /etc/pki/tls/private
ln -s /usr/lib/postfix/sbin /usr/libexec/postfix
ln -s /usr/lib/postfix /usr/lib64/postfix
mv /usr/sbin/sendmail /usr/sbin/sendmail.postfix
ln -s ../../usr/sbin/sendmail.postfix /usr/bin/mailq.postfix
ln -s ../../usr/sbin/sendmail.postfix /usr/bin/newaliases.postfix
ln -s ../sbin/sendmail.postfix /usr/lib/sendmail.postfix
rm -f /usr/bin/mailq /usr/bin/newaliases /usr/lib/sendmail
ln -s /etc/alternatives/mta /usr/sbin/sendmail
ln -s /etc/alternatives/mta-mailq /usr/bin/mailq
ln -s /etc/alternatives/mta-newaliases /usr/bin/newaliases
ln -s /etc/alternatives/mta-sendmail /usr/lib/sendmail
ln -s /usr/sbin/sendmail.postfix /etc/alternatives/mta
ln -s /usr/bin/mailq.postfix /etc/alternatives/mta-mailq
ln -s /usr/bin/newaliases.postfix /etc/alternatives/mta-newaliases
ln -s /usr/lib/sendmail.postfix /etc/alternatives/mta-sendmail
ln -s /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt
umask 077
openssl req -new -x509 -nodes -newkey rsa:2048 -days 365 -subj "/CN=$(hostname)" \
    -keyout /etc/pki/tls/private/postfix.key -out /etc/pki/tls/certs/postfix.pem 2>/dev/null
chmod 644 /etc/pki/tls/certs/postfix.pem
"""


def _debian_postfix_setup(host: LabHost) -> str:
    """What Debian's postfix postinst does for an "Internet Site" on a fresh machine:
    ``adduser --system``, the snakeoil certificate (ssl-cert's postinst), /etc/mailname,
    main.cf from main.cf.debian (+ main.cf.tls) and its ``postconf -e`` calls in order."""
    fqdn = host.fqdn
    settings = [
        "smtpd_relay_restrictions=permit_mynetworks permit_sasl_authenticated "
        "defer_unauth_destination",
        f"myhostname={fqdn}", "alias_maps=hash:/etc/aliases",
        "alias_database=hash:/etc/aliases", "myorigin=/etc/mailname",
        f"mydestination=$myhostname, {fqdn}, localhost.{DOMAIN}, , localhost",
        "relayhost=", "mynetworks=127.0.0.0/8 [::ffff:127.0.0.0]/104 [::1]/128",
        "mailbox_size_limit=0", "recipient_delimiter=+", "inet_interfaces=all",
        "inet_protocols=all",
    ]
    snakeoil = "/etc/ssl/private/ssl-cert-snakeoil.key"
    return "\n".join([
        "set -e",
        "addgroup --system postfix >/dev/null 2>&1",
        "adduser --system --home /var/spool/postfix --no-create-home --disabled-password "
        "--ingroup postfix postfix >/dev/null 2>&1",
        "addgroup --system postdrop >/dev/null 2>&1",
        f"[ -f {snakeoil} ] || make-ssl-cert generate-default-snakeoil",
        f"echo {shlex.quote(fqdn)} > /etc/mailname",
        "cd /etc/postfix",
        "cp /usr/share/postfix/main.cf.debian main.cf",
        f"if [ -f {snakeoil} ]; then cat /usr/share/postfix/main.cf.tls >> main.cf; fi",
        *(f"postconf -e {shlex.quote(s)}" for s in settings),
        "",
    ])


def _dynamicmaps(package: Path) -> str:
    """/etc/postfix/dynamicmaps.cf as Debian's postinst writes it: the comments, and the
    rows whose map plugin is installed."""
    rows = []
    for row in (package / "usr" / "share" / "postfix" / "dynamicmaps.cf").read_text().splitlines():
        name = row.split()[0] if row.split() else ""
        if row.startswith("#") or (package / "usr" / "lib" / "postfix" /
                                   f"postfix-{name}.so").exists():
            rows.append(row)
    return "\n".join(rows) + "\n"


def _sync_account(host: LabHost, user: str, sudoers: Path) -> None:
    """Give a Postfix host (its own /etc) the root namespace's entries for ``user`` and the
    lab's sudoers file, as they are now."""
    for name in ("passwd", "shadow", "group", "gshadow"):
        real = Path("/etc") / name
        if not real.exists():
            continue
        wanted = [line for line in real.read_text().splitlines()
                  if line.split(":", 1)[0] == user]
        path = host.fs(f"/etc/{name}")
        kept = [line for line in path.read_text().splitlines()
                if line.split(":", 1)[0] != user]
        path.write_text("\n".join(kept + wanted) + "\n")
    copy = host.fs(str(sudoers))
    copy.write_bytes(sudoers.read_bytes())
    copy.chmod(0o440)


def _wait_port(address: str, port: int, proc: subprocess.Popen[bytes], udp: bool = False,
               timeout: float = 10) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LabError(f"{proc.args!r} exited {proc.returncode} while starting")
        if udp:
            out = sh(["ss", "-uln"], check=False).stdout.decode()
            if f"{address}:{port}" in out:
                return
        else:
            with contextlib.suppress(OSError), socket.create_connection((address, port), 0.5):
                return
        time.sleep(0.05)
    raise LabError(f"nothing listens on {address}:{port} after {timeout}s")


def reap_stale_labs() -> None:
    """Remove what labs of dead processes left behind (after a crash or a kill -9)."""
    if not STATE_ROOT.exists():
        return
    for state in STATE_ROOT.iterdir():
        if not state.name.isdigit() or _pid_alive(int(state.name)):
            continue
        _teardown_state(state)


def _start_ticks(pid: int) -> str:
    """A process's start time since boot (so a recycled pid is not mistaken for it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "?"


def _teardown_state(state: Path) -> None:
    pids_file = state / "pids"
    if pids_file.exists():
        for line in pids_file.read_text().splitlines():
            pid, _, started = line.partition(" ")
            if pid.isdigit() and _start_ticks(int(pid)) == started:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(int(pid), signal.SIGKILL)
    netns_file = state / "netns"
    if netns_file.exists():
        for line in netns_file.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2:
                _teardown_netns(parts[0], parts[1])
    bridge_file = state / "bridge"
    if bridge_file.exists():
        sh(["ip", "link", "del", bridge_file.read_text().strip()], check=False)
    shutil.rmtree(state, ignore_errors=True)
