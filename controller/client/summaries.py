"""What one host's result says, in a few words, per action (one table, no string switch).

Each summary reads the host result's ``data`` (the action's answer, the same over the
agent and SSH) and returns a short phrase for the ``result`` column.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

Summary = Callable[[Mapping[str, Any]], str]


def relay_text(smarthost: Mapping[str, Any] | None) -> str:
    """``[relay.example]:587 tls=encrypt auth=user masquerade=ourtest.com`` or ``direct``."""
    if not smarthost:
        return "direct (no smarthost)"
    host = str(smarthost["host"])
    if not smarthost.get("mx") and not host.startswith("["):
        host = f"[{host}]"  # sendmail's and Postfix's own notation for "no MX lookup"
    text = host + (f":{smarthost['port']}" if smarthost.get("port") not in (None, 25) else "")
    tls = (smarthost.get("tls") or {}).get("mode")
    if tls:
        text += f" tls={tls}"
    if smarthost.get("auth"):
        text += f" auth={smarthost['auth'].get('username')}"
    if smarthost.get("masquerade"):
        text += f" masquerade={smarthost['masquerade'].get('domain')}"
    return text


def _change(data: Mapping[str, Any]) -> str:
    if data.get("dry_run"):
        lines = [line for line in (data.get("diff") or "").splitlines()
                 if line[:1] in "+-" and line[:3] not in ("+++", "---")]
        return f"would change ({len(lines)} lines)" if lines else "nothing to change"
    state = "changed" if data.get("diff") else "already so"
    if data.get("rolled_back"):
        state = "rolled back"
    return f"{state}; now {relay_text(data.get('smarthost'))}"


def _flush(data: Mapping[str, Any]) -> str:
    before, after = data.get("before"), data.get("after")
    sent = sum(1 for d in data.get("deliveries") or [] if d.get("outcome") == "sent")
    text = f"queue {before if before is not None else '?'} → {after}"
    if sent:
        text += f", {sent} sent"
    remaining = data.get("remaining") or []
    reasons = sorted({m.get("reason") for m in remaining if m.get("reason")})
    if reasons:
        text += f"; still held: {reasons[0]}"
    return text


def _status(data: Mapping[str, Any]) -> str:
    queue = data.get("queue") or {}
    mta = data.get("mta") or {}
    age = queue.get("oldest_age_s")
    held = f"{queue.get('count', '?')} queued" + (f" (oldest {age_text(age)})" if age else "")
    running = "" if mta.get("running", True) else f", {mta.get('kind', 'MTA')} not running"
    sync = "" if data.get("config_in_sync", True) else ", cf out of sync"
    return f"{held}; {relay_text(data.get('smarthost'))}{running}{sync}"


def _diagnose(data: Mapping[str, Any]) -> str:
    checks = data.get("checks") or []
    failing = [c["name"] for c in checks if c.get("ok") is False]
    return ("all checks pass" if not failing
            else f"{len(failing)} failing: {', '.join(failing)}")


def _log(data: Mapping[str, Any]) -> str:
    summary = data.get("summary") or {}
    text = (f"{summary.get('sent', 0)} sent, {summary.get('deferred', 0)} deferred, "
            f"{summary.get('bounced', 0)} bounced")
    problems = [p.get("label") for p in summary.get("problems") or []]
    return text + (f"; {', '.join(problems)}" if problems else "")


def _queue(data: Mapping[str, Any]) -> str:
    return f"{data.get('count', 0)} queued"


def _install_agent(data: Mapping[str, Any]) -> str:
    version, previous = data.get("version"), data.get("previous")
    if data.get("dry_run"):
        if previous == version:
            return f"agent {version} installed; would check it (transport {data.get('transport')})"
        return f"would install agent {version} (installed: {previous or 'none'})"
    done = (f"agent {previous} → {version}" if previous and previous != version
            else f"agent {version}")
    return f"{done}, token {data.get('token')}; now via {data.get('agent_url')}"


SUMMARIES: Mapping[str, Summary] = {
    "set_smarthost": _change,
    "remove_smarthost": _change,
    "fix_hostname": _change,
    "flush_queue": _flush,
    "collect_status": _status,
    "diagnose": _diagnose,
    "read_log": _log,
    "queue_list": _queue,
    "install_agent": _install_agent,
}


def summarize(action: str, result: Mapping[str, Any]) -> str:
    """The result column for one host: its error when it failed, else the action's
    summary of its data (a diagnose fails with no error: its failing checks say why)."""
    data = result.get("data")
    if result.get("status") in ("failed", "unreachable", "skipped") and (
            result.get("error") or not data):
        return str(result.get("error") or result["status"])
    if not data:
        return str(result.get("status"))
    summary = SUMMARIES.get(action)
    return summary(data) if summary else "done"


def age_text(seconds: float | None) -> str:
    """``3h 12m``, ``45s``: an age people read."""
    if seconds is None:
        return "-"
    seconds = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            rest = seconds % size
            small = {"d": ("h", 3600), "h": ("m", 60), "m": ("s", 1)}[unit]
            return f"{seconds // size}{unit}" + (f" {rest // small[1]}{small[0]}"
                                                  if rest // small[1] else "")
    return f"{seconds}s"
