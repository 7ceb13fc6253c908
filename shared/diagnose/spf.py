"""SPF (RFC 7208): does a domain's policy authorise an address? ``check_host()`` in full.

Mechanisms, modifiers, macros, includes and redirects, with the section 4.6.4 limits on
DNS-querying terms, void lookups and MX names. ``ptr`` is deprecated and never matches.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shared.diagnose.check import Check
from shared.diagnose.resolver import DnsPythonResolver, DnsTempError, TxtAResolver
from shared.errors import ValidationError

if TYPE_CHECKING:
    from typing import TypeAlias  # novermin -- read by type checkers only (3.10+)

#: RFC 7208 section 4.6.4: DNS-querying terms per evaluation
SPF_LOOKUP_LIMIT = 10
#: RFC 7208 section 4.6.4: lookups answering NXDOMAIN or nothing
SPF_VOID_LIMIT = 2
#: RFC 7208 section 4.6.4: MX names one "mx" mechanism may look at
SPF_MX_LIMIT = 10
#: every result check_host() can give
SPF_RESULTS = ("pass", "fail", "softfail", "neutral", "none", "permerror", "temperror")
_QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
_MECHANISM = re.compile(r"([+\-~?]?)(all|include|a|mx|ptr|ip4|ip6|exists)(?=$|[:/])(.*)",
                        re.IGNORECASE | re.DOTALL)
_MODIFIER = re.compile(r"([A-Za-z][A-Za-z0-9_.-]*)=(.*)", re.DOTALL)
_DUAL_CIDR = re.compile(r"(.*?)(?:/([0-9]+))?(?://([0-9]+))?", re.DOTALL)
_MACRO = re.compile(r"%\{([slodiphvSLODIPHV])([0-9]*)(r?)([.\-+,/_=]*)\}", re.DOTALL)
_TOPLABEL = re.compile(r"(?=.*[A-Za-z])[A-Za-z0-9]+|[A-Za-z0-9]+-[A-Za-z0-9-]*[A-Za-z0-9]")

Address: TypeAlias = "ipaddress.IPv4Address | ipaddress.IPv6Address"


@dataclass
class SpfResult:
    """An SPF verdict, the term that decided it, and why.

    ``mechanism`` is the deciding term, through includes and redirects joined with " > "
    (``include:_spf.example.net > ip4:192.0.2.0/24``); None for a default result.
    """

    result: str
    mechanism: str | None = None
    record: str | None = None
    reason: str = ""
    lookups: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {"result": self.result, "mechanism": self.mechanism, "record": self.record,
                "reason": self.reason, "lookups": self.lookups, "notes": list(self.notes)}


class _SpfPermError(Exception):
    pass


@dataclass(frozen=True)
class _Term:
    text: str
    qualifier: str
    name: str
    domain_spec: str | None = None
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    cidr4: int = 32
    cidr6: int = 128


@dataclass
class _Outcome:
    result: str
    path: list[str] = field(default_factory=list)
    reason: str = ""


def _cidr(text: str | None, maximum: int, term: str) -> int:
    if text is None:
        return maximum
    if not re.fullmatch(r"0|[1-9][0-9]*", text) or int(text) > maximum:
        raise _SpfPermError(f"bad CIDR length in {term!r}")
    return int(text)


def _check_domain_spec(spec: str, term: str) -> str:
    """RFC 7208 section 7.1 syntax: macro-string ending in a macro or in '.' toplabel."""
    if not spec:
        raise _SpfPermError(f"{term!r} needs a domain")
    bare = _MACRO.sub("", spec.replace("%%", "").replace("%_", "").replace("%-", ""))
    if "%" in bare:
        raise _SpfPermError(f"bad macro in {term!r}")
    if any(not 0x21 <= ord(ch) <= 0x7E for ch in bare):
        raise _SpfPermError(f"bad character in {term!r}")
    if _MACRO.search(spec) and re.search(r"\}\.?$", spec):
        return spec
    labels = (spec[:-1] if spec.endswith(".") else spec).split(".")
    if len(labels) < 2 or not _TOPLABEL.fullmatch(labels[-1]):
        raise _SpfPermError(f"{term!r} does not end in a domain name")
    return spec


def _parse_term(text: str) -> _Term | tuple[str, str]:
    """A mechanism, or a modifier as (name, value); raises _SpfPermError on bad syntax."""
    match = _MECHANISM.fullmatch(text)
    if match is None:
        modifier = _MODIFIER.fullmatch(text)
        if modifier is None:
            raise _SpfPermError(f"unknown mechanism {text!r}")
        return modifier.group(1).lower(), modifier.group(2)
    qualifier = _QUALIFIERS[match.group(1) or "+"]
    name, rest = match.group(2).lower(), match.group(3)
    if name == "all":
        if rest:
            raise _SpfPermError(f"'all' takes no argument: {text!r}")
        return _Term(text, qualifier, name)
    if name in ("ip4", "ip6"):
        if not rest.startswith(":"):
            raise _SpfPermError(f"{text!r} needs an address")
        address, slash, length = rest[1:].partition("/")
        try:
            ip: Address = (ipaddress.IPv4Address(address) if name == "ip4"
                           else ipaddress.IPv6Address(address))
        except ValueError:
            raise _SpfPermError(f"bad address in {text!r}") from None
        cidr = _cidr(length if slash else None, ip.max_prefixlen, text)
        network = ipaddress.ip_network(f"{ip}/{cidr}", strict=False)
        return _Term(text, qualifier, name, network=network)
    if name in ("a", "mx"):
        cidr_match = _DUAL_CIDR.fullmatch(rest)
        assert cidr_match is not None  # the pattern matches any string
        spec_part, c4, c6 = cidr_match.groups()
        spec: str | None = None
        if spec_part:
            if not spec_part.startswith(":"):
                raise _SpfPermError(f"bad syntax in {text!r}")
            spec = _check_domain_spec(spec_part[1:], text)
        return _Term(text, qualifier, name, spec, cidr4=_cidr(c4, 32, text),
                     cidr6=_cidr(c6, 128, text))
    # include, exists, ptr
    if not rest:
        if name != "ptr":
            raise _SpfPermError(f"{text!r} needs a domain")
        return _Term(text, qualifier, name)
    if not rest.startswith(":"):
        raise _SpfPermError(f"bad syntax in {text!r}")
    return _Term(text, qualifier, name, _check_domain_spec(rest[1:], text))


def _parse_record(record: str) -> tuple[list[_Term], str | None]:
    """The mechanisms in order and the redirect target; any syntax error is a permerror."""
    terms: list[_Term] = []
    modifiers: dict[str, str] = {}
    for text in record.split()[1:]:
        parsed = _parse_term(text)
        if isinstance(parsed, _Term):
            terms.append(parsed)
            continue
        name, value = parsed
        if name in ("redirect", "exp"):
            if name in modifiers:
                raise _SpfPermError(f"more than one {name}= modifier")
            modifiers[name] = _check_domain_spec(value, text)
    return terms, modifiers.get("redirect")


class _SpfEvaluator:
    """One check_host() evaluation with its shared lookup counters."""

    def __init__(self, ip: Address, resolver: TxtAResolver, sender_domain: str,
                 local_part: str, helo: str) -> None:
        self.ip = ip
        self.resolver = resolver
        self.sender_domain = sender_domain
        self.local_part = local_part
        self.helo = helo
        self.lookups = 0
        self.voids = 0
        self.notes: list[str] = []
        self.top_record: str | None = None

    def count(self) -> None:
        self.lookups += 1
        if self.lookups > SPF_LOOKUP_LIMIT:
            raise _SpfPermError(f"more than {SPF_LOOKUP_LIMIT} DNS-querying terms")

    def void(self, answers: list[str]) -> list[str]:
        if not answers:
            self.voids += 1
            if self.voids > SPF_VOID_LIMIT:
                raise _SpfPermError(f"more than {SPF_VOID_LIMIT} lookups found nothing")
        return answers

    def addresses(self, name: str) -> list[str]:
        return self.resolver.a(name) if self.ip.version == 4 else self.resolver.aaaa(name)

    def matches(self, candidates: list[str], term: _Term) -> bool:
        prefix = term.cidr4 if self.ip.version == 4 else term.cidr6
        for text in candidates:
            try:
                address = ipaddress.ip_address(text)
            except ValueError:
                continue
            if (address.version == self.ip.version and
                    self.ip in ipaddress.ip_network(f"{address}/{prefix}", strict=False)):
                return True
        return False

    # macros (RFC 7208 section 7) -----------------------------------------------------
    def macro_value(self, letter: str, domain: str) -> str:
        if letter == "i":
            if self.ip.version == 4:
                return str(self.ip)
            return ".".join(self.ip.exploded.replace(":", ""))
        return {
            "s": f"{self.local_part}@{self.sender_domain}",
            "l": self.local_part,
            "o": self.sender_domain,
            "d": domain,
            "p": "unknown",
            "v": "in-addr" if self.ip.version == 4 else "ip6",
            "h": self.helo,
        }[letter]

    def expand(self, spec: str, domain: str) -> str:
        out: list[str] = []
        i = 0
        while i < len(spec):
            ch = spec[i]
            if ch != "%":
                out.append(ch)
                i += 1
                continue
            nxt = spec[i + 1:i + 2]
            if nxt in ("%", "_", "-"):
                out.append({"%": "%", "_": " ", "-": "%20"}[nxt])
                i += 2
                continue
            match = _MACRO.match(spec, i)
            if match is None:
                raise _SpfPermError(f"bad macro in {spec!r}")
            letter, digits, reverse, delimiters = match.groups()
            parts = re.split("[" + re.escape(delimiters or ".") + "]",
                             self.macro_value(letter.lower(), domain))
            if reverse:
                parts.reverse()
            if digits:
                if int(digits) == 0:
                    raise _SpfPermError(f"bad macro in {spec!r}")
                parts = parts[-int(digits):]
            value = ".".join(parts)
            if letter.isupper():
                value = re.sub(r"[^A-Za-z0-9\-._~]",
                               lambda m: "".join(f"%{b:02X}" for b in m.group().encode()),
                               value)
            out.append(value)
            i = match.end()
        target = "".join(out).rstrip(".")
        while len(target) > 253 and "." in target:  # section 7.3: drop labels on the left
            target = target.split(".", 1)[1]
        return target

    # check_host() --------------------------------------------------------------------
    def record_of(self, domain: str) -> str | None:
        records = [t for t in self.resolver.txt(domain)
                   if t.lower() == "v=spf1" or t.lower().startswith("v=spf1 ")]
        if len(records) > 1:
            raise _SpfPermError(f"{domain} publishes {len(records)} SPF records")
        return records[0] if records else None

    def check_host(self, domain: str, top: bool = False) -> _Outcome:
        record = self.record_of(domain)
        if top:
            self.top_record = record
        if record is None:
            return _Outcome("none", reason=f"{domain} publishes no SPF record")
        terms, redirect = _parse_record(record)
        for term in terms:
            path = self.match(term, domain)
            if path is not None:
                return _Outcome(term.qualifier, path)
        if redirect is not None:
            self.count()
            target = self.expand(redirect, domain)
            inner = self.check_host(target)
            if inner.result == "none":
                raise _SpfPermError(f"redirect={target} has no SPF record")
            return _Outcome(inner.result, [f"redirect={redirect}", *inner.path], inner.reason)
        return _Outcome("neutral", reason=f"no mechanism of {domain}'s record matched")

    def match(self, term: _Term, domain: str) -> list[str] | None:
        """The path to the deciding term if ``term`` matches, else None."""
        name = term.name
        if name == "all":
            return [term.text]
        if term.network is not None:
            hit = term.network.version == self.ip.version and self.ip in term.network
            return [term.text] if hit else None
        self.count()
        target = self.expand(term.domain_spec, domain) if term.domain_spec else domain
        if name == "a":
            hit = self.matches(self.void(self.addresses(target)), term)
        elif name == "mx":
            exchanges = self.void(self.resolver.mx(target))
            if len(exchanges) > SPF_MX_LIMIT:
                raise _SpfPermError(f"{target} has more than {SPF_MX_LIMIT} MX records")
            hit = any(self.matches(self.addresses(ex), term) for ex in exchanges)
        elif name == "exists":
            hit = bool(self.void(self.resolver.a(target)))
        elif name == "include":
            inner = self.check_host(target)
            if inner.result == "none":  # errors inside propagate as exceptions
                raise _SpfPermError(f"include:{target} has no SPF record")
            return [term.text, *inner.path] if inner.result == "pass" else None
        else:  # ptr: deprecated (RFC 7208 section 5.5), needs reverse DNS: never matches here
            self.notes.append(f"{term.text} was not evaluated (ptr is deprecated)")
            hit = False
        return [term.text] if hit else None


def _evaluate(evaluator: _SpfEvaluator, domain: str) -> SpfResult:
    """Run ``check_host()`` from the top; errors anywhere below end it as perm/temperror."""
    try:
        outcome = evaluator.check_host(domain, top=True)
    except _SpfPermError as exc:
        outcome = _Outcome("permerror", reason=str(exc))
    except DnsTempError as exc:
        outcome = _Outcome("temperror", reason=f"DNS failed: {exc}")
    return SpfResult(outcome.result, " > ".join(outcome.path) or None, evaluator.top_record,
                     outcome.reason, evaluator.lookups, evaluator.notes)


def spf_covers(domain: str, ip: str, resolver: TxtAResolver, *,
               local_part: str = "postmaster", helo: str | None = None) -> SpfResult:
    """Evaluate ``domain``'s SPF policy for mail from ``ip`` (RFC 7208 check_host()).

    The sender is taken as ``local_part@domain`` (for macros). ``ptr`` never matches.
    """
    try:
        address: Address = ipaddress.ip_address(ip)
    except ValueError:
        raise ValidationError.for_field("public_ip", "must be an IPv4 or IPv6 address") from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    name = domain.lower().rstrip(".")
    if _not_a_domain(name):
        return SpfResult("none", reason=f"{domain!r} is not a domain name")
    evaluator = _SpfEvaluator(address, resolver, name, local_part, helo or name)
    return _evaluate(evaluator, name)


def _not_a_domain(name: str) -> bool:
    labels = name.split(".")
    return (not name or len(name) > 253 or
            not all(re.fullmatch(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?", x) for x in labels))


def _spf_term_for(public_ip: str) -> str:
    return f"ip6:{public_ip}" if ":" in public_ip else f"ip4:{public_ip}"


def check_spf(domain: str | None, public_ip: str | None,
              resolver: TxtAResolver | None) -> Check:
    """Does ``domain``'s SPF record authorise ``public_ip``? Skipped (ok None) without both."""
    if not domain:
        return Check("spf", None, "skipped: give a domain (and the host's public address) to "
                     "check that its SPF record covers this host")
    if not public_ip:
        return Check("spf", None, f"skipped: give the host's public address to check "
                     f"{domain}'s SPF record")
    try:
        verdict = spf_covers(domain, public_ip, resolver or DnsPythonResolver())
    except DnsTempError as exc:
        verdict = SpfResult("temperror", reason=str(exc))
    data = {"domain": domain, "public_ip": public_ip, **verdict.to_dict()}
    term = _spf_term_for(public_ip)
    if verdict.result == "pass":
        return Check("spf", True, f"{domain}'s SPF record authorises {public_ip} "
                     f"({verdict.mechanism})", data)
    if verdict.result == "none":
        return Check("spf", False, f"{domain} publishes no SPF record: publish a TXT record "
                     f"'v=spf1 {term} ~all' (plus your other senders)", data)
    if verdict.result == "permerror":
        return Check("spf", False, f"{domain}'s SPF record is broken ({verdict.reason}): "
                     f"receivers treat it as an error; fix it and add {term}", data)
    if verdict.result == "temperror":
        return Check("spf", False, f"could not check {domain}'s SPF record: {verdict.reason}",
                     data)
    how = f" by {verdict.mechanism}" if verdict.mechanism else " (no mechanism matched)"
    return Check("spf", False, f"{domain}'s SPF record gives {verdict.result} for {public_ip}"
                 f"{how}: add {term} to it, before any 'all'", data)
