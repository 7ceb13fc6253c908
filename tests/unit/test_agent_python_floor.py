"""The agent's import path (agent/ and shared/) needs no Python newer than 3.9 (Debian 11 and
RHEL 9 ship 3.9): checked with vermin and ruff's parser (set to 3.9 for this check only),
plus what vermin cannot see reliably.

shared/testing/ is not on the agent's import path, but the agent's tests use it when they
run on Debian 11's Python 3.9 (tests/integration/test_agent_py39.py): it is checked too.

vermin runs with annotations *not* evaluated (its default, said explicitly): every module
here has ``from __future__ import annotations`` (checked below), so ``str | None`` or
``list[int]`` in an annotation is never evaluated at run time. vermin's own ``X | Y``
detection is off: it is a heuristic that also reports parameter annotations (never
evaluated here) and flag sums like ``os.O_WRONLY | os.O_CREAT``; a union of types that is
evaluated at run time (``isinstance(v, list | tuple)``, a type alias) is found by
``runtime_unions`` instead.
"""

from __future__ import annotations

import ast
import builtins
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FLOOR = "3.9"
CHECKED = ("agent", "shared")
VERMIN = [sys.executable, "-c",
          "import sys; from vermin import main; sys.argv[0] = 'vermin'; sys.exit(main())",
          "--no-config-file", f"--target={FLOOR}-", "--violations", "--no-tips",
          "--no-eval-annotations", "--no-make-paths-absolute", "-vvv"]
#: a name that stands for a type: a builtin class, or CamelCase (constants are UPPER_CASE)
_TYPE_NAME = re.compile(r"[A-Z]\w*[a-z]\w*")


def sources() -> list[Path]:
    """Every Python file of the checked packages."""
    return sorted(path for package in CHECKED for path in (ROOT / package).rglob("*.py"))


def _looks_like_a_type(node: ast.expr) -> bool:
    if isinstance(node, ast.Constant):
        return node.value is None
    if isinstance(node, ast.Subscript):  # list[int], Callable[..., X]
        return _looks_like_a_type(node.value)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _looks_like_a_type(node.left) and _looks_like_a_type(node.right)
    name = (node.id if isinstance(node, ast.Name)
            else node.attr if isinstance(node, ast.Attribute) else None)
    if name is None:
        return False
    return (isinstance(getattr(builtins, name, None), type)
            or _TYPE_NAME.fullmatch(name) is not None)


def _annotations(tree: ast.AST) -> Iterator[ast.expr]:
    for node in ast.walk(tree):
        if isinstance(node, ast.arg) and node.annotation is not None:
            yield node.annotation
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns:
            yield node.returns
        elif isinstance(node, ast.AnnAssign):
            yield node.annotation


def _type_checking_only(tree: ast.AST) -> Iterator[ast.AST]:
    """The bodies of ``if TYPE_CHECKING:`` (never run)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING",
                                                                    "typing.TYPE_CHECKING"):
            yield from node.body


def runtime_unions(source: str, filename: str = "<source>") -> list[str]:
    """``X | Y`` of types outside annotations and ``if TYPE_CHECKING:`` (evaluated when the
    code runs: a TypeError on Python 3.9), as ``file:line: text``, outermost only."""
    tree = ast.parse(source, filename)
    skipped = {id(node) for top in [*_annotations(tree), *_type_checking_only(tree)]
               for node in ast.walk(top)}
    found: list[ast.BinOp] = []
    for node in ast.walk(tree):  # breadth first: an outer union before its parts
        if (isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr)
                and id(node) not in skipped and _looks_like_a_type(node)):
            found.append(node)
            skipped.update(id(part) for part in ast.walk(node))
    return [f"{filename}:{node.lineno}: {ast.get_source_segment(source, node)}"
            for node in found]


def test_vermin_finds_nothing_newer_than_the_floor() -> None:
    try:
        import vermin  # noqa: F401
    except ImportError:
        pytest.fail("vermin is missing: pip install -e '.[dev]' (deploy/dev/bootstrap.sh)")
    proc = subprocess.run([*VERMIN, *CHECKED], capture_output=True, text=True, cwd=ROOT,
                          timeout=300, check=False)
    assert proc.returncode == 0, f"needs a Python newer than {FLOOR}:\n{proc.stdout}{proc.stderr}"
    # vermin read every file (not none: then it says "~"), and found 3.9 the minimum
    analysed = re.search(r"^Analyzing (\d+) files", proc.stdout, re.MULTILINE)
    assert analysed and int(analysed.group(1)) == len(sources()), proc.stdout[:2000]
    assert f"Minimum required versions: {FLOOR}" in proc.stdout, proc.stdout


#: ruff's check with its parser set to Python 3.9, and none of the project's settings (they
#: target 3.11): it knows which syntax each version has (match, except*, ...)
RUFF_PY39 = [sys.executable, "-m", "ruff", "check", "--isolated", "--no-cache",
             "--target-version", "py39", "--select", "E9"]


def test_ruff_parses_it_as_python_3_9() -> None:
    proc = subprocess.run([*RUFF_PY39, *CHECKED], capture_output=True, text=True, cwd=ROOT,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_set_to_python_3_9_refuses_newer_syntax(tmp_path: Path) -> None:
    # The check above means something only if this ruff knows 3.10's syntax is newer (older
    # ruffs parse everything as the newest Python): pip install -U ruff if this fails.
    (tmp_path / "new.py").write_text("def f(x):\n    match x:\n        case 1:\n"
                                     "            return 1\n")
    proc = subprocess.run([*RUFF_PY39, "new.py"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Cannot use `match` statement on Python 3.9" in proc.stdout, proc.stdout


def test_vermin_reports_what_is_newer_than_the_floor(tmp_path: Path) -> None:
    # The same command on code that needs 3.10 and 3.11 fails, saying why and where.
    (tmp_path / "new.py").write_text(
        "from __future__ import annotations\n"
        "import tomllib\n"
        "def pairs(a: list[int], b: list[int]) -> list[tuple[int, int]]:\n"
        "    return list(zip(a, b, strict=True))\n")
    proc = subprocess.run([*VERMIN, "new.py"], capture_output=True, text=True, cwd=tmp_path,
                          timeout=300, check=False)
    assert proc.returncode == 1, proc.stdout
    assert "L2 C7: 'tomllib' module requires !2, 3.11" in proc.stdout
    assert "'zip(strict)' requires !2, 3.10" in proc.stdout


def test_no_union_of_types_is_evaluated_at_run_time() -> None:
    found = [hit for path in sources()
             for hit in runtime_unions(path.read_text(), str(path.relative_to(ROOT)))]
    assert not found, ("X | Y of types is evaluated here and fails on Python 3.9: use a tuple "
                       "for isinstance, a quoted TypeAlias for an alias\n" + "\n".join(found))


def test_the_union_check_sees_what_runs_and_skips_annotations() -> None:
    source = ("from __future__ import annotations\n"
              "import os, ipaddress\n"
              "Ip = ipaddress.IPv4Address | ipaddress.IPv6Address\n"
              "Pair = tuple[int, bytes | None]\n"
              "def f(v: int | None, w: list[str] | None = None) -> str | None:\n"
              "    x: int | None = os.O_WRONLY | os.O_CREAT\n"
              "    return isinstance(v, list | tuple) and None\n"
              "if TYPE_CHECKING:\n"
              "    Alias = int | str\n")
    assert runtime_unions(source) == [
        "<source>:3: ipaddress.IPv4Address | ipaddress.IPv6Address",
        "<source>:4: bytes | None", "<source>:7: list | tuple"]


def test_annotations_are_never_evaluated() -> None:
    # Annotations may use 3.10 syntax (str | None) only while Python does not evaluate them.
    missing = []
    for path in sources():
        tree = ast.parse(path.read_text())
        future = any(isinstance(node, ast.ImportFrom) and node.module == "__future__"
                     and any(alias.name == "annotations" for alias in node.names)
                     for node in tree.body)
        if not future and next(_annotations(tree), None) is not None:
            missing.append(str(path.relative_to(ROOT)))
    assert not missing, f"annotated without `from __future__ import annotations`: {missing}"


def test_zip_strict_is_zip_with_strict() -> None:
    from shared.compat import zip_strict

    assert list(zip_strict("ab", [1, 2])) == list(zip("ab", [1, 2], strict=True))
    assert list(zip_strict([], iter(()))) == []
    for first, second in (("abc", [1, 2]), ("ab", [1, 2, 3])):
        with pytest.raises(ValueError, match="zip_strict: the second argument is"):
            list(zip_strict(first, second))


@pytest.mark.parametrize("text", ["010.0.0.1", "192.0.2.01", "::ffff:192.0.2.001"])
def test_leading_zeros_are_refused_as_python_3_9_5_does(text: str) -> None:
    import ipaddress

    from shared.compat import no_leading_zeros

    with pytest.raises(ValueError, match="leading zeros"):
        no_leading_zeros(text)
    with pytest.raises(ValueError):  # what the newer Pythons say themselves
        ipaddress.ip_address(text)


@pytest.mark.parametrize("text", ["10.0.0.1", "0.0.0.0", "192.0.2.100", "::ffff:192.0.2.10",
                                  "2001:db8::10"])
def test_addresses_without_leading_zeros_pass(text: str) -> None:
    from shared.compat import no_leading_zeros

    assert no_leading_zeros(text) == text
