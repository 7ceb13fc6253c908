"""The fake sendmail host: m4, make, makemap, sendmail, mailq, restarts, queue and maillog."""

from __future__ import annotations

import base64
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from shared.testing.executor import FakeExecutor, FileState, Outcome, norm_path
from shared.testing.m4 import M4Result, fake_m4

#: what ``mailq`` prints above the messages
MAILQ_COLUMNS = ("-----Q-ID----- --Size-- -----Q-Time----- "
                 "------------Sender/Recipient-----------")
#: first bytes of a map the fake makemap builds (the rest is the map source)
FAKE_DB_MAGIC = b"relayfleet fake hash map\n"
SENDMAIL_VERSION = "8.17.1.9"
_CF_LINE_STARTS = tuple("VDCFOMSRKHPTELQ#\t ")
#: the group sendmail.mc and sendmail.cf belong to on the fake hosts (Debian's smmsp)
SMMSP_GID = 25
_MAPS = ("access", "authinfo", "mailertable", "virtusertable", "genericstable", "domaintable")
#: what sendmail logs for a STARTTLS session with a lab relay (the cipher TLSv1.3 picks)
TLS_SESSION = "version=TLSv1.3, verify={verify}, cipher=TLS_AES_256_GCM_SHA384, bits=256/256"


@dataclass
class RelayTls:
    """How a smarthost of the fake does TLS (by default: STARTTLS with a certificate that
    names it and verifies)."""

    #: offers STARTTLS
    starttls: bool = True
    #: the name its certificate carries (None: its own)
    cert_name: str | None = None
    #: its certificate chain verifies against a CA the host's sendmail.cf names
    trusted: bool = True


@dataclass(frozen=True)
class RelayedMail:
    """A message the smarthost accepted from the fake's sendmail."""

    queue_id: str
    #: the envelope sender as it left (masqueraded or not)
    sender: str
    recipient: str
    host: str
    #: the SMTP AUTH user (None: no AUTH)
    auth_user: str | None
    #: inside STARTTLS
    tls: bool
    #: the From: header's address as it left
    header_from: str


@dataclass(frozen=True)
class AuthSent:
    """An SMTP AUTH exchange the fake's sendmail had with a smarthost."""

    host: str
    username: str
    password: str
    #: inside STARTTLS
    tls: bool


@dataclass
class FakeMessage:
    """A queued message as the fake's sendmail keeps it."""

    id: str
    sender: str
    """the envelope sender without <>; "" (or MAILER-DAEMON) for a bounce"""
    recipients: list[str]
    queued_at: datetime
    size: int = 512
    reason: str | None = None
    """the last delivery error, as mailq shows it"""
    flags: str = ""
    body_type: str = ""


def render_queue(directory: str, messages: Sequence[FakeMessage]) -> str:
    """One queue directory as sendmail's ``-bp`` prints it (``print_single_queue``)."""
    if not messages:
        return f"{directory} is empty\n\t\tTotal requests: 0\n"
    count = len(messages)
    out = [f"\t\t{directory} ({count} request{'s' if count != 1 else ''})\n",
           MAILQ_COLUMNS + "\n"]
    for m in messages:
        t = m.queued_at
        sender = f"<{m.sender}>" if m.sender and m.sender != "MAILER-DAEMON" else "MAILER-DAEMON"
        out.append(f"{m.id}{(m.flags or ' ')[:1]}{m.size:8d} {t:%a %b} {t.day:2d} {t:%H:%M} "
                   f"{sender}\n")
        if m.reason:
            out.append(f"    {m.body_type:>10.10}   ({m.reason[:60]})\n")
        out += [f"\t\t\t\t\t <{r}>\n" for r in m.recipients]
    out.append(f"\t\tTotal requests: {count}\n")
    return "".join(out)


class FakeSendmailHost(FakeExecutor):
    """A fake host running sendmail: its files, tools, daemon, queue and maillog.

    Build one with :func:`~shared.testing.debian_sendmail_host` or
    :func:`~shared.testing.rhel_sendmail_host`; the defaults here are Debian's layout (pid
    file, mail.log, queue directories). Queue runs deliver by these rules unless
    ``outcomes`` (recipient address or ``@domain`` -> the text sendmail would log, e.g.
    "Deferred: Connection timed out") says otherwise: a local recipient keeps failing with
    its message's reason (delivered if it has none); with a smarthost in sendmail.cf a
    remote recipient is sent through it (refused if the smarthost is in ``refusing``);
    without one it is deferred ("Connection refused by mx.DOMAIN."). Messages sent through
    a smarthost with an ``authinfo`` entry (``P:`` plain or ``P=`` base64 password) show the
    ``>>> AUTH`` exchange in the ``-v`` transcript, as sendmail does, and land in
    ``auth_sent``.

    TLS as sendmail 8.17 does it (checked on lab hosts): each smarthost speaks STARTTLS
    unless ``relay_tls`` says otherwise; the certificate verifies only when sendmail.cf names
    both ``CACertPath`` and ``CACertFile`` (sendmail loads CA certificates only then) and the
    relay is ``trusted``. With FEATURE(access_db), the access map's ``TLS_Srv:HOST`` entry
    (``ENCR:bits``, ``VERIFY[:bits][+CN]``) is checked after STARTTLS and before AUTH: a
    session that does not meet it ends before AUTH, the recipient deferred with sendmail's
    own words ("454 4.7.0 encryption too weak 0 less than 112", "... authentication
    failed", "... CN other.lab.test does not match relay.lab.test") and a
    ``ruleset=tls_server`` line in the maillog. Without an entry, AUTH goes in clear to a
    relay without STARTTLS. sendmail.cf's ``DM`` masquerades the host's own sender
    addresses in headers, and in the envelope with FEATURE(`masquerade_envelope');
    accepted messages land in ``relayed``.
    """

    def __init__(self, *, flavour: str = "debian", hostname: str = "lab1",
                 fqdn: str | None = "lab1.lab.test", label: str | None = None,
                 mail_dir: str = "/etc/mail", pid_file: str = "/run/sendmail/mta/sendmail.pid",
                 maillog: str = "/var/log/mail.log",
                 queue_dirs: Mapping[str, str] | None = None) -> None:
        super().__init__(label=label or hostname, hostname=hostname, fqdn=fqdn)
        self.flavour = flavour
        self.mail_dir = mail_dir.rstrip("/")
        self.pid_file = pid_file
        self.maillog = maillog
        self.queue_dirs = dict(queue_dirs or {"mta": "/var/spool/mqueue",
                                              "msp": "/var/spool/mqueue-client"})
        #: the queues: "mta" and "msp" (the client queue)
        self.queues: dict[str, list[FakeMessage]] = {"mta": [], "msp": []}
        self.outcomes: dict[str, str] = {}
        self.refusing: set[str] = set()
        #: how each smarthost does TLS (not listed: STARTTLS, a certificate that verifies)
        self.relay_tls: dict[str, RelayTls] = {}
        self.auth_sent: list[AuthSent] = []
        self.relayed: list[RelayedMail] = []
        #: the running daemon's pid and the sendmail.cf it loaded (None: stopped)
        self.daemon_pid: int | None = None
        self.daemon_cf: bytes | None = None
        self.restarts = 0
        #: each mc text m4 compiled, and the shell commands m4 was asked to run (never run)
        self.m4_inputs: list[str] = []
        self.m4_shell_calls: list[str] = []
        self._queue_seq = 0
        self.programs.update({
            "m4": self._m4, "make": self._make, "makemap": self._makemap,
            "sendmail": self._sendmail, "sendmail-mta": self._sendmail,
            "sm-mta": self._sendmail, "mailq": self._mailq, "service": self._service,
            "systemctl": self._systemctl, "/etc/init.d/sendmail": self._init_script,
            "/etc/rc.d/init.d/sendmail": self._init_script,
        })

    @property
    def mc_path(self) -> str:
        """sendmail.mc."""
        return f"{self.mail_dir}/sendmail.mc"

    @property
    def cf_path(self) -> str:
        """sendmail.cf."""
        return f"{self.mail_dir}/sendmail.cf"

    # -- building the host -------------------------------------------------------------------
    def compile_mc(self, text: str, filename: str = "sendmail.mc") -> M4Result:
        """Compile mc text as this host's m4 does (includes read from the fake's files)."""
        result = fake_m4(text, filename=filename, read=self._read_text_or_none,
                         mail_dir=self.mail_dir)
        self.m4_inputs.append(text)
        self.m4_shell_calls += result.shell_calls
        return result

    def _read_text_or_none(self, path: str) -> str | None:
        data = self._file_data(path)
        return None if data is None else data.decode("utf-8", "replace")

    def queue_message(self, recipients: Iterable[str], *, sender: str | None = None,
                      reason: str | None = None, section: str = "mta", size: int = 512,
                      queued_at: datetime | None = None) -> FakeMessage:
        """Queue a message (in ``section`` "mta" or "msp"; from root by default); return it."""
        sender = sender if sender is not None else f"root@{self.fqdn or self.hostname}"
        message = FakeMessage(self._new_queue_id(), sender, list(recipients),
                              queued_at or datetime.now().replace(second=0, microsecond=0),
                              size, reason)
        with self._lock:
            self.queues[section].append(message)
        return message

    def _new_queue_id(self) -> str:
        with self._lock:
            self._queue_seq += 1
            return f"7RF{self._queue_seq:05d}{self._next_pid % 1000000:06d}"

    def start_daemon(self) -> int:
        """Start sendmail (as the init script does): pid file, loaded cf, maillog line."""
        with self._lock:
            self.stop_daemon()
            pid = self.spawn()
            command = ("/usr/sbin/sendmail-mta -Am -L sm-mta -bd -q10m" if self.flavour == "debian"
                       else "sendmail: accepting connections")
            self.add_file(self.pid_file, f"{pid}\n{command}\n", mode=0o644)
            self.daemon_pid, self.daemon_cf = pid, self.read_file(self.cf_path)
            self.restarts += 1
            self.log(pid, f"starting daemon ({SENDMAIL_VERSION}): SMTP+queueing@00:10:00")
            return pid

    def stop_daemon(self, *, keep_pid_file: bool = False) -> None:
        """Stop sendmail (``keep_pid_file``: as a crash would, leaving a stale pid file)."""
        with self._lock:
            if self.daemon_pid is not None:
                self.processes.discard(self.daemon_pid)
            self.daemon_pid = self.daemon_cf = None
            if not keep_pid_file:
                self._nodes.pop(norm_path(self.pid_file), None)

    def log(self, pid: int, message: str, program: str = "sm-mta") -> None:
        """Append one syslog line to the maillog."""
        stamp = datetime.now()
        line = (f"{stamp:%b} {stamp.day:2d} {stamp:%H:%M:%S} {self.hostname} "
                f"{program}[{pid}]: {message}\n")
        with self._lock:
            old = self._nodes.get(norm_path(self.maillog))
            data = (old.data or b"") if old else b""
            if old is None:
                self.add_file(self.maillog, data + line.encode(), mode=0o640)
            else:
                self._nodes[norm_path(self.maillog)] = replace(old, data=data + line.encode(),
                                                           mtime=self.now())

    # -- m4, make, makemap ---------------------------------------------------------------------
    def _m4(self, argv: tuple[str, ...], input: bytes | None) -> Outcome:
        files = [a for a in argv[1:] if not a.startswith("-")]
        sources: list[tuple[str, str]] = []
        for path in files:
            text = self._read_text_or_none(path)
            if text is None:
                return 1, b"", f"m4: cannot open `{path}': No such file or directory\n"
            sources.append((path, text))
        if not files:
            sources.append(("stdin", (input or b"").decode("utf-8", "replace")))
        result = self.compile_mc("".join(t for _, t in sources), sources[0][0])
        return result.exit_code, result.output, result.stderr

    def _write_keeping(self, path: str, data: bytes, mode: int) -> None:
        old = self._nodes.get(path)
        self._nodes[path] = FileState(data, old.mode if old else mode, old.uid if old else 0,
                                      old.gid if old else 0, self.now())
        self.file_ops.append(("write", path))

    def _newer(self, source: str, target: str) -> bool:
        src, dst = self._nodes.get(source), self._nodes.get(target)
        return src is not None and (dst is None or src.mtime > dst.mtime)

    def _make(self, argv: tuple[str, ...], _input: bytes | None) -> Outcome:
        """``make -C /etc/mail``: what sendmail's Makefile does, without a Makefile."""
        args = list(argv[1:])
        directory = self.mail_dir
        if "-C" in args and args.index("-C") + 1 < len(args):
            directory = norm_path(args[args.index("-C") + 1])
        node = self._nodes.get(directory)
        if directory != self.mail_dir or node is None:
            return 2, b"", f"make: *** {directory}: No such file or directory.  Stop.\n"
        out = [f"make: Entering directory '{directory}'\n"]
        if self._newer(self.mc_path, self.cf_path):
            result = self.compile_mc(self.read_text(self.mc_path))
            if result.exit_code:
                return 2, "".join(out), (result.stderr +
                                         "make: *** [Makefile: sendmail.cf] Error 1\n")
            self._write_keeping(self.cf_path, result.output.encode(), 0o644)
            out.append("Updating sendmail.cf ...\n")
        for name in _MAPS:
            source = f"{directory}/{name}"
            data = self._file_data(source)
            if data is not None and self._newer(source, f"{source}.db"):
                self._write_keeping(f"{source}.db", FAKE_DB_MAGIC + data, 0o640)
                out.append(f"makemap hash {source}.db < {source}\n")
        out.append(f"make: Leaving directory '{directory}'\n")
        return 0, "".join(out), b""

    def _makemap(self, argv: tuple[str, ...], input: bytes | None) -> Outcome:
        args = [a for a in argv[1:] if not a.startswith("-")]
        if len(args) != 2:
            return 64, b"", "usage: makemap [-N] [-c cachesize] [-D commentchar] ... type mapname\n"
        kind, name = args
        if kind not in ("hash", "btree", "dbm"):
            return 1, b"", f"makemap: Unknown database type {kind}\n"
        db = norm_path(f"{name}.db")
        if not self._parent_is_dir(db):
            return 1, b"", (f"makemap: error opening type {kind} map {name}: "
                            "No such file or directory\n")
        self._nodes[db] = FileState(FAKE_DB_MAGIC + (input or b""), 0o640, self.uid, self.gid,
                                    self.now())
        self.file_ops.append(("write", db))
        return 0, b"", b""

    # -- the daemon ----------------------------------------------------------------------------
    def _cf_problem(self, path: str) -> tuple[int, str] | None:
        """Why sendmail would refuse the cf at ``path`` (exit code, message), or None."""
        text = self._read_text_or_none(path)
        if text is None:
            return 72, f"{path}: line 0: cannot open: No such file or directory\n"
        for number, line in enumerate(text.splitlines(), 1):
            if line and not line.startswith(_CF_LINE_STARTS):
                return 70, f'{path}: line {number}: unknown configuration line "{line}"\n'
        return None

    def _control(self, action: str) -> Outcome:
        """What the init script does for ``action``."""
        running = self.daemon_pid is not None and self.daemon_pid in self.processes
        if action == "status":
            return (0, "sendmail is running\n", b"") if running else (3, "sendmail is stopped\n",
                                                                      b"")
        if action == "stop":
            self.stop_daemon()
            return 0, "Stopping Mail Transport Agent (MTA): sm-mta.\n", b""
        if action not in ("start", "restart", "reload", "force-reload"):
            return 2, b"", f"Usage: sendmail {{start|stop|restart|status}} (not {action})\n"
        if action == "start" and running:
            return 0, "sendmail is already running\n", b""
        problem = self._cf_problem(self.cf_path)
        if problem is not None:
            self.stop_daemon()
            return 1, "Starting Mail Transport Agent (MTA): sm-mta failed!\n", problem[1]
        self.start_daemon()
        return 0, "Starting Mail Transport Agent (MTA): sm-mta.\n", b""

    def _init_script(self, argv: tuple[str, ...], _input: bytes | None) -> Outcome:
        return self._control(argv[1] if len(argv) > 1 else "")

    def _service(self, argv: tuple[str, ...], _input: bytes | None) -> Outcome:
        if len(argv) < 3 or argv[1] != "sendmail":
            return 1, b"", f"{shlex.join(argv[1:2])}: unrecognized service\n"
        return self._control(argv[2])

    def _systemctl(self, argv: tuple[str, ...], _input: bytes | None) -> Outcome:
        if len(argv) < 3 or argv[2].removesuffix(".service") != "sendmail":
            return 5, b"", "Unit not found.\n"
        return self._control(argv[1])

    # -- sendmail and mailq --------------------------------------------------------------------
    def _version(self) -> str:
        domain = self.fqdn.partition(".")[2] if self.fqdn else ""
        return (f"Version {SENDMAIL_VERSION}\n Compiled with: DNSMAP IPV6_FULL LOG MAP_REGEX "
                "MILTER NAMED_BIND NETINET NETINET6 NEWDB PIPELINING SASLv2 STARTTLS\n\n"
                "============ SYSTEM IDENTITY (after readcf) ============\n"
                f"      (short domain name) $w = {self.hostname}\n"
                f"  (canonical domain name) $j = {self.fqdn or self.hostname}\n"
                f"         (subdomain name) $m = {domain or '<null>'}\n"
                f"              (node name) $k = {self.hostname}\n"
                "========================================================\n\n")

    def _sendmail(self, argv: tuple[str, ...], _input: bytes | None) -> Outcome:
        conf, mode, select, section, verbose, debug = self.cf_path, "", "", "mta", False, False
        rest: list[str] = []
        args = list(argv[1:])
        while args:
            arg = args.pop(0)
            if arg == "-C" and args:
                conf = args.pop(0)
            elif arg.startswith("-C"):
                conf = arg[2:]
            elif arg.startswith("-d"):
                debug = True
            elif arg.startswith("-b"):
                mode = arg[2:]
            elif arg.startswith("-q"):
                mode, select = "q", arg[2:]
            elif arg in ("-Ac", "-Am"):
                section = "msp" if arg == "-Ac" else "mta"
            elif arg == "-v":
                verbose = True
            elif arg in ("-O", "-o") and args:
                args.pop(0)
            elif not arg.startswith(("-O", "-o", "-L")):
                rest.append(arg)
        if mode == "v":
            head = self._version() if debug else ""
            problem = self._cf_problem(conf)
            if problem is not None:
                return problem[0], head.split("\n\n", 1)[0] + "\n", problem[1]
            return 0, head + "".join(f"{r}... deliverable: mailer local, user {r}\n"
                                     for r in rest), b""
        if mode == "p":
            return 0, self._listing([section]), b""
        if mode == "q":
            return 0, self._queue_run(section, select, verbose), b""
        return 64, b"", f"FakeSendmailHost does not simulate {shlex.join(argv)}\n"

    def _listing(self, sections: Sequence[str]) -> str:
        return "".join(render_queue(self.queue_dirs[s], self.queues[s]) for s in sections)

    def _mailq(self, argv: tuple[str, ...], _input: bytes | None) -> Outcome:
        if "-Ac" in argv:
            return 0, self._listing(["msp"]), b""
        if self.flavour != "debian":
            return 0, self._listing(["mta"]), b""
        # Debian's mailq lists the submission (MSP) queue first, then the MTA's.
        return 0, ("MSP Queue status...\n" + self._listing(["msp"]) +
                   "MTA Queue status...\n" + self._listing(["mta"])), b""

    def _selected(self, message: FakeMessage, select: str) -> bool:
        kind, value = select[:1], select[1:].lower()
        if kind == "I":
            return value in message.id.lower()
        if kind == "R":
            return any(value in r.lower() for r in message.recipients)
        if kind == "S":
            return value in (message.sender or "MAILER-DAEMON").lower()
        return True

    def _smarthost(self) -> tuple[str, str] | None:
        """(host without brackets, mailer) of sendmail.cf's DS line, or None."""
        cf = self._read_text_or_none(self.cf_path) or ""
        value = next((ln[2:].strip() for ln in cf.splitlines() if ln.startswith("DS")), "")
        if not value:
            return None
        prefix, sep, rest = value.partition(":")
        mailer, host = (prefix, rest) if sep and prefix in (
            "relay", "esmtp", "smtp", "smtp8", "dsmtp") else ("relay", value)
        return host.strip("[]"), mailer

    def _cf(self) -> str:
        return self._read_text_or_none(self.cf_path) or ""

    def _map(self, name: str) -> list[str]:
        """The lines of a compiled map (the fake's .db holds its source after a magic line)."""
        db = self._read_text_or_none(f"{self.mail_dir}/{name}.db")
        return db.splitlines()[1:] if db is not None else []

    def _credentials(self, host: str) -> tuple[str, str] | None:
        """(user, password) of ``host`` in the compiled authinfo map, when sendmail uses it."""
        if "\nKauthinfo " not in self._cf():
            return None
        for line in self._map("authinfo"):
            if line.lower().startswith(f"authinfo:{host.lower()} "):
                user = re.search(r'"U:([^"]*)"', line)
                password = re.search(r'"P([:=])([^"]*)"', line)
                if user and password:
                    secret = password.group(2)
                    if password.group(1) == "=":
                        secret = base64.b64decode(secret).decode("utf-8", "replace")
                    return user.group(1), secret
        return None

    def _tls_requirement(self, host: str) -> str | None:
        """The access map's TLS_Srv entry for ``host`` (upper case), when sendmail uses it."""
        if "\nKaccess " not in self._cf():
            return None
        key = f"tls_srv:{host.lower()}"
        for line in self._map("access"):
            words = line.split(None, 1)
            if len(words) == 2 and words[0].lower() == key:
                return words[1].strip().upper()
        return None

    def _tls_refusal(self, host: str, verify: str, cert_name: str) -> str | None:
        """What sendmail's tls_server ruleset answers (None: the session may go on)."""
        requirement = re.sub(r"^(?:PERM|TEMP)\+", "", self._tls_requirement(host) or "")
        if requirement.startswith("VERIFY"):
            if verify != "OK":
                return {"NONE": "454 4.7.0 other side does not support STARTTLS",
                        "FAIL": "454 4.7.0 authentication failed"}[verify]
            if "CN" in requirement.partition("+")[2].split("++") and cert_name != host:
                return f"454 4.7.0 CN {cert_name} does not match {host}"
        elif requirement.startswith("ENCR:") and verify == "NONE":
            bits = requirement.partition(":")[2].split("+")[0]
            return f"454 4.7.0 encryption too weak 0 less than {bits}"
        return None

    def _masquerade(self, sender: str, envelope: bool) -> str:
        """The sender as sendmail.cf's masquerading rewrites it (headers, or the envelope)."""
        cf = self._cf().splitlines()
        domain = next((ln[2:].strip() for ln in cf if ln.startswith("DM")), "")
        if not domain or (envelope and not any("$>MasqHdr" in ln for ln in cf
                                               if ln.startswith("R$+"))):
            return sender
        user, _, host = sender.rpartition("@")
        local = host.lower() in {self.fqdn or "", self.hostname, "localhost"}
        return f"{user}@{domain}" if user and local else sender

    def _session(self, host: str, message: FakeMessage, rcpt: str, pid: int
                 ) -> tuple[list[str], str, str | None]:
        """The SMTP session with a smarthost that answers: transcript, outcome text, and the
        ``ruleset=tls_server`` refusal to log (None: no refusal)."""
        tls = self.relay_tls.get(host, RelayTls())
        credentials = self._credentials(host)
        lines = [f"220 {host} ESMTP", f">>> EHLO {self.fqdn or self.hostname}", f"250-{host}",
                 "250-PIPELINING", *(["250-STARTTLS"] if tls.starttls else []),
                 *(["250-AUTH PLAIN LOGIN"] if credentials and not tls.starttls else []),
                 "250 8BITMIME"]
        verify, cert_name = "NONE", tls.cert_name or host
        if tls.starttls:
            cf = self._cf()
            verify = ("OK" if tls.trusted and "\nO CACertPath=" in cf and "\nO CACertFile=" in cf
                      else "FAIL")
            self.log(pid, f"STARTTLS=client, relay={host}., " + TLS_SESSION.format(verify=verify))
            lines += [">>> STARTTLS", "220 2.0.0 Ready to start TLS"]
        refusal = self._tls_refusal(host, verify, cert_name)
        if refusal is not None:
            return ([*lines, ">>> QUIT", "221 2.0.0 Bye", f"<{rcpt}>... Deferred: {refusal}",
                     f"Closing connection to {host}."], f"Deferred: {refusal}",
                    f"ruleset=tls_server, arg1={verify}, relay={host}, reject={refusal}")
        if tls.starttls:
            lines += [f">>> EHLO {self.fqdn or self.hostname}", f"250-{host}",
                      *(["250-AUTH PLAIN LOGIN"] if credentials else []), "250 8BITMIME"]
        if credentials:
            token = base64.b64encode(f"\0{credentials[0]}\0{credentials[1]}".encode()).decode()
            lines += [f">>> AUTH PLAIN {token}", "235 2.7.0 Authentication successful"]
            self.auth_sent.append(AuthSent(host, *credentials, tls=tls.starttls))
        sender = self._masquerade(message.sender, envelope=True)
        text = "Sent (2.0.0 Ok: queued)"
        lines += [f">>> MAIL From:<{sender}> SIZE={message.size}", "250 2.1.0 Ok",
                  f">>> RCPT To:<{rcpt}>", "250 2.1.5 Ok", ">>> DATA",
                  "354 End data with <CR><LF>.<CR><LF>", ">>> .", "250 2.0.0 Ok: queued",
                  f"<{rcpt}>... {text}", f"Closing connection to {host}.", ">>> QUIT",
                  "221 2.0.0 Bye"]
        self.relayed.append(RelayedMail(message.id, sender, rcpt, host, credentials[0]
                                        if credentials else None, tls.starttls,
                                        self._masquerade(message.sender, envelope=False)))
        return lines, text, None

    def _deliver(self, message: FakeMessage, rcpt: str,
                 pid: int) -> tuple[list[str], str, str, str]:
        """One delivery attempt: transcript lines, the outcome text, mailer and relay."""
        domain = rcpt.rpartition("@")[2].lower()
        scripted = self.outcomes.get(rcpt) or self.outcomes.get(f"@{domain}")
        if not domain or domain in (self.fqdn, self.hostname, "localhost"):
            text = scripted or message.reason or "Sent"
            lines = [f"<{rcpt}>... Connecting to local..."]
            # A local mailer that fails before speaking prints its error on a line alone.
            alone = not text.startswith(("Sent", "Deferred"))
            lines.append(text if alone else f"<{rcpt}>... {text}")
            return lines, text, "local", ""
        smarthost = self._smarthost()
        if smarthost is None:
            mx = f"mx.{domain}."
            text = scripted or f"Deferred: Connection refused by {mx}"
            return ([f"<{rcpt}>... Connecting to {mx} via esmtp...", f"<{rcpt}>... {text}"],
                    text, "esmtp", mx)
        host, mailer = smarthost
        lines = [f"<{rcpt}>... Connecting to {host}. via {mailer}..."]
        address = (self.names.get(host.lower()) or ["192.0.2.25"])[0]
        relay = f"{host}. [{address}]"
        text = scripted or (f"Deferred: Connection refused by {host}." if host in self.refusing
                            else "")
        if text:
            return [*lines, f"<{rcpt}>... {text}"], text, mailer, relay
        session, text, refusal = self._session(host, message, rcpt, pid)
        if refusal is not None:
            self.log(pid, refusal)
        return [*lines, *session], text, mailer, relay

    def _attempt(self, message: FakeMessage, pid: int) -> list[str]:
        """Try every recipient of ``message``; keep the ones that failed; log each try."""
        transcript: list[str] = []
        kept: list[str] = []
        for rcpt in message.recipients:
            lines, text, mailer, relay = self._deliver(message, rcpt, pid)
            transcript += lines
            sent = text.startswith("Sent")
            replied = re.match(r"Deferred: \d{3} (\d\.\d{1,3}\.\d{1,3}) ", text)
            dsn = ("2.0.0" if sent else replied.group(1) if replied
                   else "4.4.1" if text.startswith("Deferred") else "4.0.0")
            self.log(pid, f"{message.id}: to=<{rcpt}>, delay=00:00:00, xdelay=00:00:00, "
                          f"mailer={mailer}, pri=120000, " + (f"relay={relay}, " if relay else "")
                     + f"dsn={dsn}, stat={text}")
            if not sent:
                kept.append(rcpt)
                message.reason = text
        message.recipients = kept
        return transcript

    def _queue_run(self, section: str, select: str, verbose: bool) -> str:
        """``sendmail -q[ISR]... [-Ac] -v``: run one queue, print the transcript."""
        queue = self.queues[section]
        chosen = [m for m in queue if self._selected(m, select)]
        pid = self.spawn(live=False)
        out: list[str] = []
        for number, message in enumerate(chosen, 1):
            out += ["", f"Running {self.queue_dirs[section]}/{message.id} "
                        f"(sequence {number} of {len(chosen)})"]
            if section == "msp":
                # The submission queue relays to the local MTA, which queues and tries it.
                relayed = replace(message, id=self._new_queue_id(), reason=None,
                                  recipients=list(message.recipients))
                out += [f"<{r}>... Connecting to [127.0.0.1] via relay..." for r in
                        message.recipients[:1]]
                out += [f"<{r}>... Sent ({relayed.id} Message accepted for delivery)"
                        for r in message.recipients]
                message.recipients = []
                self._attempt(relayed, pid)
                if relayed.recipients:
                    self.queues["mta"].append(relayed)
            else:
                out += self._attempt(message, pid)
        self.queues[section] = [m for m in queue if m.recipients]
        return "".join(f"{line}\n" for line in out) if verbose else ""

