"""Sendmail's implementation of the MTA operations, driven through an executor.

Nothing here needs Python on the managed host: files are read and written through the
executor, and the commands are sendmail's own tools (m4, make, makemap, sendmail, mailq),
the restart argv of the host profile, and core utilities.
"""

from __future__ import annotations

import posixpath
import re
import time
from dataclasses import dataclass
from typing import Any

from shared.change import (
    ConfigChangeOperations,
    FileChange,
    MapChange,
    NameChange,
    RollbackReport,
    StatusFacts,
    read_failure,
)
from shared.compat import zip_strict
from shared.diagnose import HOSTS_FILE
from shared.errors import (
    CommandFailed,
    CommandTimeout,
    CompileError,
    ConfigError,
    OperationError,
    RelayfleetError,
    ValidationError,
)
from shared.executor import CommandResult, read_command
from shared.mta import FlushRequest
from shared.profile import is_under
from shared.results import OperationResult, Redactor, StepRecorder
from shared.sendmail import authinfo as authmap
from shared.sendmail.flush import parse_flush_output, strip_auth_transcript
from shared.sendmail.maillog import LogRecord, parse_maillog_line
from shared.sendmail.mailq import MailqReport, parse_mailq
from shared.sendmail.mc import (
    McState,
    Smarthost,
    access_source,
    in_sync,
    needs_ca_bundle,
    read_cf,
    read_mc,
    remove_smarthost_mc,
    set_smarthost_mc,
)
from shared.validation import SmarthostRequest
from shared.verify import CLEANUP_TIMEOUT_S, SENDMAIL_QUEUE_ID, Delivery, checked_queue_ids

#: exit codes of ``sendmail -q`` that mean it could not run at all (usage, permission, config)
#: removes a probe's queue files: ``$1`` its Message-ID, ``$2`` and ``$3`` the MTA's and
#: the submission queues, the rest its queue ids; the ids of qf files written in the last
#: 30 minutes that carry the Message-ID are added (the probe is younger than that). Only
#: ids of letters and digits are used; each file removed is printed.
_REMOVE_PROBE_SCRIPT = (
    'mid=$1 q=$2 c=$3; shift 3; '
    'for f in $(find "$q" "$c" -maxdepth 2 -type f -name "qf*" -mmin -30 '
    '-exec grep -l -F -e "$mid" {} + 2>/dev/null); do set -- "$@" "${f##*/qf}"; done; '
    'for id in "$@"; do case $id in ""|*[!A-Za-z0-9]*) continue;; esac; '
    'for d in "$q" "$c"; do for p in qf df xf tf Qf; do for x in "$d/$p$id" "$d/$p/$p$id"; '
    'do if [ -e "$x" ]; then rm -f -- "$x" && echo "$x"; fi; done; done; done; done; exit 0')
_FLUSH_OK_CODES = frozenset(range(256)) - {64, 77, 78}


@dataclass
class _Change(FileChange):
    """sendmail.mc (config), authinfo (credentials) and the access map (its one other map),
    and the current sendmail.cf."""

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

    def _access_paths(self) -> tuple[str, str]:
        """The access map's source and compiled file (where the TLS_Srv entry goes)."""
        source = posixpath.join(self.profile.mail_dir, "access")
        return source, f"{source}.db"

    def _confine_access(self) -> None:
        """Refuse an access map that leads out of the mail directory (a change shows its
        diff, and renames over it)."""
        mail_dir = self.profile.mail_dir
        real = self.executor.real_paths([mail_dir, *self._access_paths()])
        for path, resolved in zip_strict(self._access_paths(), real[1:]):
            if not is_under(resolved, real[0]):
                raise ConfigError(f"{path} leads to {resolved}, outside {mail_dir}: relayfleet "
                                  "does not follow links out of where a file belongs; fix the "
                                  "link on the host")

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
        return [prof.mc_path, prof.cf_path, prof.authinfo_path, self._authinfo_db(),
                *self._access_paths()]

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
        return self._smarthost_data(mc_text, cf_text, auth, self._read_access(mc_text)), problems

    def _read_access(self, mc_text: str | None) -> bytes | None:
        """The access map source, when sendmail.mc reads one (for the TLS policy)."""
        if mc_text is None or read_mc(mc_text).access_db is None:
            return None
        return self.executor.read_file_if_exists(self._access_paths()[0])

    @staticmethod
    def _smarthost_data(mc_text: str | None, cf_text: str | None, auth_text: bytes | None,
                        access_text: bytes | None = None) -> dict[str, Any]:
        """Smarthost facts from mc, cf, authinfo (only the user name is read out of it) and
        the access map (the smarthost's TLS_Srv entry).

        A file that could not be read is None: without sendmail.mc there is no smarthost to
        report; without either file mc and cf cannot be in sync.
        """
        state = read_mc(mc_text) if mc_text is not None else None
        smarthost: dict[str, Any] | None = None
        if state is not None and state.smarthost is not None:
            host = state.smarthost.host
            smarthost = state.smarthost.to_dict()
            user = (authmap.username_for(auth_text.decode("utf-8", "replace"), host)
                    if auth_text is not None and state.authinfo_feature else None)
            smarthost["auth"] = {"username": user} if user else None
            # without FEATURE(access_db) sendmail reads no TLS_Srv entry: opportunistic TLS
            mode = (authmap.tls_mode_for(access_text.decode("utf-8", "replace"), host)
                    if access_text is not None and state.access_db is not None else "may")
            smarthost["tls"] = {"mode": mode, "ca_file": state.ca_file}
            smarthost["masquerade"] = state.masquerade.to_dict() if state.masquerade else None
        cf_smarthost = read_cf(cf_text) if cf_text is not None else None
        return {
            "smarthost": smarthost,
            "config_in_sync": (state is not None and cf_text is not None
                               and in_sync(state, cf_text)),
            "compiled": cf_smarthost.to_dict() if cf_smarthost else None,
            "active_defines": state.active_defines if state is not None else 0,
        }

    # -- read -----------------------------------------------------------------------
    # -- change ---------------------------------------------------------------------
    def set_smarthost(self, request: SmarthostRequest, *, dry_run: bool = False) -> OperationResult:
        """Point outbound mail at ``request``'s smarthost with its SMTP AUTH, TLS policy and
        masquerade (each one absent is taken out: the request is the whole relay setting)."""
        password = request.auth.password if request.auth else None
        redactor = Redactor([password, authmap.encoded_password(password)] if password else [])
        tls = request.tls_policy

        def plan(_rec: StepRecorder) -> _Change:
            self._confine_access()
            mc_old = self._read_config_file(self.profile.mc_path)
            state = read_mc(mc_old)
            self._check_tls(request, mc_old, state)
            # a former smarthost's credentials and TLS entry do not stay behind
            former = tuple(h.host for h in [state.smarthost] if h and h.host != request.host)
            auth = request.auth
            auth_old: str | None
            auth_new: str | None
            if auth is not None:
                auth_old, auth_new = self._credentials_set(
                    self.profile.authinfo_path, self._authinfo_db(),
                    lambda text: authmap.set_entry(authmap.remove_entry(text, *former),
                                                   request.host, auth.username, auth.password))
            else:
                auth_old, auth_new = self._credentials_removed(
                    self.profile.authinfo_path,
                    lambda text: authmap.remove_entry(text, request.host, *former))
            access = self._map_edit(
                *self._access_paths(),
                lambda text: authmap.set_tls_entry(text, request.host, tls.mode, drop=former),
                secret=False, create=tls.required)
            return _Change(mc_old, set_smarthost_mc(mc_old, request, self.profile.ca_bundle),
                           auth_old, auth_new,
                           cf_text=self._read_config_file(self.profile.cf_path), maps=[access])

        wanted = Smarthost.from_request(request)
        return self._change("set_smarthost", plan, dry_run, redactor, wanted, request=request)

    def _check_tls(self, request: SmarthostRequest, mc_text: str, state: McState) -> None:
        """Refuse, before anything changes, a TLS policy this host cannot carry out."""
        tls, prof = request.tls_policy, self.profile
        if tls.mode == "verify" and request.host.startswith("["):
            raise ValidationError.for_field(
                "tls.mode", "verify checks that the relay's certificate names the relay: give "
                            "the relay by name, not by address (or use encrypt)")
        if tls.required and request.mx and not request.host.startswith("["):
            # sendmail looks TLS_Srv up by the name of the host it connects to: with MX
            # lookups that is an MX host, which the relay's entry need not name
            raise ValidationError.for_field(
                "tls.mode", f"{tls.mode} needs sendmail to connect to the relay by its own "
                            "name: set mx to false ([relay], no MX lookups); sendmail checks "
                            "the TLS requirement under the MX host's name, so mail would go "
                            "out with opportunistic TLS")
        if tls.ca_file is not None and not self.executor.exists(tls.ca_file):
            raise ConfigError(f"tls.ca_file: {tls.ca_file} is not on the host: sendmail could "
                              "not verify the relay's certificate; nothing was changed")
        if needs_ca_bundle(mc_text, tls) and not self.executor.exists(prof.ca_bundle):
            raise ConfigError(f"mta.ca_bundle (the host's CA bundle): {prof.ca_bundle} is not on "
                              "the host: sendmail could not verify the relay's certificate; "
                              "install the bundle or give tls.ca_file; nothing was changed")
        access = self._access_paths()[0]
        source = access if state.access_db is None else access_source(state.access_db,
                                                                      prof.mail_dir)
        if tls.required and source != access:
            raise ConfigError(f"{prof.mc_path}'s FEATURE(`access_db') reads "
                              f"{source or 'a map that is not a file'}: relayfleet keeps the "
                              f"relay's TLS requirement (TLS_Srv entry) in {access}; point "
                              "access_db at it, or use tls.mode may; nothing was changed")

    def remove_smarthost(self, *, dry_run: bool = False) -> OperationResult:
        """Go back to direct delivery (DNS MX lookups); the smarthost's credentials, TLS
        requirement and relayfleet's masquerade go with it."""

        def plan(_rec: StepRecorder) -> _Change:
            self._confine_access()
            mc_old = self._read_config_file(self.profile.mc_path)
            old_smarthost = read_mc(mc_old).smarthost
            auth_old = auth_new = None
            maps: list[MapChange] = []
            if old_smarthost is not None:
                host = old_smarthost.host
                auth_old, auth_new = self._credentials_removed(
                    self.profile.authinfo_path, lambda text: authmap.remove_entry(text, host))
                maps.append(self._map_edit(
                    *self._access_paths(), lambda text: authmap.remove_tls_entry(text, host),
                    secret=False, create=False))
            return _Change(mc_old, remove_smarthost_mc(mc_old), auth_old, auth_new,
                           cf_text=self._read_config_file(self.profile.cf_path), maps=maps)

        return self._change("remove_smarthost", plan, dry_run, Redactor(), None)

    def _stale_reason(self) -> str | None:
        """sendmail started before the current sendmail.cf was installed."""
        cf = self.executor.file_info(self.profile.cf_path)
        pid = self.executor.file_info(self.profile.pid_file)
        if cf is not None and pid is not None and cf.mtime > pid.mtime:
            return "the MTA was started before the current sendmail.cf was installed"
        return None

    def _describe(self, change: _Change, result: OperationResult, wanted: Smarthost | None) -> None:
        # the access map's diff is shown; authinfo is only named
        diff = self._diff(change, self.profile.mc_path)
        compiled = (read_cf(change.cf_text) == wanted
                    and in_sync(read_mc(change.config_new), change.cf_text))
        result.changed = bool(diff) or not compiled
        result.data["diff"] = diff
        if not diff and not compiled:
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

    def _map_command(self, change: _Change, entry: MapChange,
                     source: str) -> tuple[list[str], bytes | None]:
        return [self.profile.makemap, "hash", source], entry.new_bytes

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
        pid = self._restart_running(rec)
        started = time.monotonic()
        compiled = read_cf(self.executor.read_text(self.profile.cf_path))
        if compiled != wanted:
            raise OperationError(f"after restart sendmail.cf says {compiled}, expected {wanted}")
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
            for step, ran in zip_strict(rec.steps[1:3], results[1:3]):
                deliveries += [d.to_dict() for d in parse_flush_output(step.output)]
                step.ok = ran.exit_code in _FLUSH_OK_CODES
                if not step.ok:
                    result.ok, result.error_kind = False, "command_failed"
                    result.error = (f"{' '.join(step.argv)} exited {ran.exit_code}: "
                                    f"{step.output.strip()[-300:]}")
        result.data = {"before": before.count if before else None, "after": after.count,
                       "deliveries": deliveries, "remaining": after.to_dict()["messages"]}
        if request.verify is not None:
            self._verify_after_flush(rec, result, request.verify)
        return result

    def _remove_probe(self, rec: StepRecorder, delivery: Delivery) -> str:
        """Delete the queue files (qf, df, xf, tf, Qf) of the probe's queue ids and of any
        recent qf in the MTA's or the submission queue carrying its Message-ID (the ids the
        maillog did not show), in both queues."""
        self._confine("queue_dir", "client_queue_dir")
        prof = self.profile
        ids = checked_queue_ids(delivery, SENDMAIL_QUEUE_ID)
        out = rec.run("remove probe from queue",
                      ["sh", "-c", _REMOVE_PROBE_SCRIPT, "sh", delivery.message_id,
                       prof.queue_dir, prof.client_queue_dir, *ids],
                      timeout=CLEANUP_TIMEOUT_S)
        removed = out.stdout_text().split()
        if not removed:
            return f"nothing of the probe {delivery.message_id} is left in the queues"
        return (f"removed the probe {delivery.message_id} from the queue (it would be "
                f"retried for days): {', '.join(removed)}")

    # -- log ------------------------------------------------------------------------
    def _parse_log_line(self, line: str) -> LogRecord | None:
        return parse_maillog_line(line)

    # -- status and diagnose ----------------------------------------------------------
    def _status_commands(self) -> tuple[list[tuple[str, list[str]]], tuple[str, ...]]:
        prof = self.profile
        access = self._access_paths()[0]
        reads = (f"read {prof.mc}", f"read {prof.cf}", f"read {prof.authinfo}",
                 f"read {posixpath.basename(access)}")
        return [("version", [prof.sendmail, "-d0.1", "-bv", "root"]),
                (reads[0], read_command(prof.mc_path)),
                (reads[1], read_command(prof.cf_path)),
                (reads[2], read_command(prof.authinfo_path)),
                (reads[3], read_command(access)),
                ("mailq", list(prof.mailq))], reads

    def _status_facts(self, answers: list[CommandResult]) -> StatusFacts:
        prof = self.profile
        version, mc, cf, auth, access, mailq = answers
        # An unreadable mc or cf: the answer says config_in_sync false.
        problems = [self._unreadable(path, read_failure(path, read))
                    for path, read in ((prof.mc_path, mc), (prof.cf_path, cf)) if not read.ok]
        match = re.search(r"^Version (\S+)", version.stdout_text(), re.MULTILINE)
        smarthost = self._smarthost_data(mc.stdout_text() if mc.ok else None,
                                         cf.stdout_text() if cf.ok else None,
                                         auth.stdout if auth.ok else None,
                                         access.stdout if access.ok else None)
        return StatusFacts(match.group(1) if match else None, smarthost,
                           self._parse_mailq(mailq), problems)

    def _diagnose_facts(self) -> tuple[dict[str, Any], list[ConfigError]]:
        self._confine("mc", "cf", "pid_file")
        mc_text, cf_text, problems = self._read_mc_cf()
        return self._smarthost_data(mc_text, cf_text, None, self._read_access(mc_text)), problems

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

    # -- the host's name ----------------------------------------------------------------
    def _name_change(self, fqdn: str) -> NameChange:
        """sendmail takes its name ($j) from the resolver when it starts: restart it, then
        check that it runs and calls itself ``fqdn``. A sendmail started before /etc/hosts
        last changed may go by an older name."""
        prof = self.profile

        def activate(rec: StepRecorder) -> None:
            pid = self._restart_running(rec)
            identity = rec.run("sendmail's name", [prof.sendmail, "-d0.1", "-bv", "root"],
                               timeout=prof.validate_timeout_s, check=False)
            macros = {m["macro"]: m["value"] for m in
                      _IDENTITY_RE.finditer(identity.stdout_text())}
            if macros.get("j", "").lower() != fqdn:
                raise OperationError(f"sendmail calls itself {macros.get('j')!r} ($j), not "
                                     f"{fqdn}: does {prof.mc} set confDOMAIN_NAME?")
            rec.note("verify", f"sendmail calls itself {fqdn} ($j); running (pid {pid})")

        def stale() -> str | None:
            hosts, started = (self.executor.file_info(HOSTS_FILE),
                              self.executor.file_info(prof.pid_file))
            if hosts is not None and started is not None and hosts.mtime > started.mtime:
                return f"sendmail was started before {HOSTS_FILE} last changed"
            return None

        return NameChange(("mail_dir", "pid_file"), activate, stale)


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
