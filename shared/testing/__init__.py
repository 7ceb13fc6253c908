"""In-memory hosts for tests: :class:`FakeExecutor` and a simulated sendmail host.

Shipped with the package (like ``fabric.testing`` or httpx's ``MockTransport``) so that the
operations, the agent and anything built on them can be tested fast, without root and
without lab hosts::

    from shared.mta import operations_for
    from shared.profile import build_profile
    from shared.testing import debian_sendmail_host
    from shared.validation import parse_smarthost_request

    host = debian_sendmail_host()
    ops = operations_for(host, build_profile("sendmail", "debian", {}))
    host.script(["make"], exit_code=2, stderr="make: *** Error 1", times=1)
    result = ops.set_smarthost(parse_smarthost_request({"host": "relay.example.net"}))
    assert result.rolled_back and host.ran("m4")   # compiled, swapped, make failed, restored

:class:`FakeExecutor` (:mod:`.executor`) is a host with a filesystem in memory (bytes,
mode, owner, mtime), file operations with :class:`~shared.executor.LocalExecutor`'s
semantics, a few core programs (``cat``, ``cp``, ``rm``, ``kill``, ``hostname``,
``uname``, ``getent``, ``tail``), scripted TCP peers (:class:`SmtpScript`, :mod:`.smtp`)
and scripted command failures (:meth:`FakeExecutor.script`). Every argv it runs is
recorded in ``commands``, every file change in ``file_ops``. ``sh -c`` scripts (the fixed
scripts operations and diagnose use) run through the real ``/bin/sh`` against temporary
copies of the files they name, with ``kill`` answering from the fake's process table, so
the fake never drifts from them.

:class:`FakeSendmailHost` (:mod:`.sendmail`) adds sendmail: ``m4`` (:mod:`.m4`, a small
m4 that understands what sendmail.mc files use and writes a sendmail.cf with the ``DS``
line and mailer definitions real sendmail-cf writes), ``sendmail`` (``-bv`` validation,
``-bp``, queue runs with ``-q``/``-qI``/``-qR``/``-qS`` and ``-Ac``, ``-d0.1``),
``mailq``, ``make``, ``makemap``, the init script / ``service`` / ``systemctl`` restart,
a mail queue of :class:`FakeMessage` and a maillog that queue runs append to. Its texts
come from real captures (``shared/testing_fixtures``, copies of
``tests/fixtures/sendmail``), which :mod:`.fixtures` reads to build
:func:`debian_sendmail_host` and :func:`rhel_sendmail_host`.
"""

from shared.testing.executor import (
    DEFAULT_WAIT_S,
    SH_TIMEOUT_S,
    CommandRule,
    FakeExecutor,
    FileState,
    Outcome,
    Program,
    RanCommand,
    command_matches,
)
from shared.testing.fixtures import (
    debian_sendmail_host,
    fixture_queue,
    fixture_text,
    rhel_sendmail_host,
)
from shared.testing.m4 import FakeM4, M4Error, M4Result, fake_m4
from shared.testing.sendmail import (
    FAKE_DB_MAGIC,
    MAILQ_COLUMNS,
    SENDMAIL_VERSION,
    SMMSP_GID,
    FakeMessage,
    FakeSendmailHost,
    render_queue,
)
from shared.testing.smtp import FakeSmtpStream, SmtpScript

__all__ = [
    "DEFAULT_WAIT_S",
    "FAKE_DB_MAGIC",
    "MAILQ_COLUMNS",
    "SENDMAIL_VERSION",
    "SH_TIMEOUT_S",
    "SMMSP_GID",
    "CommandRule",
    "FakeExecutor",
    "FakeM4",
    "FakeMessage",
    "FakeSendmailHost",
    "FakeSmtpStream",
    "FileState",
    "M4Error",
    "M4Result",
    "Outcome",
    "Program",
    "RanCommand",
    "SmtpScript",
    "command_matches",
    "debian_sendmail_host",
    "fake_m4",
    "fixture_queue",
    "fixture_text",
    "render_queue",
    "rhel_sendmail_host",
]
