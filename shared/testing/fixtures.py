"""The captures in ``shared/testing_fixtures`` and the lab hosts built from them."""

from __future__ import annotations

import copy
import posixpath
from collections.abc import Iterable, Mapping
from datetime import datetime
from importlib import resources

from shared.errors import ExecutorError
from shared.testing.sendmail import FAKE_DB_MAGIC, SMMSP_GID, FakeMessage, FakeSendmailHost


def fixture_text(name: str) -> str:
    """A capture shipped in ``shared/testing_fixtures`` (``debian-sendmail.mc``, ...)."""
    return (resources.files("shared") / "testing_fixtures" / name).read_text(encoding="utf-8")


def fixture_queue() -> list[FakeMessage]:
    """The four messages of ``tests/fixtures/sendmail/mailq-deferred.txt`` (fresh copies)."""
    local = "Operating system error"
    return [
        FakeMessage("6AP4mD19010500", "", ["root@lab1.lab.test"],
                    datetime(2026, 11, 25, 4, 48), 1554, local),
        FakeMessage("6AP4mDlP010506", "", ["root@lab1.lab.test"],
                    datetime(2026, 11, 25, 4, 48), 1519, local),
        FakeMessage("6AP4jQbT009721", "root@lab1.lab.test", ["me@ourtest.com"],
                    datetime(2026, 11, 25, 4, 45), 6,
                    "Deferred: Connection refused by mx.ourtest.com."),
        FakeMessage("6AP4mD19010498", "root@lab1.lab.test", ["b@ourtest.com", "a@ourtest.com"],
                    datetime(2026, 11, 25, 4, 48), 4,
                    "Host unknown (Name server: nowhere.lab.test: host not found)"),
    ]


def _set_up(host: FakeSendmailHost, mc_text: str, *, messages: Iterable[FakeMessage] | None,
            extra_files: Mapping[str, str], running: bool) -> FakeSendmailHost:
    """Give ``host`` its files, a compiled cf, a queue and (``running``) a running sendmail."""
    host.add_file("/etc/hosts", f"127.0.0.1\tlocalhost\n10.77.0.11\t"
                  f"{host.fqdn + ' ' if host.fqdn else ''}{host.hostname}\n"
                  "::1\tlocalhost ip6-localhost ip6-loopback\n")
    host.add_file("/etc/resolv.conf", "nameserver 192.0.2.53\n")
    host.add_dir(host.mail_dir, mode=0o755)
    for path, text in extra_files.items():
        host.add_file(path, text)
    host.add_file(f"{host.mail_dir}/access", "localhost\tRELAY\n127.0.0.1\tRELAY\n")
    host.add_file(f"{host.mail_dir}/access.db", FAKE_DB_MAGIC + b"localhost\tRELAY\n",
                  mode=0o640)
    host.add_file(host.mc_path, mc_text, mode=0o644, gid=SMMSP_GID)
    compiled = host.compile_mc(mc_text)
    if compiled.exit_code:
        raise ExecutorError(f"the fake m4 cannot compile this sendmail.mc: {compiled.stderr}")
    host.add_file(host.cf_path, compiled.output, mode=0o644, gid=SMMSP_GID)
    host.m4_inputs.clear()
    for section, directory in host.queue_dirs.items():
        host.add_dir(directory, mode=0o2750 if section == "mta" else 0o2770)
    host.add_file(host.maillog, fixture_text("mail.log"), mode=0o640, gid=4)
    host.add_dir(posixpath.dirname(host.pid_file))
    host.queues["mta"] = list(copy.deepcopy(fixture_queue() if messages is None else messages))
    if running:
        host.start_daemon()
    # What setting the host up did is not part of any test.
    host.file_ops.clear()
    host.commands.clear()
    return host


def debian_sendmail_host(*, hostname: str = "lab1", fqdn: str | None = "lab1.lab.test",
                         mc_text: str | None = None,
                         messages: Iterable[FakeMessage] | None = None,
                         running: bool = True) -> FakeSendmailHost:
    """A Debian 12 sendmail host as the lab builds it: /etc/mail (mc from the package,
    compiled cf, access map, Debian's m4 includes), the mail.log capture, the four deferred
    messages of mailq-deferred.txt (``messages=[]``: empty queue) and a running daemon."""
    empty_m4 = "divert(-1)dnl\n# (fake) Debian's include, empty by default\ndivert(0)dnl\n"
    # FakeSendmailHost's defaults are Debian's layout (pid file, mail.log, queue directories).
    return _set_up(
        FakeSendmailHost(flavour="debian", hostname=hostname, fqdn=fqdn),
        mc_text if mc_text is not None else fixture_text("debian-sendmail.mc"),
        messages=messages,
        extra_files={"/etc/mail/m4/dialup.m4": empty_m4, "/etc/mail/m4/provider.m4": empty_m4},
        running=running)


def rhel_sendmail_host(*, hostname: str = "pbx1", fqdn: str | None = "pbx1.example.com",
                       mc_text: str | None = None,
                       messages: Iterable[FakeMessage] | None = None,
                       running: bool = True) -> FakeSendmailHost:
    """A CentOS 6-era sendmail host: its sendmail.mc (the commented SMART_HOST template),
    ``service sendmail restart``, /var/run/sendmail.pid, /var/log/maillog, and a mailq
    without section headers."""
    return _set_up(
        FakeSendmailHost(flavour="rhel", hostname=hostname, fqdn=fqdn,
                         pid_file="/var/run/sendmail.pid", maillog="/var/log/maillog",
                         queue_dirs={"mta": "/var/spool/mqueue",
                                     "msp": "/var/spool/clientmqueue"}),
        mc_text if mc_text is not None else fixture_text("centos-sendmail.mc"),
        messages=messages, extra_files={}, running=running)
