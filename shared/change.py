"""The safe-change machinery every MTA's operations share.

A smarthost change is the same transaction whatever the MTA: under the host's change
lock, plan the new files, show their diff (and stop there on a dry run), build them
beside the live ones, validate, back the live ones up, swap them in with renames, make
the MTA take them (sendmail: make + restart; Postfix: reload), verify, and on any failure
after the swap put every file back byte for byte and bring the MTA back up. A change whose
process is killed between two renames leaves the swap's journal behind; the next holder of
the lock (the agent, as it starts) puts that change's backup back first. What differs
per MTA — which files, how they are built, validated, activated and verified — is in the
hooks :class:`ConfigChangeOperations` leaves abstract. ``fix_hostname`` (/etc/hosts, and
the MTA told) runs through the same transaction with its own :class:`ChangeSteps`.
"""

from __future__ import annotations

import abc
import contextlib
import json
import logging
import posixpath
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

from shared import diagnose as diag
from shared import hostsfile, reasons
from shared.compat import UTC, zip_strict
from shared.diagnose.check import first_line
from shared.errors import (
    ChangeInProgress,
    CommandTimeout,
    ConfigError,
    ExecutorError,
    HostUnreachable,
    OperationError,
    RelayfleetError,
    ValidationError,
)
from shared.executor import MISSING_CODE, CommandResult, FileMissing, read_command
from shared.hostlock import HostLock
from shared.mta import HostnameRequest, MtaOperations
from shared.profile import is_under
from shared.results import OperationResult, Redactor, StepRecorder
from shared.sendmail.maillog import LogRecord, summarize
from shared.sendmail.mailq import MailqReport
from shared.sendmail.mc import unified_diff
from shared.validation import SmarthostRequest, VerifyRequest, validate_fqdn
from shared.verify import (
    Delivery,
    DeliveryNotVerified,
    Prober,
    log_check_command,
    log_position,
    record_delivery,
)

BACKUP_DIR = ".relayfleet-backup"
BACKUPS_KEPT = 5
#: the swap's journal, in the MTA's home: written before a change's first rename (which
#: files, which backup) and removed once the renames are done, or undone. Found by the next
#: holder of the change lock, it says a change was cut between two renames (the process
#: killed): sendmail.mc new and sendmail.cf old, say. That holder puts the backup back first.
SWAP_JOURNAL = ".relayfleet-swap"

log = logging.getLogger("relayfleet.change")
#: why a file that is not there cannot be read, in an error message
NO_SUCH_FILE = "no such file"



@dataclass
class MapChange:
    """A map a change may rewrite: its source, the file compiled from it, the source's
    current and wanted text (``new`` None: left as it is), and whether its content is secret
    (a secret map's diff is never shown; its files are root's, mode 0600)."""

    source: str
    compiled: str
    old: str | None
    new: str | None
    secret: bool = True
    #: the compiled file is missing or older than its source: build it even if the text stays
    rebuild: bool = False

    @property
    def changed(self) -> bool:
        """The map is to be written and compiled."""
        return self.new is not None and (self.new != self.old or self.rebuild)

    @property
    def new_bytes(self) -> bytes:
        """The wanted source as the file's bytes (the texts hold undecodable bytes as
        surrogates, see :class:`FileEdit`)."""
        return _bytes(self.new or "")


@dataclass
class FileChange:
    """What a smarthost change rewrites: the configuration file's current and wanted text,
    the credentials map's (None: the map is left as it is), and the MTA's other maps."""

    config_old: str
    config_new: str
    credentials_old: str | None
    credentials_new: str | None
    #: maps besides the credentials map (sendmail's access map); no default, so that the
    #: MTAs' subclasses can add fields without one on Python 3.9 (no ``kw_only``)
    maps: list[MapChange]

    @property
    def credentials_changed(self) -> bool:
        """The credentials map is to be rewritten."""
        return self.credentials_new is not None and self.credentials_new != self.credentials_old


@dataclass
class StatusFacts:
    """The MTA's part of a ``status`` look."""

    version: str | None
    #: the smarthost facts (``smarthost``, ``config_in_sync``...) the MTA's files give
    smarthost: dict[str, Any]
    queue: MailqReport
    #: what could not be read
    problems: Sequence[RelayfleetError] = field(default_factory=list)


ChangeT = TypeVar("ChangeT", bound=FileChange)
WantedT = TypeVar("WantedT")


PlanT = TypeVar("PlanT")


def _none(_plan: object) -> set[str]:
    return set()


@dataclass
class ChangeSteps(Generic[PlanT]):
    """What one kind of change does at each step of the shared transaction
    (:meth:`ConfigChangeOperations._transact`); ``PlanT`` is what its plan computes."""

    #: profile keys whose files are confined before the change starts
    confine: tuple[str, ...]
    #: puts the plan's diff in the result and sets ``result.changed``
    describe: Callable[[PlanT, OperationResult], None]
    #: the live files the planned change may rewrite: backed up before the swap, put back
    #: byte for byte when the change fails after it
    files: Callable[[PlanT], list[str]]
    #: writes and validates the new files beside the live ones (naming each temporary file
    #: in the list it is given); the (temporary, live) renames, in order
    build: Callable[[PlanT, StepRecorder, list[str]], list[tuple[str, str]]]
    #: makes the MTA run the installed files and checks that it does; raises if not
    activate: Callable[[StepRecorder], None]
    #: why the running MTA does not run the installed files (None: it does)
    stale: Callable[[], str | None]
    #: installed files the swap's step does not name (compiled maps)
    unnamed: Callable[[PlanT], set[str]] = _none
    #: what the steps say when every file is already as wanted
    unchanged: str = "configuration already as requested; no file touched"
    #: checks the change's effect once the MTA runs it (a delivery probe): runs after
    #: ``activate`` (a failure rolls the change back) and after an unchanged change's
    #: look; raises when the check fails
    confirm: Callable[[StepRecorder, OperationResult], None] | None = None


@dataclass
class FileEdit:
    """A text file a change rewrites: its current text (None: absent) and the wanted one.
    Texts hold undecodable bytes as surrogates, so that a file is written back byte for
    byte where the edit does not touch it."""

    path: str
    old: str | None
    new: str

    @property
    def changed(self) -> bool:
        """The file is to be written."""
        return self.new != self.old


def _no_edits(_rec: StepRecorder) -> list[FileEdit]:
    return []


def _no_check(_rec: StepRecorder, _edit: FileEdit) -> None:
    return None


@dataclass
class NameChange:
    """How an MTA takes the host's fully qualified name: its part of ``fix_hostname``."""

    #: profile keys confined before the change (the MTA's home holds the change lock and
    #: the backups)
    confine: tuple[str, ...]
    #: makes the MTA take the name (restart, reload) and checks that it has; raises if not
    activate: Callable[[StepRecorder], None]
    #: why the running MTA may still go by an older name (None: it does not)
    stale: Callable[[], str | None]
    #: the MTA's own files the name needs changed (Postfix: main.cf's myhostname)
    plan: Callable[[StepRecorder], list[FileEdit]] = _no_edits
    #: checks one of those files, written beside the live one, before anything is swapped
    validate: Callable[[StepRecorder, FileEdit], None] = _no_check


def _bytes(text: str) -> bytes:
    """A file's text back to its bytes (see :class:`FileEdit`)."""
    return text.encode("utf-8", "surrogateescape")


def _shown(text: str) -> str:
    """A file's text as a diff may show it (undecodable bytes replaced)."""
    return _bytes(text).decode("utf-8", "replace")


@dataclass
class RollbackReport:
    """What a rollback did: the state the host is in afterwards, exactly."""

    #: files put back byte-identical to the backup (or removed, when the backup had none)
    restored: list[str] = field(default_factory=list)
    #: files left as the failed change made them: path -> why
    not_restored: dict[str, str] = field(default_factory=dict)
    #: rebuild and restart failures after the files were put back
    problems: list[str] = field(default_factory=list)
    #: whether the MTA runs afterwards (None: not known)
    mta_running: bool | None = None
    #: the host was lost: nothing after that was tried
    unreachable: bool = False

    @property
    def files_back(self) -> bool:
        """Every file is as it was before the change."""
        return not self.not_restored

    def to_data(self) -> dict[str, Any]:
        """The answer's fields for it."""
        return {"mta_running": self.mta_running, "restored": list(self.restored),
                "not_restored": sorted(self.not_restored)}


class ConfigChangeOperations(MtaOperations, Generic[ChangeT, WantedT]):
    """An MTA whose smarthost lives in files: the change transaction, backups, rollback.

    ``ChangeT`` is what a plan computes (old and new file contents); ``WantedT`` what the
    running configuration must say afterwards (checked by :meth:`_activate_verify`).
    """

    #: the MTA's name in messages ("sendmail", "Postfix")
    label: str
    #: what rebuilds compiled files from sources after a rollback ("make"), for messages
    rebuild_label: str = "rebuild"
    #: profile keys a change reads or writes, confined before it starts
    change_files: tuple[str, ...]
    #: files whose content is always replaced in place, never renamed over: /etc/hosts.
    #: A rename cannot replace it where it is a mount point (containers, lab hosts, the
    #: agent's unit, which bind-mounts it writable and leaves /etc read-only), a temp file
    #: beside it would need /etc writable, and a file renamed in from another directory
    #: changes its inode and SELinux label. Written in place it keeps all three; the cost
    #: is atomicity (a reader may see the small file part-written for that moment), and
    #: the backup taken before the swap still lets the rollback put it back byte for byte.
    in_place_files: tuple[str, ...] = (diag.HOSTS_FILE,)
    #: the files of the change being applied (what _backup saves and _rollback puts back);
    #: None: the smarthost change's (:meth:`_managed_files`)
    _changing: list[str] | None = None

    # -- hooks ----------------------------------------------------------------------
    @abc.abstractmethod
    def _managed_files(self) -> list[str]:
        """Absolute paths a change may rewrite: backed up before, restored on failure."""

    @abc.abstractmethod
    def _current_smarthost(self) -> tuple[dict[str, Any], Sequence[RelayfleetError]]:
        """The smarthost facts as far as the files can be read, and what could not be."""

    @abc.abstractmethod
    def _describe(self, change: ChangeT, result: OperationResult, wanted: WantedT | None) -> None:
        """Put the diff in ``result`` and set ``result.changed``."""

    @abc.abstractmethod
    def _build_config(self, change: ChangeT, rec: StepRecorder,
                      temps: list[str]) -> list[tuple[str, str]]:
        """Write and validate the new configuration beside the live one (each temporary
        file named in ``temps``); the (temporary, live) pairs to rename, in order."""

    @abc.abstractmethod
    def _credentials_paths(self) -> tuple[str, str]:
        """The credentials map's source and its compiled file."""

    @abc.abstractmethod
    def _map_command(self, change: ChangeT, entry: MapChange,
                     source: str) -> tuple[list[str], bytes | None]:
        """The argv (and its stdin) that compiles ``entry``'s new text, written to the
        temporary source ``source``; the compiled file lands beside it with the same suffix
        as the live one."""

    def _before_swap(self) -> None:
        """Runs just before the first rename."""

    @abc.abstractmethod
    def _activate_verify(self, rec: StepRecorder, wanted: WantedT | None) -> None:
        """Make the MTA run the installed files and check that it does."""


    @abc.abstractmethod
    def _restart(self, rec: StepRecorder) -> None:
        """Make the MTA (re)load its configuration, starting it if it is down."""

    @abc.abstractmethod
    def _rebuild(self, rec: StepRecorder, undo: RollbackReport) -> None:
        """After a rollback put the files back: rebuild what is compiled from them."""

    @abc.abstractmethod
    def _stale_reason(self) -> str | None:
        """Why the running MTA does not run the installed configuration (None: it does)."""

    @abc.abstractmethod
    def _finish_by_hand(self) -> str:
        """What a person runs to make the MTA take restored files (for messages)."""

    @abc.abstractmethod
    def _start_by_hand(self) -> str:
        """How a person starts the MTA (for messages)."""

    @abc.abstractmethod
    def _parse_log_line(self, line: str) -> LogRecord | None:
        """One maillog line as a record (None: not this MTA's, or not a log line)."""

    @abc.abstractmethod
    def _list_queue(self, rec: StepRecorder) -> MailqReport:
        """The queue, read through ``rec``."""

    #: profile keys ``status`` reads, confined before it does
    status_files: tuple[str, ...]

    @abc.abstractmethod
    def _status_commands(self) -> tuple[list[tuple[str, list[str]]], tuple[str, ...]]:
        """The MTA's own reads for ``status`` (named argvs) and which of them are file
        reads whose content must not be kept in the steps."""

    @abc.abstractmethod
    def _status_facts(self, answers: list[CommandResult]) -> StatusFacts:
        """The MTA's part of ``status`` from the answers to :meth:`_status_commands`."""

    @abc.abstractmethod
    def _diagnose_facts(self) -> tuple[dict[str, Any], Sequence[RelayfleetError]]:
        """The smarthost facts diagnose checks (no credentials: the checks probe the
        smarthost, not the password for it), and the files that could not be read."""

    @abc.abstractmethod
    def _in_sync_detail(self, in_sync: bool) -> str:
        """What the config_in_sync check says, and what to do when it fails."""

    def _mta_checks(self, hostname: diag.Check) -> list[diag.Check]:
        """Checks only this MTA has, placed after the host name's."""
        return []

    # -- reads both MTAs answer alike ------------------------------------------------------
    def diagnose(self, *, domain: str | None = None,
                 public_ip: str | None = None) -> OperationResult:
        """The seed story's checklist, each check with ok and a detail saying what to fix."""
        result = OperationResult("diagnose")
        facts, problems = self._diagnose_facts()
        smarthost, in_sync = facts["smarthost"], bool(facts["config_in_sync"])
        # an unreadable file is a failed check, not a failed diagnose
        detail = ("; ".join(p.message for p in problems) if problems
                  else self._in_sync_detail(in_sync))
        checks = diag.run_checks(
            self.executor, self.profile,
            smarthost_host=smarthost["host"] if smarthost else None,
            smarthost_port=smarthost["port"] if smarthost else 25,
            domain=domain, public_ip=public_ip,
            config_check=diag.Check("config_in_sync", in_sync and not problems, detail),
            ehlo_name=self._ehlo_name_or_none(),
            tls=smarthost.get("tls") if smarthost else None)
        checks[1:1] = self._mta_checks(checks[0])
        result.data = {"checks": [c.to_dict() for c in checks]}
        result.ok = all(c.ok is not False for c in checks)
        return result

    def status(self) -> OperationResult:
        """One look at the host: names, MTA, smarthost, config sync, queue (with why its
        messages wait), /etc/hosts, and a summary of the maillog's recent tail.

        Everything is read in one batch: over SSH that is a single round trip. A file that
        cannot be read fails the result but not the look: the rest is still worth reporting.
        """
        log_readable = self._confine_status()
        rec = StepRecorder(self.executor)
        result = OperationResult("status", steps=rec.steps)
        prof = self.profile
        own, quiet = self._status_commands()
        # the maillog's tail rides in the same batch (no extra round trip over SSH)
        tail = [("tail maillog", ["tail", "-n", str(reasons.RECENT_LINES), prof.maillog])
                ] if log_readable else []
        short, full, hosts, alive, *answers = rec.run_many(
            [*diag.HOSTNAME_COMMANDS, ("read /etc/hosts", read_command("/etc/hosts")),
             ("mta running", diag.alive_command(prof.daemon_pid_file)), *own, *tail],
            timeout=prof.validate_timeout_s, quiet=("read /etc/hosts", "tail maillog", *quiet))
        log = answers.pop() if tail else None
        facts = self._status_facts(answers)
        name_check = diag.hostname_check(short, full)
        hostname = str(name_check.data.get("hostname", ""))
        fqdn = str(name_check.data.get("fqdn", ""))
        hosts_check = diag.hosts_file_check(hosts.stdout if hosts.ok else None, hostname, fqdn)
        queued = facts.queue.messages
        result.data = {
            "hostname": hostname,
            "fqdn": fqdn,
            "mta": {"kind": self.kind, "version": facts.version,
                    "running": bool(diag.mta_running_check(alive, prof.daemon_pid_file).ok)},
            "smarthost": facts.smarthost["smarthost"],
            "config_in_sync": facts.smarthost["config_in_sync"],
            "queue": {"count": facts.queue.count,
                      "oldest_age_s": oldest_age_s([m.queued_at for m in queued]),
                      "reasons": reasons.queue_reasons(queued)},
            "hosts_file": {"ok": bool(hosts_check.ok),
                           "problems": list(hosts_check.data.get("problems", []))},
            # an unreadable maillog leaves the look without it (null), not failed
            "recent": reasons.recent_summary(log.stdout_text().splitlines(),
                                             self._parse_log_line)
            if log is not None and log.ok else None,
        }
        fail(result, *facts.problems)
        return result

    def _confine_status(self) -> bool:
        """Confine the files status reads; True when the maillog may be read too (a maillog
        leading out of its directory is left unread rather than failing the look)."""
        try:
            self._confine(*self.status_files, "maillog")
        except ConfigError:
            self._confine(*self.status_files)
            return False
        return True

    def read_smarthost(self) -> OperationResult:
        """Report the configured smarthost and whether the configuration is in sync."""
        result = OperationResult("read_smarthost")
        result.data, problems = self._current_smarthost()
        fail(result, *problems)
        return result

    def queue_list(self) -> OperationResult:
        """List the queued messages with their recipients' delay reasons."""
        rec = StepRecorder(self.executor)
        result = OperationResult("queue_list", steps=rec.steps)
        result.data = self._list_queue(rec).to_dict()
        return result

    def read_log(self, lines: int = 200) -> OperationResult:
        """Parse the tail of the maillog and summarise it."""
        self._confine("maillog")
        rec = StepRecorder(self.executor)
        result = OperationResult("read_log", steps=rec.steps)
        out = rec.run("tail maillog", ["tail", "-n", str(lines), self.profile.maillog],
                      timeout=30)
        text = out.stdout_text().splitlines()
        records = [r for r in (self._parse_log_line(ln) for ln in text) if r is not None]
        # Step output would repeat the whole log: keep the parsed records only.
        rec.steps[-1].output = f"{len(text)} lines read"
        result.data = {"records": [r.to_dict() for r in records], "summary": summarize(records)}
        return result

    # -- the host's name ---------------------------------------------------------------
    @abc.abstractmethod
    def _name_change(self, fqdn: str) -> NameChange:
        """How this MTA takes the host's fully qualified name ``fqdn``."""

    def fix_hostname(self, request: HostnameRequest, *, dry_run: bool = False) -> OperationResult:
        """Make the host's name fully qualified: /etc/hosts resolves the short name to the
        FQDN (the rules are :func:`shared.hostsfile.qualify`'s) and the MTA takes the name,
        with a smarthost change's safety (lock, dry-run diff, backup, swap, verify, rollback).

        The short name stays (ValidationError when ``request`` names another); the kernel's
        name and /etc/hostname are left alone.
        """
        short = diag.short_name(self.executor)
        fqdn = self._wanted_fqdn(request, short)
        mta = self._name_change(fqdn)

        def plan(rec: StepRecorder) -> list[FileEdit]:
            return [self._hosts_edit(rec, short, fqdn), *mta.plan(rec)]

        def build(edits: list[FileEdit], rec: StepRecorder,
                  temps: list[str]) -> list[tuple[str, str]]:
            for edit in edits[1:]:  # the MTA's own files, checked by the MTA first
                if edit.changed:
                    mta.validate(rec, edit)
            return self._build_edits(edits, rec, temps)

        steps = ChangeSteps[list[FileEdit]](
            confine=mta.confine, describe=self._describe_edits,
            files=lambda edits: [edit.path for edit in edits if edit.changed], build=build,
            activate=lambda rec: self._take_name(rec, short, fqdn, mta), stale=mta.stale,
            unchanged=f"already fully qualified: the host resolves {short} to {fqdn} and "
                      f"{self.label} has that name; no file touched")
        return self._transact("fix_hostname", plan, dry_run, Redactor(), steps)

    def _wanted_fqdn(self, request: HostnameRequest, short: str) -> str:
        """The FQDN ``request`` asks for on a host called ``short``; ValidationError when it
        would rename the host or is a placeholder."""
        field_name = "fqdn" if request.fqdn is not None else "domain"
        if not short or short == "localhost":
            raise ValidationError.for_field(
                field_name, f"the host calls itself {short or 'nothing'!r}: give it its own "
                "name first (fix_hostname qualifies the existing name; renaming a host is a "
                "different job)")
        fqdn = validate_fqdn(request.fqdn_for(short), field_name)
        if fqdn.split(".")[0] != short:
            raise ValidationError.for_field(
                field_name, f"{fqdn} does not start with the host's short name {short}: "
                "fix_hostname qualifies the existing name; renaming a host is a different job")
        if diag.not_qualified_reason(fqdn) is not None:
            raise ValidationError.for_field(
                field_name, f"{fqdn} is a placeholder name relays refuse: give the host's "
                "real domain")
        return fqdn

    def _hosts_edit(self, rec: StepRecorder, short: str, fqdn: str) -> FileEdit:
        """/etc/hosts now and as :func:`shared.hostsfile.qualify` makes it (a missing file is
        created from Debian's default first lines)."""
        path = diag.HOSTS_FILE
        real = self.executor.real_path(path)
        if real != path:
            raise ConfigError(f"{path} is a symbolic link to {real}: relayfleet does not "
                              f"follow links out of where a file belongs; edit {real} by hand")
        data = self.executor.read_file_if_exists(path)
        rec.note(f"read {path}", "missing: it will be created" if data is None
                 else f"{len(data)} bytes")
        old = data.decode("utf-8", "surrogateescape") if data is not None else None
        base = old if old is not None else hostsfile.DEFAULT_HOSTS
        return FileEdit(path, old, hostsfile.qualify(base, short, fqdn))

    @staticmethod
    def _describe_edits(edits: list[FileEdit], result: OperationResult) -> None:
        result.changed = any(edit.changed for edit in edits)
        result.data["diff"] = "".join(
            unified_diff(_shown(edit.old or ""), _shown(edit.new), edit.path)
            for edit in edits if edit.changed)

    def _build_edits(self, edits: list[FileEdit], rec: StepRecorder,
                     temps: list[str]) -> list[tuple[str, str]]:
        """Each changed file written beside the live one, with its mode and owner."""
        renames = []
        for edit in edits:
            if not edit.changed:
                continue
            tmp = self._temp_for(edit.path)
            temps.append(tmp)
            self._write_like(edit.path, tmp, _bytes(edit.new))
            rec.note(f"write {posixpath.basename(edit.path)} (temporary)", tmp)
            renames.append((tmp, edit.path))
        return renames

    def _take_name(self, rec: StepRecorder, short: str, fqdn: str, mta: NameChange) -> None:
        """Check that the host resolves its name to ``fqdn`` (``hostname -f``; ``getent
        hosts`` where that fails), then have the MTA take it."""
        started = time.monotonic()
        timeout = diag.COMMAND_TIMEOUT_S
        said = ""
        for name, argv in (("hostname -f", ["hostname", "-f"]),
                           ("getent hosts", ["getent", "hosts", short])):
            try:
                out = rec.run(name, argv, timeout=timeout, check=False)
            except HostUnreachable:
                raise
            except ExecutorError:  # no such program
                continue
            # hostname -f prints the name; getent "ADDRESS CANONICAL ALIASES..."
            words = first_line(out).split()[0 if name == "hostname -f" else 1:]
            said = hostsfile.normal_name(words[0]) if words else ""
            if said:
                break
        if said != fqdn:
            raise OperationError(
                f"after the change the host resolves its name to {said or 'nothing'!r}, not "
                f"{fqdn}: its resolver does not answer from {diag.HOSTS_FILE} first (see the "
                "hosts line of /etc/nsswitch.conf, or a name cache such as nscd)")
        rec.note("verify name", f"the host resolves {short} to {fqdn}", started=started)
        mta.activate(rec)

    # -- the transaction --------------------------------------------------------------
    def _change(self, name: str, plan: Callable[[StepRecorder], ChangeT], dry_run: bool,
                redactor: Redactor, wanted: WantedT | None, *,
                request: SmarthostRequest | None = None) -> OperationResult:
        """A smarthost change (set or remove) through :meth:`_transact`; ``request``'s
        ``verify`` probes delivery through the new relay once the MTA runs it (a probe not
        delivered rolls the change back, as any failed verification does)."""
        verify = request.verify if request is not None else None
        confirm = None
        confine = self.change_files
        if verify is not None:
            wanted_relay = {"host": request.host, "mx": request.mx} if request else None
            confine = (*confine, "maillog")
            planned = plan

            def plan(rec: StepRecorder) -> ChangeT:
                # the probe is followed in the maillog: a host without a readable text
                # maillog is refused here, before anything changes (not rolled back later)
                log_position(rec.run("check maillog", log_check_command(self.profile.maillog),
                                     timeout=30, check=False), self.profile.maillog)
                return planned(rec)

            def confirm(rec: StepRecorder, result: OperationResult) -> None:
                self._verify_delivery(rec, result, verify, wanted_relay)

        steps = ChangeSteps[ChangeT](
            confine=confine,
            describe=lambda change, result: self._describe(change, result, wanted),
            files=lambda _change: self._managed_files(), build=self._build_smarthost,
            activate=lambda rec: self._activate_verify(rec, wanted), stale=self._stale_reason,
            unnamed=lambda change: {entry.compiled for entry in self._maps(change)},
            confirm=confirm)
        return self._transact(name, plan, dry_run, redactor, steps)

    def _verify_delivery(self, rec: StepRecorder, result: OperationResult,
                         request: VerifyRequest, smarthost: Mapping[str, Any] | None,
                         ) -> None:
        """Send a delivery probe through the MTA and wait for the relay's verdict; put it
        in ``result`` and raise :class:`shared.verify.DeliveryNotVerified` when the relay
        the host should use (``smarthost``: its ``host`` and ``mx``; None: any) did not
        accept it."""
        self._confine("maillog")
        prober = Prober(self.executor, self.profile.sendmail, self.profile.maillog,
                        self._parse_log_line)
        delivery = prober.run(rec, request, smarthost)
        record_delivery(result, delivery)
        if not delivery.verified:
            if delivery.submitted:
                # before a rollback restarts the MTA (which runs its queue): a probe left
                # queued would be retried for days, through whichever relay is set then
                self._clean_up_probe(rec, delivery)
            raise delivery.error()

    def _clean_up_probe(self, rec: StepRecorder, delivery: Delivery) -> None:
        """Remove a probe not verified from the queue; say what was done in the steps
        (a failure to is said there, and does not change the host's error)."""
        started = time.monotonic()
        try:
            detail = self._remove_probe(rec, delivery)
        except HostUnreachable:
            raise
        except RelayfleetError as exc:
            rec.note("remove probe", f"the probe {delivery.message_id} could not be removed "
                     f"from the queue ({exc.message}): find it in the queue by its sender "
                     "and delete it by hand", ok=False, started=started)
            return
        rec.note("remove probe", detail, started=started)

    @abc.abstractmethod
    def _remove_probe(self, rec: StepRecorder, delivery: Delivery) -> str:
        """Delete the queue entries of a probe not verified (its ``queue_ids``, checked,
        and whatever else carries its Message-ID where the MTA can tell); what was done."""

    def _verify_after_flush(self, rec: StepRecorder, result: OperationResult,
                            request: VerifyRequest) -> None:
        """The delivery probe of a flush: through the configured smarthost (any relay when
        none is set); a probe not delivered fails the result with the relay's reply."""
        smarthost, _problems = self._current_smarthost()
        try:
            self._verify_delivery(rec, result, request, smarthost.get("smarthost"))
        except RelayfleetError as exc:
            if result.ok:
                fail(result, exc)
            else:  # the run failed already: say both
                result.error = f"{result.error}; {exc.message}"

    def _transact(self, name: str, plan: Callable[[StepRecorder], PlanT], dry_run: bool,
                  redactor: Redactor, steps: ChangeSteps[PlanT]) -> OperationResult:
        """The change transaction (see the module's docstring), ``steps`` saying what each
        step does for this kind of change."""
        rec = StepRecorder(self.executor, redactor)
        result = OperationResult(name, steps=rec.steps)
        try:
            self._confine(*steps.confine)
            if dry_run:
                change = plan(rec)
                steps.describe(change, result)
                result.data["dry_run"] = True
                return result
            with self._change_lock():
                self._undo_interrupted_swap(rec)
                change = plan(rec)
                steps.describe(change, result)
                if result.changed:
                    self._apply(change, rec, result, steps)
                else:
                    rec.note("compare", steps.unchanged)
                    self._ensure_running(rec, result, steps)
                    if steps.confirm is not None:
                        steps.confirm(rec, result)
        except RelayfleetError as exc:
            fail(result, exc, redact=redactor)
        # Done, refused or rolled back: the answer says what the files say now. Reading them
        # must not fail the answer (a missing file is reported, not raised).
        state, problems = self._current_smarthost()
        result.data.update(state)
        if result.ok:
            fail(result, *problems)
        return result

    def _ensure_running(self, rec: StepRecorder, result: OperationResult,
                        steps: ChangeSteps[Any]) -> None:
        """Finish a change that was interrupted between its swap and its activation (and is
        now retried): activate if the MTA is down, or if it runs an older configuration."""
        running, _pid = self._mta_running()
        stale = steps.stale() if running else None
        if not running:
            result.data["note"] = "the configuration was in place but the MTA was not running"
        elif stale is not None:
            result.data["note"] = f"{stale}; restarted so that it runs it"
        else:
            return
        steps.activate(rec)

    def _apply(self, change: PlanT, rec: StepRecorder, result: OperationResult,
               steps: ChangeSteps[PlanT]) -> None:
        """Build and validate beside the live files, back up, swap, activate and verify;
        roll back on a failure after the swap. Temporary files never outlive the change."""
        ex = self.executor
        temps: list[str] = []
        self._changing = steps.files(change)
        try:
            renames = steps.build(change, rec, temps)
            backup = result.data["backup"] = self._backup(rec)
            unnamed = steps.unnamed(change)

            def swap() -> None:
                self._open_journal(backup)
                self._before_swap()
                notes = [why for tmp, live in renames
                         if (why := self._install(tmp, live)) is not None]
                self._close_journal()
                rec.note("swap", "; ".join(["installed new " + ", ".join(
                    self._file_name(live) for _tmp, live in renames if live not in unnamed),
                    *notes]))

            confirm = steps.confirm

            def activate(rec: StepRecorder) -> None:
                steps.activate(rec)
                if confirm is not None:
                    confirm(rec, result)

            self._run_swapped(rec, result, backup, swap, activate)
        finally:
            self._changing = None
            for tmp in temps:
                with contextlib.suppress(ExecutorError):
                    ex.remove(tmp)

    def _build_smarthost(self, change: ChangeT, rec: StepRecorder,
                         temps: list[str]) -> list[tuple[str, str]]:
        """The configuration built beside the live one, each changed map with it."""
        renames = self._build_config(change, rec, temps)
        maps = [entry for entry in self._maps(change) if entry.changed]
        # Each map and its source are a pair, renamed before the configuration that
        # names them (one renamed without the other never stays: a failure from the
        # first rename on rolls back).
        return [*(pair for entry in maps
                  for pair in self._build_map(change, entry, rec, temps)), *renames]

    def _file_name(self, path: str) -> str:
        """A file as the steps name it: by its name in the MTA's home, else by its path."""
        return (posixpath.basename(path) if posixpath.dirname(path) == self.profile.home
                else path)

    def _temp_for(self, path: str, tag: str = "new") -> str:
        """A fresh temporary name for ``path``'s next content: beside it, or in the MTA's
        home for a file written in place (its own directory need not be writable)."""
        if path in self.in_place_files:
            path = posixpath.join(self.profile.home, posixpath.basename(path))
        return self.executor.temp_path_for(path, tag)

    def _install(self, tmp: str, live: str) -> str | None:
        """Rename ``tmp`` over ``live``; a file in ``in_place_files`` instead gets ``tmp``'s
        bytes written into it (same inode, mode and owner; flushed to disk by the local
        executor) and ``tmp`` removed. Returns what was done instead (None: renamed)."""
        ex = self.executor
        if live not in self.in_place_files:
            ex.rename(tmp, live)
            return None
        info = ex.file_info(live)
        ex.write_file(live, ex.read_file(tmp), mode=info.mode if info is not None else 0o644)
        with contextlib.suppress(ExecutorError):
            ex.remove(tmp)
        return f"{live} is never renamed over: its content was replaced in place"

    def _maps(self, change: ChangeT) -> list[MapChange]:
        """Every map ``change`` may rewrite: the credentials map first, then the others."""
        source, compiled = self._credentials_paths()
        # credentials_old None with a text already right: the compiled map is to be rebuilt
        return [MapChange(source, compiled, change.credentials_old, change.credentials_new),
                *change.maps]

    def _build_map(self, change: ChangeT, entry: MapChange, rec: StepRecorder,
                   temps: list[str]) -> list[tuple[str, str]]:
        """Write a map's new source and compile it beside the live one: a secret map's files
        root's and 0600, another's owned like the live ones."""
        ex = self.executor
        tmp = ex.temp_path_for(entry.source)
        compiled_tmp = tmp + entry.compiled[len(entry.source):]
        temps += [tmp, compiled_tmp]
        text = entry.new_bytes
        if entry.secret:
            ex.write_file(tmp, text, mode=0o600)
            ex.set_owner_mode(tmp, mode=0o600, uid=0, gid=0)
        else:
            self._write_like(entry.source, tmp, text)
        argv, stdin = self._map_command(change, entry, tmp)
        rec.run(f"build {posixpath.basename(entry.source)} map", argv, input=stdin,
                timeout=self.profile.command_timeout_s)
        if entry.secret:
            ex.set_owner_mode(compiled_tmp, mode=0o600, uid=0, gid=0)
        else:
            self._own_like(entry.compiled, compiled_tmp)
        return [(compiled_tmp, entry.compiled), (tmp, entry.source)]

    def _run_swapped(self, rec: StepRecorder, result: OperationResult, backup: str,
                     swap: Callable[[], None], activate: Callable[[StepRecorder], None]
                     ) -> None:
        """Swap the new files in and activate them; on failure roll back and raise."""
        try:
            swap()
            activate(rec)
            result.data["mta_running"] = True  # verified above
        except RelayfleetError as exc:
            undo = self._rollback_journaled(rec, backup)
            result.rolled_back = undo.files_back
            result.data.update(undo.to_data())
            # a probe the relay refused stays that kind of error: the change was fine
            kind = DeliveryNotVerified if isinstance(exc, DeliveryNotVerified) else OperationError
            raise kind(f"{exc.message}; {self._rollback_summary(undo, backup)}") from exc

    # -- files ------------------------------------------------------------------------
    def _read_map(self, path: str) -> str | None:
        """A map source (None when there is none); undecodable bytes kept as surrogates, so
        that the lines relayfleet does not touch are written back byte for byte."""
        data = self.executor.read_file_if_exists(path)
        return data.decode("utf-8", "surrogateescape") if data is not None else None

    def _map_edit(self, source: str, compiled: str, edit: Callable[[str], str], *,
                  secret: bool = True, create: bool = True) -> MapChange:
        """The change ``edit`` makes to a map source. ``create``: a missing source is made,
        and a source already right whose compiled map is missing or older is rebuilt;
        otherwise a missing or unchanged map is left as it is."""
        old = self._read_map(source)
        new = edit(old or "") if old is not None or create else None
        rebuild = False
        if create and new == old:
            src, built = self.executor.file_info(source), self.executor.file_info(compiled)
            rebuild = built is None or (src is not None and built.mtime < src.mtime)
        return MapChange(source, compiled, old, new if new != old or rebuild else None, secret,
                         rebuild)

    def _credentials_set(self, path: str, compiled: str,
                         edit: Callable[[str], str]) -> tuple[str | None, str]:
        """(current, wanted) map source with ``edit`` applied. A source already right whose
        compiled map is missing or older counts as absent, so that the change builds it."""
        entry = self._map_edit(path, compiled, edit)
        # unchanged: the text is right as it is
        return (None if entry.rebuild else entry.old), (entry.new if entry.new is not None
                                                        else entry.old or "")

    def _credentials_removed(self, path: str, edit: Callable[[str], str]
                             ) -> tuple[str | None, str | None]:
        """(current, wanted) map source after ``edit`` takes an entry out (None: no change)."""
        entry = self._map_edit(path, "", edit, create=False)
        return entry.old, entry.new

    def _diff(self, change: ChangeT, config_path: str) -> str:
        """The unified diff of the configuration file and of each changed map; a secret map
        is named, never shown."""
        diff = unified_diff(change.config_old, change.config_new, config_path)
        for entry in self._maps(change):
            if not entry.changed:
                continue
            if entry.secret:
                diff += _named(entry.source, "credentials entry written (content not shown)")
            elif entry.new != entry.old:
                diff += unified_diff(_shown(entry.old or ""), _shown(entry.new or ""),
                                     entry.source)
            else:
                diff += _named(entry.compiled, f"rebuilt from {entry.source}")
        return diff

    def _change_lock(self) -> contextlib.AbstractContextManager[None]:
        """Hold the host-wide change lock (see :mod:`shared.hostlock`) under ``lock_owner``."""
        return HostLock(self.executor, self.profile.home, self.lock_owner).held()

    def _confine(self, *keys: str) -> None:
        """Refuse (ConfigError) when a profile file's real path leaves its root, e.g. a
        symbolic link out of the configuration directory, or when two of them are one file.

        The profile's paths are checked as written when it is built; this checks what they
        are on the host, in one round trip, before an operation reads or writes them.
        """
        confined = self.profile.confined_paths()
        wanted = {key: confined[key] for key in keys}
        names = sorted({path for path, _ in wanted.values()}
                       | {root for _, roots in wanted.values() for root in roots})
        real = dict(zip_strict(names, self.executor.real_paths(names)))
        seen: dict[str, str] = {}
        for key, (path, roots) in wanted.items():
            if not any(is_under(real[path], real[root]) for root in roots):
                raise ConfigError(
                    f"mta.{key}: {path} leads to {real[path]}, outside {' or '.join(roots)}: "
                    "relayfleet does not follow links out of where a file belongs; fix the "
                    "link on the host or the profile")
            if key in self.profile.layout.distinct:
                if real[path] in seen:
                    raise ConfigError(f"mta.{key}: {path} is the same file as "
                                      f"mta.{seen[real[path]]} ({real[path]}) on the host: "
                                      "fix the link on the host or the profile")
                seen[real[path]] = key

    def _unreadable_todo(self, path: str) -> str:
        """What to do about a configuration file that cannot be read."""
        backups = posixpath.join(self.profile.home, BACKUP_DIR)
        return (f"restore it (relayfleet keeps copies in {backups}), or check the profile's "
                "paths")

    def _read_config_file(self, path: str) -> str:
        """A configuration file; ConfigError (which, why, what to do) if absent or unreadable."""
        try:
            return self.executor.read_text(path)
        except FileMissing:
            raise ConfigError(f"cannot read {path}: {NO_SUCH_FILE}: "
                              f"{self._unreadable_todo(path)}") from None
        except (HostUnreachable, CommandTimeout):
            raise  # about reaching the host, not about the file
        except ExecutorError as exc:
            # Executors say "cannot read PATH: why"; the path is in our message already.
            why = exc.message.removeprefix(f"cannot read {path}: ")
            raise ConfigError(f"cannot read {path}: {why}: {self._unreadable_todo(path)}"
                              ) from exc

    def _write_like(self, reference: str, path: str, data: bytes) -> None:
        """Write ``path`` with the mode and owner of ``reference``."""
        self.executor.write_file(path, data, mode=0o600)
        self._own_like(reference, path)

    def _own_like(self, reference: str, path: str) -> None:
        """Give ``path`` the mode and owner of ``reference`` (0644 when there is none)."""
        info = self.executor.file_info(reference)
        if info is not None:
            self.executor.set_owner_mode(path, mode=info.mode, uid=info.uid, gid=info.gid)
        else:
            self.executor.set_owner_mode(path, mode=0o644, uid=-1, gid=-1)

    def _backup(self, rec: StepRecorder) -> str:
        """Copy every managed file that exists into a fresh dated backup directory."""
        ex = self.executor
        root = posixpath.join(self.profile.home, BACKUP_DIR)
        ex.make_dir(root, mode=0o700)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        target = posixpath.join(root, stamp)
        ex.make_dir(target, mode=0o700)
        for path in self._files_in_change():
            if ex.exists(path):
                ex.copy_file(path, posixpath.join(target, posixpath.basename(path)))
        for old in ex.list_dir(root)[:-BACKUPS_KEPT]:
            ex.remove_dir(posixpath.join(root, old))
        rec.note("backup", target)
        return target

    def _files_in_change(self) -> list[str]:
        """The files the change being applied may rewrite."""
        return self._changing if self._changing is not None else self._managed_files()

    def _mta_running(self) -> tuple[bool, int | None]:
        """Whether the MTA's daemon runs, and its pid when known."""
        # One round trip (pid file and kill -0 in one shell): it is polled after restarts.
        pid_file = self.profile.daemon_pid_file
        check = diag.mta_running_check(self.executor.run(diag.alive_command(pid_file),
                                                         timeout=10), pid_file)
        pid = check.data.get("pid")
        return bool(check.ok), pid if isinstance(pid, int) else None

    # -- the swap's journal ----------------------------------------------------------------
    def _journal_path(self) -> str:
        return posixpath.join(self.profile.home, SWAP_JOURNAL)

    def _open_journal(self, backup: str) -> None:
        """Note which files are about to be replaced, and their backup (before a rename)."""
        doc = {"backup": backup, "files": self._files_in_change()}
        # (not written atomically: a journal cut short is read as "no rename yet", which
        # is what it means)
        self.executor.write_file(self._journal_path(), json.dumps(doc).encode(), mode=0o600)

    def _close_journal(self) -> None:
        self.executor.remove(self._journal_path())

    def _rollback_journaled(self, rec: StepRecorder, backup: str) -> RollbackReport:
        """:meth:`_rollback`, with the journal open until every file is back (a process
        killed half-way through the rollback leaves it for the next holder to finish)."""
        with contextlib.suppress(ExecutorError):  # (what failed may be this very write)
            # A journal already there stays as it is: rewritten, a process killed during the
            # write would leave one cut short, which reads as "no rename yet".
            if not self.executor.exists(self._journal_path()):
                self._open_journal(backup)
        undo = self._rollback(rec, backup)
        if undo.files_back:
            # (left behind, it would only make the next holder put the same bytes back)
            with contextlib.suppress(ExecutorError):
                self._close_journal()
        return undo

    def _undo_interrupted_swap(self, rec: StepRecorder) -> RollbackReport | None:
        """Under the change lock: put back the files of a change cut between its renames (its
        journal is still there), rebuild and restart; ``None`` when there was none."""
        raw = self.executor.read_file_if_exists(self._journal_path())
        if raw is None:
            return None
        found = self._journal_entries(raw)
        # Not whole (its writer was cut before the first rename, so no file was replaced),
        # or not one this change would write; or its backup is gone or no longer the last
        # one (something that does not read journals changed the files since): putting
        # that backup back would undo more than the cut change.
        why = ("it is not a whole journal of this host's files" if found is None
               else self._stale_journal(found[0]))
        if found is None or why is not None:
            log.warning("%s names no change to undo (%s): removed it", self._journal_path(),
                        why)
            rec.note("interrupted change", f"{self._journal_path()} names no change to "
                     f"undo ({why}): removed it")
            self._close_journal()
            return None
        backup, files = found
        log.warning("a change on this host was cut between its renames: putting back %s "
                    "from %s", ", ".join(files), backup)
        rec.note("interrupted change", f"a change was cut between its renames: putting back "
                 f"{', '.join(files)} from {backup}")
        self._changing = files
        try:
            undo = self._rollback_journaled(rec, backup)
        finally:
            self._changing = None
        if not undo.files_back:
            raise OperationError(
                f"a change cut between its renames could not be undone; "
                f"{self._rollback_summary(undo, backup)}; once the files are right, delete "
                f"{self._journal_path()} (until then every change undoes that change first)")
        return undo

    def _stale_journal(self, backup: str) -> str | None:
        """Why a journal's backup must not be put back (gone, or not the newest), or None."""
        root = posixpath.dirname(backup)
        saved = self.executor.list_dir(root)
        name = posixpath.basename(backup)
        if name not in saved:
            return f"its backup {backup} is gone"
        if max(saved) != name:
            return f"a later change made a newer backup than {backup}"
        return None

    def _journal_entries(self, raw: bytes) -> tuple[str, list[str]] | None:
        """The backup and the files a journal names; ``None`` unless it is whole and names a
        backup of this MTA's and files a change of this MTA's writes (the journal lives in
        the root-owned home, but it is checked before anything is restored from it)."""
        try:
            doc = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(doc, dict):
            return None
        backup, files = doc.get("backup"), doc.get("files")
        root = posixpath.join(self.profile.home, BACKUP_DIR)
        ours = {*self._managed_files(), *self.in_place_files}
        # (its name must also be one of the backups there: _stale_journal)
        if (not isinstance(backup, str) or posixpath.dirname(backup) != root
                or not isinstance(files, list) or not files
                or not all(isinstance(f, str) and f in ours for f in files)):
            return None
        return backup, files

    def finish_interrupted_change(self) -> str | None:
        """Undo a change cut between its renames (the agent's process killed), if one was
        and no other change runs now: what was put back, or ``None``."""
        rec = StepRecorder(self.executor)
        try:
            with self._change_lock():
                undo = self._undo_interrupted_swap(rec)
        except ChangeInProgress:
            return None  # its holder is alive: it finishes (or undoes) its own swap
        return None if undo is None else "; ".join(step.output for step in rec.steps
                                                   if step.name == "rollback")

    # -- rollback -----------------------------------------------------------------------
    def _rollback(self, rec: StepRecorder, backup: str) -> RollbackReport:
        """Put the backed-up files back, rebuild, restart (once more if that fails), and say
        exactly what that left: which files are byte-identical to the backup, what failed,
        whether the MTA runs. Never raises: what went wrong here is part of the answer."""
        ex = self.executor
        started = time.monotonic()
        undo = RollbackReport()
        files = self._files_in_change()
        saved: set[str] = set()
        try:
            saved.update(ex.list_dir(backup))
        except RelayfleetError as exc:
            undo.not_restored = {p: f"cannot list {backup}: {exc.message}" for p in files}
            undo.unreachable = isinstance(exc, HostUnreachable)
        for path in files if undo.files_back else []:
            name = posixpath.basename(path)
            try:
                self._restore(path, posixpath.join(backup, name) if name in saved else None)
                undo.restored.append(path)
            except HostUnreachable as exc:  # the rest cannot be done either
                undo.unreachable = True
                undo.not_restored.update({p: exc.message for p in files[files.index(path):]})
                break
            except RelayfleetError as exc:
                undo.not_restored[path] = exc.message
        detail = f"restored {', '.join(undo.restored) or 'nothing'} from {backup}" + "".join(
            f"; could not restore {p}: {why}" for p, why in undo.not_restored.items())
        rec.note("rollback", detail, ok=undo.files_back, started=started)
        if undo.unreachable:
            return undo
        if not undo.files_back:
            # A rebuild would compile whatever half is there: leave the files as the answer
            # lists them, for a person to finish from the backup.
            undo.problems.append(f"{self.rebuild_label} and restart were not run over the "
                                 "half-restored files")
            undo.mta_running = self._running_or_none(wait=False)
            return undo
        self._rebuild(rec, undo)
        undo.mta_running = self._restart_checked(rec, undo)
        return undo

    def _restore(self, path: str, source: str | None) -> None:
        """Put ``source`` back at ``path`` (None: the file was not there; remove it), and
        check it is byte-identical to the backup."""
        ex = self.executor
        if source is None:
            ex.remove(path)
            if ex.exists(path):
                raise OperationError(f"{path} is still there after removing it")
            return
        if path in self.in_place_files and ex.read_file_if_exists(path) == ex.read_file(source):
            # The write into it failed before changing it (e.g. read-only for the agent
            # since something renamed a new /etc/hosts in): there is nothing to put back,
            # and writing would fail the same way.
            return
        tmp = self._temp_for(path, "restore")
        try:
            ex.copy_file(source, tmp)
            self._install(tmp, path)
        except BaseException:
            with contextlib.suppress(ExecutorError):
                ex.remove(tmp)
            raise
        if ex.read_file(path) != ex.read_file(source):
            raise OperationError(f"{path} differs from its backup {source} after the copy")

    def _restart_checked(self, rec: StepRecorder, undo: RollbackReport) -> bool | None:
        """Restart after a rollback, once more if the restart fails or the MTA does not
        come up; True/False: whether it runs, None: it could not be checked."""
        why = ""
        running: bool | None = None
        for _attempt in range(2):
            try:
                self._restart(rec)
            except RelayfleetError as exc:
                why = exc.message
                running = self._running_or_none(wait=False)
                continue
            running = self._running_or_none(wait=True)
            if running:
                return True
            why = "the MTA was not running after the restart"
        undo.problems.append(f"restart failed twice: {why}")
        return running

    def _running_or_none(self, *, wait: bool) -> bool | None:
        """Whether the MTA runs (``wait``: give a fresh restart time); None if unknown."""
        try:
            return (self._wait_running() if wait else self._mta_running())[0]
        except RelayfleetError:
            return None

    def _restart_running(self, rec: StepRecorder, what: str = "restart") -> int | None:
        """Restart (``_restart``) and wait for the MTA to run; its pid. OperationError if it
        does not come up (``what``: the word for the restart in that message)."""
        self._restart(rec)
        running, pid = self._wait_running()
        if not running:
            raise OperationError(f"{self.label} is not running after the {what}")
        return pid

    def _wait_running(self, wait_s: float = 10.0) -> tuple[bool, int | None]:
        deadline = time.monotonic() + wait_s
        while True:
            running, pid = self._mta_running()
            if running or time.monotonic() > deadline:
                return running, pid
            time.sleep(0.2)

    def _rollback_summary(self, undo: RollbackReport, backup: str) -> str:
        """What a rollback left, in words, and what to do about it."""
        label = self.label
        if undo.files_back and not undo.problems and undo.mta_running:
            return f"the previous configuration was restored and {label} runs it"
        if undo.files_back:
            said = "the previous configuration files were restored byte for byte"
        else:
            said = ("rolling back failed: " + "; ".join(
                f"{p} not restored ({why})" for p, why in undo.not_restored.items())
                + f". Restore those files from {backup} by hand (cp -p), "
                + self._finish_by_hand())
        said += "".join(f"; {problem}" for problem in undo.problems)
        if undo.unreachable:
            return f"{said}; the host could not be reached to finish: check it by hand"
        if undo.mta_running is False:
            said += (f"; {label} is NOT running: fix the cause and start it "
                     f"({self._start_by_hand()})")
        elif undo.mta_running is None:
            said += f"; whether {label} runs could not be checked"
        elif undo.problems:
            said += (f"; {label} is running, maybe with the configuration it had before "
                     f"({self._finish_by_hand()} to be sure)")
        return said

    @abc.abstractmethod
    def _ehlo_name(self) -> str | None:
        """The name the MTA greets relays with in EHLO, as it would compute it (None: it
        cannot tell)."""

    def _ehlo_name_or_none(self) -> str | None:
        """:meth:`_ehlo_name`, None when the MTA cannot be asked (the host's name is used)."""
        try:
            return self._ehlo_name()
        except HostUnreachable:
            raise
        except RelayfleetError:
            return None


def _named(path: str, what: str) -> str:
    """A diff stanza naming a changed file without showing it."""
    return f"--- {path} (current)\n+++ {path} (new)\n@@ {what} @@\n"


def fail(result: OperationResult, *problems: RelayfleetError,
         redact: Callable[[str], str] = str) -> None:
    """Mark ``result`` failed by ``problems`` (the first gives the kind); none: no change."""
    if problems:
        result.ok, result.error_kind = False, problems[0].kind
        result.error = redact("; ".join(p.message for p in problems))


def read_failure(path: str, read: CommandResult) -> str:
    """Why a batched :func:`read_command` of ``path`` failed, in words."""
    if read.exit_code == MISSING_CODE:
        return NO_SUCH_FILE  # the read script prints nothing for a missing file
    # cat names the path, which the message names already
    return (read.output_text().strip().removeprefix(f"cat: {path}: ")[:200]
            or f"exit {read.exit_code}")


def age_s(queued_at: str | None, now: datetime) -> int | None:
    """Seconds since an ISO-8601 queue time (naive times are taken as UTC)."""
    if not queued_at:
        return None
    try:
        when = datetime.fromisoformat(queued_at)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0, int((now - when).total_seconds()))


def oldest_age_s(queued: Sequence[str | None], now: datetime | None = None) -> int | None:
    """The age of the oldest of these queue times, in seconds (None when none is known)."""
    moment = now or datetime.now(UTC)
    ages = [a for a in (age_s(q, moment) for q in queued) if a is not None]
    return max(ages, default=None)
