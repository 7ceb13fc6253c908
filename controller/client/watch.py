"""Start a job and follow it: live per-host progress on a terminal, a line per host as it
finishes (failures first, in red, with the reason), then a final table and the exit code.

Ctrl-C detaches (the job keeps running on the controller) unless
``--cancel-on-interrupt`` asked to cancel it, also while the job's POST is still out.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from rich.markup import escape
from rich.text import Text

from controller.client.api import CONFLICT_RETRIES, ApiClient, new_idempotency_key
from controller.client.errors import (
    EXIT_DETACHED,
    EXIT_JOB_NOT_ALL_OK,
    EXIT_OK,
    ApiRefused,
    ApiUnreachable,
    CliError,
)
from controller.client.output import Output
from controller.client.summaries import summarize
from controller.client.targets import explain_target_refusal

FINAL_JOB_STATES = frozenset({"succeeded", "failed", "partial", "cancelled"})
DONE_UNIT_STATES = frozenset({"succeeded", "failed", "unreachable", "skipped"})
BAD_UNIT_STATES = ("failed", "unreachable", "skipped")
#: every state a job's host can be in, in the order a job moves through them
UNIT_STATES = ("pending", "running", "succeeded", "failed", "unreachable", "skipped")
#: the colour of each host or job state (the words are printed too: colour only helps)
STATE_STYLES = {"succeeded": "green", "failed": "red", "unreachable": "red",
                "skipped": "yellow", "running": "cyan", "pending": "dim",
                "partial": "yellow", "cancelled": "yellow"}
#: polling: quick at first (small jobs end in seconds), slower for long ones
POLL_FIRST_S, POLL_MAX_S = 0.25, 2.0
#: after Ctrl-C during the job's POST: how long to wait for the replay that names the job
REPLAY_TIMEOUT_S = 5.0
#: ... and how often to ask again while the first POST is still being handled (~3.5 s)
REPLAY_BUSY_RETRIES = 3
RECENT_JOBS = "relayfleet jobs list --limit 5"


@dataclass
class JobOptions:
    """How to run and follow a job (the job options of every job command)."""

    concurrency: int | None = None
    max_failures: int | None = None
    timeout_s: int | None = None
    dry_run: bool = False
    wait: bool = True
    cancel_on_interrupt: bool = False

    def api_options(self) -> dict[str, Any]:
        """The job's ``options`` document (only what was given)."""
        options: dict[str, Any] = {"concurrency": self.concurrency,
                                   "max_failures": self.max_failures,
                                   "timeout_s": self.timeout_s}
        options = {key: value for key, value in options.items() if value is not None}
        if self.dry_run:
            options["dry_run"] = True
        return options


def exit_code_for(job: Mapping[str, Any]) -> int:
    """0 when every host succeeded, 1 when the job ended partial, failed or cancelled."""
    return EXIT_OK if job.get("status") == "succeeded" else EXIT_JOB_NOT_ALL_OK


def job_body(action: str, *, target: dict[str, Any], params: dict[str, Any],
             options: JobOptions) -> dict[str, Any]:
    """The ``POST /v1/jobs`` document."""
    return {"action": action, "target": target, "params": params,
            "options": options.api_options()}


def post_job(api: ApiClient, body: dict[str, Any], key: str, *,
             timeout_s: float | None = None, retries: int | None = None,
             busy_retries: int = CONFLICT_RETRIES) -> dict[str, Any]:
    """POST the job under ``key`` (its retries reuse it); the 202 answer."""
    try:
        accepted: dict[str, Any] = api.post("/v1/jobs", body, idempotency_key=key,
                                            timeout_s=timeout_s, retries=retries,
                                            busy_retries=busy_retries)
    except ApiRefused as exc:
        raise explain_target_refusal(exc) from None
    except ApiUnreachable as exc:
        if exc.maybe_done:
            raise ApiUnreachable(
                f"no answer from the controller at {api.api} ({exc.reason}): the job may "
                "have started", hint=f"see: {RECENT_JOBS}", reason=exc.reason,
                maybe_done=True) from None
        raise
    return accepted


def start_job(api: ApiClient, out: Output, action: str, *, target: dict[str, Any],
              params: dict[str, Any], options: JobOptions) -> tuple[dict[str, Any] | None,
                                                                    bool]:
    """POST the job with one Idempotency-Key; (the 202 answer, whether it was cancelled).

    Ctrl-C while the POST is out asks again under the same key (briefly) to learn the
    job's id, then detaches from it (``None``: the way to follow it is printed) or, with
    --cancel-on-interrupt, cancels it (the caller then waits for it to end).
    """
    body = job_body(action, target=target, params=params, options=options)
    key = new_idempotency_key()
    try:
        return post_job(api, body, key), False
    except KeyboardInterrupt:
        pass
    try:
        # The same key answers the job if the first POST made it (or makes it now: the
        # operator then learns its id and can cancel it).
        accepted = post_job(api, body, key, timeout_s=REPLAY_TIMEOUT_S, retries=0,
                            busy_retries=REPLAY_BUSY_RETRIES)
    except (CliError, KeyboardInterrupt):
        out.alert(f"interrupted before the controller answered: the job may have started; "
                  f"see: {RECENT_JOBS}")
        return None, False
    job_id = int(accepted["id"])
    if options.cancel_on_interrupt:
        _cancel(api, out, job_id)
        return accepted, True
    _detached(out, job_id)
    return None, False


def _detached(out: Output, job_id: int) -> None:
    """How to follow a job left running (printed with -q too: the id is the essential)."""
    out.alert(f"detached: job {job_id} keeps running on the controller; follow it with: "
              f"relayfleet jobs watch {job_id}")


def _cancel(api: ApiClient, out: Output, job_id: int) -> dict[str, Any]:
    """Cancel a job (one that has already ended stays as it is); its document."""
    out.note(f"cancelling job {job_id}: hosts already running finish; Ctrl-C again to stop "
             "waiting", style="yellow")
    try:
        job: dict[str, Any] = api.post(f"/v1/jobs/{job_id}/cancel")
    except ApiRefused as exc:
        if exc.status != 409:  # 409: it has already finished
            raise
        job = api.get(f"/v1/jobs/{job_id}")
    return job


def run_job(api: ApiClient, out: Output, action: str, *, target: dict[str, Any],
            params: dict[str, Any], options: JobOptions) -> int:
    """Start a job and, unless ``--no-wait``, follow it to its end; the exit code."""
    accepted, cancelled = start_job(api, out, action, target=target, params=params,
                                    options=options)
    if accepted is None:
        return EXIT_DETACHED
    if not options.wait and not cancelled:
        if out.json_mode:
            out.document(accepted)
        else:
            out.result(str(accepted["id"]))
            out.note(f"job {accepted['id']} started on {accepted.get('total', '?')} hosts; "
                     f"follow it with: relayfleet jobs watch {accepted['id']}")
        return EXIT_OK
    return follow(api, out, int(accepted["id"]),
                  cancel_on_interrupt=options.cancel_on_interrupt and not cancelled)


@dataclass
class _Seen:
    """Which hosts' endings were already printed."""

    done: set[int] = field(default_factory=set)

    def new_endings(self, job: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        ended = [r for r in job.get("results") or []
                 if r["status"] in DONE_UNIT_STATES and r["host_id"] not in self.done]
        self.done.update(r["host_id"] for r in ended)
        # failures first: they are what the engineer acts on
        return sorted(ended, key=lambda r: (r["status"] not in BAD_UNIT_STATES, r["host"]))


def wait_for(api: ApiClient, out: Output, job_id: int, *, cancel_on_interrupt: bool = False,
             host_lines: bool = True, poll_s: float = POLL_FIRST_S) -> dict[str, Any] | None:
    """Wait for a job to end, drawing progress; its final document, or ``None`` when
    Ctrl-C detached from it."""
    seen = _Seen()
    cancelled = False
    try:
        job: dict[str, Any] = api.get(f"/v1/jobs/{job_id}")
        with _progress(out, job) as update:
            while True:
                for result in seen.new_endings(job):
                    if host_lines:
                        update.host_line(result, job["action"])
                update.counts(job)
                if job["status"] in FINAL_JOB_STATES:
                    return job
                try:
                    time.sleep(poll_s)
                    poll_s = min(POLL_MAX_S, poll_s * 1.3)
                    job = api.get(f"/v1/jobs/{job_id}")
                except KeyboardInterrupt:
                    if not cancel_on_interrupt or cancelled:
                        raise
                    cancelled = True
                    job = _cancel(api, out, job_id)
    except KeyboardInterrupt:
        _detached(out, job_id)
        return None


def follow(api: ApiClient, out: Output, job_id: int, *,
           cancel_on_interrupt: bool = False) -> int:
    """Follow a job to its end and report it (``jobs watch``); the exit code."""
    job = wait_for(api, out, job_id, cancel_on_interrupt=cancel_on_interrupt)
    if job is None:
        return EXIT_DETACHED
    finish(out, job)
    return exit_code_for(job)


def finish(out: Output, job: Mapping[str, Any]) -> None:
    """The final report: the API's document with --json, else a table, each dry-run diff
    and a one-line verdict."""
    if out.json_mode:
        out.document(job)
        return
    results = sorted(job.get("results") or [],
                     key=lambda r: (r["status"] not in BAD_UNIT_STATES, r["host"]))
    if not out.quiet:
        out.table(["host", "status", "result"],
                  [(r["host"], r["status"], summarize(job["action"], r)) for r in results],
                  styles=[STATE_STYLES.get(r["status"]) for r in results],
                  title=f"job {job['id']} {job['action']}: {job['status']}")
        if job.get("options", {}).get("dry_run"):
            show_diffs(out, results)
    counts = job.get("counts") or {}
    verdict = (f"job {job['id']} {job['status']}: " + ", ".join(
        f"{counts[k]} {k}" for k in ("succeeded", "failed", "unreachable", "skipped")
        if counts.get(k)))
    style = "green" if job["status"] == "succeeded" else "bold red"
    if out.quiet:
        out.result(verdict)
    else:
        out.say(Text(verdict, style=style))
    if job["status"] != "succeeded" and not out.quiet:
        out.note(f"retry the failed and unreachable hosts with: relayfleet jobs retry "
                 f"{job['id']}", style="yellow")


def show_diffs(out: Output, results: list[Mapping[str, Any]]) -> None:
    """Each host's dry-run diff, coloured like ``git diff``."""
    for result in results:
        diff = (result.get("data") or {}).get("diff")
        if not diff:
            continue
        out.say(Text(f"--- {result['host']}", style="bold"))
        for line in diff.splitlines():
            style = ("green" if line.startswith("+") else "red" if line.startswith("-")
                     else "cyan" if line.startswith("@@") else None)
            out.say(Text(line, style=style or ""))


class _Printer:
    """Progress for pipes and -q: a plain line per host as it ends."""

    def __init__(self, out: Output) -> None:
        self.out = out

    def host_line(self, result: Mapping[str, Any], action: str) -> None:
        if self.out.json_mode or self.out.quiet:
            return
        self.out.say(Text(f"{result['host']}: {result['status']} — "
                          f"{summarize(action, result)}",
                          style=STATE_STYLES.get(result["status"], "")))

    def counts(self, job: Mapping[str, Any]) -> None:
        """Nothing between endings in a pipe."""


class _LiveProgress(_Printer):
    """A rich progress bar with counts by state; host lines print above it."""

    def __init__(self, out: Output, progress: Any, task: Any) -> None:
        super().__init__(out)
        self.progress, self.task = progress, task

    def host_line(self, result: Mapping[str, Any], action: str) -> None:
        style = STATE_STYLES.get(result["status"], "")
        self.progress.console.print(Text(
            f"{result['host']}: {result['status']} — {summarize(action, result)}",
            style=style))

    def counts(self, job: Mapping[str, Any]) -> None:
        counts = job.get("counts") or {}
        done = sum(counts.get(k, 0) for k in DONE_UNIT_STATES)
        states = "  ".join(f"{counts.get(k, 0)} {k}" for k in
                           ("running", "pending", "succeeded", "failed", "unreachable")
                           if counts.get(k))
        self.progress.update(self.task, total=counts.get("total") or 1, completed=done,
                             states=escape(states or str(job["status"])))


@contextmanager
def _progress(out: Output, job: Mapping[str, Any]) -> Iterator[_Printer]:
    if not out.live:
        yield _Printer(out)
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    progress = Progress(TextColumn("[bold]job {task.fields[job]} {task.description}"),
                        BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("{task.fields[states]}"), console=out.out,
                        transient=True, refresh_per_second=8)
    # the columns are rich markup templates: what the API says goes in escaped
    task = progress.add_task(escape(str(job["action"])),
                             total=(job.get("counts") or {}).get("total") or 1,
                             job=job["id"], states=escape(str(job["status"])))
    with progress:
        yield _LiveProgress(out, progress, task)
