"""Diagnose checks.

SPF evaluation is pure logic over an in-memory resolver. The dnspython resolver, the SMTP
probe's time boxes, ``kill -0`` and ``getent`` run for real (loopback UDP/TCP servers in
this process, the local executor). The seed story's PBX (its names, /etc files, daemon and
smarthost) is a :class:`shared.testing.FakeExecutor`.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from shared.compat import timeouts_as_timeout_error
from shared.diagnose import (
    NO_SMARTHOST,
    Check,
    DnsPythonResolver,
    DnsTempError,
    alive_command,
    check_hostname,
    check_hosts_file,
    check_mta_running,
    check_resolves,
    check_smtp,
    check_spf,
    hostname_check,
    hosts_file_problems,
    mta_running_check,
    resolver_nameservers,
    run_checks,
    spf_covers,
    validate_diagnose_input,
)
from shared.errors import ValidationError
from shared.executor import CommandResult, LocalExecutor
from shared.profile import HostProfile
from shared.testing import FakeExecutor, SmtpScript

# -- an in-memory DNS for the SPF logic ---------------------------------------------------


class FakeDns:
    """In-memory TxtAResolver; names in ``broken`` raise DnsTempError; queries are logged."""

    def __init__(self, txt: Mapping[str, list[str]] | None = None,
                 a: Mapping[str, list[str]] | None = None,
                 aaaa: Mapping[str, list[str]] | None = None,
                 mx: Mapping[str, list[str]] | None = None,
                 broken: Sequence[str] = ()) -> None:
        self.tables = {"TXT": dict(txt or {}), "A": dict(a or {}), "AAAA": dict(aaaa or {}),
                       "MX": dict(mx or {})}
        self.broken = set(broken)
        self.queries: list[tuple[str, str]] = []

    def _get(self, rdtype: str, name: str) -> list[str]:
        self.queries.append((rdtype, name))
        if name in self.broken:
            raise DnsTempError(f"{rdtype} {name}: SERVFAIL")
        return list(self.tables[rdtype].get(name, []))

    def txt(self, name: str) -> list[str]:
        return self._get("TXT", name)

    def a(self, name: str) -> list[str]:
        return self._get("A", name)

    def aaaa(self, name: str) -> list[str]:
        return self._get("AAAA", name)

    def mx(self, name: str) -> list[str]:
        return self._get("MX", name)


def zone(record: str) -> FakeDns:
    """ourtest.com publishing ``record``, next to providers' records and hosts."""
    return FakeDns(
        txt={"ourtest.com": [record, "google-site-verification=abc"],
             "_spf.provider.example": ["v=spf1 ip4:198.51.100.0/24 ip6:2001:db8:100::/48 -all"],
             "_spf.other.example": ["v=spf1 ip4:203.0.113.128/25 ~all"],
             "chain.example": ["v=spf1 include:_spf.provider.example -all"],
             "nospf.example": ["just some text"]},
        a={"ourtest.com": ["203.0.113.5"], "other.example": ["203.0.113.1"],
           "mx1.ourtest.com": ["203.0.113.9"], "mx2.ourtest.com": ["203.0.113.10"],
           "192.0.2.1.allow.ourtest.com": ["127.0.0.2"],
           "1.2.0.192.in-addr.allow.ourtest.com": ["127.0.0.2"]},
        aaaa={"ourtest.com": ["2001:db8:5::5"], "mx1.ourtest.com": ["2001:db8:9::9"]},
        mx={"ourtest.com": ["mx1.ourtest.com", "mx2.ourtest.com"],
            "other.example": ["mx1.ourtest.com"]})


PROVIDER = "ip4:198.51.100.0/24"


@pytest.mark.parametrize("record, ip, result, mechanism", [
    # ip4 / ip6 with CIDR, qualifiers, default result
    ("v=spf1 ip4:192.0.2.0/24 -all", "192.0.2.10", "pass", "ip4:192.0.2.0/24"),
    ("v=spf1 ip4:192.0.2.0/24 -all", "198.51.100.1", "fail", "-all"),
    ("v=spf1 ip4:192.0.2.10 ~all", "192.0.2.11", "softfail", "~all"),
    ("v=spf1 ip4:192.0.2.10 ?all", "192.0.2.11", "neutral", "?all"),
    ("v=spf1 ip4:192.0.2.0/24", "198.51.100.1", "neutral", None),
    ("v=spf1 +ip4:192.0.2.10 -all", "192.0.2.10", "pass", "+ip4:192.0.2.10"),
    ("v=spf1 ~ip4:192.0.2.0/24 +all", "192.0.2.10", "softfail", "~ip4:192.0.2.0/24"),
    ("v=spf1 ip6:2001:db8::/32 -all", "2001:db8::5", "pass", "ip6:2001:db8::/32"),
    ("v=spf1 ip6:2001:db8::/32 -all", "192.0.2.1", "fail", "-all"),
    ("v=spf1 ip4:0.0.0.0/0 -all", "2001:db8::5", "fail", "-all"),
    ("v=spf1 ip4:192.0.2.0/24 -all", "::ffff:192.0.2.9", "pass", "ip4:192.0.2.0/24"),
    ("V=SPF1 IP4:192.0.2.0/24 -ALL", "192.0.2.10", "pass", "IP4:192.0.2.0/24"),
    ("v=spf1  ip4:192.0.2.0/24\t-all", "192.0.2.10", "pass", "ip4:192.0.2.0/24"),
    # a, with domain and dual CIDR
    ("v=spf1 a -all", "203.0.113.5", "pass", "a"),
    ("v=spf1 a -all", "2001:db8:5::5", "pass", "a"),
    ("v=spf1 a -all", "203.0.113.6", "fail", "-all"),
    ("v=spf1 a/24 -all", "203.0.113.77", "pass", "a/24"),
    ("v=spf1 a:other.example/24 -all", "203.0.113.77", "pass", "a:other.example/24"),
    ("v=spf1 a:other.example -all", "203.0.113.77", "fail", "-all"),
    ("v=spf1 a//48 -all", "2001:db8:5::77", "pass", "a//48"),
    ("v=spf1 a/32//48 -all", "203.0.113.77", "fail", "-all"),
    # mx, with domain and CIDR
    ("v=spf1 mx -all", "203.0.113.10", "pass", "mx"),
    ("v=spf1 mx -all", "2001:db8:9::9", "pass", "mx"),
    ("v=spf1 mx -all", "203.0.113.5", "fail", "-all"),
    ("v=spf1 mx:other.example -all", "203.0.113.9", "pass", "mx:other.example"),
    ("v=spf1 mx/30 -all", "203.0.113.11", "pass", "mx/30"),
    # include: pass matches; fail/softfail/neutral do not; the qualifier is the outer one
    ("v=spf1 include:_spf.provider.example -all", "198.51.100.20", "pass",
     f"include:_spf.provider.example > {PROVIDER}"),
    ("v=spf1 include:_spf.provider.example -all", "2001:db8:100::1", "pass",
     "include:_spf.provider.example > ip6:2001:db8:100::/48"),
    ("v=spf1 include:chain.example -all", "198.51.100.20", "pass",
     f"include:chain.example > include:_spf.provider.example > {PROVIDER}"),
    ("v=spf1 include:_spf.provider.example ~all", "192.0.2.1", "softfail", "~all"),
    ("v=spf1 include:_spf.other.example -all", "203.0.113.129", "pass",
     "include:_spf.other.example > ip4:203.0.113.128/25"),
    ("v=spf1 include:_spf.other.example -all", "203.0.113.1", "fail", "-all"),
    ("v=spf1 -include:_spf.provider.example +all", "198.51.100.20", "fail",
     f"-include:_spf.provider.example > {PROVIDER}"),
    # redirect: used only when nothing matched; ignored when there is an 'all'
    ("v=spf1 redirect=_spf.provider.example", "198.51.100.20", "pass",
     f"redirect=_spf.provider.example > {PROVIDER}"),
    ("v=spf1 redirect=_spf.provider.example", "192.0.2.1", "fail",
     "redirect=_spf.provider.example > -all"),
    ("v=spf1 redirect=_spf.provider.example ip4:192.0.2.0/24", "192.0.2.5", "pass",
     "ip4:192.0.2.0/24"),
    ("v=spf1 ?all redirect=_spf.provider.example", "198.51.100.20", "neutral", "?all"),
    # modifiers other than redirect do not decide
    ("v=spf1 exp=explain.ourtest.com x-custom=1 ip4:192.0.2.0/24 -all", "192.0.2.1", "pass",
     "ip4:192.0.2.0/24"),
    # exists with macros
    ("v=spf1 exists:%{i}.allow.ourtest.com -all", "192.0.2.1", "pass",
     "exists:%{i}.allow.ourtest.com"),
    ("v=spf1 exists:%{ir}.%{v}.allow.ourtest.com -all", "192.0.2.1", "pass",
     "exists:%{ir}.%{v}.allow.ourtest.com"),
    ("v=spf1 exists:%{i}.allow.ourtest.com -all", "192.0.2.2", "fail", "-all"),
    # ptr is deprecated and never matches here
    ("v=spf1 ptr -all", "203.0.113.5", "fail", "-all"),
])
def test_spf_results(record: str, ip: str, result: str, mechanism: str | None) -> None:
    verdict = spf_covers("ourtest.com", ip, zone(record))
    assert (verdict.result, verdict.mechanism) == (result, mechanism), verdict
    assert verdict.record == record


@pytest.mark.parametrize("record", [
    "v=spf1 bogus:x -all",                       # unknown mechanism
    "v=spf1 ip4:300.1.1.1 -all",                 # not an address
    "v=spf1 ip4:2001:db8::1 -all",               # ip4 with an IPv6 address
    "v=spf1 ip6:192.0.2.1 -all",                 # ip6 with an IPv4 address
    "v=spf1 ip4:192.0.2.0/33 -all",              # CIDR too long
    "v=spf1 ip6:2001:db8::/129 -all",
    "v=spf1 a:other.example/024 -all",           # leading zero in a CIDR length
    "v=spf1 +all ip4:bogus",                     # a syntax error after a match still counts
    "v=spf1 include -all",                       # include needs a domain
    "v=spf1 include:localhost -all",             # a domain-spec must end in '.' toplabel
    "v=spf1 exists:%{x}.ourtest.com -all",       # unknown macro letter
    "v=spf1 exists:50%.ourtest.com -all",        # bare percent
    "v=spf1 all:x",
    "v=spf1 redirect=a.example redirect=b.example",
    "v=spf1 include:nospf.example -all",         # included domain without a record
    "v=spf1 redirect=nospf.example",
    "v=spf1 redirect=",
])
def test_spf_permerrors(record: str) -> None:
    verdict = spf_covers("ourtest.com", "192.0.2.1", zone(record))
    assert verdict.result == "permerror", verdict
    assert verdict.reason


def test_spf_ptr_is_noted() -> None:
    verdict = spf_covers("ourtest.com", "203.0.113.5", zone("v=spf1 ptr ?all"))
    assert verdict.result == "neutral" and "ptr" in verdict.notes[0]


def test_spf_no_record_and_two_records() -> None:
    assert spf_covers("ourtest.com", "192.0.2.1", FakeDns()).result == "none"
    text_only = FakeDns(txt={"ourtest.com": ["v=spf10 +all", "hello"]})
    assert spf_covers("ourtest.com", "192.0.2.1", text_only).result == "none"
    two = FakeDns(txt={"ourtest.com": ["v=spf1 -all", "v=spf1 +all"]})
    verdict = spf_covers("ourtest.com", "192.0.2.1", two)
    assert verdict.result == "permerror" and "2 SPF records" in verdict.reason


def _include_chain(length: int) -> FakeDns:
    """d0 includes d1 ... includes d<length>, which passes everybody."""
    txt = {f"d{i}.example": [f"v=spf1 include:d{i + 1}.example -all"] for i in range(length)}
    txt[f"d{length}.example"] = ["v=spf1 +all"]
    return FakeDns(txt=txt)


def test_spf_lookup_limit_is_ten() -> None:
    ok = spf_covers("d0.example", "192.0.2.1", _include_chain(10))
    assert ok.result == "pass" and ok.lookups == 10
    over = spf_covers("d0.example", "192.0.2.1", _include_chain(11))
    assert over.result == "permerror" and "more than 10" in over.reason
    hosts = {f"h{i}.example": [f"192.0.2.{100 + i}"] for i in range(11)}
    ten = " ".join(f"a:h{i}.example" for i in range(10))
    assert spf_covers("ourtest.com", "203.0.113.99", FakeDns(
        txt={"ourtest.com": [f"v=spf1 {ten} -all"]}, a=hosts)).result == "fail"
    assert spf_covers("ourtest.com", "203.0.113.99", FakeDns(
        txt={"ourtest.com": [f"v=spf1 {ten} a:h10.example -all"]}, a=hosts)
    ).result == "permerror"


def test_spf_include_loop_ends_in_permerror() -> None:
    loop = FakeDns(txt={"a.example": ["v=spf1 include:b.example -all"],
                        "b.example": ["v=spf1 include:a.example -all"]})
    assert spf_covers("a.example", "192.0.2.1", loop).result == "permerror"


def test_spf_void_lookup_limit_is_two() -> None:
    two = FakeDns(txt={"ourtest.com": ["v=spf1 a:v1.example mx:v2.example -all"]})
    assert spf_covers("ourtest.com", "192.0.2.1", two).result == "fail"
    three = FakeDns(txt={"ourtest.com": [
        "v=spf1 a:v1.example mx:v2.example exists:v3.example -all"]})
    verdict = spf_covers("ourtest.com", "192.0.2.1", three)
    assert verdict.result == "permerror" and "found nothing" in verdict.reason


def test_spf_mx_with_more_than_ten_names_is_permerror() -> None:
    names = [f"mx{i}.ourtest.com" for i in range(11)]
    dns_ = FakeDns(txt={"ourtest.com": ["v=spf1 mx -all"]}, mx={"ourtest.com": names},
                   a={n: ["203.0.113.50"] for n in names})
    assert spf_covers("ourtest.com", "203.0.113.50", dns_).result == "permerror"
    dns_.tables["MX"]["ourtest.com"] = names[:10]
    assert spf_covers("ourtest.com", "203.0.113.50", dns_).result == "pass"


@pytest.mark.parametrize("broken, record", [
    ("ourtest.com", "v=spf1 -all"),
    ("_spf.provider.example", "v=spf1 include:_spf.provider.example -all"),
    ("other.example", "v=spf1 a:other.example -all"),
])
def test_spf_temperror(broken: str, record: str) -> None:
    dns_ = zone(record)
    dns_.broken.add(broken)
    verdict = spf_covers("ourtest.com", "192.0.2.1", dns_)
    assert verdict.result == "temperror" and "SERVFAIL" in verdict.reason


@pytest.mark.parametrize("macro, expanded", [
    # RFC 7208 section 7.4, sender strong-bad@email.example.com from 192.0.2.3
    ("%{s}", "strong-bad@email.example.com"), ("%{o}", "email.example.com"),
    ("%{d}", "email.example.com"), ("%{d4}", "email.example.com"),
    ("%{d2}", "example.com"), ("%{d1}", "com"), ("%{dr}", "com.example.email"),
    ("%{d2r}", "example.email"), ("%{l}", "strong-bad"), ("%{l-}", "strong.bad"),
    ("%{lr}", "strong-bad"), ("%{lr-}", "bad.strong"), ("%{l1r-}", "strong"),
    ("%{ir}.%{v}._spf.%{d2}", "3.2.0.192.in-addr._spf.example.com"),
    ("%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com"),
    ("%{d2}.trusted-domains.example.net", "example.com.trusted-domains.example.net"),
    ("%%%_%-.x.example.net", "% %20.x.example.net"),
])
def test_spf_macros(macro: str, expanded: str) -> None:
    dns_ = FakeDns(txt={"email.example.com": [f"v=spf1 exists:{macro} -all"]})
    spf_covers("email.example.com", "192.0.2.3", dns_, local_part="strong-bad")
    assert dns_.queries[-1] == ("A", expanded)


def test_spf_macros_ipv6_and_url_escaping() -> None:
    dns_ = FakeDns(txt={"example.com": ["v=spf1 exists:%{ir}.%{v}._spf.%{d2} -all"]})
    spf_covers("example.com", "2001:db8::cb01", dns_)
    assert dns_.queries[-1] == (
        "A", "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com")
    dns_ = FakeDns(txt={"example.com": ["v=spf1 exists:%{L}.x.example.com -all"]})
    spf_covers("example.com", "192.0.2.3", dns_, local_part="o'brien")
    assert dns_.queries[-1] == ("A", "o%27brien.x.example.com")


def test_check_spf_says_what_to_fix() -> None:
    dns_ = FakeDns(txt={"ourtest.com": ["v=spf1 ip4:192.0.2.0/24 -all"],
                        "broken.example": ["v=spf1 ip4:x -all"]})
    ok = check_spf("ourtest.com", "192.0.2.7", dns_)
    assert ok.ok is True and "authorises 192.0.2.7 (ip4:192.0.2.0/24)" in ok.detail
    assert ok.data["result"] == "pass" and ok.data["mechanism"] == "ip4:192.0.2.0/24"
    bad = check_spf("ourtest.com", "198.51.100.7", dns_)
    assert bad.ok is False and "add ip4:198.51.100.7" in bad.detail and "-all" in bad.detail
    v6 = check_spf("ourtest.com", "2001:db8::7", dns_)
    assert v6.ok is False and "add ip6:2001:db8::7" in v6.detail
    none = check_spf("nothing.example", "192.0.2.7", dns_)
    assert none.ok is False and "v=spf1 ip4:192.0.2.7 ~all" in none.detail
    broken = check_spf("broken.example", "192.0.2.7", dns_)
    assert broken.ok is False and broken.data["result"] == "permerror"
    assert "broken" in broken.detail
    dns_.broken.add("ourtest.com")
    temp = check_spf("ourtest.com", "192.0.2.7", dns_)
    assert temp.ok is False and temp.data["result"] == "temperror"
    skipped = check_spf(None, "192.0.2.7", dns_)
    assert skipped.ok is None and skipped.detail.startswith("skipped")
    assert check_spf("ourtest.com", None, dns_).ok is None


# -- dnspython against a real DNS server on loopback ------------------------------------------


class DnsStub:
    """A UDP DNS server on 127.0.0.1 answering from a table (SERVFAIL / silence on request)."""

    def __init__(self, records: Mapping[tuple[str, str], list[str]],
                 servfail: Sequence[str] = (), silent: Sequence[str] = ()) -> None:
        self.records = records
        self.servfail, self.silent = set(servfail), set(silent)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while not self.stop.is_set():
            try:
                with timeouts_as_timeout_error():  # (Python 3.9's socket.timeout)
                    wire, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            query = dns.message.from_wire(wire)
            question = query.question[0]
            name = question.name.to_text().rstrip(".").lower()
            rdtype = dns.rdatatype.to_text(question.rdtype)
            if name in self.silent:
                continue
            response = dns.message.make_response(query)
            if name in self.servfail:
                response.set_rcode(dns.rcode.SERVFAIL)
            elif (name, rdtype) in self.records:
                response.answer.append(dns.rrset.from_text_list(
                    question.name, 60, "IN", rdtype, self.records[(name, rdtype)]))
            elif not any(n == name for n, _ in self.records):
                response.set_rcode(dns.rcode.NXDOMAIN)
            self.sock.sendto(response.to_wire(), peer)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def dns_stub() -> Iterator[DnsStub]:
    stub = DnsStub({
        ("ourtest.com", "TXT"): ['"v=spf1 ip4:192.0.2.0/24" " include:_spf.provider.example -all"',
                                 '"google-site-verification=abc"'],
        ("_spf.provider.example", "TXT"): ['"v=spf1 mx:provider.example -all"'],
        ("provider.example", "MX"): ["20 mx2.provider.example.", "10 mx1.provider.example."],
        ("mx1.provider.example", "A"): ["198.51.100.25"],
        ("mx2.provider.example", "A"): ["198.51.100.26"],
        ("mx2.provider.example", "AAAA"): ["2001:db8::26"],
        ("nullmx.example", "MX"): ["0 ."],
    }, servfail=["broken.example"], silent=["slow.example"])
    yield stub
    stub.close()


def test_dnspython_resolver_answers(dns_stub: DnsStub) -> None:
    resolver = DnsPythonResolver(["127.0.0.1"], 2.0, port=dns_stub.port)
    assert sorted(resolver.txt("ourtest.com")) == [  # a record set has no order
        "google-site-verification=abc",
        "v=spf1 ip4:192.0.2.0/24 include:_spf.provider.example -all"]
    assert resolver.mx("provider.example") == ["mx1.provider.example", "mx2.provider.example"]
    assert resolver.mx("nullmx.example") == []
    assert resolver.a("mx1.provider.example") == ["198.51.100.25"]
    assert resolver.aaaa("mx2.provider.example") == ["2001:db8::26"]
    assert resolver.aaaa("mx1.provider.example") == []          # NoAnswer
    assert resolver.txt("missing.example") == []                # NXDOMAIN
    with pytest.raises(DnsTempError, match="SERVFAIL"):
        resolver.txt("broken.example")
    start = time.monotonic()
    with pytest.raises(DnsTempError, match="in time"):
        DnsPythonResolver(["127.0.0.1"], 0.5, port=dns_stub.port).a("slow.example")
    assert time.monotonic() - start < 3


def test_spf_over_real_dns(dns_stub: DnsStub) -> None:
    resolver = DnsPythonResolver(["127.0.0.1"], 2.0, port=dns_stub.port)
    via_mx = spf_covers("ourtest.com", "198.51.100.26", resolver)
    assert via_mx.result == "pass"
    assert via_mx.mechanism == "include:_spf.provider.example > mx:provider.example"
    assert spf_covers("ourtest.com", "192.0.2.9", resolver).result == "pass"
    assert spf_covers("ourtest.com", "203.0.113.1", resolver).result == "fail"
    assert spf_covers("broken.example", "192.0.2.9", resolver).result == "temperror"


# -- the seed story's PBX, in memory ------------------------------------------------------


SEED_HOSTS = """192.168.10.10 sipserver1.ourtest.com sipserver1
127.0.0.1   localhost localhost.localdomain localhost4 localhost4.localdomain4 sipserver1
127.0.1.1   sipserver1
::1         localhost localhost.localdomain localhost6 localhost6.localdomain6
"""


def _pbx(hosts: str | None = SEED_HOSTS, resolv: str = "nameserver 192.0.2.53\n", *,
         hostname: str = "sipserver1",
         fqdn: str | None = "sipserver1.ourtest.com") -> FakeExecutor:
    """sipserver1 with its names, /etc/resolv.conf and /etc/hosts (None: no such file);
    ``fqdn=None``: ``hostname -f`` fails, as when the name does not resolve on the host."""
    fake = FakeExecutor(label="sipserver1", hostname=hostname, fqdn=fqdn)
    fake.add_file("/etc/resolv.conf", resolv)
    if hosts is not None:
        fake.add_file("/etc/hosts", hosts)
    return fake


# -- hostname ---------------------------------------------------------------------------


def _result(code: int, out: str, argv: tuple[str, ...] = ("hostname",)) -> CommandResult:
    return CommandResult(argv, code, out.encode(), b"", 0.0)


@pytest.mark.parametrize("short, full, ok, fqdn", [
    ("sipserver1", "sipserver1.ourtest.com", True, "sipserver1.ourtest.com"),
    ("SipServer1", "SipServer1.OurTest.com.", True, "sipserver1.ourtest.com"),
    ("sipserver1.ourtest.com", "", True, "sipserver1.ourtest.com"),  # hostname -f failed
    ("sipserver1", "", False, "sipserver1"),
    ("sipserver1", "sipserver1", False, "sipserver1"),
    ("localhost", "localhost.localdomain", False, "localhost.localdomain"),
    ("pbx", "pbx.localdomain", False, "pbx.localdomain"),
    ("", "", False, ""),
])
def test_hostname_check(short: str, full: str, ok: bool, fqdn: str) -> None:
    check = hostname_check(_result(0, short + "\n"), _result(0 if full else 1, full + "\n"))
    assert check.name == "hostname_fqdn"
    assert check.ok is ok and check.data["fqdn"] == fqdn, check
    assert check.data["hostname"] == short.lower().split(".")[0]
    if not ok:
        assert "give the host a name like" in check.detail


def test_check_hostname_through_the_executor() -> None:
    check = check_hostname(_pbx())
    assert check.ok is True and check.data == {
        "hostname": "sipserver1", "fqdn": "sipserver1.ourtest.com", "source": "hostname -f"}
    check = check_hostname(_pbx(fqdn=None))
    assert check.ok is False and "'hostname -f' failed" in check.detail
    # No hostname program at all: uname -n names the host.
    pbx = _pbx()
    pbx.script(["hostname"], missing=True)
    check = check_hostname(pbx)
    assert check.data == {"hostname": "sipserver1", "fqdn": "sipserver1", "source": "uname"}
    assert pbx.ran("uname", "-n")


def test_check_hostname_on_this_machine() -> None:
    check = check_hostname(LocalExecutor())
    assert check.data["hostname"] and isinstance(check.ok, bool)


# -- /etc/hosts ---------------------------------------------------------------------------


def _problems(text: str) -> list[str]:
    return hosts_file_problems(text, "sipserver1", "sipserver1.ourtest.com")


@pytest.mark.parametrize("text", [
    SEED_HOSTS,
    "192.168.10.10 SipServer1.OurTest.COM sipserver1 # the PBX\n",
    "127.0.0.1 localhost\n2001:db8::10 sipserver1.ourtest.com sipserver1\n",
    "# 10.0.0.1 sipserver1\n\n192.168.10.10\tsipserver1.ourtest.com\tsipserver1 pbx\n",
    # Debian's own convention: the host's name on a loopback address of its own
    "127.0.0.1\tlocalhost\n127.0.1.1\tsipserver1.ourtest.com sipserver1\n",
    "127.0.1.1 sipserver1.ourtest.com sipserver1\n10.9.9.9 sipserver1\n",
])
def test_good_hosts_files(text: str) -> None:
    assert _problems(text) == []


@pytest.mark.parametrize("text, fragments", [
    ("", ["no line for sipserver1.ourtest.com", "192.0.2.10 sipserver1.ourtest.com sipserver1"]),
    ("127.0.0.1 localhost\n# 192.168.10.10 sipserver1.ourtest.com sipserver1\n",
     ["no line for"]),
    ("127.0.0.1 sipserver1.ourtest.com sipserver1 localhost\n",
     ["only mapped to the loopback address 127.0.0.1", "map it to the host's own address"]),
    ("::1 sipserver1.ourtest.com sipserver1\n", ["loopback address ::1"]),
    ("192.168.10.10 sipserver1 sipserver1.ourtest.com\n",
     ["put sipserver1.ourtest.com first, then sipserver1", "canonical name"]),
    ("192.168.10.10 sipserver1.ourtest.com\n", ["add the short name sipserver1"]),
    ("127.0.0.1 localhost sipserver1\n192.168.10.10 sipserver1.ourtest.com sipserver1\n",
     ["line 1 (127.0.0.1) names sipserver1 before the line for 192.168.10.10",
      "move the 192.168.10.10 line above it"]),
    ("10.9.9.9 sipserver1\n192.168.10.10 sipserver1.ourtest.com sipserver1\n",
     ["line 1 (10.9.9.9) names sipserver1 before"]),
    ("192.168.10.300 sipserver1.ourtest.com sipserver1\n",
     ["'192.168.10.300' is not an IP address", "no line for"]),
])
def test_broken_hosts_files(text: str, fragments: list[str]) -> None:
    problems = _problems(text)
    for fragment in fragments:
        assert any(fragment in p for p in problems), (fragment, problems)


def test_hosts_file_needs_a_qualified_name() -> None:
    (problem,) = hosts_file_problems(SEED_HOSTS, "sipserver1", "sipserver1")
    assert "fix the host name first" in problem


def test_check_hosts_file() -> None:
    good = check_hosts_file(_pbx(), "sipserver1", "sipserver1.ourtest.com")
    assert good.ok is True and good.data == {"problems": []}
    bad = check_hosts_file(_pbx(hosts="127.0.0.1 localhost sipserver1\n"),
                           "sipserver1", "sipserver1.ourtest.com")
    assert bad.ok is False and bad.detail.startswith("; ".join(bad.data["problems"]))
    assert [p.split(":")[0] for p in bad.data["problems"]] == [
        "line 1 (127.0.0.1) names sipserver1 first",
        "/etc/hosts has no line for sipserver1.ourtest.com"]
    assert "canonical name is 'localhost'" in bad.detail
    assert bad.detail.endswith("to fix: run fix_hostname (relayfleet-ops fix-hostname --domain "
                               "DOMAIN, or a fix_hostname job): it edits /etc/hosts so and "
                               "tells the MTA")
    missing = check_hosts_file(_pbx(hosts=None), "sipserver1", "sipserver1.ourtest.com")
    assert missing.ok is False and "/etc/hosts is missing" in missing.detail


# -- MTA running (kill -0 for real) ---------------------------------------------------------


def _dead_pid() -> int:
    proc = os.fork()
    if proc == 0:
        os._exit(0)
    os.waitpid(proc, 0)
    return proc


def test_mta_running(tmp_path: Path) -> None:
    pid_file = tmp_path / "sendmail.pid"
    pid_file.write_text(f"{os.getpid()}\n/usr/sbin/sendmail -bd -q10m\n")
    alive = check_mta_running(LocalExecutor(), str(pid_file))
    assert alive.ok is True and alive.data["pid"] == os.getpid()
    assert "command" not in alive.data  # nothing of the pid file but the pid is echoed
    dead = _dead_pid()
    pid_file.write_text(f"{dead}\n")
    stale = check_mta_running(LocalExecutor(), str(pid_file))
    assert stale.ok is False and stale.data["pid"] == dead and "stale" in stale.detail
    for junk in ("", "0\n", "-1\n", "12ab\n"):
        pid_file.write_text(junk)
        check = check_mta_running(LocalExecutor(), str(pid_file))
        assert check.ok is False and check.data["pid"] is None, junk
    absent = check_mta_running(LocalExecutor(), str(tmp_path / "none.pid"))
    assert absent.ok is False and "no pid file" in absent.detail


def test_alive_command_for_status_batches(tmp_path: Path) -> None:
    pid_file = tmp_path / "sendmail.pid"
    executor = LocalExecutor()
    cases = {f"{os.getpid()}\n/usr/sbin/sendmail\n": True, str(os.getpid()): True,
             f"{_dead_pid()}\n": False, "0\n": False, "x\n": False}
    for content, running in cases.items():
        pid_file.write_text(content)
        check = mta_running_check(executor.run(alive_command(str(pid_file))), str(pid_file))
        assert check.ok is running, content
    missing = executor.run(alive_command(str(tmp_path / "none")))
    assert mta_running_check(missing, "x").ok is False


# -- smarthost resolution (getent for real) ---------------------------------------------------


@pytest.mark.parametrize("host, address", [
    ("192.0.2.25", "192.0.2.25"), ("[192.0.2.25]", "192.0.2.25"),
    ("[IPv6:2001:DB8::25]", "2001:db8::25"), ("2001:db8::25", "2001:db8::25")])
def test_address_literals_resolve_trivially(host: str, address: str) -> None:
    check = check_resolves(LocalExecutor(), host)
    assert check.ok is True and check.data["addresses"] == [address]


def test_getent_resolution() -> None:
    found = check_resolves(LocalExecutor(), "[localhost]")
    assert found.ok is True and found.data["host"] == "localhost"
    assert set(found.data["addresses"]) <= {"127.0.0.1", "::1"}
    missing = check_resolves(LocalExecutor(), "no-such-host.invalid")
    assert missing.ok is False and "does not resolve on this host" in missing.detail
    odd = check_resolves(LocalExecutor(), "-s")
    assert odd.ok is False and "not a host name" in odd.detail


# -- SMTP probe against real loopback servers -------------------------------------------------

Behaviour = Callable[["SmtpStub", socket.socket], None]


class SmtpStub:
    """A TCP server on 127.0.0.1 playing one scripted SMTP session; logs what it hears."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.heard: list[str] = []
        self.client_closed = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(10)
            try:
                self.behaviour(self, conn)
                while conn.recv(1024):  # drain until the client closes
                    pass
                self.client_closed.set()
            except OSError:
                self.client_closed.set()

    def readline(self, conn: socket.socket) -> str:
        data = b""
        while not data.endswith(b"\n"):
            chunk = conn.recv(1)
            if not chunk:
                break
            data += chunk
        line = data.decode().rstrip("\r\n")
        self.heard.append(line)
        return line

    def close(self) -> None:
        self.sock.close()
        self.thread.join(5)


def esmtp(caps: Sequence[str], banner: Sequence[str] = ("relay.test ESMTP ready",)
          ) -> Behaviour:
    """A well-behaved server: (multi-line) banner, EHLO with ``caps``, STARTTLS refused for
    now (TLS itself: test_diagnose_tls), QUIT."""
    def play(stub: SmtpStub, conn: socket.socket) -> None:
        conn.sendall(b"".join(f"220{'-' if i < len(banner) - 1 else ' '}{line}\r\n".encode()
                              for i, line in enumerate(banner)))
        stub.readline(conn)
        lines = ["relay.test greets you", *caps]
        conn.sendall(b"".join(f"250{'-' if i < len(lines) - 1 else ' '}{line}\r\n".encode()
                              for i, line in enumerate(lines)))
        while (line := stub.readline(conn)) == "STARTTLS":
            conn.sendall(b"454 4.7.0 TLS not available due to temporary reason\r\n")
        if line == "QUIT":
            conn.sendall(b"221 bye\r\n")
    return play


def helo_only(stub: SmtpStub, conn: socket.socket) -> None:
    conn.sendall(b"220 old.relay.test SMTP\r\n")
    stub.readline(conn)
    conn.sendall(b"502 5.5.2 command not recognized\r\n")
    stub.readline(conn)
    conn.sendall(b"250 old.relay.test\r\n")
    stub.readline(conn)


def says(*lines: bytes) -> Behaviour:
    def play(stub: SmtpStub, conn: socket.socket) -> None:
        for line in lines:
            conn.sendall(line)
    return play


def silent(stub: SmtpStub, conn: socket.socket) -> None:
    """Accepts, never speaks (the client's close ends the drain loop)."""


def trickle(stub: SmtpStub, conn: socket.socket) -> None:
    """Sends one byte of a banner every 0.1 s and never ends the line."""
    for _ in range(100):
        conn.sendall(b"2")
        time.sleep(0.1)


def hangs_up(stub: SmtpStub, conn: socket.socket) -> None:
    conn.shutdown(socket.SHUT_RDWR)


def refuses_ehlo(reply: bytes) -> Behaviour:
    """Greets, answers EHLO with ``reply`` and listens on (a HELO would be heard)."""
    def play(stub: SmtpStub, conn: socket.socket) -> None:
        conn.sendall(b"220 relay.test ESMTP\r\n")
        stub.readline(conn)
        conn.sendall(reply)
        stub.readline(conn)
    return play


@pytest.fixture
def smtp_server(request: pytest.FixtureRequest) -> Iterator[SmtpStub]:
    server = SmtpStub(request.param)
    yield server
    server.close()


def _probe(server: SmtpStub, timeout_s: float = 3.0) -> Check:
    return check_smtp(LocalExecutor(), "127.0.0.1", server.port, timeout_s,
                      "sipserver1.ourtest.com")


@pytest.mark.parametrize("smtp_server", [esmtp(
    ["PIPELINING", "SIZE 35882577", "AUTH PLAIN LOGIN", "AUTH=LOGIN", "STARTTLS", "8BITMIME"],
    banner=["smtp-relay.test ESMTP", "no UCE", "welcome"])], indirect=True)
def test_smtp_with_starttls_and_auth(smtp_server: SmtpStub) -> None:
    check = _probe(smtp_server)
    assert check.ok is True, check
    assert check.data["starttls"] is True and check.data["auth"] == ["PLAIN", "LOGIN"]
    assert check.data["banner"] == "smtp-relay.test ESMTP\nno UCE\nwelcome"
    assert "SIZE 35882577" in check.data["capabilities"]
    assert "offers STARTTLS" in check.detail and "AUTH PLAIN LOGIN" in check.detail
    assert smtp_server.client_closed.wait(2)
    assert smtp_server.heard == ["EHLO sipserver1.ourtest.com", "STARTTLS", "QUIT"]


@pytest.mark.parametrize("smtp_server", [esmtp(["PIPELINING", "8BITMIME"])], indirect=True)
def test_smtp_without_starttls(smtp_server: SmtpStub) -> None:
    check = _probe(smtp_server)
    assert check.ok is True and check.data["starttls"] is False and check.data["auth"] == []
    assert "does not offer STARTTLS, no AUTH" in check.detail
    assert smtp_server.client_closed.wait(2)


@pytest.mark.parametrize("smtp_server", [esmtp(["STARTTLS"])], indirect=True)
def test_smtp_auth_only_after_starttls(smtp_server: SmtpStub) -> None:
    check = _probe(smtp_server)
    assert check.ok is True and "no AUTH before STARTTLS" in check.detail


@pytest.mark.parametrize("smtp_server", [helo_only], indirect=True)
def test_smtp_falls_back_to_helo(smtp_server: SmtpStub) -> None:
    check = _probe(smtp_server)
    assert check.ok is True and check.data["esmtp"] is False
    assert check.data["ehlo_reply"].startswith("502")
    assert smtp_server.client_closed.wait(2)
    assert smtp_server.heard == ["EHLO sipserver1.ourtest.com", "HELO sipserver1.ourtest.com",
                                 "QUIT"]


@pytest.mark.parametrize("smtp_server", [refuses_ehlo(
    b"421 4.3.2 Service not available, too many connections\r\n")], indirect=True)
def test_smtp_ehlo_refused_for_another_reason_does_not_blame_the_name(
        smtp_server: SmtpStub) -> None:
    check = _probe(smtp_server)
    assert check.ok is False and check.data["error"] == "rejected", check
    assert check.detail == (f"127.0.0.1:{smtp_server.port} refused EHLO sipserver1.ourtest.com: "
                            "421 4.3.2 Service not available, too many connections")
    assert "fix_hostname" not in check.detail
    assert smtp_server.client_closed.wait(2)
    assert smtp_server.heard == ["EHLO sipserver1.ourtest.com", ""]  # no HELO after it


@pytest.mark.parametrize("smtp_server", [refuses_ehlo(
    b"550 5.7.1 Helo command rejected: Host not found\r\n")], indirect=True)
def test_smtp_ehlo_refusal_naming_the_name_blames_it(smtp_server: SmtpStub) -> None:
    check = _probe(smtp_server)
    assert check.ok is False and check.data["error"] == "ehlo_refused", check
    assert "refuses this host's EHLO name sipserver1.ourtest.com: 550 5.7.1 Helo command " \
        "rejected" in check.detail
    assert check.detail.endswith("check it, or run fix_hostname")


@pytest.mark.parametrize("smtp_server", [refuses_ehlo(b"554 5.7.1 Access denied\r\n")],
                         indirect=True)
@pytest.mark.parametrize("name", ["pbx1", "localhost", "pbx1.localdomain"])
def test_smtp_ehlo_refused_to_an_unqualified_name_blames_it(smtp_server: SmtpStub,
                                                            name: str) -> None:
    check = check_smtp(LocalExecutor(), "127.0.0.1", smtp_server.port, 3, name)
    assert check.ok is False and check.data["error"] == "ehlo_refused", check
    assert check.detail.endswith(f"refuses this host's EHLO name {name}: 554 5.7.1 Access "
                                 "denied; it is not fully qualified: run fix_hostname, then "
                                 "diagnose again")


@pytest.mark.parametrize("smtp_server", [
    says(b"554-5.7.1 relaying denied for 203.0.113.5\r\n554 5.7.1 go away\r\n")], indirect=True)
def test_smtp_refusing_banner(smtp_server: SmtpStub) -> None:
    check = _probe(smtp_server)
    assert check.ok is False and check.data["error"] == "rejected"
    assert "refused the connection from this host: 554 5.7.1 relaying denied" in check.detail
    assert smtp_server.client_closed.wait(2)


@pytest.mark.parametrize("smtp_server", [says(b"SSH-2.0-OpenSSH_9.6\r\n")], indirect=True)
def test_smtp_not_smtp(smtp_server: SmtpStub) -> None:
    check = _probe(smtp_server)
    assert check.ok is False and check.data["error"] == "protocol"
    assert "does not speak SMTP" in check.detail and "SSH-2.0" in check.detail


@pytest.mark.parametrize("smtp_server", [hangs_up], indirect=True)
def test_smtp_server_hangs_up(smtp_server: SmtpStub) -> None:
    check = _probe(smtp_server)
    assert check.ok is False and check.data["error"] == "closed"
    assert "dropped the connection during banner" in check.detail


@pytest.mark.parametrize("smtp_server", [silent], indirect=True)
def test_smtp_silent_server_times_out_in_time(smtp_server: SmtpStub) -> None:
    start = time.monotonic()
    check = _probe(smtp_server, 0.5)
    elapsed = time.monotonic() - start
    assert check.ok is False and check.data["error"] == "timeout"
    assert "sent no greeting within 0.5s" in check.detail
    assert 0.45 <= elapsed < 2
    assert smtp_server.client_closed.wait(2)  # the probe closed its end


@pytest.mark.parametrize("smtp_server", [trickle], indirect=True)
def test_smtp_trickling_server_cannot_stretch_the_time_box(smtp_server: SmtpStub) -> None:
    start = time.monotonic()
    check = _probe(smtp_server, 0.6)
    assert check.ok is False and check.data["error"] == "timeout"
    assert time.monotonic() - start < 2


def test_smtp_closed_port() -> None:
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    check = check_smtp(LocalExecutor(), "[127.0.0.1]", port, 2, "x.example")
    assert check.ok is False and check.data["error"] == "refused"
    assert f"cannot connect to 127.0.0.1:{port}" in check.detail


def test_smtp_bad_port() -> None:
    assert check_smtp(LocalExecutor(), "127.0.0.1", 0, 2, "x.example").ok is False


# -- input and composition ------------------------------------------------------------------


@pytest.mark.parametrize("domain, ip, field", [
    ("bad domain", None, "domain"), ("[192.0.2.1]", None, "domain"), ("-x.com", None, "domain"),
    ("ourtest.com", "300.1.1.1", "public_ip"), (None, "x;id", "public_ip"),
    (None, "fe80::1%eth0", "public_ip")])
def test_diagnose_input_is_validated(domain: str | None, ip: str | None, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_diagnose_input(domain, ip)
    assert field in caught.value.errors


def test_diagnose_input_is_normalised() -> None:
    assert validate_diagnose_input("OurTest.COM.", "2001:DB8::1") == ("ourtest.com",
                                                                      "2001:db8::1")
    assert validate_diagnose_input(None, None) == (None, None)


def test_resolver_nameservers() -> None:
    executor = _pbx(resolv=(
        "# generated\nsearch ourtest.com\nnameserver 192.0.2.53 # primary\n"
        "nameserver  2001:db8::53\nnameserver bogus\nnameserver 192.0.2.54\n"
        "nameserver 192.0.2.55\noptions timeout:1\n"))
    assert resolver_nameservers(executor) == ["192.0.2.53", "2001:db8::53", "192.0.2.54"]
    assert resolver_nameservers(FakeExecutor()) == []  # no /etc/resolv.conf at all


def test_run_checks_on_the_seed_host() -> None:
    pbx = _pbx()
    pid = pbx.spawn()
    pbx.add_file("/run/sendmail.pid", f"{pid}\n")
    relay = pbx.listen_smtp("127.0.0.1", 2525, script=SmtpScript(
        name="smtp-relay.test", capabilities=("AUTH PLAIN LOGIN", "STARTTLS")))
    profile = HostProfile(pid_file="/run/sendmail.pid")
    dns_ = FakeDns(txt={"ourtest.com": ["v=spf1 ip4:198.51.100.0/24 ~all"]})
    config = Check("config_in_sync", True, "sendmail.mc and sendmail.cf agree")
    checks = run_checks(pbx, profile, smarthost_host="127.0.0.1", smarthost_port=2525,
                        domain="OurTest.com", public_ip="198.51.100.9", config_check=config,
                        resolver=dns_, timeout_s=3)
    assert [c.name for c in checks] == ["hostname_fqdn", "hosts_file", "mta_running",
                                        "config_in_sync", "smarthost_resolves",
                                        "smarthost_smtp", "smarthost_tls", "spf"]
    # the scripted relay answers STARTTLS with 500: no TLS, informational without a mode
    assert [c.ok for c in checks] == [True] * 6 + [None, True], [c.to_dict() for c in checks]
    assert checks[2].data["pid"] == pid
    (stream,) = pbx.streams
    assert stream.script is relay and stream.closed
    assert stream.received == ["EHLO sipserver1.ourtest.com", "STARTTLS", "QUIT"]
    assert checks[-1].data["domain"] == "ourtest.com"


def test_run_checks_on_a_broken_host() -> None:
    checks = run_checks(_pbx(hosts=None, hostname="localhost", fqdn="localhost"),
                        HostProfile(pid_file="/run/sendmail.pid"),
                        smarthost_host=None, smarthost_port=25, domain=None, public_ip=None,
                        config_check=None, resolver=FakeDns())
    by_name = {c.name: c for c in checks}
    assert list(by_name) == ["hostname_fqdn", "hosts_file", "mta_running",
                             "smarthost_resolves", "smarthost_smtp", "smarthost_tls", "spf"]
    assert [c.ok for c in checks] == [False, False, False, False, False, None, None]
    assert by_name["smarthost_smtp"].detail == NO_SMARTHOST
    assert all(isinstance(c.to_dict()["detail"], str) for c in checks)


def test_run_checks_skips_smtp_when_the_name_does_not_resolve() -> None:
    pbx = _pbx()
    checks = run_checks(pbx, HostProfile(pid_file="/run/sendmail.pid"),
                        smarthost_host="no-such-host.invalid", smarthost_port=25, domain=None,
                        public_ip=None, config_check=None)
    smtp = next(c for c in checks if c.name == "smarthost_smtp")
    assert smtp.ok is False and smtp.detail.startswith("not tried")
    assert pbx.ran("getent", "hosts", "no-such-host.invalid") and pbx.connections == []


def test_run_checks_refuses_bad_input() -> None:
    with pytest.raises(ValidationError):
        run_checks(_pbx(), HostProfile(), smarthost_host=None, smarthost_port=25,
                   domain="ourtest.com", public_ip="not-an-ip", config_check=None)
