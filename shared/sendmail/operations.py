"""Sendmail's implementation of the MTA operations, driven through an executor.

Nothing here needs Python on the managed host: files are read and written through the
executor, and the commands are sendmail's own tools (m4, make, makemap, sendmail, mailq),
the restart argv of the host profile, and core utilities.
"""

from __future__ import annotations

import contextlib
import posixpath
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from shared import diagnose as diag
from shared.errors import (
    CommandFailed,
    CommandTimeout,
    CompileError,
    ConfigError,
    ExecutorError,
    HostUnreachable,
    OperationError,
    RelayfleetError,
)
from shared.executor import MISSING_CODE, CommandResult, FileMissing, read_command
from shared.hostlock import HostLock
from shared.mta import FlushRequest, MtaOperations
from shared.profile import DISTINCT_FILES, is_under
from shared.results import OperationResult, Redactor, StepRecorder
from shared.sendmail import authinfo as authmap
from shared.sendmail.flush import parse_flush_output, strip_auth_transcript
from shared.sendmail.maillog import parse_maillog_line, summarize
from shared.sendmail.mailq import MailqReport, parse_mailq
from shared.sendmail.mc import (
    Smarthost,
    read_cf,
    read_mc,
    remove_smarthost_mc,
    set_smarthost_mc,
    unified_diff,
)
from shared.validation import SmarthostRequest

BACKUP_DIR = ".relayfleet-backup"
BACKUPS_KEPT = 5
#: exit codes of ``sendmail -q`` that mean it could not run at all (usage, permission, config)
_FLUSH_OK_CODES = frozenset(range(256)) - {64, 77, 78}
#: why a file that is not there cannot be read, in an error message
NO_SUCH_FILE = "no such file"
#: the profile files a smarthost change reads or writes (see SendmailOperations._confine)
_CHANGE_FILES = ("mail_dir", "mc", "cf", "authinfo", "authinfo.db", "pid_file")


@dataclass
class _Change:
    """The files a smarthost change rewrites: current and wanted content."""

    mc_old: str
    mc_new: str
    auth_old: str | None
    auth_new: str | None
    cf_text: str

    @property
    def auth_changed(self) -> bool:
        return self.auth_new is not None and self.auth_new != self.auth_old


@dataclass
class _Rollback:
    """What a rollback did: the state the host is in afterwards, exactly."""

    #: files put back byte-identical to the backup (or removed, when the backup had none)
    restored: list[str] = field(default_factory=list)
    #: files left as the failed change made them: path -> why
    not_restored: dict[str, str] = field(default_factory=dict)
    #: make and restart failures after the files were put back
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


class SendmailOperations(MtaOperations):
    """Read, set and remove the smarthost; list, flush and log the queue; diagnose."""

    kind = "sendmail"

    # -- helpers --------------------------------------------------------------------
    @property
    def _mail_dir(self) -> str:
        return self.profile.mail_dir

    def _authinfo_db(self) -> str:
        return f"{self.profile.authinfo_path}.db"

    def _unreadable(self, path: str, reason: str) -> ConfigError:
        """The error for a sendmail.mc or sendmail.cf that cannot be read: which, why, and
        what to do about it."""
        prof = self.profile
        if path == prof.cf_path:
            todo = (f"run make in {prof.mail_dir} to compile it from {prof.mc}, or check the "
                    "profile's cf path")
        else:
            backups = posixpath.join(prof.mail_dir, BACKUP_DIR)
            todo = (f"restore it (relayfleet keeps copies in {backups}), or check the "
                    "profile's mc path")
        return ConfigError(f"cannot read {path}: {reason}: {todo}")

    def _read_config_file(self, path: str) -> str:
        """sendmail.mc or sendmail.cf; ConfigError (see _unreadable) if absent or unreadable."""
        try:
            return self.executor.read_text(path)
        except FileMissing:
            raise self._unreadable(path, NO_SUCH_FILE) from None
        except (HostUnreachable, CommandTimeout):
            raise  # about reaching the host, not about the file
        except ExecutorError as exc:
            # Executors say "cannot read PATH: why"; the path is in our message already.
            raise self._unreadable(path, exc.message.removeprefix(f"cannot read {path}: ")
                                   ) from exc

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

    def _confine(self, *keys: str) -> None:
        """Refuse (ConfigError) when a profile file's real path leaves its root, e.g. a
        symbolic link out of the mail directory, or when two of them are one file.

        The profile's paths are checked as written when it is built; this checks what they
        are on the host, in one round trip, before an operation reads or writes them.
        """
        confined = self.profile.confined_paths()
        wanted = {key: confined[key] for key in keys}
        names = sorted({path for path, _ in wanted.values()}
                       | {root for _, roots in wanted.values() for root in roots})
        real = dict(zip(names, self.executor.real_paths(names), strict=True))
        seen: dict[str, str] = {}
        for key, (path, roots) in wanted.items():
            if not any(is_under(real[path], real[root]) for root in roots):
                raise ConfigError(
                    f"mta.{key}: {path} leads to {real[path]}, outside {' or '.join(roots)}: "
                    "relayfleet does not follow links out of where a file belongs; fix the "
                    "link on the host or the profile")
            if key in DISTINCT_FILES:
                if real[path] in seen:
                    raise ConfigError(f"mta.{key}: {path} is the same file as "
                                      f"mta.{seen[real[path]]} ({real[path]}) on the host: "
                                      "fix the link on the host or the profile")
                seen[real[path]] = key

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

    def _change_lock(self) -> contextlib.AbstractContextManager[None]:
        """Hold the host-wide change lock (see :mod:`shared.hostlock`) under ``lock_owner``."""
        return HostLock(self.executor, self._mail_dir, self.lock_owner).held()

    def _mta_running(self) -> tuple[bool, int | None]:
        # One round trip (pid file and kill -0 in one shell): it is polled after restarts.
        pid_file = self.profile.pid_file
        check = diag.mta_running_check(self.executor.run(diag.alive_command(pid_file),
                                                         timeout=10), pid_file)
        pid = check.data.get("pid")
        return bool(check.ok), pid if isinstance(pid, int) else None

    # -- read -----------------------------------------------------------------------
    def read_smarthost(self) -> OperationResult:
        """Parse sendmail.mc and sendmail.cf and say whether they agree."""
        result = OperationResult("read_smarthost")
        result.data, problems = self._current_smarthost()
        _fail(result, *problems)
        return result

    # -- change ---------------------------------------------------------------------
    def set_smarthost(self, request: SmarthostRequest, *, dry_run: bool = False) -> OperationResult:
        """Point outbound mail at ``request``'s smarthost."""
        redactor = Redactor([request.auth.password] if request.auth else [])

        def plan() -> _Change:
            mc_old = self._read_config_file(self.profile.mc_path)
            auth_old_b = self.executor.read_file_if_exists(self.profile.authinfo_path)
            auth_old = auth_old_b.decode("utf-8", "replace") if auth_old_b is not None else None
            auth_new = None
            if request.auth is not None:
                auth_new = authmap.set_entry(auth_old or "", request.host,
                                             request.auth.username, request.auth.password)
                if auth_new == auth_old and not self.executor.exists(self._authinfo_db()):
                    auth_old = None  # the map source is right but was never compiled
            return _Change(mc_old, set_smarthost_mc(mc_old, request), auth_old, auth_new,
                           self._read_config_file(self.profile.cf_path))

        wanted = Smarthost.from_request(request)
        return self._change("set_smarthost", plan, dry_run, redactor, wanted)

    def remove_smarthost(self, *, dry_run: bool = False) -> OperationResult:
        """Go back to direct delivery (DNS MX lookups)."""

        def plan() -> _Change:
            mc_old = self._read_config_file(self.profile.mc_path)
            state = read_mc(mc_old)
            auth_old_b = self.executor.read_file_if_exists(self.profile.authinfo_path)
            auth_old = auth_old_b.decode("utf-8", "replace") if auth_old_b is not None else None
            auth_new = None
            if auth_old is not None and state.smarthost is not None:
                stripped = authmap.remove_entry(auth_old, state.smarthost.host)
                auth_new = stripped if stripped != auth_old else None
            return _Change(mc_old, remove_smarthost_mc(mc_old), auth_old, auth_new,
                           self._read_config_file(self.profile.cf_path))

        return self._change("remove_smarthost", plan, dry_run, Redactor(), None)

    def _change(self, name: str, plan: Callable[[], _Change], dry_run: bool,
                redactor: Redactor, wanted: Smarthost | None) -> OperationResult:
        rec = StepRecorder(self.executor, redactor)
        result = OperationResult(name, steps=rec.steps)
        try:
            self._confine(*_CHANGE_FILES)
            if dry_run:
                change = plan()
                self._describe(change, result, wanted)
                result.data["dry_run"] = True
                return result
            with self._change_lock():
                change = plan()
                self._describe(change, result, wanted)
                if result.changed:
                    self._apply(change, rec, result, wanted)
                else:
                    rec.note("compare", "configuration already as requested; no file touched")
                    self._ensure_running(rec, result, wanted)
        except RelayfleetError as exc:
            _fail(result, exc, redact=redactor)
        # Done, refused or rolled back: the answer says what the files say now. Reading them
        # must not fail the answer (a missing sendmail.cf is reported, not raised).
        state, problems = self._current_smarthost()
        result.data.update(state)
        if result.ok:
            _fail(result, *problems)
        return result

    def _ensure_running(self, rec: StepRecorder, result: OperationResult,
                        wanted: Smarthost | None) -> None:
        """Finish a change that was interrupted between its swap and its restart (and is
        now retried): restart the MTA if it is down, or if it started before the current
        sendmail.cf was installed (it is still running the old configuration)."""
        running, _pid = self._mta_running()
        if not running:
            result.data["note"] = "the configuration was in place but the MTA was not running"
        else:
            cf = self.executor.file_info(self.profile.cf_path)
            pid = self.executor.file_info(self.profile.pid_file)
            if cf is None or pid is None or cf.mtime <= pid.mtime:
                return
            result.data["note"] = ("the MTA was started before the current sendmail.cf was "
                                   "installed; restarted so that it runs it")
        self._make_restart_verify(rec, wanted)

    def _describe(self, change: _Change, result: OperationResult, wanted: Smarthost | None) -> None:
        diff = unified_diff(change.mc_old, change.mc_new, self.profile.mc_path)
        if change.auth_changed:
            # The map holds the secret: say that it changes, never how.
            diff += (f"--- {self.profile.authinfo_path} (current)\n"
                     f"+++ {self.profile.authinfo_path} (new)\n"
                     "@@ credentials entry written (content not shown) @@\n")
        in_sync = read_cf(change.cf_text) == wanted
        result.changed = bool(diff) or not in_sync
        result.data["diff"] = diff
        if not diff and not in_sync:
            result.data["note"] = "sendmail.cf did not match sendmail.mc; it will be recompiled"

    def _apply(self, change: _Change, rec: StepRecorder, result: OperationResult,
               wanted: Smarthost | None) -> None:
        ex, prof = self.executor, self.profile
        temps: list[str] = []
        swapped = False
        backup: str | None = None
        try:
            mc_tmp = ex.temp_path_for(prof.mc_path)
            cf_tmp = ex.temp_path_for(prof.cf_path)
            temps += [mc_tmp, cf_tmp]
            self._write_like(prof.mc_path, mc_tmp, change.mc_new.encode())
            rec.note("write sendmail.mc (temporary)", mc_tmp)
            compiled = rec.run("compile", [prof.m4, mc_tmp], timeout=prof.command_timeout_s,
                               check=False, keep_stdout=False)
            # m4 warns on stderr (deprecated features) and still exits 0: only the exit counts.
            if not compiled.ok:
                raise CompileError(f"m4 could not compile the new sendmail.mc: "
                                   f"{rec.redact(compiled.output_text()).strip()[:500]}")
            self._write_like(prof.cf_path, cf_tmp, compiled.stdout)
            self._validate_cf(rec, cf_tmp)
            auth_tmp = auth_db_tmp = None
            if change.auth_new is not None:
                auth_tmp = ex.temp_path_for(prof.authinfo_path)
                auth_db_tmp = f"{auth_tmp}.db"
                temps += [auth_tmp, auth_db_tmp]
                ex.write_file(auth_tmp, change.auth_new.encode(), mode=0o600)
                rec.run("build authinfo map", [prof.makemap, "hash", auth_tmp],
                        input=change.auth_new.encode(), timeout=prof.command_timeout_s)
                ex.set_owner_mode(auth_db_tmp, mode=0o600, uid=0, gid=0)
            backup = result.data["backup"] = self._backup(rec)
            # Swap: each rename is atomic; sendmail.cf is whole before and after each. From
            # the first rename on, a failure rolls back: the authinfo map and its source are
            # a pair, and one renamed without the other must not stay.
            swapped = True
            if auth_tmp is not None and auth_db_tmp is not None:
                ex.rename(auth_db_tmp, self._authinfo_db())
                ex.rename(auth_tmp, prof.authinfo_path)
            ex.rename(mc_tmp, prof.mc_path)
            ex.rename(cf_tmp, prof.cf_path)
            rec.note("swap", f"installed new {prof.mc}, {prof.cf}"
                     + (f", {prof.authinfo}" if auth_tmp else ""))
            self._make_restart_verify(rec, wanted)
            result.data["mta_running"] = True  # verified above
        except RelayfleetError as exc:
            if swapped and backup is not None:
                undo = self._rollback(rec, backup)
                result.rolled_back = undo.files_back
                result.data.update(undo.to_data())
                raise OperationError(f"{exc.message}; {self._rollback_summary(undo, backup)}"
                                     ) from exc
            raise
        finally:
            for tmp in temps:
                with contextlib.suppress(ExecutorError):
                    ex.remove(tmp)

    def _write_like(self, reference: str, path: str, data: bytes) -> None:
        """Write ``path`` with the mode and owner of ``reference``."""
        info = self.executor.file_info(reference)
        self.executor.write_file(path, data, mode=0o600)
        if info is not None:
            self.executor.set_owner_mode(path, mode=info.mode, uid=info.uid, gid=info.gid)
        else:
            self.executor.set_owner_mode(path, mode=0o644, uid=-1, gid=-1)

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

    def _backup(self, rec: StepRecorder) -> str:
        ex, prof = self.executor, self.profile
        root = posixpath.join(prof.mail_dir, BACKUP_DIR)
        ex.make_dir(root, mode=0o700)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        target = posixpath.join(root, stamp)
        ex.make_dir(target, mode=0o700)
        for path in (prof.mc_path, prof.cf_path, prof.authinfo_path, self._authinfo_db()):
            if ex.exists(path):
                ex.copy_file(path, posixpath.join(target, posixpath.basename(path)))
        for old in ex.list_dir(root)[:-BACKUPS_KEPT]:
            ex.remove_dir(posixpath.join(root, old))
        rec.note("backup", target)
        return target

    def _rollback(self, rec: StepRecorder, backup: str) -> _Rollback:
        """Put the backed-up files back, make, restart (once more if that fails), and say
        exactly what that left: which files are byte-identical to the backup, what failed,
        whether the MTA runs. Never raises: what went wrong here is part of the answer."""
        ex, prof = self.executor, self.profile
        started = time.monotonic()
        undo = _Rollback()
        files = [prof.mc_path, prof.cf_path, prof.authinfo_path, self._authinfo_db()]
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
            # make would compile whatever half is there (a new mc over a restored cf): leave
            # the files as the answer lists them, for a person to finish from the backup.
            undo.problems.append("make and restart were not run over the half-restored files")
            undo.mta_running = self._running_or_none(wait=False)
            return undo
        try:
            self._make(rec)
        except RelayfleetError as exc:
            undo.problems.append(f"make failed: {exc.message}")
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
        tmp = ex.temp_path_for(path, "restore")
        try:
            ex.copy_file(source, tmp)
            ex.rename(tmp, path)
        except BaseException:
            with contextlib.suppress(ExecutorError):
                ex.remove(tmp)
            raise
        if ex.read_file(path) != ex.read_file(source):
            raise OperationError(f"{path} differs from its backup {source} after the copy")

    def _restart_checked(self, rec: StepRecorder, undo: _Rollback) -> bool | None:
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

    def _rollback_summary(self, undo: _Rollback, backup: str) -> str:
        """What a rollback left, in words, and what to do about it."""
        prof = self.profile
        restart = " ".join(prof.restart)
        if undo.files_back and not undo.problems and undo.mta_running:
            return "the previous configuration was restored and sendmail runs it"
        if undo.files_back:
            said = "the previous configuration files were restored byte for byte"
        else:
            said = ("rolling back failed: " + "; ".join(
                f"{p} not restored ({why})" for p, why in undo.not_restored.items())
                + f". Restore those files from {backup} by hand (cp -p), run make in "
                f"{prof.mail_dir} and restart sendmail ({restart})")
        said += "".join(f"; {problem}" for problem in undo.problems)
        if undo.unreachable:
            return f"{said}; the host could not be reached to finish: check it by hand"
        if undo.mta_running is False:
            said += f"; sendmail is NOT running: fix the cause and start it ({restart})"
        elif undo.mta_running is None:
            said += "; whether sendmail runs could not be checked"
        elif undo.problems:
            said += ("; sendmail is running, maybe with the configuration it had before "
                     f"(run make in {prof.mail_dir} and {restart} to be sure)")
        return said

    def _make(self, rec: StepRecorder) -> None:
        rec.run("make", [*self.profile.make, "-C", self.profile.mail_dir],
                timeout=self.profile.command_timeout_s)

    def _restart(self, rec: StepRecorder) -> None:
        rec.run("restart", list(self.profile.restart), timeout=self.profile.command_timeout_s)

    def _make_restart_verify(self, rec: StepRecorder, wanted: Smarthost | None) -> None:
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

    def _wait_running(self, wait_s: float = 10.0) -> tuple[bool, int | None]:
        deadline = time.monotonic() + wait_s
        while True:
            running, pid = self._mta_running()
            if running or time.monotonic() > deadline:
                return running, pid
            time.sleep(0.2)

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

    def queue_list(self) -> OperationResult:
        """List queued messages with their deferral reasons."""
        rec = StepRecorder(self.executor)
        result = OperationResult("queue_list", steps=rec.steps)
        report = self._mailq(rec)
        result.data = report.to_dict()
        return result

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
    def read_log(self, lines: int = 200) -> OperationResult:
        """Parse the tail of the maillog."""
        self._confine("maillog")
        rec = StepRecorder(self.executor)
        result = OperationResult("read_log", steps=rec.steps)
        out = rec.run("tail maillog", ["tail", "-n", str(lines), self.profile.maillog],
                      timeout=30)
        records = [r for r in (parse_maillog_line(ln) for ln in out.stdout_text().splitlines())
                   if r is not None]
        # Step output would repeat the whole log: keep the parsed records only.
        rec.steps[-1].output = f"{len(out.stdout_text().splitlines())} lines read"
        result.data = {"records": [r.to_dict() for r in records], "summary": summarize(records)}
        return result

    # -- status and diagnose ----------------------------------------------------------
    def status(self) -> OperationResult:
        """One look at the host: names, MTA, smarthost, config sync, queue, /etc/hosts.

        Everything is read in one batch: over SSH that is a single round trip.
        """
        self._confine("mc", "cf", "authinfo", "pid_file")
        rec = StepRecorder(self.executor)
        result = OperationResult("status", steps=rec.steps)
        prof = self.profile
        reads = ("read /etc/hosts", f"read {prof.mc}", f"read {prof.cf}", f"read {prof.authinfo}")
        commands = [*diag.HOSTNAME_COMMANDS,
                    (reads[0], read_command("/etc/hosts")),
                    ("mta running", diag.alive_command(prof.pid_file)),
                    ("version", [prof.sendmail, "-d0.1", "-bv", "root"]),
                    (reads[1], read_command(prof.mc_path)),
                    (reads[2], read_command(prof.cf_path)),
                    (reads[3], read_command(prof.authinfo_path)),
                    ("mailq", list(prof.mailq))]
        short, full, hosts, alive, version, mc, cf, auth, mailq = rec.run_many(
            commands, timeout=prof.validate_timeout_s, quiet=reads)
        # An unreadable mc or cf fails the result but not the look: the rest is still worth
        # reporting, and the answer says config_in_sync false.
        problems = [self._unreadable(path, _read_failure(path, read))
                    for path, read in ((prof.mc_path, mc), (prof.cf_path, cf)) if not read.ok]
        name_check = diag.hostname_check(short, full)
        hostname = str(name_check.data.get("hostname", ""))
        fqdn = str(name_check.data.get("fqdn", ""))
        hosts_check = diag.hosts_file_check(hosts.stdout if hosts.ok else None, hostname, fqdn)
        match = re.search(r"^Version (\S+)", version.stdout_text(), re.MULTILINE)
        smarthost = self._smarthost_data(mc.stdout_text() if mc.ok else None,
                                         cf.stdout_text() if cf.ok else None,
                                         auth.stdout if auth.ok else None)
        report = self._parse_mailq(mailq)
        now = datetime.now(UTC)
        ages = [_age_s(m.queued_at, now) for m in report.messages]
        result.data = {
            "hostname": hostname,
            "fqdn": fqdn,
            "mta": {"kind": self.kind, "version": match.group(1) if match else None,
                    "running": bool(diag.mta_running_check(alive, prof.pid_file).ok)},
            "smarthost": smarthost["smarthost"],
            "config_in_sync": smarthost["config_in_sync"],
            "queue": {"count": report.count,
                      "oldest_age_s": max((a for a in ages if a is not None), default=None)},
            "hosts_file": {"ok": bool(hosts_check.ok),
                           "problems": list(hosts_check.data.get("problems", []))},
        }
        _fail(result, *problems)
        return result

    def diagnose(self, *, domain: str | None = None,
                 public_ip: str | None = None) -> OperationResult:
        """The seed story's checklist, each check with ok and a detail saying what to fix."""
        self._confine("mc", "cf", "pid_file")
        result = OperationResult("diagnose")
        mc_text, cf_text, problems = self._read_mc_cf()
        # No authinfo: the checks probe the smarthost, not the credentials for it.
        facts = self._smarthost_data(mc_text, cf_text, None)
        smarthost, in_sync = facts["smarthost"], facts["config_in_sync"]
        if problems:  # an unreadable mc or cf is a failed check, not a failed diagnose
            detail = "; ".join(p.message for p in problems)
        elif in_sync:
            detail = f"{self.profile.mc} and {self.profile.cf} agree"
        else:
            detail = (f"{self.profile.cf} is not compiled from the current {self.profile.mc}: "
                      "set the smarthost again (or run m4 and make) and restart sendmail")
        config_check = diag.Check("config_in_sync", in_sync, detail)
        checks = diag.run_checks(
            self.executor, self.profile,
            smarthost_host=smarthost["host"] if smarthost else None,
            smarthost_port=smarthost["port"] if smarthost else 25,
            domain=domain, public_ip=public_ip, config_check=config_check)
        result.data = {"checks": [c.to_dict() for c in checks]}
        result.ok = all(c.ok is not False for c in checks)
        return result


def _fail(result: OperationResult, *problems: RelayfleetError,
          redact: Callable[[str], str] = str) -> None:
    """Mark ``result`` failed by ``problems`` (the first gives the kind); none: no change."""
    if problems:
        result.ok, result.error_kind = False, problems[0].kind
        result.error = redact("; ".join(p.message for p in problems))


def _read_failure(path: str, read: CommandResult) -> str:
    """Why a batched :func:`read_command` of ``path`` failed, in words."""
    if read.exit_code == MISSING_CODE:
        return NO_SUCH_FILE  # the read script prints nothing for a missing file
    # cat names the path, which the message names already
    return (read.output_text().strip().removeprefix(f"cat: {path}: ")[:200]
            or f"exit {read.exit_code}")


def _age_s(queued_at: str | None, now: datetime) -> int | None:
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
