"""Postfix's implementation of the MTA operations, driven through an executor.

Like sendmail's, nothing here needs Python on the managed host: main.cf is edited by
Postfix's own editor (``postconf -e``/``-X``, on a staged copy so that the diff is known
before anything changes), the credentials map is built by ``postmap``, the result is
checked by ``postfix check`` and taken live by the profile's ``reload`` argv. The change
transaction (lock, backup, atomic swap, byte-identical rollback) is shared with sendmail
(:mod:`shared.change`).

A change that was swapped in but not yet reloaded (the agent or the SSH session died in
between) leaves a marker, ``.relayfleet-reload-pending``, in the configuration directory:
Postfix gives no other sign of which main.cf its master last read, and a retry that finds
the files already right must still reload.
"""

from __future__ import annotations

import contextlib
import posixpath
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from shared import diagnose as diag
from shared.change import (
    NO_SUCH_FILE,
    ConfigChangeOperations,
    FileChange,
    FileEdit,
    MapChange,
    NameChange,
    RollbackReport,
    StatusFacts,
    read_failure,
)
from shared.compat import zip_strict
from shared.errors import (
    CommandFailed,
    CommandTimeout,
    CompileError,
    ConfigError,
    ExecutorError,
    OperationError,
    RelayfleetError,
)
from shared.executor import MISSING_CODE, CommandResult, read_command
from shared.mta import FlushRequest
from shared.postfix import config as pfconf
from shared.postfix.maillog import parse_postfix_line
from shared.postfix.queue import parse_postfix_queue
from shared.results import OperationResult, Redactor, StepRecorder
from shared.sendmail.maillog import LogRecord, outcome
from shared.sendmail.mailq import MailqReport
from shared.sendmail.mc import Smarthost
from shared.validation import SmarthostRequest
from shared.verify import CLEANUP_TIMEOUT_S, POSTFIX_QUEUE_ID, Delivery, checked_queue_ids

RELOAD_PENDING = ".relayfleet-reload-pending"
#: prints the queue as JSON (Postfix >= 3.1), or as text on older Postfix
_QUEUE_SCRIPT = '"$1" -c "$2" -j 2>/dev/null || exec "$1" -c "$2" -p'
#: prints the first SASL PLAIN/LOGIN client plugin found (Debian multiarch, RHEL lib64, others)
_SASL_PLUGINS_SCRIPT = ("for f in /usr/lib/*/sasl2/libplain.so* /usr/lib/*/sasl2/liblogin.so* "
                        "/usr/lib64/sasl2/libplain.so* /usr/lib64/sasl2/liblogin.so* "
                        "/usr/lib/sasl2/libplain.so* /usr/lib/sasl2/liblogin.so*; do "
                        '[ -e "$f" ] && { echo "$f"; exit 0; }; done; exit 1')
#: exits 0 for a regular file (symlinks followed), 1 for a device, directory or pipe, and
#: MISSING_CODE when ``$1`` is absent
_REGULAR_FILE_SCRIPT = f'[ -e "$1" ] || exit {MISSING_CODE}; [ -f "$1" ]'
SASL_PACKAGES = "libsasl2-modules (Debian, Ubuntu) or cyrus-sasl-plain (RHEL, CentOS)"
#: what Postfix appends to a host name it cannot qualify (RHEL's main.cf leaves myhostname
#: to the system's name): no relay takes it for a real domain
_PLACEHOLDER_DOMAINS = (".localdomain", ".localhost", ".local")
#: prints the maillog from byte ``$2`` on (from its start when it is now shorter: rotated);
#: exits _NO_LOG_CODE when it cannot be read
_NO_LOG_CODE = 3
_LOG_SINCE_SCRIPT = (f'[ -r "$1" ] || exit {_NO_LOG_CODE}; size=$(wc -c < "$1") || exit '
                     f'{_NO_LOG_CODE}; [ "$size" -lt "$2" ] && exec cat -- "$1"; '
                     'exec tail -c +"$(($2 + 1))" -- "$1"')
#: how long a flush waits for Postfix to try the flushed messages (seconds)
FLUSH_SETTLE_S = 30.0


@dataclass
class _Change(FileChange):
    """main.cf (config) and sasl_passwd (credentials), and the map type to build with."""

    map_type: str


class PostfixOperations(ConfigChangeOperations[_Change, Smarthost]):
    """Read, set and remove the relayhost; list, flush and log the queue; diagnose."""

    kind = "postfix"
    label = "Postfix"
    rebuild_label = "reload"
    change_files = ("config_dir", "main_cf", "sasl_passwd", "sasl_passwd.db")
    status_files = ("main_cf", "sasl_passwd")

    #: the database type maps are built with (the host's default_database_type)
    _map_type = "hash"

    # -- helpers --------------------------------------------------------------------
    def _postconf(self, *args: str) -> list[str]:
        return [self.profile.postconf, "-c", self.profile.config_dir, *args]

    def _map_file(self) -> str:
        """The compiled SASL map (``sasl_passwd.db`` for hash, ``.lmdb`` for lmdb)."""
        return self.profile.sasl_passwd_path + pfconf.MAP_SUFFIXES.get(self._map_type, ".db")

    def _marker(self) -> str:
        return posixpath.join(self.profile.config_dir, RELOAD_PENDING)

    def _managed_files(self) -> list[str]:
        prof = self.profile
        return [prof.main_cf_path, prof.sasl_passwd_path, self._map_file()]

    def _values(self, rec: StepRecorder | None = None) -> dict[str, str]:
        """The smarthost parameters as Postfix reads them from main.cf."""
        argv = self._postconf(*pfconf.SMARTHOST_PARAMETERS)
        out = (rec.run("postconf", argv, timeout=self.profile.validate_timeout_s, check=False)
               if rec is not None else
               self.executor.run(argv, timeout=self.profile.validate_timeout_s))
        return self._read_values(out)

    def _read_values(self, out: CommandResult) -> dict[str, str]:
        """postconf's answer for SMARTHOST_PARAMETERS (ConfigError when it could not read
        main.cf); notes the map type it names."""
        if not out.ok:
            raise ConfigError(f"postconf cannot read {self.profile.main_cf_path}: "
                              f"{out.output_text().strip()[:300]}")
        values = pfconf.parse_postconf(out.stdout_text())
        self._map_type = values.get("default_database_type") or "hash"
        return values

    def _smarthost_data(self, values: dict[str, str] | None,
                        sasl_text: bytes | None) -> dict[str, Any]:
        """Smarthost facts from postconf's values and the SASL map (the user name only).

        ``config_in_sync``: main.cf reads, and when SASL is on, the compiled map is not
        older than its source (Postfix reads main.cf itself; the map is what can lag).
        """
        if values is None:
            return {"smarthost": None, "config_in_sync": False, "compiled": None,
                    "active_defines": 0}
        relay = values.get("relayhost", "")
        smarthost_obj = pfconf.parse_relayhost(relay)
        smarthost: dict[str, Any] | None = None
        sasl_on = values.get("smtp_sasl_auth_enable", "no").lower() == "yes"
        if smarthost_obj is not None:
            smarthost = smarthost_obj.to_dict()
            user = (pfconf.username_for(sasl_text.decode("utf-8", "replace"),
                                        pfconf.relayhosts(relay)[0])
                    if sasl_text is not None and sasl_on else None)
            smarthost["auth"] = {"username": user} if user else None
            smarthost["tls"] = pfconf.parse_tls(values)
            smarthost["masquerade"] = pfconf.parse_masquerade(values)
        # a change swapped in but never reloaded: Postfix still runs the old settings
        in_sync = not self.executor.exists(self._marker())
        if sasl_on and sasl_text is not None:
            source = self.executor.file_info(self.profile.sasl_passwd_path)
            built = self.executor.file_info(self._map_file())
            in_sync = in_sync and built is not None and (source is None
                                                          or built.mtime >= source.mtime)
        return {"smarthost": smarthost, "config_in_sync": in_sync,
                "compiled": smarthost_obj.to_dict() if smarthost_obj else None,
                "active_defines": 0}

    def _current_smarthost(self) -> tuple[dict[str, Any], list[RelayfleetError]]:
        try:
            self._confine("main_cf", "sasl_passwd")
            values = self._values()
        except RelayfleetError as exc:
            return self._smarthost_data(None, None), [exc]
        sasl = self.executor.read_file_if_exists(self.profile.sasl_passwd_path)
        return self._smarthost_data(values, sasl), []

    # -- change ---------------------------------------------------------------------
    def set_smarthost(self, request: SmarthostRequest, *, dry_run: bool = False) -> OperationResult:
        """Point relayhost at ``request``'s smarthost with its SMTP AUTH, TLS policy and
        masquerade (each absent one taken out: the request is the whole relay setting)."""
        redactor = Redactor([request.auth.password] if request.auth else [])
        wanted = pfconf.wanted_smarthost(request)
        key = pfconf.relayhost_value(wanted)

        def plan(rec: StepRecorder) -> _Change:
            if request.mailer != "relay":
                rec.note("mailer", f"mailer {request.mailer!r} is a sendmail setting; Postfix "
                                   "always speaks ESMTP to its relayhost")
            main_old = self._read_config_file(self.profile.main_cf_path)
            values = self._values(rec)
            ca_file = self._ca_file(rec, request)
            sasl_old: str | None
            sasl_new: str | None
            if request.auth is not None:
                self._preflight_sasl(rec)
                auth = request.auth
                sasl_old, sasl_new = self._credentials_set(
                    self.profile.sasl_passwd_path, self._map_file(),
                    lambda text: pfconf.set_entry(text, key, auth.username, auth.password))
            else:
                # No credentials any more: none stays behind for the old or the new relay.
                sasl_old, sasl_new = self._credentials_removed(
                    self.profile.sasl_passwd_path,
                    lambda text: pfconf.remove_entry(
                        text, key, *pfconf.relayhosts(values.get("relayhost", ""))[:1]))
            edits = pfconf.smarthost_edits(request, values, self._map_type,
                                           self.profile.sasl_passwd_path, ca_file=ca_file,
                                           flavour=self.profile.flavour)
            return _Change(main_old, self._stage(rec, main_old, edits), sasl_old, sasl_new,
                           maps=[], map_type=self._map_type)

        return self._change("set_smarthost", plan, dry_run, redactor, wanted, request=request)

    def remove_smarthost(self, *, dry_run: bool = False) -> OperationResult:
        """Take relayhost (and its SASL settings and map entry, a required TLS level and its
        CA file, the masquerade) out: direct delivery."""

        def plan(rec: StepRecorder) -> _Change:
            main_old = self._read_config_file(self.profile.main_cf_path)
            values = self._values(rec)
            relay = pfconf.relayhosts(values.get("relayhost", ""))
            sasl_old = sasl_new = None
            if relay:
                sasl_old, sasl_new = self._credentials_removed(
                    self.profile.sasl_passwd_path,
                    lambda text: pfconf.remove_entry(text, relay[0]))
            edits = pfconf.smarthost_edits(None, values, self._map_type,
                                           self.profile.sasl_passwd_path,
                                           flavour=self.profile.flavour)
            return _Change(main_old, self._stage(rec, main_old, edits), sasl_old, sasl_new,
                           maps=[], map_type=self._map_type)

        return self._change("remove_smarthost", plan, dry_run, Redactor(), None)

    def _ca_file(self, rec: StepRecorder, request: SmarthostRequest) -> str | None:
        """The CA bundle a verify policy verifies the relay with (None: no verify policy);
        ConfigError, before anything changes, when it is not a regular file on the host."""
        policy = request.tls_policy
        if policy.mode != "verify":
            return None
        path = policy.ca_file or self.profile.ca_bundle
        found = rec.run("ca file", ["sh", "-c", _REGULAR_FILE_SCRIPT, "sh", path],
                        timeout=self.profile.validate_timeout_s, check=False)
        if not found.ok:
            field = "tls.ca_file" if policy.ca_file else "mta.ca_bundle (the host's CA bundle)"
            # a device (a symlink to /dev/zero), a directory or a pipe is no bundle either
            what = ("is not on the host" if found.exit_code == MISSING_CODE
                    else "is not a regular file")
            raise ConfigError(f"{field}: {path} {what}: Postfix could not verify the relay's "
                              "certificate; install the bundle or give tls.ca_file; nothing "
                              "was changed")
        return path

    @contextlib.contextmanager
    def _staged(self, main_cf: str) -> Iterator[str]:
        """A private staging configuration directory holding ``main_cf`` (and a copy of
        master.cf, for ``postfix check``), removed afterwards."""
        ex = self.executor
        stage = ex.temp_path_for(self.profile.main_cf_path, "stage")
        ex.make_dir(stage, mode=0o700)
        try:
            ex.write_file(posixpath.join(stage, "main.cf"), main_cf.encode(), mode=0o644)
            yield stage
        finally:
            with contextlib.suppress(ExecutorError):
                ex.remove_dir(stage)

    def _stage(self, rec: StepRecorder, main_old: str, edits: pfconf.MainCfEdits) -> str:
        """main.cf as ``postconf`` edits it, on a copy in a staging directory (ending in a
        line end: postconf appends a new parameter right after the last byte)."""
        base = main_old if not main_old or main_old.endswith("\n") else main_old + "\n"
        with self._staged(base) as stage:
            for args in edits.postconf_args():
                rec.run(f"postconf {args[0]} (staged copy)",
                        [self.profile.postconf, "-c", stage, *args],
                        timeout=self.profile.validate_timeout_s)
            return self.executor.read_text(posixpath.join(stage, "main.cf"))

    def _validate(self, rec: StepRecorder, main_new: str) -> None:
        """``postfix check`` on the new main.cf in a staging directory: Postfix's verdict
        before anything goes live."""
        master = posixpath.join(self.profile.config_dir, "master.cf")
        with self._staged(main_new) as stage:
            if self.executor.exists(master):
                self.executor.copy_file(master, posixpath.join(stage, "master.cf"))
            argv = [self.profile.postfix, "-c", stage, "check"]
            try:
                checked = rec.run("postfix check", argv,
                                  timeout=self.profile.validate_timeout_s, check=False)
            except CommandTimeout as exc:
                raise CompileError(f"postfix check timed out after "
                                   f"{self.profile.validate_timeout_s:g}s") from exc
            if not checked.ok:
                why = self._why(stage) or checked.output_text().strip()[:300]
                raise CompileError(f"postfix check refused the new main.cf (exit "
                                   f"{checked.exit_code}): {why or 'see the maillog'}")

    def _why(self, config_dir: str) -> str:
        """Why Postfix refuses a configuration: ``postfix`` itself reports only to syslog
        when its stderr is not a terminal, but ``postconf -n`` says it on stderr."""
        try:
            out = self.executor.run([self.profile.postconf, "-c", config_dir, "-n"],
                                    timeout=self.profile.validate_timeout_s)
        except RelayfleetError:
            return ""
        lines = out.stderr.decode("utf-8", "replace").strip().splitlines()
        return "; ".join([ln for ln in lines if "fatal:" in ln or "error:" in ln][:3]
                         or lines[:3])

    def _preflight_sasl(self, rec: StepRecorder) -> None:
        """Refuse credentials when the host has no SASL client mechanisms to send them."""
        found = rec.run("sasl plugins", ["sh", "-c", _SASL_PLUGINS_SCRIPT],
                        timeout=self.profile.validate_timeout_s, check=False)
        if not found.ok:
            raise ConfigError("SMTP AUTH needs the Cyrus SASL PLAIN/LOGIN plugins, which this "
                              f"host lacks: install {SASL_PACKAGES}, then set the smarthost "
                              "again; nothing was changed")

    def _describe(self, change: _Change, result: OperationResult,
                  wanted: Smarthost | None) -> None:
        diff = self._diff(change, self.profile.main_cf_path)
        result.changed = bool(diff)
        result.data["diff"] = diff

    def _build_config(self, change: _Change, rec: StepRecorder,
                      temps: list[str]) -> list[tuple[str, str]]:
        """main.cf beside the live one, checked by ``postfix check`` on a staged copy."""
        ex, prof = self.executor, self.profile
        main_tmp = ex.temp_path_for(prof.main_cf_path)
        temps.append(main_tmp)
        self._write_like(prof.main_cf_path, main_tmp, change.config_new.encode())
        rec.note("write main.cf (temporary)", main_tmp)
        self._validate(rec, change.config_new)
        return [(main_tmp, prof.main_cf_path)]

    def _credentials_paths(self) -> tuple[str, str]:
        return self.profile.sasl_passwd_path, self._map_file()

    def _map_command(self, change: _Change, entry: MapChange,
                     source: str) -> tuple[list[str], bytes | None]:
        prof = self.profile
        return [prof.postmap, "-c", prof.config_dir, f"{change.map_type}:{source}"], None

    def _before_swap(self) -> None:
        # From here on a retry must reload even if it finds the files right.
        self.executor.write_file(self._marker(), b"", mode=0o600)

    def _restart(self, rec: StepRecorder) -> None:
        """Reload Postfix (``postfix start`` when it is not running: reload would fail)."""
        prof = self.profile
        running, _pid = self._mta_running()
        start = [prof.postfix, "-c", prof.config_dir, "start"]
        name, argv = ("reload", list(prof.reload)) if running else ("start", start)
        done = rec.run(name, argv, timeout=prof.command_timeout_s, check=False)
        if not done.ok and running and not self._mta_running()[0]:
            # master.pid named a live process that was not Postfix's master (a stale file,
            # its pid reused): reload found no Postfix, so start it
            name, argv = "start", start
            done = rec.run(name, argv, timeout=prof.command_timeout_s, check=False)
        if not done.ok:
            why = self._why(prof.config_dir) or done.output_text().strip()[:300]
            raise CommandFailed(f"{' '.join(argv)} exited {done.exit_code}: "
                                f"{why or 'see the maillog'}", exit_code=done.exit_code)

    def _activate_verify(self, rec: StepRecorder, wanted: Smarthost | None) -> None:
        pid = self._restart_running(rec, "reload")
        started = time.monotonic()
        values = self._values()
        now = pfconf.parse_relayhost(values.get("relayhost", ""))
        if now != wanted:
            raise OperationError(f"after reload relayhost says {values.get('relayhost')!r}, "
                                 f"expected {pfconf.relayhost_value(wanted) if wanted else ''!r}")
        self._clear_marker()
        rec.note("verify", f"relayhost is {values.get('relayhost') or '(none)'}; Postfix "
                 f"running (master pid {pid})", started=started)

    def _clear_marker(self) -> None:
        with contextlib.suppress(ExecutorError):
            self.executor.remove(self._marker())

    def _rollback(self, rec: StepRecorder, backup: str) -> RollbackReport:
        undo = super()._rollback(rec, backup)
        if undo.files_back and undo.mta_running and not undo.problems:
            self._clear_marker()  # the running Postfix reloaded the restored files
        return undo

    def _rebuild(self, rec: StepRecorder, undo: RollbackReport) -> None:
        """Nothing to rebuild: the compiled map came back from the backup with its source."""

    def _stale_reason(self) -> str | None:
        if self.executor.exists(self._marker()):
            return ("a change was installed but Postfix was not reloaded (the change was "
                    "interrupted)")
        return None

    def _finish_by_hand(self) -> str:
        return f"run postfix check and reload Postfix ({' '.join(self.profile.reload)})"

    def _start_by_hand(self) -> str:
        return f"{self.profile.postfix} start"

    # -- queue ----------------------------------------------------------------------
    def _queue_command(self) -> list[str]:
        return ["sh", "-c", _QUEUE_SCRIPT, "sh", self.profile.postqueue,
                self.profile.config_dir]

    @staticmethod
    def _parse_queue(out: CommandResult) -> MailqReport:
        if not out.ok:
            raise CommandFailed(f"postqueue failed: {out.output_text().strip()[:300]}",
                                exit_code=out.exit_code)
        return parse_postfix_queue(out.stdout_text())

    def _list_queue(self, rec: StepRecorder, name: str = "postqueue") -> MailqReport:
        return self._parse_queue(rec.run(name, self._queue_command(), check=False,
                                         timeout=self.profile.command_timeout_s))

    def queue_flush(self, request: FlushRequest) -> OperationResult:
        """Ask Postfix to retry the queue (or part of it), wait for the outcome, report.

        ``postqueue -f`` flushes everything, ``postqueue -i ID`` one message. A recipient
        or sender selects messages by substring like sendmail's ``-qR``/``-qS`` and flushes
        them by id: ``postqueue -s`` only serves domains in fast_flush_domains, which is
        empty by default. Postfix keeps no host-status cache to reset (reset_host_status
        has nothing to do). Postfix delivers asynchronously: the outcome of each flushed
        message is read from the maillog lines written after the flush.
        """
        self._confine("maillog")
        rec = StepRecorder(self.executor)
        result = OperationResult("queue_flush", steps=rec.steps)
        prof = self.profile
        sized, queued = rec.run_many(
            [("maillog size", ["sh", "-c", 'wc -c < "$1" 2>/dev/null || echo 0', "sh",
                               prof.maillog]),
             ("postqueue (before)", self._queue_command())],
            timeout=prof.command_timeout_s, quiet=("maillog size",))
        before = self._parse_queue(queued)
        offset = int(sized.stdout_text().strip() or 0) if sized.ok else 0
        ids = _selected(before, request)
        held = sum(1 for m in before.messages if m.section == "hold")
        if held:
            rec.note("hold", f"{held} held message(s) left alone: a flush does not release "
                             "them (postsuper -H ID does)")
        postqueue = [prof.postqueue, "-c", prof.config_dir]
        if request.queue_id is None and request.recipient is None and request.sender is None:
            runs = [("flush", [*postqueue, "-f"])]
        else:
            runs = [(f"flush {qid}", [*postqueue, "-i", qid]) for qid in ids]
            if not ids:
                rec.note("flush", "no queued message matches; nothing to flush")
        flushed = rec.run_many(runs, timeout=prof.command_timeout_s) if runs else []
        refused = [(argv, done) for (_name, argv), done in zip_strict(runs, flushed)
                   if not done.ok]
        if refused:
            # e.g. "Cannot flush mail queue - mail system is down": nothing will be tried
            argv, done = refused[0]
            result.ok, result.error_kind = False, "command_failed"
            result.error = (f"{' '.join(argv)} exited {done.exit_code}: "
                            f"{done.output_text().strip()[-300:]}")
            ids = []
        deliveries, after = self._settle(rec, offset, ids)
        result.data = {"before": before.count, "after": after.count,
                       "deliveries": deliveries, "remaining": after.to_dict()["messages"]}
        if request.verify is not None:
            self._verify_after_flush(rec, result, request.verify)
        return result

    def _settle(self, rec: StepRecorder, offset: int,
                ids: list[str]) -> tuple[list[dict[str, Any]], MailqReport]:
        """Poll the queue and the maillog until each flushed message's attempt is logged,
        or FLUSH_SETTLE_S passed; the delivery lines and the queue then.

        The queue is read before the log, so a message that leaves the queue between the
        two reads has its line in the log read; a message gone from the queue is waited for
        until its line arrives (syslog may lag). A log rotated since ``offset`` is read
        from its start; a log that cannot be read is said, and only the queue is waited on.
        """
        prof = self.profile
        deadline = time.monotonic() + min(FLUSH_SETTLE_S, prof.command_timeout_s)
        started = time.monotonic()
        since = ["sh", "-c", _LOG_SINCE_SCRIPT, "sh", prof.maillog, str(offset)]
        wanted = set(ids)
        while True:
            queued, log = self.executor.run_many([self._queue_command(), since],
                                                 timeout=prof.command_timeout_s)
            after = self._parse_queue(queued)
            log_read = log.exit_code != _NO_LOG_CODE
            records = [r for r in (parse_postfix_line(ln) for ln in
                                   log.stdout_text().splitlines()) if r is not None]
            if log_read:
                done = wanted <= {r.queue_id for r in records if _is_attempt(r)}
            else:  # nothing to read: wait until the queue manager lets go of them
                active = {m.id for m in after.messages if m.section == "active"}
                done = not (active & wanted) and time.monotonic() - started > 1.0
            if done or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        deliveries = [_delivery(r) for r in records if _is_attempt(r) and r.queue_id in wanted]
        # qmgr removes a message just after its last recipient's line: give it a moment, so
        # that "after" does not count what was just sent
        final = ({d["queue_id"] for d in deliveries}
                 - {d["queue_id"] for d in deliveries if d["outcome"] not in ("sent", "bounced")})
        grace = time.monotonic() + 2.0
        while final & {m.id for m in after.messages} and time.monotonic() < grace:
            time.sleep(0.2)
            after = self._list_queue(StepRecorder(self.executor))
        rec.note("postqueue (after)", f"{after.count} queued; {len(deliveries)} delivery "
                 "attempts logged" + ("" if log_read else
                                      f"; {prof.maillog} cannot be read: the outcome of each "
                                      "message is not known"), started=started)
        return deliveries, after

    def _remove_probe(self, rec: StepRecorder, delivery: Delivery) -> str:
        """Delete the probe's queue ids (``postsuper -d -``, the ids on stdin): the ones the
        maillog showed carrying its Message-ID."""
        ids = checked_queue_ids(delivery, POSTFIX_QUEUE_ID)
        if not ids:
            return (f"the probe {delivery.message_id} was not seen queued in the maillog: "
                    "if postqueue -p lists it (from relayfleet-probe or the probe's sender), "
                    "delete it with postsuper -d ID")
        prof = self.profile
        # postsuper sits beside postqueue (the profile names postqueue)
        postsuper = (posixpath.join(posixpath.dirname(prof.postqueue), "postsuper")
                     if "/" in prof.postqueue else "postsuper")
        rec.run("remove probe from queue", [postsuper, "-c", prof.config_dir, "-d", "-"],
                input="".join(f"{qid}\n" for qid in ids).encode(), timeout=CLEANUP_TIMEOUT_S)
        return (f"removed the probe {delivery.message_id} from the queue (it would be "
                f"retried for days): postsuper -d {' '.join(ids)}")

    # -- log ------------------------------------------------------------------------
    def _parse_log_line(self, line: str) -> LogRecord | None:
        return parse_postfix_line(line)

    # -- status and diagnose ----------------------------------------------------------
    def _status_commands(self) -> tuple[list[tuple[str, list[str]]], tuple[str, ...]]:
        prof = self.profile
        read = f"read {prof.sasl_passwd}"
        return [("version", self._postconf("-h", "mail_version")),
                ("postconf", self._postconf(*pfconf.SMARTHOST_PARAMETERS)),
                (read, read_command(prof.sasl_passwd_path)),
                ("postqueue", self._queue_command())], (read,)

    def _status_facts(self, answers: list[CommandResult]) -> StatusFacts:
        prof = self.profile
        version, values, sasl, queued = answers
        problems: list[RelayfleetError] = []
        parsed: dict[str, str] | None = None
        try:
            parsed = self._read_values(values)
        except ConfigError as exc:
            problems.append(exc)
        why = read_failure(prof.sasl_passwd_path, sasl) if not sasl.ok else NO_SUCH_FILE
        if why != NO_SUCH_FILE:
            problems.append(ConfigError(f"cannot read {prof.sasl_passwd_path}: {why}"))
        try:
            queue = self._parse_queue(queued)
        except RelayfleetError as exc:  # e.g. main.cf missing: every Postfix command stops
            queue = MailqReport()
            problems.append(exc)
        return StatusFacts((version.stdout_text().strip() or None) if version.ok else None,
                           self._smarthost_data(parsed, sasl.stdout if sasl.ok else None),
                           queue, problems)

    def _diagnose_facts(self) -> tuple[dict[str, Any], list[RelayfleetError]]:
        return self._current_smarthost()

    def _in_sync_detail(self, in_sync: bool) -> str:
        prof = self.profile
        if in_sync:
            return f"{prof.main_cf} reads and its maps are built"
        return (f"{prof.sasl_passwd} is newer than its compiled map: set the smarthost again "
                f"(or run postmap {self._map_type}:{prof.sasl_passwd_path})")

    def _mta_checks(self, hostname: diag.Check) -> list[diag.Check]:
        return [self._myhostname_check(hostname)]

    def _myhostname_check(self, hostname: diag.Check) -> diag.Check:
        """Postfix greets with myhostname, not the system's name: it must be qualified."""
        try:
            out = self.executor.run(self._postconf("-h", "myhostname", "mydomain"),
                                    timeout=self.profile.validate_timeout_s)
        except RelayfleetError as exc:
            return diag.Check("myhostname", False, f"could not check: {exc.message}")
        names = out.stdout_text().split()
        myhostname = names[0] if names else ""
        data = {"myhostname": myhostname, "mydomain": names[1] if len(names) > 1 else ""}
        if not out.ok or not myhostname:
            return diag.Check("myhostname", False, "postconf cannot tell myhostname", data)
        if "." not in myhostname or myhostname.endswith(_PLACEHOLDER_DOMAINS):
            return diag.Check("myhostname", False,
                              f"Postfix greets relays as {myhostname!r}, which is not a fully "
                              "qualified name: relays refuse it; set myhostname in main.cf "
                              "(postconf -e myhostname=HOST.DOMAIN), or fix the host name and "
                              "/etc/hosts", data)
        fqdn = str(hostname.data.get("fqdn", ""))
        detail = f"Postfix greets relays as {myhostname}"
        if fqdn and fqdn != myhostname:
            detail += f" (the system's name is {fqdn})"
        return diag.Check("myhostname", True, detail, data)

    def _ehlo_name(self) -> str | None:
        """Postfix greets relays with smtp_helo_name ($myhostname unless set), expanded;
        a Postfix without ``postconf -x`` (before 2.10) is taken to use its default."""
        timeout = self.profile.validate_timeout_s
        for args in (("-xh", "smtp_helo_name"), ("-h", "myhostname")):
            out = self.executor.run(self._postconf(*args), timeout=timeout)
            name = out.stdout_text().strip()
            if out.ok and name:
                return name
        return None

    # -- the host's name ----------------------------------------------------------------
    def _name_change(self, fqdn: str) -> NameChange:
        """Postfix does not take its name from /etc/hosts: main.cf's myhostname is set to
        ``fqdn`` (postconf on a staged copy, postfix check) when it, or its default when
        unset, is another name; Postfix is reloaded and must then say ``fqdn``."""
        prof = self.profile

        def myhostname(rec: StepRecorder) -> str:
            out = rec.run("postconf myhostname", self._postconf("-h", "myhostname"),
                          timeout=prof.validate_timeout_s, check=False)
            if not out.ok:
                raise ConfigError(f"postconf cannot read {prof.main_cf_path}: "
                                  f"{out.output_text().strip()[:300]}")
            return out.stdout_text().strip().lower()

        def plan(rec: StepRecorder) -> list[FileEdit]:
            if myhostname(rec) == fqdn:
                return []
            old = self._read_config_file(prof.main_cf_path)
            staged = self._stage(rec, old, pfconf.MainCfEdits({"myhostname": fqdn}))
            return [FileEdit(prof.main_cf_path, old, staged)]

        def activate(rec: StepRecorder) -> None:
            pid = self._restart_running(rec, "reload")
            now = myhostname(rec)
            if now != fqdn:
                raise OperationError(f"after the reload myhostname is {now!r}, not {fqdn}")
            self._clear_marker()
            rec.note("verify", f"Postfix greets relays as {fqdn} (myhostname); running "
                               f"(master pid {pid})")

        return NameChange(("config_dir", "main_cf"), activate, self._stale_reason, plan,
                          lambda rec, edit: self._validate(rec, edit.new))


def _selected(queue: MailqReport, request: FlushRequest) -> list[str]:
    """The ids of the messages a flush request picks (all of them when it picks none);
    held messages are never picked: a flush does not release them."""
    messages = [m for m in queue.messages if m.section != "hold"]
    if request.queue_id is not None:
        return [m.id for m in messages if m.id == request.queue_id]
    if request.recipient is not None:
        needle = request.recipient.lower()
        return [m.id for m in messages if any(needle in r.lower() for r in m.recipients)]
    if request.sender is not None:
        needle = request.sender.lower()
        return [m.id for m in messages if needle in m.sender.lower()]
    return [m.id for m in messages]


def _is_attempt(record: LogRecord) -> bool:
    """A delivery attempt's line (``to=... status=...``), not a handoff to a local pipe."""
    return record.kind == "delivery" and "status" in record.fields


def _delivery(record: LogRecord) -> dict[str, Any]:
    """A maillog delivery line in the shape sendmail's ``-v`` transcript lines have."""
    stat = record.fields.get("stat", "")
    return {"queue_id": record.queue_id, "recipient": (record.recipients or [""])[0],
            "outcome": outcome(stat, record.fields.get("dsn")), "text": stat}
