"""Where the controller's own HTTP requests (agent calls, job callbacks) may go.

Agent URLs and callback URLs are chosen by tenants, and the worker that follows them sits
inside the MSP's network: left alone it is a way to POST to internal services and, through
the errors it reports, a port scanner. Every outbound request therefore goes through
:class:`HttpClient`, which

- resolves the URL's host name once and checks *every* address against the
  :class:`EgressPolicy` (refused: loopback, link-local — 169.254.169.254 included —,
  unspecified and multicast, in IPv4, IPv6 and IPv4-mapped forms; private ranges are
  allowed unless ``RELAYFLEET_EGRESS_ALLOW`` narrows egress to an allow-list);
- connects to the address it checked (no second lookup, so no DNS-rebinding window) while
  keeping the URL's host name for the Host header, TLS SNI and the certificate check;
- checks a pinned certificate fingerprint right after the TLS handshake, before a byte of
  the request (token, passwords) is sent;
- holds the whole request to one deadline (a server dripping one byte a second is cut
  off) and reads at most a given number of answer bytes.

A client made with ``keep_alive`` (the agent transport's) keeps its connections open
between requests, in a bounded pool per process (:class:`ConnectionPool`), keyed by
scheme, URL host name, port, the checked address and the TLS trust: the next request to
that agent (the next unit of the host, the next job) skips the TCP and TLS handshakes.
Every guarantee above holds for a reused connection too: the name is resolved and every
address checked against the policy on every request, and only a connection to an address
just allowed is taken from the pool (a policy change takes effect at once); the
certificate was checked against the same pin (part of the key) before the connection's
first byte; the deadline and body cap are the request's own. A kept connection the server
has closed meanwhile is noticed before use (it reads as closed) or, if it closes as the
request goes out, by a failure before any answer: that request is sent once more on a
fresh connection. Only agent calls keep connections, and every agent route is idempotent
(an operation run again is ``changed: false``; reads change nothing), so a request that
reached the agent just before it dropped the connection is safe to repeat; callbacks and
notices (receivers' routes are not known to be idempotent) use a connection per request.

Errors keep the socket detail in the worker log; their messages say only "refused by
egress policy", "unreachable" or "timed out", which is what tenants get to see.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import heapq
import http.client
import ipaddress
import itertools
import logging
import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

from shared.errors import ConfigError

log = logging.getLogger("relayfleet.egress")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: the word in ``RELAYFLEET_EGRESS_ALLOW`` that permits loopback (a same-box setup)
LOOPBACK_WORD = "loopback"
#: how long a TCP connect (and TLS handshake) may take within a request's deadline
CONNECT_TIMEOUT_S = 10.0
#: how long an idle kept connection is kept: under the 10 s after which the agent's server
#: (cheroot) closes an idle one, so a pooled connection is rarely found closed
POOL_IDLE_S = 8.0
#: the most idle connections a process keeps (each holds a file descriptor)
POOL_MAX_IDLE = 256


class EgressError(Exception):
    """An outbound request did not happen or did not finish; ``str()`` is safe to show."""


class EgressRefused(EgressError):
    """The policy refuses the destination; nothing was sent."""


class Unreachable(EgressError):
    """The destination could not be reached (the detail is in the log only)."""


class DeadlineExceeded(EgressError):
    """The whole request took longer than its deadline."""


class AnswerTooLarge(EgressError):
    """The answer's body is larger than the caller accepts."""


class CertificateMismatch(EgressError):
    """The server's certificate is not the pinned one; nothing was sent."""

    def __init__(self, presented: str, pinned: str) -> None:
        super().__init__(f"the TLS certificate presented has fingerprint sha256:{presented}, "
                         f"but sha256:{pinned} is pinned: nothing was sent")
        self.presented = presented
        self.pinned = pinned


class CertificateNotTrusted(EgressError):
    """The server's certificate did not verify against the trust anchor; nothing was sent."""


def _plain(address: IPAddress) -> IPAddress:
    """The IPv4 address behind an IPv4-mapped (``::ffff:a.b.c.d``) IPv6 address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _always_refused(address: IPAddress) -> str | None:
    """Why ``address`` is never a destination (whatever the allow-list), or ``None``."""
    if address.is_link_local:
        return "link-local"
    if address.is_unspecified:
        return "unspecified"
    if address.is_multicast:
        return "multicast"
    if address == ipaddress.IPv4Address("255.255.255.255"):
        return "broadcast"
    return None


def _is_loopback_name(host: str) -> bool:
    host = host.lower().rstrip(".")
    return host == "localhost" or host.endswith(".localhost")


def normalise_fingerprint(value: str) -> str:
    """A SHA-256 certificate fingerprint as 64 lowercase hex digits.

    Accepts ``sha256:``-prefixed, colon-separated and upper-case forms (what
    ``relayfleet-agent check`` and ``openssl x509 -fingerprint -sha256`` print).
    """
    text = value.strip().lower()
    for prefix in ("sha256:", "sha256 fingerprint=", "sha256="):
        if text.startswith(prefix):
            text = text[len(prefix):]
    text = text.replace(":", "")
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise ValueError("must be a SHA-256 fingerprint: 64 hex digits (colons allowed)")
    return text


def certificate_fingerprint(der: bytes) -> str:
    """The SHA-256 fingerprint of a DER certificate (64 lowercase hex digits)."""
    return hashlib.sha256(der).hexdigest()


@dataclass(frozen=True)
class EgressPolicy:
    """Which addresses outbound requests may reach.

    Without an allow-list: anything but loopback, link-local, unspecified and multicast.
    With one: only its networks and host names (loopback only if it says ``loopback``);
    link-local, unspecified and multicast stay refused either way.
    """

    networks: tuple[IPNetwork, ...] = ()
    names: frozenset[str] = frozenset()
    loopback: bool = False

    @property
    def narrowed(self) -> bool:
        """Whether an allow-list is in force."""
        return bool(self.networks or self.names)

    @classmethod
    def parse(cls, text: str | None) -> EgressPolicy:
        """The policy ``RELAYFLEET_EGRESS_ALLOW`` describes (comma-separated CIDRs, host
        names and the word ``loopback``; empty: the default policy)."""
        networks: list[IPNetwork] = []
        names: set[str] = set()
        loopback = False
        for raw in (text or "").split(","):
            item = raw.strip().lower()
            if not item:
                continue
            if item == LOOPBACK_WORD:
                loopback = True
                continue
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
                continue
            except ValueError:
                pass
            label = item.rstrip(".")
            if not label or any(c not in "abcdefghijklmnopqrstuvwxyz0123456789-." for c in label):
                raise ConfigError(f"RELAYFLEET_EGRESS_ALLOW: {raw.strip()!r} is neither a "
                                  "network (CIDR), a host name nor 'loopback'")
            names.add(label)
        return cls(tuple(networks), frozenset(names), loopback)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> EgressPolicy:
        """The policy of ``RELAYFLEET_EGRESS_ALLOW`` in ``environ`` (default os.environ)."""
        env = os.environ if environ is None else environ
        return _parsed_policy(env.get("RELAYFLEET_EGRESS_ALLOW"))

    def refusal(self, host: str, address: IPAddress) -> str | None:
        """Why ``address`` (which ``host`` resolved to) may not be reached, or ``None``."""
        address = _plain(address)
        why = _always_refused(address)
        if why is not None:
            return why
        if address.is_loopback:
            return None if self.loopback else "loopback"
        if not self.narrowed:
            return None
        if host.lower().rstrip(".") in self.names:
            return None
        if any(address in net for net in self.networks
               if net.version == address.version):
            return None
        return "not in RELAYFLEET_EGRESS_ALLOW"

    def check_literal(self, url: str) -> str | None:
        """Why ``url`` is refused without resolving anything (its host is an IP literal
        or a loopback name), or ``None`` (a name is checked again when it is used)."""
        host = urlsplit(url).hostname or ""
        if _is_loopback_name(host):
            return None if self.loopback else "loopback"
        try:
            address: IPAddress = ipaddress.ip_address(host)
        except ValueError:
            try:
                # The forms only the C resolver knows (127.1, 0x7f.1, 2130706433): no lookup.
                address = ipaddress.IPv4Address(socket.inet_aton(host))
            except OSError:
                return None
        return self.refusal(host, address)

    def resolve(self, host: str, port: int) -> list[IPAddress]:
        """Every address ``host`` resolves to, all allowed; else :class:`EgressRefused`."""
        if _is_loopback_name(host) and not self.loopback:
            raise EgressRefused("refused by egress policy")
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            log.warning("egress: cannot resolve %s: %s", host, exc)
            raise Unreachable("unreachable") from None
        addresses: list[IPAddress] = []
        for info in infos:
            address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
            why = self.refusal(host, address)
            if why is not None:
                # One refused address refuses the name: which one a client would pick is
                # not ours to guess, and a name mixing both is what rebinding looks like.
                log.warning("egress: refused %s:%s -> %s (%s)", host, port, address, why)
                raise EgressRefused("refused by egress policy")
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise Unreachable("unreachable")
        return addresses


@functools.lru_cache(maxsize=16)
def _parsed_policy(text: str | None) -> EgressPolicy:
    """:meth:`EgressPolicy.parse`, once per text: every agent transport reads the policy
    (a policy is immutable; a changed variable is another text, so it applies at once)."""
    return EgressPolicy.parse(text)


@dataclass(frozen=True)
class TlsTrust:
    """How to accept an https server: a pinned SHA-256 certificate fingerprint, a PEM CA
    certificate it must chain to, or (neither) the system's CAs."""

    fingerprint: str | None = None
    ca_cert: str | None = field(default=None, repr=False)

    def context(self) -> ssl.SSLContext:
        """The client TLS context for this trust (a new one)."""
        if self.fingerprint:
            # The pin is the trust, as with SSH host keys: chain and name are not asked for
            # (a self-signed certificate is the normal case); checked after the handshake.
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        if self.ca_cert:
            return ssl.create_default_context(cadata=self.ca_cert)
        return ssl.create_default_context()


@functools.lru_cache(maxsize=64)
def _explicit_context(tls: TlsTrust) -> ssl.SSLContext:
    """One context per pinned or CA trust, shared by the process's connections (loading a
    CA into a context costs more than the handshake that uses it; a context is safe to
    share between threads)."""
    return tls.context()


def _context_for(tls: TlsTrust) -> ssl.SSLContext:
    """The TLS context of a connection: shared for a pin or an explicit CA; made anew for
    the system's CAs (whose store may change while the worker runs)."""
    if tls.fingerprint or tls.ca_cert:
        return _explicit_context(tls)
    return tls.context()


@dataclass(frozen=True)
class Answer:
    """An HTTP answer: status, headers (lower-case names) and at most the capped body."""

    status: int
    headers: dict[str, str]
    body: bytes


class Deadlines:
    """One thread per process that calls what is due when its time comes: a deadline per
    request without a thread per request (starting one cost more CPU than a kept
    connection's whole exchange). Callbacks run on that thread and must be quick."""

    def __init__(self) -> None:
        self._reset()
        # A forked child (a Celery pool process) has no copy of the thread: start afresh.
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, Deadline]] = []
        self._order = itertools.count()
        self._cancelled = 0
        self._thread: threading.Thread | None = None

    def call_at(self, when: float, callback: Callable[[], None]) -> Deadline:
        """Call ``callback`` at ``when`` (``time.monotonic``) unless cancelled first."""
        due = Deadline(self, callback)
        with self._cond:
            heapq.heappush(self._heap, (when, next(self._order), due))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="relayfleet-deadlines",
                                                daemon=True)
                self._thread.start()
            elif self._heap[0][2] is due:
                self._cond.notify()  # sooner than what the thread waits for
        return due

    def _cancel(self, due: Deadline) -> None:
        with self._cond:
            if due.cancelled:
                return
            due.cancelled = True
            self._cancelled += 1
            # Cancelled entries leave the heap when they come up; when they are most of it
            # (deadlines far out, requests ending early), the heap is rebuilt without them.
            if self._cancelled > 64 and 2 * self._cancelled > len(self._heap):
                self._heap = [entry for entry in self._heap if not entry[2].cancelled]
                heapq.heapify(self._heap)
                self._cancelled = 0

    def _next_due(self) -> Deadline:
        with self._cond:
            while True:
                if not self._heap:
                    self._cond.wait()
                    continue
                when, _, due = self._heap[0]
                if due.cancelled:
                    heapq.heappop(self._heap)
                    self._cancelled -= 1
                    continue
                wait = when - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
                due.cancelled = True  # (fired: a later cancel is a no-op)
                return due

    def _run(self) -> None:
        while True:
            due = self._next_due()
            try:
                due.callback()
            except Exception:  # one callback's bug must not stop every later deadline
                log.exception("egress: a deadline callback failed")

    def pending(self) -> int:
        """How many calls are still to come (neither made nor cancelled)."""
        with self._cond:
            return len(self._heap) - self._cancelled


class Deadline:
    """A call :class:`Deadlines` will make, unless :meth:`cancel` comes first."""

    __slots__ = ("_owner", "callback", "cancelled")

    def __init__(self, owner: Deadlines, callback: Callable[[], None]) -> None:
        self._owner = owner
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        """Do not make the call (nothing happens if it was made already)."""
        self._owner._cancel(self)


#: this process's deadlines (requests' watchdogs, SSH operations' time boxes)
DEADLINES = Deadlines()


class _Watchdog:
    """Shuts a socket down when the request's deadline passes (a read then returns)."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.fired = threading.Event()
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._due = DEADLINES.call_at(deadline, self._fire)

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
            if self.fired.is_set():
                self._shut()

    def release(self) -> bool:
        """Stop watching the socket (it outlives this request, in the pool); ``False`` if
        the deadline has already shut it."""
        with self._lock:
            self._sock = None
            return not self.fired.is_set()

    def _shut(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                # The raw socket's shutdown, also under TLS: unblocks a pending read.
                socket.socket.shutdown(self._sock, socket.SHUT_RDWR)

    def _fire(self) -> None:
        with self._lock:
            self.fired.set()
            self._shut()

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def cancel(self) -> None:
        self._due.cancel()
        with self._lock:
            self._sock = None  # (the request is over: nothing of it is kept alive here)


#: handed to plain-http connections, which never use it (no CA store loaded)
_UNUSED_TLS_CONTEXT = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


class _PinnedConnection(http.client.HTTPSConnection):
    """An HTTP(S) connection to a checked address, named by the URL's host name."""

    def __init__(self, host: str, port: int, *, address: IPAddress, tls: TlsTrust | None,
                 watchdog: _Watchdog) -> None:
        context = _context_for(tls) if tls is not None else None
        # Given no context, http.client builds a default one and loads the system's CA
        # store for every connection (about 36 ms of CPU), even one that never speaks TLS.
        super().__init__(host, port, timeout=CONNECT_TIMEOUT_S,
                         context=context or _UNUSED_TLS_CONTEXT)
        self._tls_context = context
        self._address = address
        self._tls = tls
        self._watchdog = watchdog

    def connect(self) -> None:
        remaining = self._watchdog.remaining()
        if remaining <= 0:
            raise TimeoutError("deadline passed before connecting")
        # A socket of our own rather than create_connection, which would look the
        # (checked) address up again.
        family = socket.AF_INET6 if self._address.version == 6 else socket.AF_INET
        raw = socket.socket(family, socket.SOCK_STREAM)
        self._watchdog.watch(raw)
        try:
            raw.settimeout(min(CONNECT_TIMEOUT_S, remaining))
            raw.connect((str(self._address), self.port))
        except BaseException:
            raw.close()
            raise
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._tls is None or self._tls_context is None:
            self.sock = raw
        else:
            # SNI and the certificate check use the URL's name, not the pinned address.
            self.sock = self._tls_context.wrap_socket(raw, server_hostname=self.host)
            if self._tls.fingerprint:
                der = self.sock.getpeercert(binary_form=True) or b""
                presented = certificate_fingerprint(der)
                if presented != self._tls.fingerprint:
                    self.sock.close()
                    raise CertificateMismatch(presented, self._tls.fingerprint)
        self.rebind(self._watchdog)

    def rebind(self, watchdog: _Watchdog) -> None:
        """Hold the connection's next exchange to ``watchdog``'s deadline."""
        self._watchdog = watchdog
        # (the TLS socket itself: wrapping detached the raw one the connect watched)
        watchdog.watch(self.sock)
        # Each read may wait at most what is left; the watchdog ends a slow drip.
        self.sock.settimeout(max(0.1, watchdog.remaining()))

    def closed_by_peer(self) -> bool:
        """Whether an idle connection reads as closed (or has unasked-for bytes): either
        way it cannot carry a request."""
        if self.sock is None:
            return True
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
        return bool(poller.poll(0))


#: a kept connection's destination: scheme, URL host name, port, checked address, TLS trust
PoolKey = tuple[str, str, int, IPAddress, TlsTrust | None]


class ConnectionPool:
    """Idle kept-alive connections of one process, newest reused first, each kept at most
    ``idle_s`` seconds and at most ``max_idle`` in all (the oldest closed first)."""

    def __init__(self, max_idle: int = POOL_MAX_IDLE, idle_s: float = POOL_IDLE_S) -> None:
        self.max_idle = max_idle
        self.idle_s = idle_s
        self._lock = threading.Lock()
        self._idle: dict[PoolKey, list[tuple[float, _PinnedConnection]]] = {}
        self._count = 0
        self._pid = os.getpid()

    def _forked(self) -> list[_PinnedConnection]:
        # A forked child (a Celery pool process) must not share its parent's sockets.
        if self._pid == os.getpid():
            return []
        self._pid = os.getpid()
        dropped = [conn for kept in self._idle.values() for _since, conn in kept]
        self._idle.clear()
        self._count = 0
        return dropped

    def take(self, key: PoolKey) -> _PinnedConnection | None:
        """A kept connection to ``key`` that is still open, or ``None``."""
        now = time.monotonic()
        stale: list[_PinnedConnection] = []
        found = None
        with self._lock:
            stale += self._forked()
            kept = self._idle.get(key, [])
            while kept and found is None:
                since, conn = kept.pop()
                self._count -= 1
                if now - since > self.idle_s or conn.closed_by_peer():
                    stale.append(conn)
                else:
                    found = conn
            if not kept:
                self._idle.pop(key, None)
        for conn in stale:
            conn.close()
        return found

    def put(self, key: PoolKey, connection: _PinnedConnection) -> None:
        """Keep ``connection`` for a later request to ``key``."""
        now = time.monotonic()
        evicted: list[_PinnedConnection] = []
        with self._lock:
            evicted += self._forked()
            self._idle.setdefault(key, []).append((now, connection))
            self._count += 1
            while self._count > self.max_idle:
                oldest = min(self._idle, key=lambda k: self._idle[k][0][0])
                evicted.append(self._idle[oldest].pop(0)[1])
                self._count -= 1
                if not self._idle[oldest]:
                    del self._idle[oldest]
        for conn in evicted:
            conn.close()

    def clear(self) -> None:
        """Close every kept connection."""
        with self._lock:
            dropped = [conn for kept in self._idle.values() for _since, conn in kept]
            self._idle.clear()
            self._count = 0
        for conn in dropped:
            conn.close()

    def __len__(self) -> int:
        with self._lock:
            return self._count


#: this process's kept connections (the agent transport's)
POOL = ConnectionPool()
#: a request on a kept connection failed this way before any answer: the server had
#: closed it (not a byte answered; a reset or broken pipe while sending or awaiting the
#: status line); sent once more on a fresh connection
_CLOSED_UNDER_US = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError,
                    ConnectionAbortedError, ssl.SSLEOFError, ssl.SSLZeroReturnError)


class _Reconnect(Exception):
    """A kept connection turned out closed before any answer: use a fresh one."""


@dataclass(frozen=True)
class HttpClient:
    """Outbound HTTP under an egress policy, a whole-request deadline and a body cap."""

    policy: EgressPolicy = field(default_factory=EgressPolicy)
    #: keep connections in :data:`POOL` for later requests (idempotent routes only)
    keep_alive: bool = False

    def request(self, method: str, url: str, *, deadline_s: float, max_body: int,
                headers: Mapping[str, str] | None = None, body: bytes | None = None,
                params: Mapping[str, Any] | None = None, tls: TlsTrust | None = None,
                truncate: bool = False) -> Answer:
        """Send one request and read its answer within ``deadline_s`` seconds.

        A body over ``max_body`` bytes is :class:`AnswerTooLarge`, or (``truncate``) cut
        there. ``tls`` applies to https URLs (default: the system's CAs).
        """
        parts = urlsplit(url)
        host = parts.hostname or ""
        https = parts.scheme == "https"
        port = parts.port or (443 if https else 80)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if params:
            path += ("&" if "?" in path else "?") + urlencode(dict(params), doseq=True)
        watchdog = _Watchdog(time.monotonic() + deadline_s)
        try:
            addresses = self.policy.resolve(host, port)
            return self._exchange(parts.scheme, host, port, addresses, watchdog,
                                  method=method, path=path, headers=dict(headers or {}),
                                  body=body, tls=(tls or TlsTrust()) if https else None,
                                  max_body=max_body, truncate=truncate)
        finally:
            watchdog.cancel()

    def _exchange(self, scheme: str, host: str, port: int, addresses: Iterable[IPAddress],
                  watchdog: _Watchdog, *, method: str, path: str, headers: dict[str, str],
                  body: bytes | None, tls: TlsTrust | None, max_body: int,
                  truncate: bool) -> Answer:
        for address in addresses:
            # (every address was just checked against the policy: a kept connection is
            # only ever taken for an address allowed now)
            key: PoolKey | None = ((scheme, host.lower(), port, address, tls)
                                   if self.keep_alive else None)
            where = f"{host} ({address})"
            kept = POOL.take(key) if key is not None else None
            if kept is not None:
                kept.rebind(watchdog)
                try:
                    return self._send(kept, watchdog, method=method, path=path,
                                      headers=headers, body=body, max_body=max_body,
                                      truncate=truncate, where=where, key=key, reused=True)
                except _Reconnect:
                    log.info("egress: %s: a kept connection was closed by the server; "
                             "sending again on a new one", where)
            connection = _PinnedConnection(host, port, address=address, tls=tls,
                                           watchdog=watchdog)
            try:
                connection.connect()
            except EgressError:
                connection.close()
                raise
            except ssl.SSLCertVerificationError as exc:
                connection.close()
                log.warning("egress: %s: certificate not trusted: %s", where, exc)
                raise CertificateNotTrusted(
                    f"the TLS certificate was not trusted ({exc.verify_message})"
                ) from None
            except OSError as exc:
                connection.close()
                # Refused, filtered or slow to connect all read "unreachable": which
                # one it was would tell a tenant how a port is firewalled.
                log.warning("egress: cannot connect to %s (%s) port %s: %s", host,
                            address, port, exc)
                continue
            return self._send(connection, watchdog, method=method, path=path,
                              headers=headers, body=body, max_body=max_body,
                              truncate=truncate, where=where, key=key, reused=False)
        raise Unreachable("unreachable") from None

    @staticmethod
    def _send(connection: _PinnedConnection, watchdog: _Watchdog, *, method: str, path: str,
              headers: dict[str, str], body: bytes | None, max_body: int, truncate: bool,
              where: str, key: PoolKey | None, reused: bool) -> Answer:
        """One exchange on ``connection``; it goes back to the pool (``key``) when the
        answer was read to its end in time and the server keeps it open, else it is
        closed. :class:`_Reconnect` when a ``reused`` connection was found closed before
        any answer."""
        pooled = False
        try:
            try:
                connection.request(method, path, body=body, headers=headers)
                answer = connection.getresponse()
            except _CLOSED_UNDER_US as exc:
                if reused and not watchdog.fired.is_set() and watchdog.remaining() > 0:
                    raise _Reconnect() from exc
                raise
            data = answer.read(max_body + 1)
        except (OSError, http.client.HTTPException) as exc:
            if watchdog.fired.is_set() or isinstance(exc, TimeoutError):
                raise DeadlineExceeded("timed out") from None
            log.warning("egress: %s: the exchange failed: %r", where, exc)
            raise Unreachable("unreachable") from None
        else:
            if watchdog.fired.is_set():
                raise DeadlineExceeded("timed out")
            if len(data) > max_body:
                if not truncate:
                    raise AnswerTooLarge(f"the answer is larger than {max_body} bytes")
                data = data[:max_body]
            elif (key is not None and answer.isclosed() and connection.sock is not None
                  and watchdog.release()):
                # read to its end, the server keeps the connection, the deadline never
                # touched it: fit for the next request
                POOL.put(key, connection)
                pooled = True
            return Answer(answer.status, {k.lower(): v for k, v in answer.getheaders()},
                          data)
        finally:
            if not pooled:
                connection.close()
