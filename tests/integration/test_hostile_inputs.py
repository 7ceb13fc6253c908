"""Hostile-input sweep (part of the chaos suite): every field of every route of the agent and
the controller gets generated hostile values; each must be refused with a 4xx in the error
envelope ``{code, status, message, errors?}``, never a 5xx, and nothing may reach m4 or a
shell.

The values (:func:`hostile_values`) are deterministic: m4 builtins and quoting, shell
metacharacters, control characters (NUL, CR, LF), path traversal, huge strings, unicode
confusables and bidi marks, lone surrogates, IDNs, IPv6 zone ids, format strings, SQL-ish
and header-injection strings, and type confusion (numbers, booleans, null, lists, objects,
overlong integers, NaN). Each field says which values it may legitimately accept (a valid
but odd value such as the host name ``dnl.example.com`` may run); everything else must be
refused. Body-level probes add non-object bodies, malformed and deeply nested JSON, hostile
unknown keys and bodies over the size cap.

Witnesses:

- the agent runs on :func:`shared.testing.debian_sendmail_host` (a fresh one per request):
  a refused request ran no argv, changed no file and compiled nothing with m4; an accepted
  one made m4 ask for no shell command, put no metacharacter-bearing value in any argv, and
  let the value into an mc only inside ``\\`\\`...''`` quotes;
- a module-level :func:`sys.addaudithook` records ``subprocess.Popen``, ``os.system``,
  ``os.exec*``, ``os.posix_spawn``, ``os.spawn*`` and ``os.fork`` while a request is being
  answered (an audit hook cannot be removed, so it only records while its flag is set):
  the controller must start no process at all, a refused agent request neither.

:func:`run_sweep` is also what ``tests/benchmarks/chaos.py hostile`` runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import math
import os
import random
import re
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from flask import Flask, got_request_exception
from flask.testing import FlaskClient
from marshmallow import fields as mm_fields

pytestmark = pytest.mark.slow

# -- the shell witness ----------------------------------------------------------------------

#: audit events that start a program (os.exec covers execv, execve, ...; os.spawn spawn*)
SHELL_EVENTS = frozenset({"subprocess.Popen", "os.system", "os.exec", "os.posix_spawn",
                          "os.spawn", "os.fork", "os.forkpty", "pty.spawn"})


class ShellWitness:
    """Records process-starting audit events, only while :meth:`watching` is active."""

    def __init__(self) -> None:
        self.recording = False
        self.events: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def hook(self, event: str, args: tuple[Any, ...]) -> None:
        """The audit hook: cheap when not recording."""
        if not self.recording or event not in SHELL_EVENTS:
            return
        with self._lock:
            self.events.append((event, repr(args)[:300]))

    @contextlib.contextmanager
    def watching(self) -> Iterator[list[tuple[str, str]]]:
        """Record the events of the block; yield the list they are appended to."""
        self.events = []
        self.recording = True
        try:
            yield self.events
        finally:
            self.recording = False


WITNESS = ShellWitness()
sys.addaudithook(WITNESS.hook)

# -- hostile values ------------------------------------------------------------------------

M4_VALUES = [
    "esyscmd(id)", "esyscmd(`id')", "syscmd(id)", "`esyscmd(id)'", "x')esyscmd(`id')dnl(`",
    "dnl", "x dnl", "relay.example.net')dnl", "changequote([,])[esyscmd(id)]",
    "changequote", "define(`SMART_HOST', `evil')", "include(`/etc/shadow')",
    "sinclude(/etc/passwd)", "undefine(`dnl')", "divert(-1)", "m4exit(1)", "errprint(`x')",
    "translit(`x', `x', `y')", "$1", "$#", "$*", "$@", "``''", "'`", "`", "'",
    "relay.example.net`'", "x-dnl", "dnl.example.com", "divert.example.com", "0dnl",
    "FEATURE(`nullclient')", "MAILER(`prog')", "LOCAL_CONFIG\nO QueueDirectory=/tmp",
]
SHELL_VALUES = [
    "; id", "$(id)", "`id`", "| id", "&& id", "|| id", "a\nid", "a\r\nid", "a\rid", "a\x00b",
    "\x00", "${IFS}id", "$HOME", "> /etc/passwd", "< /etc/shadow", "a & b", "a;b", "a|b",
    "~root", "*", "?", "{a,b}", "'\"", "\\", "--help", "-C/tmp/evil.cf", "-oQ/tmp",
    "-be", "-X/tmp/log", "\t", " ", "a b", "\x1b[31m", "\x7f", "\x08",
]
TRAVERSAL_VALUES = [
    "../../../../etc/shadow", "/etc/shadow", "..%2f..%2fetc%2fpasswd", "....//....//etc/passwd",
    "/proc/self/environ", "..\\..\\windows\\win.ini", "file:///etc/passwd", "/dev/zero",
    "%2e%2e%2f", "/etc/mail/../../etc/shadow", "~/.ssh/id_rsa",
]
FORMAT_VALUES = [
    "%s%s%s%n", "%(password)s", "{0.__class__}", "{self.__init__.__globals__}", "%x" * 20,
    "${jndi:ldap://x/a}", "{{7*7}}", "<%= 7*7 %>", "%00", "%0d%0a",
]
SQL_VALUES = [
    "' OR '1'='1", "1; DROP TABLE hosts; --", "\" OR 1=1 --",
    "1 UNION SELECT token_sha256 FROM tokens", "%", "_", "admin'--", "1' AND sleep(5)--",
]
HEADER_VALUES = [
    "x\r\nX-Injected: 1", "x\nSet-Cookie: a=b", "x\r\n\r\n<html>", "x%0d%0aX-Injected:%201",
]
UNICODE_VALUES = [
    "r\u0435lay.example.net", "relay\u200b.example.net", "\u202eten.elpmaxe.yaler",
    "relay\ufeff.example.net", "\uff52\uff45\uff4c\uff41\uff59.example.net",
    "relay\u00a0example.net", "\ud800", "\udfff", "\u00e9", "\U0001f4a9", "\u0130",
    "\u212a", "relay\u2024example.net", "\uff11\uff12\uff13", "\u0661\u0662\u0663",
    "\u2028", "\u0000\u202e", "a\u0301", "\ufffd", "\u180e",
]
IDN_VALUES = ["b\u00fccher.example", "xn--bcher-kva.example", "\u4f8b\u3048.\u30c6\u30b9\u30c8",
              "xn--", "xn--zz.example", "-leading.example", "trailing-.example", "a..b",
              ".", "..", "example.com..", ".example.com"]
ADDRESS_VALUES = [
    "fe80::1%eth0", "[fe80::1%25eth0]", "[IPv6:fe80::1%eth0]", "::1%lo", "[::1]",
    "::ffff:127.0.0.1", "0x7f.1", "127.1", "2130706433", "017700000001", "169.254.169.254",
    "[0:0:0:0:0:ffff:a9fe:a9fe]", "localhost", "0.0.0.0", "[IPv6:192.0.2.1]", "[]", "[[1]]",
    "256.256.256.256", "1.2.3.4.5", "esmtp:relay.example.net", "relay:[192.0.2.1]",
    "http://169.254.169.254/latest/meta-data/", "http://[::1]:6379/", "gopher://127.0.0.1:25/",
    "http://user:pw@example.net/", "http://example.net:99999/", "http://example.net:-1/",
    "http://example.net/#frag", "javascript:alert(1)", "//example.net", "http://",
]
NUMERIC_STRINGS = ["-1", "0", "65536", "99999999999999999999", "1e10", "0x50", "NaN",
                   "Infinity", " 25", "25 ", "+25", "2_5", "25.0", "\u0661\u0662", "1;id",
                   "1 OR 1=1", "true", "null", "[]", "{}", "..", "../1", "2147483648",
                   "1%0d%0aX: y", "\u0669\u0669\u0669\u0669\u0669"]
HUGE_VALUES = ["A" * 300, "a." * 200, "x" * 5000, "\u202e" * 1000,
               ("a" * 63 + ".") * 5, ("x" * 64) + ".example.net", "x" * 100_000]

#: values of the wrong JSON type for nearly every field (and overlong or non-finite numbers)
TYPE_CONFUSION: list[Any] = [
    None, True, False, 0, -1, 1.5, -0.0, 2**31, 2**63, 10**30, -(10**30), 1e308,
    math.nan, math.inf, "", [], ["x"], [1, 2], {}, {"$ne": None}, {"a": {"b": []}},
]

CATEGORIES: list[list[str]] = [
    M4_VALUES, SHELL_VALUES, TRAVERSAL_VALUES, FORMAT_VALUES, SQL_VALUES, HEADER_VALUES,
    UNICODE_VALUES, IDN_VALUES, ADDRESS_VALUES, NUMERIC_STRINGS, HUGE_VALUES,
]
CURATED_STRINGS: list[str] = [value for category in CATEGORIES for value in category]
#: fragments spliced into a valid value by :func:`mutations`
INJECTIONS = ["esyscmd(id)", "`id`", "$(id)", ";id", "\n", "\r\n", "\x00", "'", "`", "dnl",
              "$1", " ", "|", "&", "../", "%n", "\u202e", "\u200b", "\r\nX-Injected: 1",
              "')dnl(`", "\\", "\"", "%0a", "*"]


def mutations(base: str, count: int, seed: str) -> list[str]:
    """``count`` hostile variants of the valid ``base``: an injection spliced in before,
    after or inside it (deterministic for ``seed``)."""
    rng = random.Random(seed)
    out: list[str] = []
    for _ in range(count):
        inj = rng.choice(INJECTIONS)
        where = rng.randrange(3)
        if where == 0:
            out.append(inj + base)
        elif where == 1:
            out.append(base + inj)
        else:
            cut = rng.randrange(len(base) + 1)
            out.append(base[:cut] + inj + base[cut:])
    return out


def hostile_values(base: str | None, seed: str, *, strings: int | None = None,
                   mutated: int = 12) -> list[Any]:
    """The values a field is probed with: type confusion, curated hostile strings (the
    first ``strings`` of a deterministic shuffle, all of them by default), and ``base`` with
    a final newline plus ``mutated`` variants of it."""
    if strings is None:
        chosen = list(CURATED_STRINGS)
    else:
        # Every category keeps its first value (the sharpest); a shuffle picks the rest.
        firsts = [category[0] for category in CATEGORIES]
        rest = [value for category in CATEGORIES for value in category[1:]]
        random.Random(seed).shuffle(rest)
        chosen = firsts + rest[:max(0, strings - len(firsts))]
    # A pattern's "$" matches before a final newline: always try that one.
    variants = [f"{base}\n", *mutations(base, mutated, seed)] if base else []
    return [*TYPE_CONFUSION, *chosen, *variants]


def value_text(value: Any) -> str:
    """A query or path value for ``value`` (JSON text for non-strings)."""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return json.dumps(value)


def show(value: Any, limit: int = 80) -> str:
    """A bounded repr for reports."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} chars)"


# -- what a field may accept -----------------------------------------------------------------

Accepts = Callable[[Any], bool]
_TRUTHY_FALSY = {v for v in mm_fields.Boolean.truthy | mm_fields.Boolean.falsy}


def _hashable(value: Any) -> bool:
    return not isinstance(value, list | dict)


def grammar(pattern: str, nullable: bool = False) -> Accepts:
    """A string field with an allow-list grammar (``re.fullmatch``: no trailing newline)."""
    regex = re.compile(pattern)
    return lambda v: (v is None and nullable) or (isinstance(v, str) and bool(
        regex.fullmatch(v)))


def text(max_len: int = 10**7, nullable: bool = False) -> Accepts:
    """Free text (secrets, PEM blobs, search strings): any string without NUL."""
    return lambda v: (v is None and nullable) or (
        isinstance(v, str) and "\x00" not in v and len(v) <= max_len)


def integer(lo: int, hi: int, *, strict: bool = True, nullable: bool = False) -> Accepts:
    """An integer in range (not strict: numeric strings and integral floats too)."""
    def accepts(v: Any) -> bool:
        if v is None:
            return nullable
        if isinstance(v, bool):
            return False
        if isinstance(v, int):
            return lo <= v <= hi
        if strict:
            return False
        try:
            number = float(v) if isinstance(v, str | float) else math.nan
        except ValueError:
            return False
        return math.isfinite(number) and number.is_integer() and lo <= number <= hi
    return accepts


def query_integer(lo: int, hi: int) -> Accepts:
    """An integer query parameter."""
    def accepts(v: Any) -> bool:
        try:
            return lo <= int(value_text(v)) <= hi
        except ValueError:
            return False
    return accepts


def boolean(nullable: bool = False) -> Accepts:
    """A boolean (marshmallow's truthy and falsy spellings count)."""
    return lambda v: (v is None and nullable) or (_hashable(v) and v in _TRUTHY_FALSY)


def query_boolean() -> Accepts:
    """A boolean query parameter."""
    return lambda v: value_text(v) in {str(x) for x in _TRUTHY_FALSY}


def one_of(*choices: Any, nullable: bool = False) -> Accepts:
    """An enumeration."""
    return lambda v: (v is None and nullable) or (
        isinstance(v, str) and v in choices)


def obj(nullable: bool = False) -> Accepts:
    """A nested object (its own fields are probed separately)."""
    return lambda v: (v is None and nullable) or isinstance(v, dict)


def header_key(v: Any) -> bool:
    """An Idempotency-Key: 1-255 printable characters (sent as the value's text)."""
    key = value_text(v)
    return 1 <= len(key) <= 255 and key.isprintable()


def never(_: Any) -> bool:
    """Nothing hostile is acceptable here (unknown keys, tokens, ...)."""
    return False


def ignored(_: Any) -> bool:
    """Unknown query parameters are ignored by webargs (its query location EXCLUDEs
    unknown keys whatever the schema says): harmless, answered as if absent."""
    return True


def http_url(v: Any) -> bool:
    """URL-shaped strings may be accepted (the egress policy refuses internal ones)."""
    return isinstance(v, str) and "\x00" not in v and bool(
        re.match(r"https?://[^/?#@\s]+", v))


# -- probes ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Field:
    """One input of a route: ``where`` is json (dotted path), query, path or header."""

    name: str
    where: str
    accepts: Accepts
    #: a valid value, mutated into hostile variants
    base: str | None = None


@dataclass(frozen=True)
class Route:
    """A route and a valid request for it; ``body(n)`` makes the n-th valid body (unique
    names), ``path`` may hold ``{id}`` (filled with ``path_id``)."""

    method: str
    path: str
    fields: tuple[Field, ...]
    body: Callable[[int], Any] | None = None
    query: Mapping[str, str] = field(default_factory=dict)
    path_id: str = ""
    headers: Callable[[int], dict[str, str]] | None = None
    #: the body may be left out (then a null body or a non-JSON one counts as none)
    optional_body: bool = False

    @property
    def label(self) -> str:
        """``METHOD /path``."""
        return f"{self.method} {self.path}"


@dataclass(frozen=True)
class Probe:
    """One request to send."""

    route: Route
    field: str
    value: Any
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json_body: Any = None
    has_json: bool = False
    raw: bytes | None = None
    content_type: str | None = None
    #: may this request be answered 2xx
    acceptable: bool = False


def _set_dotted(body: Any, dotted: str, value: Any) -> Any:
    """A copy of ``body`` with ``a.b.c`` set to ``value`` (creating objects on the way)."""
    top = json.loads(json.dumps(body)) if body is not None else {}
    node = top
    parts = dotted.split(".")
    for part in parts[:-1]:
        if isinstance(node, list):
            node = node[int(part)]
            continue
        if not isinstance(node.get(part), dict | list):
            node[part] = {}
        node = node[part]
    if isinstance(node, list):
        node[int(parts[-1])] = value
    else:
        node[parts[-1]] = value
    return top


def probes_for(route: Route, counter: Iterator[int], *, strings: int | None = None,
               mutated: int = 12, body_cap: int = 64 * 1024) -> Iterator[Probe]:
    """Every probe of ``route``: each field with each hostile value, then body-level ones."""
    for fld in route.fields:
        seed = f"{route.label}:{fld.name}"
        for value in hostile_values(fld.base, seed, strings=strings, mutated=mutated):
            n = next(counter)
            body = route.body(n) if route.body else None
            headers = route.headers(n) if route.headers else {}
            query = dict(route.query)
            path = route.path.replace("{id}", route.path_id)
            if fld.where == "json":
                body = _set_dotted(body, fld.name, value)
            elif fld.where == "query":
                query[fld.name] = value_text(value)
            elif fld.where == "path":
                path = route.path.replace("{id}", quote(value_text(value), safe="",
                                                        errors="surrogatepass"))
            elif fld.where == "header":
                headers[fld.name] = value_text(value)
            yield Probe(route, fld.name, value, route.method, path, query, headers,
                        json_body=body, has_json=body is not None,
                        acceptable=fld.accepts(value))
    if route.body is None:
        return
    # Body-level probes: the whole body hostile.
    path = route.path.replace("{id}", route.path_id)
    n = next(counter)
    valid = route.body(n)
    headers = route.headers(n) if route.headers else {}
    whole: list[tuple[str, Any]] = [(f"body={show(v, 30)}", v) for v in (
        [], [valid], "x", 1, None, True, "esyscmd(id)")]
    for label, value in whole:
        yield Probe(route, label, value, route.method, path, dict(route.query), headers,
                    json_body=value, has_json=True,
                    acceptable=value is None and route.optional_body)
    for key in ["esyscmd(id)", "$(id)", "../x", "a\x00b", "\u202e", "x" * 5000, "__class__",
                "constructor", "__proto__", "shell", "", "host\r\nX: 1"]:
        body = {**valid, key: "x"} if isinstance(valid, dict) else {key: "x"}
        yield Probe(route, f"unknown key {show(key, 20)}", key, route.method, path,
                    dict(route.query), headers, json_body=body, has_json=True)
    raws: list[tuple[str, bytes, str]] = [
        ("malformed JSON", b'{"host": ', "application/json"),
        ("trailing garbage", json.dumps(valid).encode() + b"}esyscmd(id)", "application/json"),
        ("NaN literal", b'{"x": NaN}', "application/json"),
        ("overlong integer", b'{"x": ' + b"9" * 5000 + b"}", "application/json"),
        ("invalid UTF-8", b'{"x": "\xff\xfe"}', "application/json"),
        ("UTF-16 body", json.dumps(valid).encode("utf-16"), "application/json"),
        ("deeply nested JSON", b"[" * 30000 + b"]" * 30000, "application/json"),
        ("deeply nested objects", b'{"a":' * 20000 + b"1" + b"}" * 20000, "application/json"),
        ("not JSON content type", json.dumps(valid).encode(), "text/plain"),
        ("form content type", b"host=esyscmd(id)", "application/x-www-form-urlencoded"),
        ("over the body cap", json.dumps({"pad": "x" * (body_cap + 10)}).encode(),
         "application/json"),
        ("duplicate keys", b'{"name": "a", "name": "esyscmd(id)"}', "application/json"),
    ]
    for label, raw, content_type in raws:
        yield Probe(route, label, raw[:60], route.method, path, dict(route.query), headers,
                    raw=raw, content_type=content_type,
                    acceptable=route.optional_body and content_type != "application/json")


# -- the tally -----------------------------------------------------------------------------------

@dataclass
class Finding:
    """A probe that broke a rule."""

    app: str
    route: str
    field: str
    value: str
    status: int
    detail: str

    def __str__(self) -> str:
        lines = self.detail.strip().splitlines()
        detail = "\n".join(lines if len(lines) <= 8 else ["...", *lines[-6:]])
        return (f"[{self.app}] {self.route} field={self.field} value={self.value} -> "
                f"{self.status}: {detail}")


@dataclass
class Tally:
    """What a sweep saw."""

    tried: int = 0
    distinct: set[str] = field(default_factory=set)
    refused: int = 0
    accepted: int = 0
    unsendable: int = 0
    codes: Counter[int] = field(default_factory=Counter)
    server_errors: list[Finding] = field(default_factory=list)
    reached: list[Finding] = field(default_factory=list)
    hostile_accepted: list[Finding] = field(default_factory=list)
    bad_envelopes: list[Finding] = field(default_factory=list)
    accepted_examples: dict[str, list[str]] = field(default_factory=dict)
    fields: set[str] = field(default_factory=set)
    seconds: float = 0.0

    def add(self, other: Tally) -> None:
        """Fold ``other`` into this tally."""
        self.tried += other.tried
        self.distinct |= other.distinct
        self.refused += other.refused
        self.accepted += other.accepted
        self.unsendable += other.unsendable
        self.codes += other.codes
        self.server_errors += other.server_errors
        self.reached += other.reached
        self.hostile_accepted += other.hostile_accepted
        self.bad_envelopes += other.bad_envelopes
        for key, values in other.accepted_examples.items():
            self.accepted_examples.setdefault(key, []).extend(values)
        self.fields |= other.fields
        self.seconds += other.seconds

    @property
    def failures(self) -> list[Finding]:
        """Every broken rule."""
        return [*self.server_errors, *self.reached, *self.hostile_accepted, *self.bad_envelopes]

    def summary(self) -> str:
        """A few lines for reports."""
        codes = ", ".join(f"{code}: {n}" for code, n in sorted(self.codes.items()))
        return (f"hostile inputs tried: {self.tried} ({len(self.distinct)} distinct values, "
                f"{len(self.fields)} fields) / refused 4xx: {self.refused} / accepted as valid: "
                f"{self.accepted} / reached m4 or a shell: {len(self.reached)} / "
                f"5xx: {len(self.server_errors)} / hostile accepted: "
                f"{len(self.hostile_accepted)} / bad envelopes: {len(self.bad_envelopes)} / "
                f"not sendable by the client: {self.unsendable} / status codes: {codes} / "
                f"{self.seconds:.1f} s")


def envelope_problem(status: int, doc: Any) -> str | None:
    """What is wrong with an error answer's envelope, or None."""
    if not isinstance(doc, dict):
        return f"not a JSON object: {show(doc)}"
    if doc.get("code") != status:
        return f"code {doc.get('code')!r} is not the status {status}"
    if not isinstance(doc.get("status"), str) or not doc["status"]:
        return f"status {doc.get('status')!r} is not a non-empty string"
    if not isinstance(doc.get("message"), str) or not doc["message"]:
        return f"message {doc.get('message')!r} is not a non-empty string"
    if set(doc) - {"code", "status", "message", "errors"}:
        return f"unexpected keys {sorted(set(doc) - {'code', 'status', 'message', 'errors'})}"
    errors = doc.get("errors")
    if errors is not None and not (isinstance(errors, dict) and all(
            isinstance(k, str) and isinstance(v, list) and all(isinstance(r, str) for r in v)
            for k, v in errors.items())):
        return f"errors is not {{field: [reasons]}}: {show(errors)}"
    return None


class ErrorCatcher(logging.Handler):
    """Collects unhandled exceptions (Flask's signal) and ERROR log records of relayfleet."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        """Keep the record's message and traceback."""
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + "".join(traceback.format_exception(*record.exc_info))
        self.seen.append(text)

    def exception(self, _sender: Any, exception: BaseException, **_: Any) -> None:
        """``got_request_exception`` receiver."""
        self.seen.append("".join(traceback.format_exception(exception)))

    @contextlib.contextmanager
    def attached(self, app: Flask) -> Iterator[ErrorCatcher]:
        """Listen on ``app`` and the relayfleet loggers for the block."""
        logger = logging.getLogger("relayfleet")
        logger.addHandler(self)
        got_request_exception.connect(self.exception, app)
        try:
            yield self
        finally:
            got_request_exception.disconnect(self.exception, app)
            logger.removeHandler(self)


def send(client: FlaskClient, probe: Probe) -> tuple[int, Any]:
    """Send ``probe``; raise ValueError when the client cannot put it on the wire."""
    kwargs: dict[str, Any] = {"method": probe.method, "headers": probe.headers,
                              "query_string": probe.query}
    if probe.raw is not None:
        kwargs.update(data=probe.raw, content_type=probe.content_type)
    elif probe.has_json:
        kwargs["json"] = probe.json_body
    response = client.open(probe.path, **kwargs)
    return response.status_code, response.get_json(silent=True)


Check = Callable[[Probe, int, Any, list[tuple[str, str]]], str | None]


def drive(app_name: str, app: Flask, client: FlaskClient, probes: Iterator[Probe],
          before: Callable[[], None], leak: Check) -> Tally:
    """Send every probe, judge its answer, and tally.

    ``before`` readies the witnesses for one request; ``leak(probe, status, doc, events)``
    names what reached m4 or a shell (None: nothing did).
    """
    tally = Tally()
    started = time.monotonic()
    catcher = ErrorCatcher()
    with catcher.attached(app):
        for probe in probes:
            before()
            catcher.seen.clear()
            try:
                with WITNESS.watching() as events:
                    status, doc = send(client, probe)
            except ValueError:
                # e.g. a header value with CR/LF: werkzeug will not send it.
                tally.unsendable += 1
                continue
            tally.tried += 1
            tally.distinct.add(show(probe.value, 10**6))
            tally.fields.add(f"{probe.route.label} {probe.field}")
            tally.codes[status] += 1
            value = show(probe.value)

            def finding(detail: str, probe: Probe = probe, status: int = status,
                        value: str = value) -> Finding:
                return Finding(app_name, probe.route.label, probe.field, value, status,
                               detail)

            if status >= 500:
                tally.server_errors.append(finding(
                    "\n".join(catcher.seen) or f"(no traceback) {show(doc, 400)}"))
            elif 400 <= status < 500:
                tally.refused += 1
                problem = envelope_problem(status, doc)
                if problem:
                    tally.bad_envelopes.append(finding(problem))
            else:
                tally.accepted += 1
                tally.accepted_examples.setdefault(
                    f"[{app_name}] {probe.route.label} {probe.field}", []).append(value)
                if not probe.acceptable:
                    tally.hostile_accepted.append(finding(f"answered {show(doc, 300)}"))
            leaked = leak(probe, status, doc, list(events))
            if leaked:
                tally.reached.append(finding(leaked))
            if status < 500 and catcher.seen:
                # A 4xx that logged an error (e.g. the audit row could not be written).
                tally.server_errors.append(finding(
                    "answered < 500 but logged an error:\n" + "\n".join(catcher.seen)))
    tally.seconds = time.monotonic() - started
    return tally


# -- the agent --------------------------------------------------------------------------------

AGENT_TOKEN = "hostile-sweep-agent-token-0123456789"
AGENT_AUTH = {"Authorization": f"Bearer {AGENT_TOKEN}"}
SMARTHOST = {"host": "relay.example.net", "port": 587, "mx": False, "mailer": "relay"}
HOST_RE = r"[A-Za-z0-9.:\[\]-]{1,260}"
ADDRESS_PART_RE = r"[A-Za-z0-9._%+=@-]{1,254}"
QUEUE_ID_RE = r"[A-Za-z0-9]{6,32}"
USERNAME_RE = r"[A-Za-z0-9._@+=-]{1,128}"


def password() -> Accepts:
    """Relay passwords: 1-256 printable characters (blanks, quotes, backslashes and
    non-ASCII included), no blank at either end."""
    return lambda v: isinstance(v, str) and 0 < len(v) <= 256 and v.isprintable() and \
        v == v.strip()


IP_RE = r"[0-9A-Fa-f:.]{2,45}"


def _hdr(n: int) -> dict[str, str]:
    return dict(AGENT_AUTH)


def agent_routes() -> list[Route]:
    """Every agent route with every input it reads."""
    smarthost_fields = (
        Field("host", "json", grammar(HOST_RE), "relay.example.net"),
        Field("port", "json", integer(1, 65535, nullable=True)),
        Field("mx", "json", boolean()),
        Field("mailer", "json", one_of("relay", "esmtp", "smtp")),
        Field("auth", "json", obj(nullable=True)),
        Field("auth.username", "json", grammar(USERNAME_RE), "pbx-relay@example.com"),
        Field("auth.password", "json", password(), "Route-S3cret!pw"),
        Field("dry_run", "json", boolean()),
    )
    return [
        Route("PUT", "/v1/smarthost", smarthost_fields,
              body=lambda n: {**SMARTHOST, "auth": {"username": "u@example.com",
                                                    "password": "pw-0123"}},
              headers=_hdr),
        Route("DELETE", "/v1/smarthost", (Field("dry_run", "json", boolean()),),
              body=lambda n: {}, headers=_hdr, optional_body=True),
        Route("POST", "/v1/queue/flush", (
            Field("reset_host_status", "json", boolean()),
            Field("queue_id", "json", grammar(QUEUE_ID_RE, nullable=True), "6AP4jQbT009721"),
            Field("recipient", "json", grammar(ADDRESS_PART_RE, nullable=True),
                  "user@example.com"),
            Field("sender", "json", grammar(ADDRESS_PART_RE, nullable=True), "root"),
        ), body=lambda n: {}, headers=_hdr, optional_body=True),
        Route("GET", "/v1/log", (Field("lines", "query", query_integer(1, 10000)),
                                 Field("unknown", "query", ignored)),
              query={"lines": "10"}, headers=_hdr),
        Route("POST", "/v1/diagnose", (
            Field("domain", "json", grammar(r"[A-Za-z0-9.-]{1,254}", nullable=True),
                  "example.com"),
            Field("public_ip", "json", grammar(IP_RE, nullable=True), "192.0.2.10"),
        ), body=lambda n: {}, headers=_hdr, optional_body=True),
        Route("GET", "/v1/status", (Field("Authorization", "header", never),)),
        Route("GET", "/v1/smarthost", (Field("Authorization", "header", never),)),
    ]


#: characters a shell (or m4) would read as more than data
SHELL_CHARS = re.compile(r"[`'\"$;|&<>()\\\s\x00*?{}~\[\]]")


_DOUBLE_QUOTED = re.compile(r"``[^`'\n]*''")


def _masked(lines: Sequence[str]) -> set[str]:
    """``lines`` with every double-quoted m4 string (``\\`\\`...''``) blanked out."""
    return {_DOUBLE_QUOTED.sub("``*''", line) for line in lines}


class AgentSweep:
    """The agent app on a fresh fake Debian sendmail host for every request."""

    def __init__(self) -> None:
        from agent.app import create_app
        from agent.config import AgentConfig, MtaSettings
        from shared.testing import debian_sendmail_host

        self._new_host = debian_sendmail_host
        self.host = debian_sendmail_host()
        #: the lines of the fixture's sendmail.mc: only lines a request adds are judged
        self.original_mc = set(self.host.read_text(self.host.mc_path).splitlines())
        self._baselines: dict[str, set[str]] = {}
        self._scripts: set[str] | None = None
        config = AgentConfig("127.0.0.1", 8587,
                             hashlib.sha256(AGENT_TOKEN.encode()).hexdigest(),
                             MtaSettings("sendmail", "debian"))
        self.app = create_app(config, executor_factory=lambda: self.host)

    def fresh_host(self) -> None:
        """A new host, so every request starts from the same state with empty records."""
        self.host = self._new_host()
        self.host.listen_smtp("relay.example.net", 587, address="192.0.2.25")

    def leak(self, probe: Probe, status: int, doc: Any,
             events: list[tuple[str, str]]) -> str | None:
        """What of ``probe`` reached m4, an argv or a shell."""
        host = self.host
        if host.m4_shell_calls:
            return f"m4 was asked to run {host.m4_shell_calls}"
        if status >= 300:
            if host.commands or host.file_ops or host.m4_inputs:
                argvs = [c.argv for c in host.commands][:5]
                return (f"a refused request touched the host: argv {argvs}, "
                        f"file ops {host.file_ops[:5]}, m4 runs {len(host.m4_inputs)}")
            if events:
                return f"a refused request started a process: {events[:3]}"
            return None
        value = probe.value
        if not isinstance(value, str) or not value:
            return None
        for ran in host.commands:
            if ran.argv[:2] in (("sh", "-c"), ("/bin/sh", "-c")) and len(ran.argv) > 2 \
                    and value in ran.argv[2] and ran.argv[2] not in self.fixed_scripts():
                return f"value {show(value)} reached a shell script: {show(ran.argv, 300)}"
            data = [arg for arg in ran.argv if arg not in self.fixed_scripts()]
            if SHELL_CHARS.search(value) and any(value in arg for arg in data):
                return f"value {show(value)} reached argv {show(ran.argv, 300)}"
        if host.m4_inputs and probe.has_json:
            # Outside m4's double quotes, the mc must be the one a valid request makes:
            # a caller's string may only change what sits inside ``...''.
            baseline = self.baseline(probe)
            masked = _masked(self._added(host))
            if masked != baseline:
                return (f"value {show(value)} changed the mc outside its quotes: "
                        f"{sorted(masked ^ baseline)[:4]}")
        return None

    def fixed_scripts(self) -> set[str]:
        """The ``sh -c`` scripts valid requests to every route run (fixed texts whose data
        travel as positional parameters)."""
        if self._scripts is None:
            saved, scripts = self.host, set()
            for route in agent_routes():
                self.fresh_host()
                with self.app.test_client() as client:
                    client.open(route.path, method=route.method, query_string=dict(route.query),
                                json=route.body(0) if route.body else None, headers=AGENT_AUTH)
                scripts |= {ran.argv[2] for ran in self.host.commands
                            if ran.argv[1:2] == ("-c",) and len(ran.argv) > 2}
            self.host, self._scripts = saved, scripts
        return self._scripts

    def _added(self, host: Any) -> list[str]:
        """The mc lines m4 compiled that the fixture's sendmail.mc does not have."""
        return [line for mc in host.m4_inputs for line in mc.splitlines()
                if line not in self.original_mc]

    def baseline(self, probe: Probe) -> set[str]:
        """The masked added mc lines of the probe's route with its valid body."""
        key = probe.route.label
        if key not in self._baselines:
            saved = self.host
            self.fresh_host()
            body = probe.route.body(0) if probe.route.body else None
            with self.app.test_client() as client:
                client.open(probe.path, method=probe.method, json=body, headers=AGENT_AUTH)
            self._baselines[key] = _masked(self._added(self.host))
            self.host = saved
        return self._baselines[key]

    def sweep(self, *, strings: int | None = None, mutated: int = 12) -> Tally:
        """Probe every route."""
        counter = itertools.count()
        probes = (p for route in agent_routes()
                  for p in probes_for(route, counter, strings=strings, mutated=mutated,
                                      body_cap=64 * 1024))
        with self.app.test_client() as client:
            return drive("agent", self.app, client, probes, self.fresh_host, self.leak)


def _strings(node: Any) -> Iterator[str]:
    """Every string in a JSON document (keys too)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)


# -- the controller ---------------------------------------------------------------------------

CONTROLLER_KEY = "x" * 43 + "="
NAME_RE = r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,99}"
HOST_NAME_RE = r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}"
TAG_RE = r"[A-Za-z0-9][A-Za-z0-9_.:=-]{0,63}"
#: a valid ed25519 public key line (ssh.host_key)
HOST_KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl")
JOB_STATES = ("pending", "running", "succeeded", "partial", "failed", "cancelled")
ACTIONS = ("set_smarthost", "remove_smarthost", "flush_queue", "collect_status", "diagnose",
           "read_log")


@contextlib.contextmanager
def controller_environment(workdir: Path) -> Iterator[dict[str, str]]:
    """A migrated SQLite database and the in-memory broker, in the environment for the
    block (restored afterwards)."""
    from controller.migrate import upgrade

    workdir.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{workdir / 'relayfleet.db'}"
    upgrade(url)
    env = {"RELAYFLEET_DATABASE_URL": url, "RELAYFLEET_BROKER_URL": "memory://",
           "RELAYFLEET_SECRET_KEY": CONTROLLER_KEY,
           "RELAYFLEET_DATA_DIR": str(workdir / "data")}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _host_body(site_id: int) -> Callable[[int], dict[str, Any]]:
    def body(n: int) -> dict[str, Any]:
        return {"name": f"sweep-host-{n}", "site_id": site_id, "address": "192.0.2.10",
                "transport": "agent",
                "agent": {"url": "http://192.0.2.10:8587", "token": "t" * 32},
                "mta": {"kind": "sendmail", "flavour": "debian", "overrides": {}},
                "tags": ["pbx"]}
    return body


def _ssh_host_body(site_id: int) -> Callable[[int], dict[str, Any]]:
    def body(n: int) -> dict[str, Any]:
        return {"name": f"sweep-ssh-{n}", "site_id": site_id, "address": "192.0.2.11",
                "transport": "ssh",
                "ssh": {"port": 22, "username": "root", "password": "pw-0123",
                        "host_key": HOST_KEY, "sudo": False}}
    return body


def _host_fields(prefix: str = "") -> tuple[Field, ...]:
    p = prefix
    return (
        Field(f"{p}name", "json", grammar(HOST_NAME_RE), "pbx01.acme.example"),
        Field(f"{p}site_id", "json", integer(1, 2**31 - 1)),
        Field(f"{p}address", "json", grammar(HOST_RE), "pbx01.acme.example"),
        Field(f"{p}transport", "json", one_of("agent", "ssh")),
        Field(f"{p}agent", "json", obj(nullable=True)),
        Field(f"{p}agent.url", "json", http_url, "http://192.0.2.10:8587"),
        Field(f"{p}agent.token", "json", text(512), "t" * 32),
        Field(f"{p}agent.ca_cert", "json", text(20000, nullable=True)),
        Field(f"{p}mta", "json", obj()),
        Field(f"{p}mta.kind", "json", one_of("sendmail")),
        Field(f"{p}mta.flavour", "json", one_of("debian", "rhel")),
        Field(f"{p}mta.overrides", "json", obj()),
        Field(f"{p}tags", "json", lambda v: isinstance(v, list) and all(
            grammar(TAG_RE)(t) for t in v)),
        Field(f"{p}tags.0", "json", grammar(TAG_RE), "pbx"),
    )


def _ssh_fields() -> tuple[Field, ...]:
    return (
        Field("ssh", "json", obj(nullable=True)),
        Field("ssh.port", "json", integer(1, 65535, strict=False)),
        Field("ssh.username", "json", grammar(r"[a-z_][a-z0-9_.-]{0,31}"), "root"),
        Field("ssh.password", "json", text(1024), "pw-0123"),
        Field("ssh.passphrase", "json", text(1024)),
        # "" counts as not given (the body logs in with a password)
        Field("ssh.private_key", "json", lambda v: v == ""),
        # the pinned key, give or take surrounding blanks; trailing junk must be refused
        Field("ssh.host_key", "json", lambda v: isinstance(v, str) and v.strip() == HOST_KEY,
              HOST_KEY),
        Field("ssh.sudo", "json", boolean()),
    )


#: profile keys that are argv lists (the others are paths or program paths)
ARGV_KEYS = ("restart", "make", "mailq")
#: profile keys a host's mta.overrides may set (paths and programs)
OVERRIDE_KEYS = ("mc", "cf", "mail_dir", "authinfo", "pid_file", "maillog", "queue_dir",
                 "restart", "make", "m4", "sendmail", "mailq", "makemap")


def _override_fields() -> tuple[Field, ...]:
    # An MSP-wide admin may set any profile key (programs run as root by design); a tenant
    # admin may set none of them (403). Strings may be accepted, other types not.
    def path(v: Any) -> bool:
        return isinstance(v, str) and "\x00" not in v

    def argv(v: Any) -> bool:
        return isinstance(v, list) and bool(v) and all(path(a) for a in v)

    return tuple(Field(f"mta.overrides.{key}", "json", argv if key in ARGV_KEYS else path,
                       None if key in ARGV_KEYS else "/etc/mail/sendmail.mc")
                 for key in OVERRIDE_KEYS)


def _job_routes(host_id: int, idem: Callable[[int], dict[str, str]]) -> list[Route]:
    target = {"hosts": [host_id]}

    def job(action: str, params: dict[str, Any]) -> Callable[[int], dict[str, Any]]:
        return lambda n: {"action": action, "target": target, "params": params,
                          "options": {"concurrency": 2, "timeout_s": 60}}

    def refs(v: Any) -> bool:
        return isinstance(v, list) and len(v) > 0 and all(
            (isinstance(r, int) and not isinstance(r, bool) and 1 <= r < 2**31)
            or grammar(HOST_NAME_RE)(r) for r in v)

    common = (
        Field("action", "json", one_of(*ACTIONS)),
        Field("target", "json", obj()),
        Field("target.hosts", "json", refs),
        Field("target.hosts.0", "json", lambda v: refs([v]), "pbx01"),
        Field("target.sites", "json", refs),
        Field("target.tenants", "json", refs),
        Field("target.tags", "json", lambda v: isinstance(v, list) and len(v) > 0 and all(
            grammar(TAG_RE)(t) for t in v)),
        Field("target.all", "json", lambda v: v is True or (_hashable(v) and v in
                                                           mm_fields.Boolean.truthy)),
        Field("params", "json", obj()),
        Field("options", "json", obj()),
        Field("options.concurrency", "json", integer(1, 1000)),
        Field("options.max_failures", "json", integer(0, 10**6, nullable=True)),
        Field("options.dry_run", "json", boolean()),
        Field("options.timeout_s", "json", integer(5, 3600)),
        Field("callback_url", "json", lambda v: v is None or http_url(v),
              "https://tickets.example.net/hook"),
        Field("Idempotency-Key", "header", header_key, "job-key-1"),
    )
    smarthost = (
        Field("params.host", "json", grammar(HOST_RE), "relay.example.net"),
        Field("params.port", "json", integer(1, 65535, nullable=True)),
        Field("params.mx", "json", boolean()),
        Field("params.mailer", "json", one_of("relay", "esmtp", "smtp")),
        Field("params.auth", "json", obj(nullable=True)),
        Field("params.auth.username", "json", grammar(USERNAME_RE), "u@example.com"),
        Field("params.auth.password", "json", password(), "pw-0123"),
        Field("params.dry_run", "json", boolean()),
    )
    return [
        Route("POST", "/v1/jobs", common + smarthost,
              body=job("set_smarthost", {"host": "relay.example.net", "port": 587,
                                         "auth": {"username": "u@example.com",
                                                  "password": "pw-0123"}}),
              headers=idem),
        Route("POST", "/v1/jobs", (
            Field("params.reset_host_status", "json", boolean()),
            Field("params.queue_id", "json", grammar(QUEUE_ID_RE, nullable=True),
                  "6AP4jQbT009721"),
            Field("params.recipient", "json", grammar(ADDRESS_PART_RE, nullable=True),
                  "user@example.com"),
            Field("params.sender", "json", grammar(ADDRESS_PART_RE, nullable=True), "root"),
        ), body=job("flush_queue", {}), headers=idem),
        Route("POST", "/v1/jobs", (
            Field("params.domain", "json", grammar(r"[A-Za-z0-9.-]{1,254}", nullable=True),
                  "example.com"),
            Field("params.public_ip", "json", grammar(IP_RE, nullable=True), "192.0.2.10"),
        ), body=job("diagnose", {}), headers=idem),
        Route("POST", "/v1/jobs", (
            Field("params.lines", "json", integer(1, 10000, strict=False)),
        ), body=job("read_log", {}), headers=idem),
        Route("POST", "/v1/jobs", (
            Field("params.dry_run", "json", boolean()),
            Field("params.host", "json", never),
        ), body=job("remove_smarthost", {}), headers=idem),
    ]


def _page_fields() -> tuple[Field, ...]:
    return (Field("limit", "query", query_integer(1, 1000)),
            Field("offset", "query", query_integer(0, 10**9)),
            Field("unknown", "query", ignored))


def _path_field() -> tuple[Field, ...]:
    # Any value that reads as an id (digits, Unicode digits included) may be answered.
    return (Field("id", "path", lambda v: bool(re.fullmatch(r"\d{1,10}", value_text(v)))),)


def controller_routes(ids: Mapping[str, int], idem: Callable[[int], dict[str, str]]
                      ) -> list[Route]:
    """Every controller route with every input it reads (``ids``: objects made first)."""
    host_query = (Field("tenant_id", "query", query_integer(1, 2**31 - 1)),
                  Field("site_id", "query", query_integer(1, 2**31 - 1)),
                  Field("tag", "query", lambda v: grammar(TAG_RE)(value_text(v))),
                  Field("transport", "query", lambda v: value_text(v) in ("agent", "ssh")),
                  Field("name", "query", lambda v: 1 <= len(value_text(v)) <= 253
                        and "\x00" not in value_text(v)))
    tenant, site = ids["tenant"], ids["site"]
    return [
        Route("POST", "/v1/tenants", (Field("name", "json", grammar(NAME_RE), "Acme Dental"),),
              body=lambda n: {"name": f"Tenant {n}"}),
        Route("GET", "/v1/tenants", _page_fields()),
        Route("GET", "/v1/tenants/{id}", _path_field()),
        Route("DELETE", "/v1/tenants/{id}", _path_field()),
        Route("POST", "/v1/sites", (
            Field("tenant_id", "json", integer(1, 2**31 - 1)),
            Field("name", "json", grammar(NAME_RE), "Leeds office"),
        ), body=lambda n: {"tenant_id": tenant, "name": f"Site {n}"}),
        Route("GET", "/v1/sites", (*_page_fields(),
                                   Field("tenant_id", "query", query_integer(1, 2**31 - 1)))),
        Route("GET", "/v1/sites/{id}", _path_field()),
        Route("PATCH", "/v1/sites/{id}", (Field("name", "json", grammar(NAME_RE), "Leeds"),),
              body=lambda n: {"name": f"Renamed {n}"}, path_id=str(ids["patch_site"])),
        Route("PATCH", "/v1/sites/{id}", _path_field(), body=lambda n: {"name": f"R {n}"}),
        Route("DELETE", "/v1/sites/{id}", _path_field()),
        Route("POST", "/v1/hosts", (*_host_fields(), *_override_fields(),
                                    Field("Idempotency-Key", "header", header_key,
                                          "host-key-1")),
              body=_host_body(site), headers=idem),
        Route("POST", "/v1/hosts", _ssh_fields(), body=_ssh_host_body(site), headers=idem),
        Route("GET", "/v1/hosts", (*_page_fields(), *host_query)),
        Route("GET", "/v1/hosts/{id}", _path_field()),
        # A PATCH may be empty (nothing to change): a null or non-JSON body counts as none.
        Route("PATCH", "/v1/hosts/{id}", _host_fields(), body=_host_body(site),
              path_id=str(ids["patch_host"]), optional_body=True),
        Route("PATCH", "/v1/hosts/{id}", _path_field(), body=lambda n: {"tags": ["x"]},
              optional_body=True),
        Route("DELETE", "/v1/hosts/{id}", _path_field()),
        Route("POST", "/v1/hosts/import", (
            Field("hosts", "json", lambda v: isinstance(v, list) and v == []),
            *_host_fields("hosts.0."),
        ), body=lambda n: {"hosts": [_host_body(site)(n)]}),
        Route("POST", "/v1/tokens", (
            Field("name", "json", grammar(NAME_RE), "ci"),
            Field("role", "json", one_of("viewer", "operator", "admin")),
            Field("tenant_id", "json", integer(1, 2**31 - 1, nullable=True)),
        ), body=lambda n: {"name": f"sweep {n}", "role": "viewer", "tenant_id": tenant}),
        Route("GET", "/v1/tokens", _page_fields()),
        Route("GET", "/v1/tokens/{id}", _path_field()),
        Route("DELETE", "/v1/tokens/{id}", _path_field()),
        *_job_routes(ids["host"], idem),
        Route("GET", "/v1/jobs", (*_page_fields(),
                                  Field("status", "query", lambda v: value_text(v) in
                                        JOB_STATES),
                                  Field("action", "query", lambda v: value_text(v) in
                                        ACTIONS))),
        Route("GET", "/v1/jobs/{id}", (Field("results", "query", query_boolean()),),
              path_id=str(ids["job"])),
        Route("GET", "/v1/jobs/{id}", _path_field()),
        Route("POST", "/v1/jobs/{id}/cancel", _path_field()),
        Route("POST", "/v1/jobs/{id}/retry", _path_field()),
        Route("GET", "/v1/fleet", (*_page_fields(), *host_query,
                                   Field("holding_mail", "query", query_boolean()))),
        Route("GET", "/v1/audit", (*_page_fields(),
                                   Field("token_id", "query", query_integer(1, 2**31 - 1)),
                                   Field("action", "query", lambda v: 1 <= len(value_text(
                                       v)) <= 100 and "\x00" not in value_text(v)))),
        Route("GET", "/v1/health", (Field("unknown", "query", ignored),)),
        Route("GET", "/metrics", (Field("Authorization", "header", never),)),
    ]


class ControllerSweep:
    """The controller app (SQLite, in-memory broker) with an MSP-wide admin token."""

    def __init__(self) -> None:
        from tests.controller_client import Controller

        self.controller = Controller.create()
        self.keys = itertools.count(1)
        c = self.controller
        tenant = c.tenant("Sweep Tenant")
        site = c.site(tenant, "Sweep Site")
        host = int(c.host(site, "sweep-target")["id"])
        patch_host = int(c.host(site, "sweep-patched")["id"])
        patch_site = c.site(tenant, "Sweep Patched")
        job = c.start_job({"action": "collect_status", "target": {"hosts": [host]}})
        self.ids = {"tenant": tenant, "site": site, "host": host, "patch_host": patch_host,
                    "patch_site": patch_site, "job": job}

    def headers(self, n: int) -> dict[str, str]:
        """The admin token and a fresh Idempotency-Key."""
        return {"Idempotency-Key": f"sweep-{n}-{next(self.keys)}"}

    def leak(self, probe: Probe, status: int, doc: Any,
             events: list[tuple[str, str]]) -> str | None:
        """The controller starts no process for any request."""
        return f"started a process: {events[:3]}" if events else None

    def sweep(self, *, strings: int | None = None, mutated: int = 12) -> Tally:
        """Probe every route."""
        counter = itertools.count()
        admin = {"Authorization": f"Bearer {self.controller.admin}"}

        def with_token(route: Route) -> Route:
            make = route.headers

            def headers(n: int) -> dict[str, str]:
                return {**admin, **(make(n) if make else {})}
            return Route(route.method, route.path, route.fields, route.body, route.query,
                         route.path_id, headers)

        routes = [with_token(r) for r in controller_routes(self.ids, self.headers)]
        cap = self.controller.app.config["MAX_CONTENT_LENGTH"]
        probes = (p for route in routes
                  for p in probes_for(route, counter, strings=strings, mutated=mutated,
                                      body_cap=cap))
        app = self.controller.app
        return drive("controller", app, self.controller.client, probes, lambda: None,
                     self.leak)


def run_sweep(workdir: Path, *, strings: int | None = 60, mutated: int = 8,
              agent: bool = True, controller: bool = True) -> dict[str, Tally]:
    """Run the sweep; return a tally per app and ``total``.

    ``strings``: how many curated hostile strings each controller field gets (None: all of
    them); the agent's fields (fewer, and cheap to probe) always get all of them.
    """
    tallies: dict[str, Tally] = {}
    if agent:
        tallies["agent"] = AgentSweep().sweep(mutated=mutated)
    if controller:
        with controller_environment(workdir):
            tallies["controller"] = ControllerSweep().sweep(strings=strings, mutated=mutated)
    total = Tally()
    for tally in tallies.values():
        total.add(tally)
    tallies["total"] = total
    return tallies


def report(findings: Sequence[Finding], limit: int = 40) -> str:
    """The first ``limit`` findings, one paragraph each."""
    shown = "\n\n".join(str(f) for f in findings[:limit])
    more = f"\n\n... and {len(findings) - limit} more" if len(findings) > limit else ""
    return shown + more


# -- the tests ------------------------------------------------------------------------------------


def _assert_clean(tally: Tally, minimum: int) -> None:
    assert tally.tried >= minimum, tally.summary()
    assert not tally.server_errors, "5xx:\n" + report(tally.server_errors)
    assert not tally.reached, "reached m4 or a shell:\n" + report(tally.reached)
    assert not tally.hostile_accepted, "hostile values accepted:\n" + report(
        tally.hostile_accepted)
    assert not tally.bad_envelopes, "bad error envelopes:\n" + report(tally.bad_envelopes)


def test_the_shell_witness_sees_a_process_start() -> None:
    """The audit hook is live: a subprocess started while watching is recorded."""
    import subprocess

    with WITNESS.watching() as events:
        subprocess.run([sys.executable, "-c", "pass"], check=True)
    seen = len(events)
    assert any(event == "subprocess.Popen" for event, _ in events)
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    assert len(events) == seen  # not recording outside the block


def test_the_agent_refuses_hostile_values_and_nothing_reaches_m4_or_a_shell() -> None:
    """Every field of every agent route, over a fake Debian sendmail host."""
    tally = AgentSweep().sweep(mutated=8)
    print(tally.summary())
    _assert_clean(tally, 1000)


def test_the_controller_refuses_hostile_values_and_starts_no_process(tmp_path: Path) -> None:
    """Every field of every controller route, on SQLite with the in-memory broker."""
    with controller_environment(tmp_path):
        tally = ControllerSweep().sweep(strings=60, mutated=8)
    print(tally.summary())
    _assert_clean(tally, 1000)
