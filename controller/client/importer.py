"""``relayfleet hosts import``: a CSV or JSON file turned into ``POST /v1/hosts/import`` rows,
with every problem of every row named by its line ("line 4 (pbx-lyon-1): ssh_key_file:
cannot read keys/lyon.key: No such file or directory").

Pure functions over text and a few local files (key and token files named by the CSV,
relative to its directory); the caller fetches sites and tenants and talks to the API.

CSV columns (case-insensitive, any order; blank lines and ``#`` lines skipped, except
inside a quoted value; the header is line 1 of the file's own numbering; at most 1000
hosts; the key and token files it names are regular files of at most 64 KiB inside its
directory unless the operator allows others):

- required: ``name``, ``site`` (name or id), ``address``, ``transport`` (agent|ssh);
  ``tenant`` (name or id) when several tenants have a site of that name; a number is an
  id unless something is also named so (then ``id:3`` or ``name:3`` says which)
- agent rows: ``agent_url``, ``agent_token_file`` or ``agent_token``; optional
  ``agent_tls_fingerprint``, ``agent_insecure_http`` (yes/no)
- ssh rows: ``ssh_user``, ``ssh_key_file`` or ``ssh_password_file``, ``ssh_host_key``;
  optional ``ssh_port`` (22), ``ssh_sudo`` (yes/no)
- optional: ``kind`` (sendmail|postfix|auto), ``flavour``, ``tags`` (spaces or ``;``)

JSON: an array of ``POST /v1/hosts`` bodies (or ``{"hosts": [...]}``); ``site`` (a name,
with ``tenant`` when it is ambiguous) may stand for ``site_id``; problems are named
``item N`` (the first is item 1).
"""

from __future__ import annotations

import base64
import binascii
import csv
import hashlib
import io
import json
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.client.errors import UsageProblem
from controller.client.refs import ID_PREFIX, number_or_name, say_which, split_ref

REQUIRED_COLUMNS = ("name", "site", "address", "transport")
AGENT_COLUMNS = ("agent_url", "agent_token_file", "agent_token", "agent_tls_fingerprint",
                 "agent_insecure_http")
SSH_COLUMNS = ("ssh_user", "ssh_key_file", "ssh_password_file", "ssh_host_key", "ssh_port",
               "ssh_sudo")
OPTIONAL_COLUMNS = ("tenant", "kind", "flavour", "tags")
KNOWN_COLUMNS = REQUIRED_COLUMNS + AGENT_COLUMNS + SSH_COLUMNS + OPTIONAL_COLUMNS
TRANSPORTS = ("agent", "ssh")
KINDS = ("sendmail", "postfix", "auto")
#: what POST /v1/hosts/import takes at once (all or none holds within one call only)
MAX_ROWS = 1000
#: a key, token or password file a CSV names is at most this big
MAX_NAMED_FILE_BYTES = 64 * 1024
#: a JSON import is read whole: past this it cannot be 1000 hosts
MAX_JSON_BYTES = 64 * 1024 * 1024
_TRUE = frozenset({"yes", "y", "true", "1", "on"})
_FALSE = frozenset({"no", "n", "false", "0", "off"})
_KEY_TYPE = re.compile(r"^(ssh-[a-z0-9-]+|ecdsa-sha2-[a-z0-9-]+|sk-[a-z0-9@.-]+)$")
_TAG_SPLIT = re.compile(r"[\s;,]+")

#: an API field of a host body -> the CSV column it came from (to name API errors the way
#: the file's author wrote them)
FIELD_COLUMNS = {
    "site_id": "site", "agent": "agent_url", "agent.url": "agent_url",
    "agent.token": "agent_token", "agent.tls_fingerprint": "agent_tls_fingerprint",
    "agent.insecure_http": "agent_insecure_http", "agent.ca_cert": "agent_url",
    "ssh": "ssh_user", "ssh.username": "ssh_user", "ssh.private_key": "ssh_key_file",
    "ssh.password": "ssh_password_file", "ssh.host_key": "ssh_host_key",
    "ssh.port": "ssh_port", "ssh.sudo": "ssh_sudo", "mta": "kind", "mta.kind": "kind",
    "mta.flavour": "flavour", "mta.overrides": "kind",
}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the file: where (``line 4``/``item 2``), which host, which
    field, what."""

    where: str
    message: str
    name: str | None = None
    field: str | None = None
    #: the line or item number, for sorting (0: the file as a whole)
    position: int = 0

    def __str__(self) -> str:
        head = f"{self.where} ({self.name})" if self.name else self.where
        return f"{head}: {self.field}: {self.message}" if self.field else f"{head}: {self.message}"


@dataclass
class Row:
    """One host to create: the API body, and where in the file it came from."""

    where: str
    position: int
    name: str | None
    body: dict[str, Any]
    #: the site and tenant as written (``body["site_id"]`` is set once they resolve)
    site: str | None = None
    tenant: str | None = None
    #: API field -> the column or key the file used for it
    columns: dict[str, str] = field(default_factory=dict)

    def problem(self, message: str, field_name: str | None = None) -> Problem:
        """A problem of this row."""
        return Problem(self.where, message, self.name, field_name, self.position)

    def column_for(self, api_field: str) -> str:
        """The column (or JSON key) an API error's field stands for."""
        if api_field in self.columns:
            return self.columns[api_field]
        if api_field.startswith("tags."):
            return "tags"
        return FIELD_COLUMNS.get(api_field, api_field) if self.where.startswith("line") \
            else api_field


@dataclass
class Plan:
    """What a file asks for: the rows and every problem found so far."""

    rows: list[Row] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether nothing is wrong yet."""
        return not self.problems

    def bodies(self) -> list[dict[str, Any]]:
        """The ``hosts`` of ``POST /v1/hosts/import``."""
        return [row.body for row in self.rows]

    def sorted_problems(self) -> list[Problem]:
        """The problems in file order."""
        return sorted(self.problems, key=lambda p: p.position)


class FileProblem(Exception):
    """A file named by the import (or a command) cannot be used; the message says why."""


# -- reading files -----------------------------------------------------------------------

@dataclass(frozen=True)
class FileRules:
    """How the files a CSV names are read: regular files of at most
    :data:`MAX_NAMED_FILE_BYTES`, and inside ``root`` (the CSV's directory) unless it is
    ``None`` (``--allow-outside-files``). A CSV may come from someone else: it must not
    make the operator send /proc/self/environ as a token, or hang on a FIFO."""

    root: Path | None


def _path(name: str, base: Path) -> Path:
    path = Path(name).expanduser()
    return path if path.is_absolute() else base / path


def _read(name: str, base: Path, rules: FileRules | None = None) -> str:
    if rules is not None:
        data = _read_named(name, _path(name, base), rules)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise FileProblem(f"{name} is not UTF-8 text") from None
    try:
        return _path(name, base).read_text(encoding="utf-8")
    except OSError as exc:
        raise FileProblem(f"cannot read {name}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise FileProblem(f"{name} is not UTF-8 text") from None


def _read_named(name: str, path: Path, rules: FileRules) -> bytes:
    """A file a CSV names, under ``rules``."""
    try:
        real = path.resolve(strict=True)
    except OSError as exc:
        raise FileProblem(f"cannot read {name}: {exc.strerror or exc}") from None
    if rules.root is not None and not real.is_relative_to(rules.root.resolve()):
        raise FileProblem(f"{name} is outside the CSV's directory (keep key and token files "
                          "beside the CSV, or import with --allow-outside-files)")
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise FileProblem(f"cannot read {name}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise FileProblem(f"{name} is not a regular file")
        data = handle.read(MAX_NAMED_FILE_BYTES + 1)
    if len(data) > MAX_NAMED_FILE_BYTES:
        raise FileProblem(f"{name} is larger than {MAX_NAMED_FILE_BYTES // 1024} KiB: not a "
                          "key, token or password file")
    return data


def read_first_line(name: str, base: Path = Path(), rules: FileRules | None = None) -> str:
    """A token or password file's first line (a token's blanks stripped, a password's
    kept: only the line end goes)."""
    text = _read(name, base, rules)
    line = text.splitlines()[0] if text else ""
    if not line.strip():
        raise FileProblem(f"{name} is empty")
    return line


def read_private_key(name: str, base: Path = Path(), rules: FileRules | None = None) -> str:
    """An SSH private key file's text (a public key given by mistake is named)."""
    text = _read(name, base, rules)
    if "PRIVATE KEY" not in text:
        if text.lstrip().startswith(("ssh-", "ecdsa-", "sk-")):
            raise FileProblem(f"{name} holds a public key; give the private key file "
                              "(without .pub)")
        raise FileProblem(f"{name} is not a private key (no PRIVATE KEY block)")
    return text


def host_key_problem(line: str) -> str | None:
    """Why ``line`` is not an SSH public key line (``TYPE BASE64 [comment]``), or None."""
    parts = line.split()
    if len(parts) >= 3 and _KEY_TYPE.match(parts[1]) and not _KEY_TYPE.match(parts[0]):
        return "looks like a known_hosts line: give only the key type and key ('ssh-ed25519 " \
               "AAAA...')"
    if len(parts) < 2 or not _KEY_TYPE.match(parts[0]):
        return "not an SSH public key line (expected e.g. 'ssh-ed25519 AAAA...')"
    try:
        base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        return "the key part is not base64"
    return None


def key_fingerprint(line: str | None) -> str | None:
    """``SHA256:...`` of an SSH public key line, as ``ssh-keygen -lf`` prints it."""
    if not line or host_key_problem(line):
        return None
    blob = base64.b64decode(line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def parse_bool(text: str) -> bool | None:
    """yes/no/true/false/1/0/on/off (None: not one of them)."""
    lowered = text.strip().lower()
    return True if lowered in _TRUE else False if lowered in _FALSE else None


def split_tags(text: str) -> list[str]:
    """Tags separated by blanks, ``;`` or ``,``."""
    return [tag for tag in _TAG_SPLIT.split(text.strip()) if tag]


# -- CSV ---------------------------------------------------------------------------------

def _numbered_lines(lines: Iterable[str]) -> Iterator[str]:
    """The file's lines, comment lines blanked (so that line numbers stay the file's). A
    comment is a line starting with ``#`` where a record starts: inside a quoted value
    that spans lines, such a line is part of the value."""
    quoted = False
    for line in lines:
        if not quoted and line.lstrip().startswith("#"):
            yield "\n"
            continue
        # doubled quotes ("") inside a value count twice: the parity says whether a
        # quoted value is still open at the end of the line
        if line.count('"') % 2:
            quoted = not quoted
        yield line


def parse_csv(text: str | Iterable[str], base: Path, *, allow_outside: bool = False) -> Plan:
    """The rows of a CSV import (key and token files read relative to ``base``, and only
    from inside it unless ``allow_outside``); reading stops past :data:`MAX_ROWS` hosts."""
    plan = Plan()
    lines = io.StringIO(text.removeprefix("\ufeff")) if isinstance(text, str) else text
    rules = FileRules(None if allow_outside else base)
    reader = csv.reader(_numbered_lines(lines))
    header: list[str] | None = None
    header_line = 0
    consumed = 0
    try:
        for record in reader:
            line, consumed = consumed + 1, reader.line_num
            if not any(cell.strip() for cell in record):
                continue
            if header is None:
                header, header_line = [cell.strip().lower() for cell in record], line
                problems = _header_problems(header, line)
                if problems:
                    plan.problems += problems
                    return plan
                continue
            if len(plan.rows) == MAX_ROWS:
                # a file of a million rows is not read (nor its key files) to say so
                plan.problems.append(Problem(f"line {line}", f"more than {MAX_ROWS} hosts; "
                                             f"one import takes at most {MAX_ROWS}: split the "
                                             "file", position=line))
                return plan
            _csv_row(plan, header, record, line, base, rules=rules)
    except csv.Error as exc:
        plan.problems.append(Problem(f"line {reader.line_num}", f"not valid CSV: {exc}",
                                     position=reader.line_num))
        return plan
    if header is None:
        plan.problems.append(Problem("line 1", "the file is empty: expected a header row "
                                     f"({', '.join(REQUIRED_COLUMNS)}, ...)", position=1))
    elif not plan.rows and not plan.problems:
        plan.problems.append(Problem(f"line {header_line}", "no hosts after the header row",
                                     position=header_line))
    return plan


def _header_problems(header: list[str], line: int) -> list[Problem]:
    where = f"line {line}"
    if len(header) == 1 and ";" in header[0]:
        return [Problem(where, "columns are separated by ';': save the file with commas",
                        field="header", position=line)]
    problems = []
    unknown = [name for name in header if name not in KNOWN_COLUMNS]
    if unknown:
        problems.append(Problem(where, f"unknown column{'s' if len(unknown) > 1 else ''} "
                                + ", ".join(repr(n) for n in unknown)
                                + f" (known: {', '.join(KNOWN_COLUMNS)})",
                                field="header", position=line))
    twice = sorted({name for name in header if header.count(name) > 1})
    if twice:
        problems.append(Problem(where, f"column {', '.join(twice)} given twice",
                                field="header", position=line))
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    if missing:
        problems.append(Problem(where, f"missing column{'s' if len(missing) > 1 else ''} "
                                + ", ".join(missing), field="header", position=line))
    return problems


def _csv_row(plan: Plan, header: list[str], record: list[str], line: int,
             base: Path, *, rules: FileRules) -> None:
    cells = {name: (record[i].strip() if i < len(record) else "")
             for i, name in enumerate(header)}
    name = cells.get("name") or None
    row = Row(where=f"line {line}", position=line, name=name, body={},
              site=cells.get("site") or None, tenant=cells.get("tenant") or None)
    problems: list[Problem] = []

    def bad(column: str, message: str) -> None:
        problems.append(row.problem(message, column))

    if len(record) > len(header):
        problems.append(row.problem(f"{len(record)} values for {len(header)} columns (a value "
                                    "with a comma needs double quotes)"))
    for column in REQUIRED_COLUMNS:
        if not cells.get(column):
            bad(column, "required")
    transport = cells.get("transport", "").lower()
    if transport and transport not in TRANSPORTS:
        bad("transport", f"must be agent or ssh, not {cells['transport']!r}")
    row.body = {"name": cells.get("name", ""), "address": cells.get("address", ""),
                "transport": transport}
    if transport == "agent":
        row.body["agent"] = _agent(cells, base, rules, row, bad)
        _only_for(cells, SSH_COLUMNS, "ssh", bad)
    elif transport == "ssh":
        row.body["ssh"] = _ssh(cells, base, rules, row, bad)
        _only_for(cells, AGENT_COLUMNS, "agent", bad)
    kind = cells.get("kind", "").lower()
    if kind and kind not in KINDS:
        bad("kind", f"must be one of {', '.join(KINDS)}, not {cells['kind']!r}")
    mta = {"kind": kind or "sendmail"}
    if cells.get("flavour"):
        mta["flavour"] = cells["flavour"].lower()
    row.body["mta"] = mta
    row.body["tags"] = split_tags(cells.get("tags", ""))
    plan.rows.append(row)
    plan.problems += problems


def _only_for(cells: Mapping[str, str], columns: Sequence[str], transport: str,
              bad: Any) -> None:
    for column in columns:
        if cells.get(column):
            bad(column, f"only for {transport} rows (this row's transport is "
                        f"{'ssh' if transport == 'agent' else 'agent'})")


def _flag(cells: Mapping[str, str], column: str, bad: Any) -> bool | None:
    """A yes/no column: its value, or ``None`` when empty or not yes/no (then named)."""
    if not cells.get(column):
        return None
    flag = parse_bool(cells[column])
    if flag is None:
        bad(column, f"must be yes or no, not {cells[column]!r}")
    return flag


def _from_file(read: Callable[[str, Path, FileRules | None], str], column: str, path: str,
               *, base: Path, rules: FileRules, bad: Any) -> str | None:
    """What a file column names, read by ``read``; ``None`` (and the row's problem named)
    when it cannot be read."""
    try:
        return read(path, base, rules)
    except FileProblem as exc:
        bad(column, str(exc))
        return None


def _agent(cells: Mapping[str, str], base: Path, rules: FileRules, row: Row,
           bad: Any) -> dict[str, Any]:
    agent: dict[str, Any] = {"url": cells.get("agent_url", "")}
    if not agent["url"]:
        bad("agent_url", "required for agent rows")
    token_file, token = cells.get("agent_token_file"), cells.get("agent_token")
    if token_file and token:
        bad("agent_token", "give agent_token_file or agent_token, not both")
    elif token_file:
        row.columns["agent.token"] = "agent_token_file"
        token = _from_file(read_first_line, "agent_token_file", token_file, base=base,
                           rules=rules, bad=bad)
        if token is not None:
            agent["token"] = token.strip()
    elif token:
        agent["token"] = token
    else:
        bad("agent_token_file", "required for agent rows (or an agent_token column)")
    if cells.get("agent_tls_fingerprint"):
        agent["tls_fingerprint"] = cells["agent_tls_fingerprint"]
    insecure_http = _flag(cells, "agent_insecure_http", bad)
    if insecure_http is not None:
        agent["insecure_http"] = insecure_http
    return agent


def _ssh(cells: Mapping[str, str], base: Path, rules: FileRules, row: Row,
         bad: Any) -> dict[str, Any]:
    ssh: dict[str, Any] = {"username": cells.get("ssh_user", "")}
    if not ssh["username"]:
        bad("ssh_user", "required for ssh rows")
    key_file, password_file = cells.get("ssh_key_file"), cells.get("ssh_password_file")
    if key_file and password_file:
        bad("ssh_key_file", "give ssh_key_file or ssh_password_file, not both")
    elif key_file:
        key = _from_file(read_private_key, "ssh_key_file", key_file, base=base, rules=rules,
                         bad=bad)
        if key is not None:
            ssh["private_key"] = key
    elif password_file:
        password = _from_file(read_first_line, "ssh_password_file", password_file,
                              base=base, rules=rules, bad=bad)
        if password is not None:
            ssh["password"] = password
    else:
        bad("ssh_key_file", "required for ssh rows (or ssh_password_file)")
    host_key = cells.get("ssh_host_key", "")
    if not host_key:
        bad("ssh_host_key", "required for ssh rows: the host's public key line ('ssh-ed25519 "
                            "AAAA...'; relayfleet hosts add scans and confirms it for one host)")
    else:
        why = host_key_problem(host_key)
        if why:
            bad("ssh_host_key", why)
        ssh["host_key"] = host_key
    if cells.get("ssh_port"):
        text = cells["ssh_port"]
        if not text.isdigit() or not 1 <= int(text) <= 65535:
            bad("ssh_port", f"must be a number from 1 to 65535, not {text!r}")
        else:
            ssh["port"] = int(text)
    sudo = _flag(cells, "ssh_sudo", bad)
    if sudo is not None:
        ssh["sudo"] = sudo
    return ssh


# -- JSON --------------------------------------------------------------------------------

def parse_json(text: str) -> Plan:
    """The rows of a JSON import: host bodies, ``site`` (a name) standing for
    ``site_id``."""
    plan = Plan()
    try:
        document = json.loads(text.removeprefix("\ufeff"))
    except json.JSONDecodeError as exc:
        plan.problems.append(Problem(f"line {exc.lineno}", f"not valid JSON: {exc.msg} "
                                     f"(column {exc.colno})", position=exc.lineno))
        return plan
    if isinstance(document, dict) and set(document) == {"hosts"}:
        document = document["hosts"]
    if not isinstance(document, list) or not document:
        plan.problems.append(Problem("file", "expected a non-empty array of host objects "
                                     "(as POST /v1/hosts takes them)"))
        return plan
    for number, item in enumerate(document, start=1):
        where = f"item {number}"
        if not isinstance(item, dict):
            plan.problems.append(Problem(where, "must be an object", position=number))
            continue
        name = item.get("name") if isinstance(item.get("name"), str) else None
        body = {key: value for key, value in item.items() if key not in ("site", "tenant")}
        row = Row(where=where, position=number, name=name, body=body)
        site, tenant = item.get("site"), item.get("tenant")
        if site is not None and "site_id" in item:
            plan.problems.append(row.problem("give site (a name) or site_id, not both", "site"))
        elif site is not None:
            if isinstance(site, bool) or not isinstance(site, str | int) or site == "":
                plan.problems.append(row.problem("must be a site name or id", "site"))
            else:
                # a JSON number is an id; a string is read as a CSV cell is
                row.site = f"{ID_PREFIX}{site}" if isinstance(site, int) else site
                row.columns["site_id"] = "site"
        elif "site_id" not in item:
            plan.problems.append(row.problem("required (or site_id)", "site"))
        if tenant is not None:
            if isinstance(tenant, bool) or not isinstance(tenant, str | int) or tenant == "":
                plan.problems.append(row.problem("must be a tenant name or id", "tenant"))
            elif site is None:
                plan.problems.append(row.problem("only with site (a name)", "tenant"))
            else:
                row.tenant = f"{ID_PREFIX}{tenant}" if isinstance(tenant, int) else tenant
        plan.rows.append(row)
    return plan


def parse_file(path: Path, *, allow_outside: bool = False) -> Plan:
    """A ``.csv`` or ``.json`` import file's rows and problems (``allow_outside``: the
    CSV may name files outside its directory)."""
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json"):
        return Plan(problems=[Problem(str(path), "give a .csv or .json file")])
    try:
        if suffix == ".csv":
            # read as it goes: a huge file stops at its 1001st host
            with path.open(encoding="utf-8-sig", newline="") as handle:
                return parse_csv(handle, path.parent, allow_outside=allow_outside)
        if path.stat().st_size > MAX_JSON_BYTES:
            return Plan(problems=[Problem(str(path), f"larger than {MAX_JSON_BYTES >> 20} MiB: "
                                          f"one import takes at most {MAX_ROWS} hosts")])
        plan = parse_json(path.read_text(encoding="utf-8"))
    except OSError as exc:
        return Plan(problems=[Problem(str(path), f"cannot read it: {exc.strerror or exc}")])
    except UnicodeDecodeError:
        return Plan(problems=[Problem(str(path), "not UTF-8 text (save it as UTF-8 CSV)")])
    if len(plan.rows) > MAX_ROWS:
        plan.problems.append(Problem(str(path), f"{len(plan.rows)} hosts; one import takes at "
                                     f"most {MAX_ROWS}: split the file"))
    return plan


# -- what needs the inventory ----------------------------------------------------------------

class _Ambiguous(Exception):
    """A number that is both an id and a name (the message says so)."""


def _match(items: Iterable[Mapping[str, Any]], ref: str, kind: str) -> list[Mapping[str, Any]]:
    """Items with that id (``id:3``, or a number no item is named) or name (``name:3``,
    else exactly, else ignoring case)."""
    items = list(items)
    try:
        ident, name = split_ref(ref)
    except UsageProblem as exc:
        raise _Ambiguous(exc.message) from None
    found: list[Mapping[str, Any]] = []
    if name is not None:
        found = [item for item in items if item["name"] == name] or [
            item for item in items if str(item["name"]).casefold() == name.casefold()]
    if ident is None:
        return found
    if found:
        raise _Ambiguous(f"{number_or_name(kind, ref)}; {say_which(ref)}")
    return [item for item in items if item["id"] == ident]


def resolve_sites(plan: Plan, sites: Sequence[Mapping[str, Any]],
                  tenants: Sequence[Mapping[str, Any]]) -> None:
    """Set each row's ``site_id`` from its site (and tenant), or name the problem.

    ``sites`` and ``tenants`` are what the token sees (``GET /v1/sites``, ``/v1/tenants``).
    """
    tenant_names = {t["id"]: t["name"] for t in tenants}
    for row in plan.rows:
        if row.site is None:
            continue
        candidates = list(sites)
        if row.tenant is not None:
            try:
                found = _match(tenants, row.tenant, "tenant")
            except _Ambiguous as exc:
                plan.problems.append(row.problem(str(exc), "tenant"))
                continue
            if not found:
                plan.problems.append(row.problem(f"no tenant {row.tenant!r} in your tenants",
                                                 "tenant"))
                continue
            candidates = [s for s in sites if s["tenant_id"] == found[0]["id"]]
        try:
            matches = _match(candidates, row.site, "site")
        except _Ambiguous as exc:
            plan.problems.append(row.problem(str(exc), "site"))
            continue
        if not matches:
            within = f" of tenant {row.tenant}" if row.tenant else " in your tenants"
            ident, name = split_ref(row.site)
            what = f"with id {str(ident)!r}" if ident is not None else f"named {name!r}"
            plan.problems.append(row.problem(f"no site {what}{within} "
                                             "(relayfleet sites list)", "site"))
        elif len(matches) > 1:
            owners = ", ".join(f"{tenant_names.get(s['tenant_id'], s['tenant_id'])}: site "
                               f"{s['id']}" for s in matches)
            plan.problems.append(row.problem(f"several tenants have a site named {row.site!r} "
                                             f"({owners}): add a tenant column or give the "
                                             "site's id", "site"))
        else:
            row.body["site_id"] = matches[0]["id"]


def duplicate_problems(plan: Plan) -> None:
    """Name rows that give a site the same host name twice (names are unique per site)."""
    first: dict[tuple[Any, str], Row] = {}
    for row in plan.rows:
        site, name = row.body.get("site_id"), row.body.get("name")
        if site is None or not isinstance(name, str) or not name:
            continue
        earlier = first.setdefault((site, name), row)
        if earlier is not row:
            plan.problems.append(row.problem(f"the same site already gets a host named {name!r} "
                                             f"from {earlier.where}", "name"))


def existing_problems(plan: Plan, hosts: Iterable[Mapping[str, Any]],
                      site_names: Mapping[int, str]) -> list[Problem]:
    """Rows whose name a host of the same site already has in the inventory."""
    taken = {(h["site_id"], h["name"]): h["id"] for h in hosts}
    problems = []
    for row in plan.rows:
        key = (row.body.get("site_id"), row.body.get("name"))
        if key in taken:
            site = site_names.get(int(key[0] or 0), key[0])
            problems.append(row.problem(f"site {site} already has a host named {key[1]} "
                                        f"(id {taken[key]}): remove it or rename this one",
                                        "name"))
    return problems


def api_problems(plan: Plan, errors: Mapping[str, Any]) -> list[Problem]:
    """The API's ``hosts.K.field`` errors as problems of the rows they name."""
    problems = []
    for key, messages in _flat(errors):
        found = re.fullmatch(r"hosts\.(\d+)(?:\.(.+))?", key)
        index = int(found.group(1)) if found else -1
        if found and index < len(plan.rows):
            row = plan.rows[index]
            api_field = found.group(2)
            problems.append(row.problem(messages, row.column_for(api_field)
                                        if api_field else None))
        else:
            problems.append(Problem("import", messages, field=key))
    return problems


def _flat(errors: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(errors, Mapping):
        for key, value in errors.items():
            yield from _flat(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(errors, list) and all(isinstance(item, str) for item in errors):
        yield prefix or "request", "; ".join(errors)
    else:
        yield prefix or "request", str(errors)


def redacted(body: Mapping[str, Any]) -> dict[str, Any]:
    """A host body with its secrets replaced (for a dry run's --json)."""
    secrets = {"agent": ("token",), "ssh": ("private_key", "password", "passphrase")}
    copy = dict(body)
    for part, keys in secrets.items():
        if isinstance(copy.get(part), dict):
            copy[part] = {key: ("<secret>" if key in keys else value)
                          for key, value in copy[part].items()}
    return copy
