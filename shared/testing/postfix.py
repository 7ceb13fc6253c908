"""The fake Postfix host: postconf, postmap, postfix, postqueue, the master, queue and maillog.

What the programs print and log is what Postfix 3.7.11 prints and logs (the lab's captures
in ``tests/fixtures/postfix``): ``postqueue -j`` lines and ``mailq`` text byte for byte,
``postfix/smtp`` and ``postfix/qmgr`` lines, postconf's and postfix-script's messages.
"""

from __future__ import annotations

import json
import re
import shlex
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from shared.compat import UTC
from shared.testing.executor import FakeExecutor, FileState, Outcome, norm_path
from shared.testing.sendmail import FAKE_DB_MAGIC

POSTFIX_VERSION = "3.7.11"
#: the first line of ``mailq`` / ``postqueue -p`` (short queue ids)
MAILQ_HEADINGS = "-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------"
#: ``postconf``'s defaults (Postfix 3.7) for the parameters the fake is asked about;
#: ``myhostname`` and ``mydomain`` come from the host's name (see FakePostfixHost.parameters)
POSTFIX_DEFAULTS: Mapping[str, str] = {
    "relayhost": "", "smtp_sasl_auth_enable": "no", "smtp_sasl_password_maps": "",
    "smtp_sasl_security_options": "noplaintext, noanonymous", "smtp_tls_security_level": "",
    "smtp_tls_CAfile": "", "smtp_tls_verify_cert_match": "hostname",
    "smtp_tls_secure_cert_match": "nexthop, dot-nexthop", "smtp_generic_maps": "",
    "sender_canonical_maps": "", "sender_canonical_classes": "envelope_sender, header_sender",
    "myorigin": "$myhostname",
    "default_database_type": "hash", "mail_version": POSTFIX_VERSION,
    "config_directory": "/etc/postfix", "queue_directory": "/var/spool/postfix",
    "mydestination": "$myhostname, localhost.$mydomain, localhost",
    "inet_interfaces": "all", "compatibility_level": "0"}
#: the file ``postmap TYPE:FILE`` builds, per type
MAP_SUFFIXES: Mapping[str, str] = {"hash": ".db", "btree": ".db", "lmdb": ".lmdb", "cdb": ".cdb"}
#: Cyrus SASL's PLAIN and LOGIN client plugins (libsasl2-modules, cyrus-sasl-plain)
SASL_PLUGINS: Mapping[str, tuple[str, ...]] = {
    "debian": ("/usr/lib/x86_64-linux-gnu/sasl2/libplain.so.2",
               "/usr/lib/x86_64-linux-gnu/sasl2/liblogin.so.2"),
    "rhel": ("/usr/lib64/sasl2/libplain.so.3", "/usr/lib64/sasl2/liblogin.so.3")}
#: where a host name without an address in ``names`` is found
DEFAULT_ADDRESS = "192.0.2.25"
#: the CA bundle of the host's ca-certificates package, per flavour
CA_BUNDLES: Mapping[str, str] = {"debian": "/etc/ssl/certs/ca-certificates.crt",
                                 "rhel": "/etc/pki/tls/certs/ca-bundle.crt"}
#: TLS levels that defer mail to a relay offering no STARTTLS
_REQUIRED_LEVELS = ("encrypt", "verify", "secure")
_INLINE_ENTRY = re.compile(r"\{\s*([^=}]+?)\s*=\s*([^}]*?)\s*\}")
_PARAMETER = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
#: postqueue's exit code when the mail system is down or a service is not configured
EX_UNAVAILABLE = 69
#: absolute paths in ``sh -c`` scripts that are read from the fake's files (see ``_sh``)
_SYSTEM_PATH = re.compile(r"(?<![\w./$-])/(?=(etc|run|var|usr/lib64|usr/lib)/)")


class PostfixFatal(Exception):
    """What a Postfix program says before it exits 1 (``PROGRAM: fatal: MESSAGE``)."""


@dataclass
class FakePostfixMessage:
    """A queued message as showq lists it."""

    id: str
    sender: str
    #: recipient address -> its delay reason (None: not tried yet)
    recipients: dict[str, str | None]
    arrival_time: int
    size: int = 324
    #: maildrop, incoming, active, deferred or hold
    queue_name: str = "deferred"
    #: the From: header's address (None: the sender's)
    header_from: str | None = None


@dataclass(frozen=True)
class Relayed:
    """A delivery the smarthost accepted (the fake's sink)."""

    queue_id: str
    sender: str
    recipient: str
    #: ``host[address]:port`` as the smtp line's ``relay=`` says it
    relay: str
    #: the SASL user the map gave for the relayhost (None: no SMTP AUTH)
    sasl_username: str | None
    #: the session ran STARTTLS first
    tls: bool = False
    #: the message's From: address as it left
    header_from: str | None = None


@dataclass(frozen=True)
class FakeRelayTls:
    """What a smarthost offers the fake's SMTP client (``FakePostfixHost.relay_tls``)."""

    starttls: bool = True
    #: the DNS name its certificate carries (None: the relay's own name)
    cert_name: str | None = None
    #: the CA bundle on the host holding the certificate's issuer (None: the system's)
    issuer_bundle: str | None = None
    issuer: str = "/CN=Fake Root CA"


# -- main.cf --------------------------------------------------------------------------------


def read_main_cf(text: str, path: str) -> dict[str, str]:
    """The parameters main.cf sets, as Postfix reads them; PostfixFatal for a bad line."""
    logical: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines(), 1):
        bare = line.strip()
        if not bare or bare.startswith("#"):
            continue
        if line[:1].isspace() and logical:  # a continuation line
            logical[-1] = (logical[-1][0], f"{logical[-1][1]} {bare}")
        else:
            logical.append((number, bare))
    values: dict[str, str] = {}
    for number, entry in logical:
        name, sep, value = entry.partition("=")
        if not sep or not name.strip() or len(name.split()) != 1:
            raise PostfixFatal(f"{path}, line {number}: missing '=' after attribute name: "
                               f'"{entry.split()[0]}"')
        values[name.strip()] = value.strip()
    return values


def edit_main_cf(text: str, edits: Mapping[str, str | None]) -> str:
    """main.cf after ``postconf -e name=value`` (value) or ``postconf -X name`` (None).

    As postconf edits it: every logical line of an edited parameter (its continuation
    lines included) is replaced by ``name = value`` or removed; comments and other lines
    stay byte for byte; parameters not found are appended (in the order given: the real
    postconf appends them in an order that changes from run to run), right after the last
    byte of the file, so a main.cf without a final newline gets ``...= allrelayhost = X``
    as it does from postconf.
    """
    out: list[str] = []
    seen: set[str] = set()
    editing = False
    for line in text.splitlines(keepends=True):
        bare = line.lstrip(" \t")
        if not bare.strip() or bare.startswith("#"):
            out.append(line)
        elif bare != line:  # a continuation line: it goes with its parameter
            if not editing:
                out.append(line)
        else:
            key = re.split(r"[\s=]", line, maxsplit=1)[0]
            editing = key in edits
            if not editing:
                out.append(line)
            else:
                seen.add(key)
                if edits[key] is not None:
                    out.append(f"{key} = {edits[key]}\n")
    out += [f"{k} = {v}\n" for k, v in edits.items() if k not in seen and v is not None]
    return "".join(out)


# -- queue listings ---------------------------------------------------------------------


def render_postqueue_json(messages: Iterable[FakePostfixMessage]) -> str:
    """``postqueue -j``: one JSON object per message (nothing for an empty queue)."""
    lines = []
    for m in messages:
        recipients = [{"address": a, **({"delay_reason": r} if r else {})}
                      for a, r in m.recipients.items()]
        lines.append(json.dumps({
            "queue_name": m.queue_name, "queue_id": m.id, "arrival_time": m.arrival_time,
            "message_size": m.size, "forced_expire": False, "sender": m.sender,
            "recipients": recipients}) + "\n")
    return "".join(lines)


def render_mailq(messages: Sequence[FakePostfixMessage]) -> str:
    """``mailq`` / ``postqueue -p`` (showq_compat.c's layout; times in the host's UTC)."""
    if not messages:
        return "Mail queue is empty\n"
    out = [MAILQ_HEADINGS + "\n"]
    for m in messages:
        flag = {"active": "*", "hold": "!"}.get(m.queue_name, "")
        when = datetime.fromtimestamp(m.arrival_time, UTC)
        stamp = f"{when:%a %b} {when.day:2d} {when:%H:%M:%S}"
        out.append(f"{m.id + flag:<11} {m.size:7d} {stamp:20.20} {m.sender}\n")
        shown: str | None = None
        for address, reason in m.recipients.items():
            if reason and reason != shown:
                out.append(f"{'(' + reason + ')':>78}\n")
                shown = reason
            out.append(f"{'':41}{address}\n")
        out.append("\n")
    total = sum(m.size for m in messages)
    count = len(messages)
    out.append(f"-- {total // 1024} Kbytes in {count} Request{'s' if count != 1 else ''}.\n")
    return "".join(out)


def _str(data: bytes | str) -> str:
    return data if isinstance(data, str) else data.decode("utf-8", "replace")


def _bytes(data: bytes | str) -> bytes:
    return data.encode() if isinstance(data, str) else data


def _seconds(value: float) -> str:
    """A delay as Postfix logs it: 0.03, 1.3, 83427."""
    if value >= 10:
        return str(int(value))
    return f"{value:.{1 if value >= 1 else 2}f}".rstrip("0").rstrip(".") or "0"


def _nexthop(relayhost: str) -> tuple[str, int]:
    """(host, port) of a relayhost value such as ``[smarthost.lab.test]:2525``."""
    if relayhost.startswith("["):
        host, _, rest = relayhost[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        host, _, port = relayhost.partition(":")
    return host, int(port) if port.isdigit() else 25


# -- the host ------------------------------------------------------------------------------


class FakePostfixHost(FakeExecutor):
    """A fake host running Postfix: main.cf, its tools, the master, a queue and the maillog.

    Build one with :func:`~shared.testing.debian_postfix_host` or
    :func:`~shared.testing.rhel_postfix_host`. The master runs the parameters it read at
    ``postfix start`` or ``postfix reload`` (``running_config``), not whatever main.cf says
    now. A flush (``postqueue -f`` or ``-i ID``) tries the deferred messages at once: with a
    relayhost in the running configuration each recipient is sent to it (the sink,
    ``relayed``; deferred with "Connection refused" if the relay's name is in
    ``refusing``), without one it is deferred ("connect to mx.DOMAIN[...]:25: Connection
    refused"); the smtp and qmgr lines are in the maillog when the command returns.

    ``sh -c`` scripts run through the real shell (see FakeExecutor): here ``postqueue`` is
    a shell function printing what the fake's ``postqueue -j``/``-p`` answer (under that
    bare name only, the profiles' default), and the script's paths under /etc, /run, /var
    and /usr/lib are the fake's files (copied for the script), so that the SASL plugin
    preflight and the MTA detection see this host. Scripted rules (``script``) apply to
    the ``sh`` command, not to what runs inside it.
    """

    def __init__(self, *, flavour: str = "debian", hostname: str = "pbx-deb",
                 fqdn: str | None = "pbx-deb.lab.test", label: str | None = None,
                 config_dir: str = "/etc/postfix", queue_dir: str = "/var/spool/postfix",
                 maillog: str = "/var/log/mail.log") -> None:
        super().__init__(label=label or hostname, hostname=hostname, fqdn=fqdn)
        self.flavour = flavour
        self.config_dir = config_dir.rstrip("/")
        self.queue_dir = queue_dir.rstrip("/")
        self.maillog = maillog
        self.queue: list[FakePostfixMessage] = []
        #: relay host names that refuse connections
        self.refusing: set[str] = set()
        #: what the smarthost accepted
        self.relayed: list[Relayed] = []
        #: what each relay (by host name) offers for TLS (absent: FakeRelayTls())
        self.relay_tls: dict[str, FakeRelayTls] = {}
        #: the master's pid and the parameters it runs (None: stopped)
        self.master_pid: int | None = None
        self.running_config: dict[str, str] | None = None
        self.qmgr_pid = 0
        self.reloads = 0
        self._queue_seq = 0
        self.programs.update({"postconf": self._postconf, "postmap": self._postmap,
                              "postfix": self._postfix, "postqueue": self._postqueue})
        # ca-certificates: Postfix's TLS client verifies relays against it
        self.add_file(CA_BUNDLES[flavour], b"-----BEGIN CERTIFICATE-----\n(fake roots)\n")

    @property
    def main_cf_path(self) -> str:
        """main.cf."""
        return f"{self.config_dir}/main.cf"

    @property
    def pid_file(self) -> str:
        """The master's pid file."""
        return f"{self.queue_dir}/pid/master.pid"

    @property
    def running(self) -> bool:
        """The master runs."""
        return self.master_pid is not None and self.master_pid in self.processes

    # -- building the host -------------------------------------------------------------------
    def parameters(self, config_dir: str | None = None) -> dict[str, str]:
        """Every parameter as ``postconf`` shows it: main.cf over the defaults."""
        explicit = self._main_cf(config_dir or self.config_dir)
        name = self.hostname  # gethostname(): Postfix qualifies a bare name with mydomain
        myhostname = explicit.get("myhostname") or (
            name if "." in name else f"{name}.{explicit.get('mydomain', 'localdomain')}")
        mydomain = myhostname.partition(".")[2] or "localdomain"
        return {**POSTFIX_DEFAULTS, "myhostname": myhostname, "mydomain": mydomain,
                **explicit}

    def _main_cf(self, config_dir: str) -> dict[str, str]:
        """What ``config_dir``'s main.cf sets; PostfixFatal if it is missing or bad."""
        path = f"{config_dir.rstrip('/')}/main.cf"
        data = self._file_data(path)
        if data is None:
            raise PostfixFatal(f"open {path}: No such file or directory")
        return read_main_cf(data.decode("utf-8", "replace"), path)

    def queue_message(self, recipients: Iterable[str], *, sender: str | None = None,
                      size: int = 324) -> FakePostfixMessage:
        """Submit a message (``sendmail -oi -f SENDER RCPT...``): picked up and tried at once
        when the master runs, else left in the maildrop queue until it starts."""
        with self._lock:
            self._queue_seq += 1
            qid = f"{0x51421 + self._queue_seq * 0x1F3:05X}216{self._next_pid % 4096:03X}"
            message = FakePostfixMessage(
                qid, sender or f"voicemail@{self.fqdn or self.hostname}",
                dict.fromkeys(recipients), int(time.time()), size, "maildrop")
            self.queue.append(message)
            if self.running:
                self._pick_up(message)
            return message

    def _pick_up(self, message: FakePostfixMessage) -> None:
        self.log("postfix/pickup", self.spawn(live=False),
                 f"{message.id}: uid=0 from=<{message.sender}>")
        self._clean_up(message)
        stamp = datetime.fromtimestamp(message.arrival_time, UTC)
        myhostname = (self.running_config or {}).get("myhostname", self.hostname)
        self.log("postfix/cleanup", self.spawn(live=False),
                 f"{message.id}: message-id=<{stamp:%Y%m%d%H%M%S}.{message.id}@{myhostname}>")
        self._attempt(message)

    def start_master(self) -> int:
        """``postfix start``: the master reads main.cf, writes its pid file and logs."""
        with self._lock:
            config = self.parameters()
            self.log("postfix/postfix-script", self.spawn(live=False),
                     "starting the Postfix mail system")
            pid = self.master_pid = self.spawn()
            self.running_config, self.qmgr_pid = config, self.spawn(live=False)
            # master writes its pid right-aligned ("%*lu")
            self.add_file(self.pid_file, f"{pid:>32}\n", mode=0o600)
            self.log("postfix/master", pid, f"daemon started -- version {POSTFIX_VERSION}, "
                                            f"configuration {self.config_dir}")
            for message in [m for m in self.queue if m.queue_name == "maildrop"]:
                self._pick_up(message)
            return pid

    def stop_master(self) -> None:
        """``postfix stop`` (the pid file stays, as Postfix leaves it). To simulate a crash,
        take the pid out of ``processes`` instead."""
        with self._lock:
            if self.master_pid is not None and self.running:
                self.log("postfix/postfix-script", self.spawn(live=False),
                         "stopping the Postfix mail system")
                self.log("postfix/master", self.master_pid, "terminating on signal 15")
                self.processes.discard(self.master_pid)
            self.master_pid = self.running_config = None

    def reload_master(self) -> None:
        """``postfix reload``: the master reads main.cf again (a new qmgr)."""
        with self._lock:
            config = self.parameters()
            self.log("postfix/postfix-script", self.spawn(live=False),
                     "refreshing the Postfix mail system")
            self.log("postfix/master", self.master_pid or 0,
                     f"reload -- version {POSTFIX_VERSION}, configuration {self.config_dir}")
            self.running_config, self.qmgr_pid = config, self.spawn(live=False)
            self.reloads += 1

    def log(self, program: str, pid: int, message: str) -> None:
        """Append one syslog line to the maillog."""
        stamp = datetime.now()
        line = (f"{stamp:%b} {stamp.day:2d} {stamp:%H:%M:%S} {self.hostname} "
                f"{program}[{pid}]: {message}\n").encode()
        with self._lock:
            old = self._nodes.get(norm_path(self.maillog))
            if old is None or old.data is None:
                self.add_file(self.maillog, line, mode=0o640)
            else:
                self._nodes[norm_path(self.maillog)] = replace(old, data=old.data + line,
                                                               mtime=self.now())

    # -- postconf and postmap ------------------------------------------------------------
    def _postconf(self, argv: tuple[str, ...], _input: bytes | None) -> Outcome:
        config, mode, values_only, names = self.config_dir, "show", False, []
        args = list(argv[1:])
        try:
            while args:
                arg = args.pop(0)
                if arg == "-c" and args:
                    config = norm_path(args.pop(0))
                elif arg in ("-e", "-X"):
                    mode = arg
                elif arg == "-h":
                    values_only = True
                elif arg == "-n":
                    mode = "-n"
                elif arg.startswith("-"):
                    raise PostfixFatal(f"FakePostfixHost does not simulate postconf {arg}")
                else:
                    names.append(arg)
            if mode == "show":
                return self._show(config, names, values_only)
            if mode == "-n":  # what main.cf sets, by name
                return 0, "".join(f"{k} = {v}".rstrip(" ") + "\n"
                                  for k, v in sorted(self._main_cf(config).items())), b""
            return self._edit(config, names, mode)
        except PostfixFatal as exc:
            return 1, b"", f"postconf: fatal: {exc}\n"

    def _show(self, config: str, names: list[str], values_only: bool) -> Outcome:
        values = self.parameters(config)
        out, err = [], []
        for name in names:
            if name not in values:
                err.append(f"postconf: warning: {name}: unknown parameter\n")
            elif values_only:
                out.append(f"{values[name]}\n")
            else:
                out.append(f"{name} = {values[name]}".rstrip(" ") + "\n")
        return 0, "".join(out), "".join(err)

    def _edit(self, config: str, names: list[str], mode: str) -> Outcome:
        edits: dict[str, str | None] = {}
        for arg in names:
            if mode == "-X":
                edits[arg.strip()] = None
                continue
            name, sep, value = arg.partition("=")
            if not sep:
                raise PostfixFatal(f"missing '=' after attribute name: \"{arg}\"")
            edits[name.strip()] = value.strip()
        path = norm_path(f"{config}/main.cf")
        old = self._nodes.get(path)
        if old is None or old.data is None:
            raise PostfixFatal(f"open {path}: No such file or directory")
        new = edit_main_cf(old.data.decode("utf-8", "replace"), edits).encode()
        self._nodes[path] = replace(old, data=new, mtime=self.now())
        self.file_ops.append(("write", path))
        return 0, b"", b""

    def _postmap(self, argv: tuple[str, ...], _input: bytes | None) -> Outcome:
        args, config, maps = list(argv[1:]), self.config_dir, []
        while args:
            arg = args.pop(0)
            if arg == "-c" and args:
                config = args.pop(0)
            elif not arg.startswith("-"):
                maps.append(arg)
        try:
            parameters = self.parameters(config)
            if len(maps) != 1:
                raise PostfixFatal("usage: postmap [options] [type:]file...")
            kind, sep, source = maps[0].partition(":")
            kind, source = (kind, source) if sep else (parameters["default_database_type"],
                                                       maps[0])
            if kind not in MAP_SUFFIXES:
                raise PostfixFatal(f"unsupported dictionary type: {kind}")
            node = self._nodes.get(norm_path(source))
            if node is None or node.data is None:
                raise PostfixFatal(f"open {source}: No such file or directory")
        except PostfixFatal as exc:
            return 1, b"", f"postmap: fatal: {exc}\n"
        warnings = [f"postmap: warning: {source}, line {number}: expected format: key "
                    "whitespace value\n"
                    for number, line in enumerate(node.data.decode("utf-8", "replace")
                                                  .splitlines(), 1)
                    if line.strip() and not line.lstrip().startswith("#")
                    and len(line.split(None, 1)) < 2]
        db = norm_path(source + MAP_SUFFIXES[kind])
        # postmap runs as the source's owner: the map is its, with the umask's mode
        self._nodes[db] = FileState(FAKE_DB_MAGIC + node.data, 0o644, node.uid, node.gid,
                                    self.now())
        self.file_ops.append(("write", db))
        return 0, b"", "".join(warnings)

    # -- postfix and postqueue -----------------------------------------------------------
    def _postfix(self, argv: tuple[str, ...], _input: bytes | None) -> Outcome:
        """``postfix [-c DIR] VERB``. Run without a terminal (as operations run it), the
        real command says everything, fatal errors included, in the maillog only."""
        args = list(argv[1:])
        config = self.config_dir
        if len(args) > 1 and args[0] == "-c":
            config = args[1]
            args = args[2:]
        verb = args[-1] if args else ""
        try:
            self.parameters(config)  # every postfix command reads main.cf first
        except PostfixFatal as exc:
            self.log("postfix", self.spawn(live=False), f"fatal: {exc}")
            return 1, b"", b""
        problem = None
        if verb == "status":
            self.log("postfix/postfix-script", self.spawn(live=False),
                     f"the Postfix mail system is running: PID: {self.master_pid}"
                     if self.running else "the Postfix mail system is not running")
            return (0 if self.running else 1), b"", b""
        if verb == "start":
            if self.running:
                problem = "the Postfix mail system is already running"
            else:
                self.start_master()
        elif verb in ("stop", "reload"):
            if not self.running:
                problem = "the Postfix mail system is not running"
            elif verb == "stop":
                self.stop_master()
            else:
                self.reload_master()
        elif verb != "check":
            problem = f"unknown command: '{verb}' (FakePostfixHost)"
        if problem is None:
            return 0, b"", b""
        self.log("postfix/postfix-script", self.spawn(live=False), f"fatal: {problem}")
        return 1, b"", b""

    def _postqueue(self, argv: tuple[str, ...], _input: bytes | None) -> Outcome:
        args = list(argv[1:])
        config = self.config_dir
        if len(args) > 1 and args[0] == "-c":
            config = args[1]
            args = args[2:]
        try:
            self.parameters(config)
        except PostfixFatal as exc:
            return self._postqueue_fatal(1, str(exc))
        option = args[0] if args else ""
        if option in ("-j", "-p"):
            down = ("" if self.running else "postqueue: warning: Mail system is down -- "
                    "accessing queue directly (Connect to the showq service: No such file "
                    "or directory)\n")
            listing = (render_postqueue_json(self.queue) if option == "-j"
                       else render_mailq(self.queue))
            return 0, listing, down
        if option == "-s" and len(args) > 1:
            return self._postqueue_fatal(EX_UNAVAILABLE, "Flush service is not configured for "
                                                         f'destination "{args[1]}"')
        if option not in ("-f", "-i") or (option == "-i" and len(args) < 2):
            return self._postqueue_fatal(64, "usage: postqueue -f | postqueue -i queueid | "
                                             "postqueue -j | postqueue -p | postqueue -s site")
        if not self.running:
            return self._postqueue_fatal(EX_UNAVAILABLE,
                                         "Cannot flush mail queue - mail system is down")
        for message in [m for m in self.queue if m.queue_name == "deferred"
                        and (option == "-f" or m.id == args[1])]:
            self._attempt(message)
        return 0, b"", b""  # an unknown queue id: the same silence

    def _postqueue_fatal(self, code: int, message: str) -> Outcome:
        """postqueue says it on stderr and in the maillog."""
        self.log("postfix/postqueue", self.spawn(live=False), f"fatal: {message}")
        return code, b"", f"postqueue: fatal: {message}\n"

    # -- cleanup and delivery -------------------------------------------------------------
    def _clean_up(self, message: FakePostfixMessage) -> None:
        """cleanup(8): a bare sender qualified with myorigin, then sender_canonical_maps
        applied to the classes sender_canonical_classes names (what the queue file keeps)."""
        config = self.running_config or {}
        origin = config.get("myorigin", "$myhostname")
        if origin.startswith("/"):  # Debian: the name in /etc/mailname
            origin = _str(self._file_data(origin) or b"").strip()
        origin = self._expand(origin, config)
        sender = message.sender if "@" in message.sender or not message.sender else (
            f"{message.sender}@{origin}")
        header = message.header_from or sender
        classes = config.get("sender_canonical_classes", "")
        canonical = config.get("sender_canonical_maps", "")
        if "envelope_sender" in classes:
            sender = self._map_address(canonical, sender, config)
        if "header_sender" in classes:
            header = self._map_address(canonical, header, config)
        message.sender, message.header_from = sender, header

    def _map_address(self, maps: str, address: str, config: Mapping[str, str]) -> str:
        """``address`` through an ``inline:{...}`` canonical/generic table (canonical(5):
        the address, then ``@domain``; a result ``@other`` keeps the local part)."""
        if not maps.startswith("inline:{"):
            return address  # other map types are not simulated: nothing rewritten
        table = {self._expand(k, config): self._expand(v, config)
                 for k, v in _INLINE_ENTRY.findall(maps.removeprefix("inline:{"))}
        local, _, domain = address.rpartition("@")
        found = table.get(address) or table.get(f"@{domain}")
        if found is None:
            return address
        return f"{local}{found}" if found.startswith("@") else found

    @staticmethod
    def _expand(value: str, config: Mapping[str, str]) -> str:
        """$name and ${name} replaced by the parameters' values, as Postfix reads main.cf."""
        return _PARAMETER.sub(lambda m: config.get(m.group(1) or m.group(2), ""), value)

    def _tls_problem(self, config: Mapping[str, str], host: str,
                     peer: str) -> tuple[str, str, str | None] | None:
        """Why the running TLS level keeps mail from ``host`` (the status reason, its dsn,
        and the line the smtp client logs first), or None: the session may go on."""
        level = config.get("smtp_tls_security_level", "")
        relay = self.relay_tls.get(host, FakeRelayTls())
        if level not in _REQUIRED_LEVELS:
            return None
        if not relay.starttls:
            return (f"TLS is required, but was not offered by host {peer.rpartition(':')[0]}",
                    "4.7.4", None)
        if level == "encrypt":
            return None
        trusted = {config.get("smtp_tls_CAfile", ""), CA_BUNDLES[self.flavour]}
        if (relay.issuer_bundle or CA_BUNDLES[self.flavour]) not in trusted:
            return ("Server certificate not verified", "4.7.5",
                    f"certificate verification failed for {peer}: untrusted issuer "
                    f"{relay.issuer}")
        name = relay.cert_name or host
        literal = bool(re.fullmatch(r"[0-9.]+|[0-9a-fA-F:]+", host))
        matches = (name == host if level == "verify"
                   else not literal and (name == host or name.endswith(f".{host}")))
        if not matches:
            return ("Server certificate not verified", "4.7.5",
                    f"server certificate verification failed for {peer}: num=62:hostname "
                    "mismatch")
        return None

    def _attempt(self, message: FakePostfixMessage) -> None:
        """The queue manager tries every recipient of ``message`` once, logging each."""
        self.log("postfix/qmgr", self.qmgr_pid, f"{message.id}: from=<{message.sender}>, "
                 f"size={message.size}, nrcpt={len(message.recipients)} (queue active)")
        smtp = self.spawn(live=False)
        config = self.running_config or {}
        relayhost = config.get("relayhost", "").replace(",", " ").split()
        delay = max(0.0, time.time() - message.arrival_time)
        generic = config.get("smtp_generic_maps", "")
        for address in list(message.recipients):
            host, port = (_nexthop(relayhost[0]) if relayhost
                          else (f"mx.{address.rpartition('@')[2]}", 25))
            peer = f"{host}[{(self.names.get(host.lower()) or [DEFAULT_ADDRESS])[0]}]:{port}"
            tls_problem = (self._tls_problem(config, host, peer)
                           if relayhost and host not in self.refusing else None)
            if tls_problem is not None:
                reason, dsn, first = tls_problem
                if first:
                    self.log("postfix/smtp", smtp, first)
                relay, status = peer, f"deferred ({reason})"
                delays = f"{_seconds(max(0.0, delay - 0.07))}/0.01/0.04/0"
                message.recipients[address] = reason
            elif relayhost and host not in self.refusing:
                tls = (config.get("smtp_tls_security_level", "") not in ("", "none")
                       and self.relay_tls.get(host, FakeRelayTls()).starttls)
                # smtp_generic_maps: applied by the SMTP client as the message leaves
                self.relayed.append(Relayed(
                    message.id, self._map_address(generic, message.sender, config), address,
                    peer, self._sasl_username(relayhost[0]), tls,
                    self._map_address(generic, message.header_from or message.sender, config)))
                relay, dsn, status = peer, "2.0.0", "sent (250 2.0.0 Ok: queued)"
                delays = f"{_seconds(max(0.0, delay - 0.12))}/0.01/0.05/0.06"
                del message.recipients[address]
            else:
                reason = f"connect to {peer}: Connection refused"
                self.log("postfix/smtp", smtp, reason)
                relay, dsn, status = "none", "4.4.1", f"deferred ({reason})"
                delays = f"{_seconds(max(0.0, delay - 0.03))}/0.01/0.02/0"
                message.recipients[address] = reason
            self.log("postfix/smtp", smtp, f"{message.id}: to=<{address}>, relay={relay}, "
                     f"delay={_seconds(delay)}, delays={delays}, dsn={dsn}, status={status}")
        message.queue_name = "deferred"
        if not message.recipients:
            self.queue.remove(message)
            self.log("postfix/qmgr", self.qmgr_pid, f"{message.id}: removed")

    def _sasl_username(self, relayhost: str) -> str | None:
        """The user name the running smtp client logs in to ``relayhost`` with, if any."""
        config = self.running_config or {}
        if config.get("smtp_sasl_auth_enable", "no").lower() != "yes":
            return None
        kind, _, source = config.get("smtp_sasl_password_maps", "").partition(":")
        data = self._file_data(source + MAP_SUFFIXES.get(kind, ".db")) or b""
        for line in data.removeprefix(FAKE_DB_MAGIC).decode("utf-8", "replace").splitlines():
            key, *value = line.split(None, 1)
            if key == relayhost and value:
                return value[0].partition(":")[0]
        return None

    # -- sh -c ---------------------------------------------------------------------------------
    def _sh(self, argv: tuple[str, ...], input: bytes | None) -> Outcome:
        """FakeExecutor's ``sh -c``, with this host's Postfix commands and system files."""
        if len(argv) < 3:
            return super()._sh(argv, input)
        script = argv[2]
        with tempfile.TemporaryDirectory(prefix="relayfleet-fake-root-") as tmp:
            roots = {"/" + m.group(1) for m in _SYSTEM_PATH.finditer(script)}
            for path in [p for p in self._nodes if any(p.startswith(r + "/") for r in roots)]:
                self._materialise(path, Path(tmp))
            script = _SYSTEM_PATH.sub(f"{tmp}/root/", script)
            code, out, err = super()._sh(
                (argv[0], argv[1], self._shell_commands() + script, *argv[3:]), input)
        # what the script prints of the copies names the fake's files
        here = f"{tmp}/root".encode()
        return code, _bytes(out).replace(here, b""), _bytes(err).replace(here, b"")

    def _shell_commands(self) -> str:
        """Shell functions for ``postqueue -j``/``-p`` (the argument that picks the answer
        comes last) and ``command -v postconf``."""
        out = []
        for name, verbs in (("postqueue", ("-j", "-p")),):
            cases = ""
            for verb in verbs:
                code, stdout, stderr = self.programs[name]((name, "-c", self.config_dir, verb),
                                                           None)
                cases += (f"{verb}) printf %s {shlex.quote(_str(stdout))}; printf %s "
                          f"{shlex.quote(_str(stderr))} >&2; return {code} ;; ")
            out.append(f"{name}() {{ for last; do :; done; case \"$last\" in {cases}*) echo "
                       f"'{name}: the fake answers only {' '.join(verbs)} in sh -c' >&2; "
                       "return 1 ;; esac; }\n")
        out.append("postconf() { echo 'postconf: not simulated in sh -c' >&2; return 1; }\n")
        return "".join(out)
