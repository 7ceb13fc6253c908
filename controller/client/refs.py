"""How a tenant, site or host is named on the command line and in import files: a name, an
id, or explicitly ``id:3`` / ``name:1``.

A plain number is an id unless the token also sees something of that kind with that name
(a site named ``1``): then the command refuses to guess and asks for ``id:1`` or
``name:1``.
"""

from __future__ import annotations

from controller.client.errors import UsageProblem

ID_PREFIX = "id:"
NAME_PREFIX = "name:"


def is_number(text: str) -> bool:
    """ASCII digits only (``²`` and other Unicode digits are names, not ids)."""
    return text.isascii() and text.isdecimal()


def split_ref(text: str) -> tuple[int | None, str | None]:
    """(id, name) a reference may stand for: ``id:3`` → (3, None), ``name:1`` → (None,
    "1"), ``7`` → (7, "7") (either: the caller checks the name), ``lyon`` → (None,
    "lyon")."""
    if text.startswith(ID_PREFIX):
        number = text.removeprefix(ID_PREFIX)
        if not is_number(number):
            raise UsageProblem(f"{text!r}: {ID_PREFIX} takes a number (e.g. id:3)")
        return int(number), None
    if text.startswith(NAME_PREFIX):
        name = text.removeprefix(NAME_PREFIX)
        if not name:
            raise UsageProblem(f"{text!r}: {NAME_PREFIX} takes a name (e.g. name:lyon)")
        return None, name
    if is_number(text):
        return int(text), text
    return None, text


def number_or_name(kind: str, text: str) -> str:
    """What to say when a number is both an id and a name the token sees."""
    return f"{text!r} could be {kind} id {int(text)} or the {kind} named {text!r}"


def say_which(text: str) -> str:
    """The hint that settles it."""
    return f"say which: {ID_PREFIX}{int(text)} or {NAME_PREFIX}{text}"
