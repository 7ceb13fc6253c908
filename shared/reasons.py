"""Why mail is not leaving a host, in the few numbers ``status`` reports.

Two views, both cheap enough for every status look:

- :func:`queue_reasons`: the queued messages' deferral texts grouped, most messages first
  (what is stuck now);
- :func:`recent_summary`: a summary of the maillog's last :data:`RECENT_LINES` lines
  (deliveries by outcome and stat, the relay problems the lines show) and ``unresolved``:
  the delivery failures logged after the last delivery a relay accepted, so that a problem
  fixed since does not keep showing.

The controller's doctor (``controller.doctor``) reads both to name each host's causes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from shared.sendmail.maillog import (
    LogRecord,
    is_local_handoff,
    outcome,
    summarize,
    summary_key,
)
from shared.sendmail.mailq import QueuedMessage

#: how many maillog lines status reads (the tail: recent activity, bounded work)
RECENT_LINES = 300
#: at most this many distinct reasons (queue) or stats (log) are reported
MAX_REASONS = 20
#: a reason longer than this is cut (relays' replies can be long; the start names them)
MAX_TEXT = 300

LineParser = Callable[[str], "LogRecord | None"]


def clip(text: str, limit: int = MAX_TEXT) -> str:
    """``text`` on one line (runs of white space made one space), cut to ``limit``
    characters with "..." when longer: how a relay's reply is shown and compared."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def queue_reasons(messages: Sequence[QueuedMessage]) -> list[dict[str, Any]]:
    """The queued messages' deferral texts, ``[{text, count}]``: count = messages giving the
    text (a message with recipients deferred for two reasons counts once under each)."""
    counts: Counter[str] = Counter()
    for message in messages:
        texts = set(message.reasons.values())
        if not texts and message.reason:
            texts = {message.reason}
        for text in sorted({clip(t) for t in texts if t and t.strip()}):
            counts[text] += 1
    return [{"text": text, "count": count} for text, count in counts.most_common(MAX_REASONS)]


def _unresolved(records: Sequence[LogRecord]) -> list[dict[str, Any]]:
    """Failed delivery attempts after the last one a relay (not the local MTA) accepted."""
    failures: Counter[tuple[str, str, str | None]] = Counter()
    for record in records:
        stat = record.fields.get("stat")
        if record.kind != "delivery" or stat is None:
            continue
        result = outcome(stat, record.fields.get("dsn"))
        if result == "sent":
            if not is_local_handoff(record):
                failures.clear()  # delivered since: what failed before is not current
            continue
        if result in ("deferred", "bounced"):
            text = summary_key(stat)
            # sendmail's stat can be a bare sysexits text: the relay's reply says why
            reply = record.fields.get("reply")
            if reply and reply not in text:
                text = f"{text}: {reply}"
            failures[(clip(text), result, record.problem)] += 1
    return [{"text": text, "outcome": result, "problem": problem, "count": count}
            for (text, result, problem), count in failures.most_common(MAX_REASONS)]


def recent_summary(lines: Iterable[str], parse: LineParser) -> dict[str, Any]:
    """The maillog tail ``lines`` summarised: ``{lines, deliveries, sent, deferred, bounced,
    local_handoffs, by_stat (at most MAX_REASONS), problems, unresolved}``."""
    count = 0
    records: list[LogRecord] = []
    for line in lines:
        count += 1
        record = parse(line)
        if record is not None:
            records.append(record)
    summary = summarize(records)
    by_stat = dict(list(summary["by_stat"].items())[:MAX_REASONS])
    return {"lines": count, "deliveries": summary["deliveries"], "sent": summary["sent"],
            "deferred": summary["deferred"], "bounced": summary["bounced"],
            "local_handoffs": summary["local_handoffs"],
            "by_stat": {clip(k): v for k, v in by_stat.items()},
            "problems": [{"problem": p["problem"], "lines": p["lines"],
                          "deliveries": p["deliveries"]} for p in summary["problems"]],
            "unresolved": _unresolved(records)}
