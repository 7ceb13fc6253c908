"""Sendmail's implementation of the MTA operations, driven through an executor.

Nothing here needs Python on the managed host: files are read and written through the
executor, and the commands are sendmail's own tools (m4, make, makemap, sendmail, mailq),
the restart argv of the host profile, and core utilities.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from shared.change import (
    ConfigChangeOperations,
    FileChange,
    RollbackReport,
    StatusFacts,
    read_failure,
)
from shared.errors import (
    CommandFailed,
    CommandTimeout,
    CompileError,
    ConfigError,
    OperationError,
    RelayfleetError,
)
from shared.executor import CommandResult, read_command
from shared.mta import FlushRequest
from shared.results import OperationResult, Redactor, StepRecorder
from shared.sendmail import authinfo as authmap
from shared.sendmail.flush import parse_flush_output, strip_auth_transcript
from shared.sendmail.maillog import LogRecord, parse_maillog_line
from shared.sendmail.mailq import MailqReport, parse_mailq
from shared.sendmail.mc import (
    Smarthost,
    read_cf,
    read_mc,
    remove_smarthost_mc,
    set_smarthost_mc,
)
from shared.validation import SmarthostRequest

#: exit codes of ``sendmail -q`` that mean it could not run at all (usage, permission, config)
_FLUSH_OK_CODES = frozenset(range(256)) - {64, 77, 78}


@dataclass
class _Change(FileChange):
    """sendmail.mc (config) and authinfo (credentials), and the current sendmail.cf."""

    cf_text: str


class SendmailOperations(ConfigChangeOperations[_Change, Smarthost]):
    """Read, set and remove the smarthost; list, flush and log the queue; diagnose."""

    kind = "sendmail"
    label = "sendmail"
    rebuild_label = "make"
    change_files = ("mail_dir", "mc", "cf", "authinfo", "authinfo.db", "pid_file")
    status_files = ("mc", "cf", "authinfo", "pid_file")

    # -- helpers --------------------------------------------------------------------
    @property
    def _mail_dir(self) -> str:
        return self.profile.mail_dir

    def _authinfo_db(self) -> str:
        return f"{self.profile.authinfo_path}.db"

    def _unreadable_todo(self, path: str) -> str:
        """sendmail.cf is compiled: make rebuilds it; sendmail.mc comes from the backups."""
        prof = self.profile
        if path == prof.cf_path:
            return (f"run make in {prof.mail_dir} to compile it from {prof.mc}, or check the "
                    "profile's cf path")
        return super()._unreadable_todo(path).replace("the profile's paths",
                                                      "the profile's mc path")

    def _unreadable(self, path: str, reason: str) -> ConfigError:
        """The error for a sendmail.mc or sendmail.cf that cannot be read."""
        return ConfigError(f"cannot read {path}: {reason}: {self._unreadable_todo(path)}")

    def _managed_files(self) -> list[str]:
        prof = self.profile
        return [prof.mc_path, prof.cf_path, prof.authinfo_path, self._authinfo_db()]

    def _read_mc_cf(self) -> tuple[str | None, str | None, list[ConfigError]]:
        """sendmail.mc and sendmail.cf (None for one that cannot be read), and why not."""
        texts: list[str | None] = []
        problems: list[ConfigError] = []
        for path in (self.profile.mc_path, self.profile.cf_path):
            try:
                texts.append(self._read_config_file(path))
            except ConfigError as exc:
                texts.append(None)
                problems.append(exc)
        return texts[0], texts[1], problems

    def _current_smarthost(self) -> tuple[dict[str, Any], list[ConfigError]]:
        """The smarthost facts as far as the files can be read, and what could not be."""
        try:
            self._confine("mc", "cf", "authinfo")
        except ConfigError as exc:
            return self._smarthost_data(None, None, None), [exc]
        mc_text, cf_text, problems = self._read_mc_cf()
        auth = (self.executor.read_file_if_exists(self.profile.authinfo_path)
                if mc_text is not None else None)
        return self._smarthost_data(mc_text, cf_text, auth), problems

    @staticmethod
    def _smarthost_data(mc_text: str | None, cf_text: str | None,
                        auth_text: bytes | None) -> dict[str, Any]:
        """Smarthost facts from mc, cf and authinfo (only the user name is read out of it).

        A file that could not be read is None: without sendmail.mc there is no smarthost to
        report; without either file mc and cf cannot be in sync.
        """
        state = read_mc(mc_text) if mc_text is not None else None
        smarthost: dict[str, Any] | None = None
        if state is not None and state.smarthost is not None:
            smarthost = state.smarthost.to_dict()
            user = (authmap.username_for(auth_text.decode("utf-8", "replace"),
                                         state.smarthost.host)
                    if auth_text is not None and state.authinfo_feature else None)
            smarthost["auth"] = {"username": user} if user else None
        cf_smarthost = read_cf(cf_text) if cf_text is not None else None
        return {
            "smarthost": smarthost,
            "config_in_sync": (state is not None and cf_text is not None
                               and state.smarthost == cf_smarthost),
            "compiled": cf_smarthost.to_dict() if cf_smarthost else None,
            "active_defines": state.active_defines if state is not None else 0,
        }

    # -- read -----------------------------------------------------------------------
    # -- change ---------------------------------------------------------------------
    def set_smarthost(self, request: SmarthostRequest, *, dry_run: bool = False) -> OperationResult:
        """Point outbound mail at ``request``'s smarthost."""
        redactor = Redactor([request.auth.password] if request.auth else [])

        def plan(_rec: StepRecorder) -> _Change:
            mc_old = self._read_config_file(self.profile.mc_path)
            auth_old = auth_new = None
            if request.auth is not None:
                auth = request.auth
                auth_old, auth_new = self._credentials_set(
                    self.profile.authinfo_path, self._authinfo_db(),
                    lambda text: authmap.set_entry(text, request.host, auth.username,
                                                   auth.password))
            return _Change(mc_old, set_smarthost_mc(mc_old, request), auth_old, auth_new,
                           self._read_config_file(self.profile.cf_path))

        wanted = Smarthost.from_request(request)
        return self._change("set_smarthost", plan, dry_run, redactor, wanted)

    def remove_smarthost(self, *, dry_run: bool = False) -> OperationResult:
        """Go back to direct delivery (DNS MX lookups)."""

        def plan(_rec: StepRecorder) -> _Change:
            mc_old = self._read_config_file(self.profile.mc_path)
            old_smarthost = read_mc(mc_old).smarthost
            auth_old = auth_new = None
            if old_smarthost is not None:
                auth_old, auth_new = self._credentials_removed(
                    self.profile.authinfo_path,
                    lambda text: authmap.remove_entry(text, old_smarthost.host))
            return _Change(mc_old, remove_smarthost_mc(mc_old), auth_old, auth_new,
                           self._read_config_file(self.profile.cf_path))

        return self._change("remove_smarthost", plan, dry_run, Redactor(), None)

    def _stale_reason(self) -> str | None:
        """sendmail started before the current sendmail.cf was installed."""
        cf = self.executor.file_info(self.profile.cf_path)
        pid = self.executor.file_info(self.profile.pid_file)
        if cf is not None and pid is not None and cf.mtime > pid.mtime:
            return "the MTA was started before the current sendmail.cf was installed"
        return None

    def _describe(self, change: _Change, result: OperationResult, wanted: Smarthost | None) -> None:
        diff = self._diff(change, self.profile.mc_path, self.profile.authinfo_path)
        in_sync = read_cf(change.cf_text) == wanted
        result.changed = bool(diff) or not in_sync
        result.data["diff"] = diff
        if not diff and not in_sync:
            result.data["note"] = "sendmail.cf did not match sendmail.mc; it will be recompiled"

    def _build_config(self, change: _Change, rec: StepRecorder,
                      temps: list[str]) -> list[tuple[str, str]]:
        """sendmail.mc, compiled by m4 into sendmail.cf, which sendmail validates."""
        ex, prof = self.executor, self.profile
        mc_tmp = ex.temp_path_for(prof.mc_path)
        cf_tmp = ex.temp_path_for(prof.cf_path)
        temps += [mc_tmp, cf_tmp]
        self._write_like(prof.mc_path, mc_tmp, change.config_new.encode())
        rec.note("write sendmail.mc (temporary)", mc_tmp)
        compiled = rec.run("compile", [prof.m4, mc_tmp], timeout=prof.command_timeout_s,
                           check=False, keep_stdout=False)
        # m4 warns on stderr (deprecated features) and still exits 0: only the exit counts.
        if not compiled.ok:
            raise CompileError(f"m4 could not compile the new sendmail.mc: "
                               f"{rec.redact(compiled.output_text()).strip()[:500]}")
        self._write_like(prof.cf_path, cf_tmp, compiled.stdout)
        self._validate_cf(rec, cf_tmp)
        # Each rename is atomic: sendmail.cf is whole before and after each.
        return [(mc_tmp, prof.mc_path), (cf_tmp, prof.cf_path)]

    def _credentials_paths(self) -> tuple[str, str]:
        return self.profile.authinfo_path, self._authinfo_db()

    def _map_command(self, change: _Change, source: str) -> tuple[list[str], bytes | None]:
        return [self.profile.makemap, "hash", source], (change.credentials_new or "").encode()

    def _validate_cf(self, rec: StepRecorder, cf_path: str) -> None:
        """Have sendmail read the new cf; offline and time-boxed (``-bt`` may hang on DNS)."""
        argv = [self.profile.sendmail, "-C", cf_path, "-d0.1", "-bv", "root"]
        try:
            checked = rec.run("validate", argv, timeout=self.profile.validate_timeout_s,
                              check=False)
        except CommandTimeout as exc:
            raise CompileError(f"validating the new sendmail.cf timed out after "
                               f"{self.profile.validate_timeout_s:g}s") from exc
        text = checked.output_text()
        problems = [ln for ln in text.splitlines() if re.search(r": line \d+: ", ln)]
        if not checked.ok or problems:
            detail = "; ".join(problems[:3]) or text.strip().splitlines()[-1:]
            raise CompileError(f"sendmail refused the new sendmail.cf (exit {checked.exit_code}): "
                               f"{detail}")

    def _make(self, rec: StepRecorder) -> None:
        rec.run("make", [*self.profile.make, "-C", self.profile.mail_dir],
                timeout=self.profile.command_timeout_s)

    def _restart(self, rec: StepRecorder) -> None:
        rec.run("restart", list(self.profile.restart), timeout=self.profile.command_timeout_s)

    def _rebuild(self, rec: StepRecorder, undo: RollbackReport) -> None:
        try:
            self._make(rec)
        except RelayfleetError as exc:
            undo.problems.append(f"make failed: {exc.message}")

    def _finish_by_hand(self) -> str:
        prof = self.profile
        return f"run make in {prof.mail_dir} and restart sendmail ({' '.join(prof.restart)})"

    def _start_by_hand(self) -> str:
        return " ".join(self.profile.restart)

    def _activate_verify(self, rec: StepRecorder, wanted: Smarthost | None) -> None:
        self._make(rec)
        self._restart(rec)
        started = time.monotonic()
        compiled = read_cf(self.executor.read_text(self.profile.cf_path))
        if compiled != wanted:
            raise OperationError(f"after restart sendmail.cf says {compiled}, expected {wanted}")
        running, pid = self._wait_running()
        if not running:
            raise OperationError("sendmail is not running after the restart")
        rec.note("verify", f"sendmail.cf has the expected smarthost; sendmail running (pid {pid})",
                 started=started)

    # -- queue ----------------------------------------------------------------------
    def _mailq(self, rec: StepRecorder, name: str = "mailq") -> MailqReport:
        out = rec.run(name, list(self.profile.mailq), timeout=self.profile.command_timeout_s,
                      check=False)
        return self._parse_mailq(out)

    @staticmethod
    def _parse_mailq(out: CommandResult) -> MailqReport:
        if not out.ok and not out.stdout:
            raise CommandFailed(f"mailq failed: {out.output_text().strip()[:300]}",
                                exit_code=out.exit_code)
        return parse_mailq(out.stdout_text())

    def _list_queue(self, rec: StepRecorder) -> MailqReport:
        return self._mailq(rec)

    def queue_flush(self, request: FlushRequest) -> OperationResult:
        """Run the queue now (``sendmail [-OTimeout.hoststatus=0m] -q -v``).

        The submission (MSP) queue is run too (``-Ac``): a PBX's voicemail can sit there.
        The counts, both runs and the recount go in one batch (one round trip over SSH).
        """
        rec = StepRecorder(self.executor)
        result = OperationResult("queue_flush", steps=rec.steps)
        argv = [self.profile.sendmail]
        if request.reset_host_status:
            argv.append("-OTimeout.hoststatus=0m")
        if request.queue_id:
            argv.append(f"-qI{request.queue_id}")
        elif request.recipient:
            argv.append(f"-qR{request.recipient}")
        elif request.sender:
            argv.append(f"-qS{request.sender}")
        else:
            argv.append("-q")
        argv.append("-v")
        mailq = list(self.profile.mailq)
        runs = [("flush", argv), ("flush client queue", [argv[0], "-Ac", *argv[1:]])]
        before: MailqReport | None = None
        deliveries: list[dict[str, Any]] = []
        try:
            results = rec.run_many([("mailq (before)", mailq), *runs, ("mailq (after)", mailq)],
                                   timeout=self.profile.command_timeout_s,
                                   output_filter=strip_auth_transcript)
        except CommandTimeout as exc:
            result.ok, result.error, result.error_kind = False, exc.message, exc.kind
            rec.note("flush", exc.message, ok=False)
            after = self._mailq(rec, "mailq (after)")
        else:
            before, after = self._parse_mailq(results[0]), self._parse_mailq(results[-1])
            for step, ran in zip(rec.steps[1:3], results[1:3], strict=True):
                deliveries += [d.to_dict() for d in parse_flush_output(step.output)]
                step.ok = ran.exit_code in _FLUSH_OK_CODES
                if not step.ok:
                    result.ok, result.error_kind = False, "command_failed"
                    result.error = (f"{' '.join(step.argv)} exited {ran.exit_code}: "
                                    f"{step.output.strip()[-300:]}")
        result.data = {"before": before.count if before else None, "after": after.count,
                       "deliveries": deliveries, "remaining": after.to_dict()["messages"]}
        return result

    # -- log ------------------------------------------------------------------------
    def _parse_log_line(self, line: str) -> LogRecord | None:
        return parse_maillog_line(line)

    # -- status and diagnose ----------------------------------------------------------
    def _status_commands(self) -> tuple[list[tuple[str, list[str]]], tuple[str, ...]]:
        prof = self.profile
        reads = (f"read {prof.mc}", f"read {prof.cf}", f"read {prof.authinfo}")
        return [("version", [prof.sendmail, "-d0.1", "-bv", "root"]),
                (reads[0], read_command(prof.mc_path)),
                (reads[1], read_command(prof.cf_path)),
                (reads[2], read_command(prof.authinfo_path)),
                ("mailq", list(prof.mailq))], reads

    def _status_facts(self, answers: list[CommandResult]) -> StatusFacts:
        prof = self.profile
        version, mc, cf, auth, mailq = answers
        # An unreadable mc or cf: the answer says config_in_sync false.
        problems = [self._unreadable(path, read_failure(path, read))
                    for path, read in ((prof.mc_path, mc), (prof.cf_path, cf)) if not read.ok]
        match = re.search(r"^Version (\S+)", version.stdout_text(), re.MULTILINE)
        smarthost = self._smarthost_data(mc.stdout_text() if mc.ok else None,
                                         cf.stdout_text() if cf.ok else None,
                                         auth.stdout if auth.ok else None)
        return StatusFacts(match.group(1) if match else None, smarthost,
                           self._parse_mailq(mailq), problems)

    def _diagnose_facts(self) -> tuple[dict[str, Any], list[ConfigError]]:
        self._confine("mc", "cf", "pid_file")
        mc_text, cf_text, problems = self._read_mc_cf()
        return self._smarthost_data(mc_text, cf_text, None), problems

    def _in_sync_detail(self, in_sync: bool) -> str:
        prof = self.profile
        if in_sync:
            return f"{prof.mc} and {prof.cf} agree"
        return (f"{prof.cf} is not compiled from the current {prof.mc}: set the smarthost "
                "again (or run m4 and make) and restart sendmail")

    def _ehlo_name(self) -> str | None:
        """sendmail greets relays with sendmail.cf's HeloName when set, else with $j."""
        prof = self.profile
        identity, cf = self.executor.run_many(
            [[prof.sendmail, "-d0.1", "-bv", "root"], read_command(prof.cf_path)],
            timeout=prof.validate_timeout_s)
        return sendmail_helo_name(identity.stdout_text(), cf.stdout_text() if cf.ok else "")


#: a macro line of ``sendmail -d0.1``'s SYSTEM IDENTITY: ``(canonical domain name) $j = NAME``
_IDENTITY_RE = re.compile(r"^\s*\([a-z ]+\) \$(?P<macro>[wjmk]) = (?P<value>\S+)\s*$",
                          re.MULTILINE)


def sendmail_helo_name(identity: str, cf_text: str) -> str | None:
    """The EHLO name from ``sendmail -d0.1``'s identity and sendmail.cf: ``O HeloName=``
    (confHELO_NAME) with $w/$j/$m/$k expanded, else $j (None: neither is known)."""
    macros = {m.group("macro"): m.group("value") for m in _IDENTITY_RE.finditer(identity)}
    option = re.search(r"^O HeloName=(.*)$", cf_text, re.MULTILINE)
    if option:
        value = re.sub(r"\$([wjmk])", lambda m: macros.get(m.group(1), m.group(0)),
                       option.group(1).strip())
        if value and "$" not in value:
            return value
    return macros.get("j")
