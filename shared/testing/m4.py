"""A small m4: enough of GNU m4 and sendmail-cf's cf.m4 to compile a sendmail.mc."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

_WORD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ARG_REF_RE = re.compile(r"\$([0-9#*@])")
#: builtins that are macros only when called with arguments (``define`` alone is a word)
_ARG_BUILTINS = frozenset({"define", "undefine", "ifdef", "include", "sinclude", "esyscmd",
                           "syscmd", "ifelse"})
_PLAIN_BUILTINS = frozenset({"dnl", "divert"})
#: cf.m4's macros an mc file uses (they exist once cf.m4 is included)
_CF_MACROS = frozenset({
    "VERSIONID", "OSTYPE", "DOMAIN", "FEATURE", "HACK", "MAILER", "MAILER_DEFINITIONS",
    "DAEMON_OPTIONS", "CLIENT_OPTIONS", "EXPOSED_USER", "LOCAL_DOMAIN", "LOCAL_USER",
    "MASQUERADE_AS", "MASQUERADE_DOMAIN", "TRUST_AUTH_MECH", "RELAY_DOMAIN", "LOCAL_CONFIG",
    "GENERICS_DOMAIN", "VIRTUSER_DOMAIN", "CANONIFY_DOMAIN", "SITECONFIG", "QUEUE_GROUP",
    "INPUT_MAIL_FILTER", "MODIFY_MAILER_FLAGS"})
#: sendmail.cf options written for these mc defines
_CONF_OPTIONS = {"confAUTH_MECHANISMS": "AuthMechanisms", "confAUTH_OPTIONS": "AuthOptions",
                 "confPRIVACY_FLAGS": "PrivacyOptions", "confTO_CONNECT": "Timeout.connect",
                 "confDEF_USER_ID": "DefaultUser", "confPID_FILE": "PidFile",
                 "confMAX_DAEMON_CHILDREN": "MaxDaemonChildren",
                 "confCONNECTION_RATE_THROTTLE": "ConnectionRateThrottle",
                 "confCACERT_PATH": "CACertPath", "confCACERT": "CACertFile"}
#: cfhead.m4's macros that are m4 definitions rather than cf.m4 hooks
_CFHEAD_MACROS = {"MASQUERADE_AS": "define(`MASQUERADE_NAME', $1)"}
#: ruleset MasqEnv's rule, without and with FEATURE(`masquerade_envelope')
_MASQ_ENV_RULES = ("R$* < @ *LOCAL* > $*\t$: $1 < @ $j . > $2", "R$+\t\t\t$@ $>MasqHdr $1")
#: MAILER(`smtp'): name, its *_MAILER_ARGS prefix, flags, recipient rewriting, line limit
_SMTP_MAILERS = (("smtp", "SMTP", "mDFMuX", "EnvToSMTP", 990),
                 ("esmtp", "ESMTP", "mDFMuXa", "EnvToSMTP", 990),
                 ("smtp8", "SMTP8", "mDFMuX8", "EnvToSMTP", 990),
                 ("dsmtp", "DSMTP", "mDFMuXa%", "EnvToSMTP", 990),
                 ("relay", "RELAY", "mDFMuXa8", "MasqSMTP", 2040))
_LOCAL_MAILERS = (
    "Mlocal,\t\tP=/usr/sbin/sensible-mda, F=lsDFMAw5:/|@qPn9S, S=EnvFromL/HdrFromL, "
    "R=EnvToL/HdrToL,\n\t\tT=DNS/RFC822/X-Unix,\n\t\tA=sensible-mda $g $u $h ${client_addr}\n"
    "Mprog,\t\tP=/bin/sh, F=lsDFMoqeu9, S=EnvFromL/HdrFromL, R=EnvToL/HdrToL, D=$z:/,\n"
    "\t\tT=X-Unix/X-Unix/X-Unix,\n\t\tA=sh -c $u\n")
#: proto.m4's host macros: the comment above each, its letter, the mc define that sets it
_PROTO_HOSTS = (('"Smart" relay host (may be null)', "S", "SMART_HOST"),
                ("who I send unqualified names to if FEATURE(stickyhost) (null means deliver"
                 " locally)", "R", "LOCAL_RELAY"),
                ("who gets all local email traffic", "H", "MAIL_HUB"))
_EXPANSION_LIMIT = 100_000


class M4Error(Exception):
    """m4 stopped: the message is what GNU m4 prints."""


@dataclass
class M4Result:
    """What the fake m4 printed, and the shell commands the input would have made m4 run."""

    exit_code: int
    output: str
    stderr: str
    shell_calls: list[str]


class FakeM4:
    """Enough of GNU m4 (and of sendmail-cf's cf.m4/proto.m4) to compile a sendmail.mc.

    m4 proper: nested `quotes', ``#`` comments, ``dnl``, ``define``/``undefine``/
    ``ifdef``/``ifelse`` (three arguments), ``divert``, ``include``/``sinclude``,
    user macros with ``$1``... and rescanning of their expansion. ``esyscmd``/``syscmd``
    never run anything: what they would have run is kept in ``shell_calls``. cf.m4: the
    macros an mc file calls; ``MAILER(`smtp')`` captures the ``*_MAILER_ARGS`` defined so
    far (a port defined after it is lost, as with the real files) and the cf's ``DS`` line
    is proto.m4's own ``DS`'ifdef(`SMART_HOST', `SMART_HOST')``, expanded at the end.
    ``MASQUERADE_AS`` is cfhead.m4's ``define(`MASQUERADE_NAME', $1)`` and the ``DM`` line
    proto.m4's ``DM`'MASQUERADE_NAME``: a masquerade domain is rescanned twice, as with the
    real files. ``FEATURE(`masquerade_envelope')`` turns ruleset MasqEnv into the header
    rule, ``FEATURE(`check_cert_altnames')`` writes ``O SetCertAltnames=true``, and
    ``confCACERT_PATH``/``confCACERT`` their ``O CACertPath``/``O CACertFile`` options.
    """

    def __init__(self, read: Callable[[str], str | None], *,
                 mail_dir: str = "/etc/mail") -> None:
        self.read = read
        self.mail_dir = mail_dir.rstrip("/")
        self.macros: dict[str, str] = {}
        self.diversion = 0
        self.diversions: dict[int, list[str]] = {}
        self.proto = False
        self.versions: list[str] = []
        self.features: list[str] = []
        self.daemon_options: list[str] = []
        self.mailers: dict[str, str] = {}
        self.shell_calls: list[str] = []
        self.filename = "stdin"
        self._src = ""
        self._pos = 0
        self._line = 1
        self._expansions = 0

    # -- reading -------------------------------------------------------------------------
    def _peek(self) -> str:
        return self._src[self._pos] if self._pos < len(self._src) else ""

    def _advance(self, count: int) -> str:
        text = self._src[self._pos:self._pos + count]
        self._pos += len(text)
        self._line += text.count("\n")
        return text

    def _push_back(self, text: str) -> None:
        self._expansions += 1
        if self._expansions > _EXPANSION_LIMIT:
            raise M4Error(f"m4:{self.filename}:{self._line}: ERROR: recursion limit exceeded")
        self._src = text + self._src[self._pos:]
        self._pos = 0

    def _quoted(self) -> str:
        """The text of a `quoted string' (the ` already read), one level of quotes off."""
        start, depth = self._line, 1
        out: list[str] = []
        while True:
            ch = self._advance(1)
            if not ch:
                raise M4Error(f"m4:{self.filename}:{start}: ERROR: end of file in string")
            depth += (ch == "`") - (ch == "'")
            if depth == 0:
                return "".join(out)
            out.append(ch)

    def _token(self) -> tuple[str, str]:
        """The next token: ("eof"|"quoted"|"comment"|"word"|"char", text)."""
        ch = self._peek()
        if not ch:
            return "eof", ""
        if ch == "`":
            self._advance(1)
            return "quoted", self._quoted()
        if ch == "#":
            return "comment", self._rest_of_line()
        word = _WORD_RE.match(self._src, self._pos)
        if word:
            return "word", self._advance(len(word.group()))
        return "char", self._advance(1)

    def _rest_of_line(self) -> str:
        """Read up to and including the next newline (or to the end)."""
        end = self._src.find("\n", self._pos)
        return self._advance((len(self._src) if end < 0 else end + 1) - self._pos)

    def _is_macro(self, name: str) -> bool:
        if name in self.macros or name in _PLAIN_BUILTINS:
            return True
        if name in _ARG_BUILTINS:
            return self._peek() == "("
        return self.proto and name in _CF_MACROS

    def _args(self) -> list[str]:
        """The arguments of a call (the ( already read), expanded, one level of quotes off."""
        args: list[str] = []
        current: list[str] = []
        depth = 0
        self._skip_blanks()
        while True:
            kind, text = self._token()
            if kind == "eof":
                raise M4Error(f"m4:{self.filename}:{self._line}: "
                              "ERROR: end of file in argument list")
            if kind == "word" and self._is_macro(text):
                self._call(text)
            elif kind == "char" and text == "(":
                depth += 1
                current.append(text)
            elif kind == "char" and text == ")" and depth:
                depth -= 1
                current.append(text)
            elif kind == "char" and text in "),":
                args.append("".join(current))
                if text == ")":
                    return args
                current = []
                self._skip_blanks()
            else:
                current.append(text)

    def _skip_blanks(self) -> None:
        while self._peek() and self._peek() in " \t\n":
            self._advance(1)

    # -- expanding ------------------------------------------------------------------------
    def _scan(self, emit: Callable[[str], None]) -> None:
        while True:
            kind, text = self._token()
            if kind == "eof":
                return
            if kind == "word" and self._is_macro(text):
                self._call(text)
            else:
                emit(text)

    def diverted(self, number: int = 0) -> str:
        """What diversion ``number`` holds so far (0: the output)."""
        return "".join(self.diversions.get(number, []))

    def _emit(self, text: str) -> None:
        if self.diversion >= 0:
            self.diversions.setdefault(self.diversion, []).append(text)

    def expand(self, text: str) -> str:
        """``text`` expanded with the current definitions (output not diverted)."""
        saved = self._src, self._pos
        self._src, self._pos = text, 0
        out: list[str] = []
        try:
            self._scan(out.append)
        finally:
            self._src, self._pos = saved
        return "".join(out)

    def _call(self, name: str) -> None:
        if name == "dnl":
            self._rest_of_line()
            return
        args: list[str] = []
        if self._peek() == "(":
            self._advance(1)
            args = self._args()
        result = self._invoke(name, args)
        if result:
            self._push_back(result)

    def _invoke(self, name: str, args: list[str]) -> str:
        def arg(index: int) -> str:
            return args[index] if len(args) > index else ""

        if name in self.macros:
            return self._substitute(self.macros[name], name, args)
        if name == "define":
            self.macros[arg(0)] = arg(1)
        elif name == "undefine":
            self.macros.pop(arg(0), None)
        elif name == "ifdef":
            return arg(1) if arg(0) in self.macros else arg(2)
        elif name == "ifelse":
            return arg(2) if arg(0) == arg(1) else arg(3)
        elif name == "divert":
            self.diversion = int(arg(0) or 0)
        elif name in ("include", "sinclude"):
            return self._include(arg(0), name == "include")
        elif name in ("esyscmd", "syscmd"):
            self.shell_calls.append(arg(0))
        else:
            self._cf_macro(name, args)
        return ""

    @staticmethod
    def _substitute(body: str, name: str, args: list[str]) -> str:
        def ref(match: re.Match[str]) -> str:
            key = match.group(1)
            if key == "#":
                return str(len(args))
            if key == "*":
                return ",".join(args)
            if key == "@":
                return ",".join(f"`{a}'" for a in args)
            index = int(key)
            return name if index == 0 else (args[index - 1] if index <= len(args) else "")

        return _ARG_REF_RE.sub(ref, body)

    def _include(self, path: str, required: bool) -> str:
        if path.endswith("/m4/cf.m4"):
            self.proto = True
            self.macros.update(_CFHEAD_MACROS)
            return ""
        text = self.read(path)
        if text is None:
            if required:
                raise M4Error(f"m4:{self.filename}:{self._line}: cannot open `{path}': "
                              "No such file or directory")
            return ""
        return text

    def _cf_macro(self, name: str, args: list[str]) -> None:
        if name == "VERSIONID":
            self.versions.append(args[0] if args else "")
        elif name == "FEATURE" and args:
            self.features.append(args[0])
        elif name == "DAEMON_OPTIONS" and args:
            self.daemon_options.append(args[0])
        elif name == "MAILER" and args:
            self._mailer(args[0])
        elif name == "LOCAL_CONFIG":
            self.diversion = 6

    def _mailer(self, name: str) -> None:
        if name in self.mailers:
            return
        if name == "local":
            self.mailers[name] = _LOCAL_MAILERS
        elif name == "smtp":
            text = ""
            for mailer, macro, flags, rewrite, limit in _SMTP_MAILERS:
                # As smtp.m4: the args are what is defined when MAILER(`smtp') is read.
                margs = self.expand(f"ifdef(`{macro}_MAILER_ARGS', `{macro}_MAILER_ARGS', "
                                    "``TCP $h'')")
                text += (f"M{mailer},\t\tP=[IPC], F={flags}, S=EnvFromSMTP/HdrFromSMTP, "
                         f"R={rewrite}, E=\\r\\n, L={limit},\n\t\tT=DNS/RFC822/SMTP,\n"
                         f"\t\tA={margs}\n")
            self.mailers[name] = text
        else:
            self.mailers[name] = (f"M{name},\t\tP=/usr/bin/{name}, F=lsDFM, S=EnvFromL, "
                                  f"R=EnvToL,\n\t\tT=X-Unix,\n\t\tA={name} $u\n")

    # -- the whole run ---------------------------------------------------------------------
    def run(self, text: str, filename: str = "stdin") -> str:
        """Expand one input file; return the diverted-0 output so far."""
        self.filename, self._src, self._pos, self._line = filename, text, 0, 1
        self._scan(self._emit)
        return self.diverted()

    def sendmail_cf(self) -> str:
        """The whole output: the mc's own text, then what cf.m4/proto.m4 would write."""
        out = self.diverted()
        extra = "".join(self.diverted(n) for n in sorted(self.diversions) if n > 0)
        if not self.proto:
            return out + extra
        lines = ["#####  built by relayfleet's FakeM4 (shared/testing/m4.py)  #####\n"]
        lines += [f"#####  {v}  #####\n" for v in self.versions]
        lines.append("\nV10/Berkeley\n\n")
        for comment, letter, macro in _PROTO_HOSTS:
            lines += [f"# {comment}\n",
                      self.expand(f"D{letter}`'ifdef(`{macro}', `{macro}')") + "\n\n"]
        if "MASQUERADE_NAME" in self.macros:
            lines += ["# who I masquerade as (null for no masquerading) (see also $=M)\n",
                      self.expand("DM`'MASQUERADE_NAME") + "\n\n"]
        for macro, option in _CONF_OPTIONS.items():
            if macro in self.macros:
                lines.append(f"O {option}={self.expand(macro)}\n")
        if "check_cert_altnames" in self.features:
            lines.append("O SetCertAltnames=true\n")
        lines += [f"O DaemonPortOptions={opts}\n" for opts in self.daemon_options]
        if "access_db" in self.features:
            lines.append(f"Kaccess hash -T<TMPF> -o {self.mail_dir}/access.db\n")
        if "authinfo" in self.features:
            lines.append(f"Kauthinfo hash -o {self.mail_dir}/authinfo.db\n")
        lines += [f"# FEATURE({f})\n" for f in self.features]
        envelope = "masquerade_envelope" in self.features
        lines += [extra, "\nSMasqEnv=94\n", _MASQ_ENV_RULES[envelope], "\n",
                  "\n#####  MAILER DEFINITIONS  #####\n", *self.mailers.values()]
        return out + "".join(lines)


def fake_m4(text: str, *, filename: str = "stdin",
            read: Callable[[str], str | None] = lambda _path: None,
            mail_dir: str = "/etc/mail") -> M4Result:
    """Compile mc ``text`` with :class:`FakeM4`: exit code, sendmail.cf, errors, shell calls."""
    m4 = FakeM4(read, mail_dir=mail_dir)
    try:
        m4.run(text, filename)
    except M4Error as exc:
        return M4Result(1, m4.diverted(), f"{exc}\n", m4.shell_calls)
    return M4Result(0, m4.sendmail_cf(), "", m4.shell_calls)

