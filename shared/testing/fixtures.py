"""The captures in ``shared/testing_fixtures`` (and Postfix's main.cf captures, kept here as
text) and the lab hosts built from them."""

from __future__ import annotations

import copy
import posixpath
from collections.abc import Iterable, Mapping
from datetime import datetime
from importlib import resources

from shared.errors import ExecutorError
from shared.testing.executor import FakeExecutor
from shared.testing.postfix import SASL_PLUGINS, FakePostfixHost, FakePostfixMessage
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


# -- Postfix ---------------------------------------------------------------------------------

#: ``tests/fixtures/postfix/debian-main.cf``: Debian's main.cf for an "Internet Site"
DEBIAN_POSTFIX_MAIN_CF = """\
# See /usr/share/postfix/main.cf.dist for a commented, more complete version


# Debian specific:  Specifying a file name will cause the first
# line of that file to be used as the name.  The Debian default
# is /etc/mailname.
#myorigin = /etc/mailname

smtpd_banner = $myhostname ESMTP $mail_name (Debian/GNU)
biff = no

# appending .domain is the MUA's job.
append_dot_mydomain = no

# Uncomment the next line to generate "delayed mail" warnings
#delay_warning_time = 4h

readme_directory = no

# See http://www.postfix.org/COMPATIBILITY_README.html -- default to 3.6 on
# fresh installs.
compatibility_level = 3.6



# TLS parameters
smtpd_tls_cert_file=/etc/ssl/certs/ssl-cert-snakeoil.pem
smtpd_tls_key_file=/etc/ssl/private/ssl-cert-snakeoil.key
smtpd_tls_security_level=may

smtp_tls_CApath=/etc/ssl/certs
smtp_tls_security_level=may
smtp_tls_session_cache_database = btree:${data_directory}/smtp_scache


smtpd_relay_restrictions = permit_mynetworks permit_sasl_authenticated defer_unauth_destination
myhostname = pbx-deb.lab.test
alias_maps = hash:/etc/aliases
alias_database = hash:/etc/aliases
myorigin = /etc/mailname
mydestination = $myhostname, pbx-deb.lab.test, localhost.lab.test, , localhost
relayhost =\x20
mynetworks = 127.0.0.0/8 [::ffff:127.0.0.0]/104 [::1]/128
mailbox_size_limit = 0
recipient_delimiter = +
inet_interfaces = all
inet_protocols = all
"""
#: the settings of ``tests/fixtures/postfix/centos-main.cf`` (RHEL's commented upstream
#: main.cf) without its comments: Postfix reads both alike
RHEL_POSTFIX_MAIN_CF = """\
compatibility_level = 2
queue_directory = /var/spool/postfix
command_directory = /usr/sbin
daemon_directory = /usr/libexec/postfix
data_directory = /var/lib/postfix
mail_owner = postfix
inet_interfaces = localhost
inet_protocols = all
mydestination = $myhostname, localhost.$mydomain, localhost
unknown_local_recipient_reject_code = 550
alias_maps = hash:/etc/aliases
alias_database = hash:/etc/aliases
debug_peer_level = 2
debugger_command =
\t PATH=/bin:/usr/bin:/usr/local/bin:/usr/X11R6/bin
\t ddd $daemon_directory/$process_name $process_id & sleep 5
sendmail_path = /usr/sbin/sendmail.postfix
newaliases_path = /usr/bin/newaliases.postfix
mailq_path = /usr/bin/mailq.postfix
setgid_group = postdrop
html_directory = no
manpage_directory = /usr/share/man
sample_directory = /usr/share/doc/postfix/samples
readme_directory = /usr/share/doc/postfix/README_FILES
smtpd_tls_cert_file = /etc/pki/tls/certs/postfix.pem
smtpd_tls_key_file = /etc/pki/tls/private/postfix.key
smtpd_tls_security_level = may
smtp_tls_CApath = /etc/pki/tls/certs
smtp_tls_CAfile = /etc/pki/tls/certs/ca-bundle.crt
smtp_tls_security_level = may
meta_directory = /etc/postfix
shlib_directory = /usr/lib64/postfix
"""


#: the first services of ``tests/fixtures/postfix/debian-master.cf`` (the fake's Postfix
#: does not read master.cf: it is there to be copied and backed up like the real one)
POSTFIX_MASTER_CF = """\
smtp      inet  n       -       y       -       -       smtpd
pickup    unix  n       -       y       60      1       pickup
cleanup   unix  n       -       y       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
smtp      unix  -       -       y       -       -       smtp
relay     unix  -       -       y       -       -       smtp
        -o syslog_name=postfix/$service_name
showq     unix  n       -       y       -       -       showq
"""


def fixture_postfix_queue() -> list[FakePostfixMessage]:
    """The four messages of ``tests/fixtures/postfix/several-deferred.*`` (fresh copies)."""
    reason = "connect to mx.ourtest.com[10.201.0.2]:25: Connection refused"
    return [FakePostfixMessage(qid, "voicemail@pbx-deb.lab.test",
                               {"someone@ourtest.com": reason}, 1796203984, 326)
            for qid in ("22C37216D98", "256A7216D9C", "1D010216D8D", "1FEC8216D96")]


def _name_files(host: FakeExecutor) -> None:
    """/etc/hosts (the host's fqdn on its own address) and /etc/resolv.conf."""
    host.add_file("/etc/hosts", f"127.0.0.1\tlocalhost\n10.77.0.11\t"
                  f"{host.fqdn + ' ' if host.fqdn else ''}{host.hostname}\n"
                  "::1\tlocalhost ip6-localhost ip6-loopback\n")
    host.add_file("/etc/resolv.conf", "nameserver 192.0.2.53\n")


def _set_up_postfix(host: FakePostfixHost, main_cf: str, *,
                    messages: Iterable[FakePostfixMessage] | None, running: bool,
                    sasl_plugins: bool) -> FakePostfixHost:
    """Give ``host`` its files, a queue, the SASL plugins and (``running``) a master."""
    _name_files(host)
    host.add_file(host.main_cf_path, main_cf, mode=0o644)
    host.add_file(f"{host.config_dir}/master.cf", POSTFIX_MASTER_CF, mode=0o644)
    host.add_dir(f"{host.queue_dir}/pid")
    host.add_file(host.maillog, b"", mode=0o640, gid=4)
    for plugin in SASL_PLUGINS[host.flavour] if sasl_plugins else ():
        host.add_file(plugin, b"\x7fELF (fake Cyrus SASL plugin)")
    host.queue = list(copy.deepcopy(fixture_postfix_queue() if messages is None else messages))
    if running:
        host.start_master()
    # What setting the host up did is not part of any test.
    host.file_ops.clear()
    host.commands.clear()
    return host


def debian_postfix_host(*, hostname: str = "pbx-deb", fqdn: str | None = "pbx-deb.lab.test",
                        main_cf: str | None = None,
                        messages: Iterable[FakePostfixMessage] | None = None,
                        running: bool = True, sasl_plugins: bool = True) -> FakePostfixHost:
    """A Debian 12 Postfix host as the lab builds it: Debian's main.cf (``myhostname`` the
    host's name, ``relayhost =``, TLS ``may``), /var/log/mail.log, the four deferred
    messages of several-deferred (``messages=[]``: empty queue), libsasl2-modules'
    plugins (``sasl_plugins=False``: not installed) and a running master."""
    text = main_cf if main_cf is not None else DEBIAN_POSTFIX_MAIN_CF.replace(
        "pbx-deb.lab.test", fqdn or hostname)
    host = FakePostfixHost(flavour="debian", hostname=hostname, fqdn=fqdn)
    host.add_file("/etc/mailname", f"{fqdn or hostname}\n")
    return _set_up_postfix(host, text, messages=messages, running=running,
                           sasl_plugins=sasl_plugins)


def rhel_postfix_host(*, hostname: str = "pbx-rhel", fqdn: str | None = "pbx-rhel.lab.test",
                      main_cf: str | None = None,
                      messages: Iterable[FakePostfixMessage] | None = None,
                      running: bool = True, sasl_plugins: bool = True) -> FakePostfixHost:
    """A RHEL 8/9 Postfix host: RHEL's main.cf (no ``myhostname``: Postfix calls itself
    ``HOSTNAME.localdomain``), /var/log/maillog, cyrus-sasl-plain's plugins in /usr/lib64."""
    return _set_up_postfix(
        FakePostfixHost(flavour="rhel", hostname=hostname, fqdn=fqdn, maillog="/var/log/maillog"),
        main_cf if main_cf is not None else RHEL_POSTFIX_MAIN_CF, messages=messages,
        running=running, sasl_plugins=sasl_plugins)
