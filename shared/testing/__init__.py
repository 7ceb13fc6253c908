"""In-memory hosts for tests: :class:`FakeExecutor`, a simulated sendmail host and a Postfix one.

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
``uname``, ``getent``, ``tail``; with ``resolve_from_hosts`` the names come from its
/etc/hosts as the C library's files backend reads them), files that are mount points
(``mount_points``: a rename over one fails with EBUSY), scripted TCP peers
(:class:`SmtpScript`, :mod:`.smtp`) and scripted command failures
(:meth:`FakeExecutor.script`). Every argv it runs is recorded in ``commands``, every
file change in ``file_ops``. ``sh -c`` scripts (the fixed scripts operations and diagnose
use) run through the real ``/bin/sh`` against temporary copies of the files they name,
with ``kill`` answering from the fake's process table, so the fake never drifts from them.

:class:`FakeSendmailHost` (:mod:`.sendmail`) adds sendmail: ``m4`` (:mod:`.m4`, a small
m4 that understands what sendmail.mc files use and writes a sendmail.cf with the ``DS``
line and mailer definitions real sendmail-cf writes), ``sendmail`` (``-bv`` validation,
``-bp``, queue runs with ``-q``/``-qI``/``-qR``/``-qS`` and ``-Ac``, ``-d0.1``),
``mailq``, ``make``, ``makemap``, the init script / ``service`` / ``systemctl`` restart,
a mail queue of :class:`FakeMessage` and a maillog that queue runs append to. Its texts
come from real captures (``shared/testing_fixtures``, copies of
``tests/fixtures/sendmail``), which :mod:`.fixtures` reads to build
:func:`debian_sendmail_host` and :func:`rhel_sendmail_host`.

:class:`FakePostfixHost` (:mod:`.postfix`) adds Postfix 3.7: ``postconf`` (show, ``-h``,
``-e`` and ``-X`` editing main.cf's text as postconf does, Postfix's defaults),
``postmap``, ``postfix`` (``check``, ``start``, ``stop``, ``reload``, ``status``) and a
master that runs the main.cf it last read, ``postqueue`` (``-j`` and ``-p`` in the real
formats, ``-f`` and ``-i`` delivering at once through the running relayhost to a sink, or
deferring), a queue of :class:`FakePostfixMessage` and a maillog in Postfix's format.
:func:`debian_postfix_host` and :func:`rhel_postfix_host` build it from the lab's
captures (``tests/fixtures/postfix``)::

    host = debian_postfix_host()
    ops = operations_for(host, build_profile("postfix", "debian", {}))
    host.script(["postfix", "reload"], exit_code=1, stderr="reload: broken", times=1)
    result = ops.set_smarthost(parse_smarthost_request({"host": "relay.example.net"}))
    assert result.rolled_back and host.running_config["relayhost"] == ""
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
    DEBIAN_POSTFIX_MAIN_CF,
    POSTFIX_MASTER_CF,
    RHEL_POSTFIX_MAIN_CF,
    debian_postfix_host,
    debian_sendmail_host,
    fixture_postfix_queue,
    fixture_queue,
    fixture_text,
    rhel_postfix_host,
    rhel_sendmail_host,
)
from shared.testing.m4 import FakeM4, M4Error, M4Result, fake_m4
from shared.testing.postfix import (
    MAILQ_HEADINGS,
    POSTFIX_DEFAULTS,
    POSTFIX_VERSION,
    SASL_PLUGINS,
    FakePostfixHost,
    FakePostfixMessage,
    PostfixFatal,
    Relayed,
    edit_main_cf,
    read_main_cf,
    render_mailq,
    render_postqueue_json,
)
from shared.testing.sendmail import (
    FAKE_DB_MAGIC,
    MAILQ_COLUMNS,
    SENDMAIL_VERSION,
    SMMSP_GID,
    TLS_SESSION,
    AuthSent,
    FakeMessage,
    FakeSendmailHost,
    RelayedMail,
    RelayTls,
    render_queue,
)
from shared.testing.smtp import FakeSmtpStream, SmtpScript

__all__ = [
    "DEBIAN_POSTFIX_MAIN_CF",
    "DEFAULT_WAIT_S",
    "FAKE_DB_MAGIC",
    "MAILQ_COLUMNS",
    "MAILQ_HEADINGS",
    "POSTFIX_DEFAULTS",
    "POSTFIX_MASTER_CF",
    "POSTFIX_VERSION",
    "RHEL_POSTFIX_MAIN_CF",
    "SASL_PLUGINS",
    "SENDMAIL_VERSION",
    "SH_TIMEOUT_S",
    "SMMSP_GID",
    "TLS_SESSION",
    "AuthSent",
    "CommandRule",
    "FakeExecutor",
    "FakeM4",
    "FakeMessage",
    "FakePostfixHost",
    "FakePostfixMessage",
    "FakeSendmailHost",
    "FakeSmtpStream",
    "FileState",
    "M4Error",
    "M4Result",
    "Outcome",
    "PostfixFatal",
    "Program",
    "RanCommand",
    "RelayTls",
    "Relayed",
    "RelayedMail",
    "SmtpScript",
    "command_matches",
    "debian_postfix_host",
    "debian_sendmail_host",
    "edit_main_cf",
    "fake_m4",
    "fixture_postfix_queue",
    "fixture_queue",
    "fixture_text",
    "read_main_cf",
    "render_mailq",
    "render_postqueue_json",
    "render_queue",
    "rhel_postfix_host",
    "rhel_sendmail_host",
]
