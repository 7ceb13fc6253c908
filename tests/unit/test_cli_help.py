"""Every ``relayfleet`` command and sub-command has help with examples, and every example
is a command line its command accepts (options and arguments parse as written)."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from controller.client.main import cli


def _walk(command: click.Command, path: tuple[str, ...] = ()
          ) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    yield path, command
    if isinstance(command, click.Group):
        for name in sorted(command.commands):
            yield from _walk(command.commands[name], (*path, name))


COMMANDS = dict(_walk(cli))
#: a file an example names (``fleet.csv``, ``tokens/lyon1.token``)
FILE_NAME = re.compile(r"[\w./-]+\.(csv|json|pem|txt|token|key)")


def _examples(help_text: str) -> list[str]:
    """The example command lines under "Examples:" at the end of a help page."""
    _, _, tail = help_text.partition("\nExamples:\n")
    return [line.strip() for line in tail.splitlines() if line.strip()]


def test_the_walk_finds_the_whole_grammar() -> None:
    # Not an empty or partial walk: the job commands and their groups are all there.
    for path in [("smarthost", "set"), ("smarthost", "show"), ("smarthost", "remove"),
                 ("flush",), ("status",), ("diagnose",), ("queue",), ("log",),
                 ("jobs", "list"), ("jobs", "show"), ("jobs", "watch"), ("jobs", "cancel"),
                 ("jobs", "retry")]:
        assert path in COMMANDS, path


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=lambda p: " ".join(p) or "relayfleet")
def test_help_has_examples_of_that_command(path: tuple[str, ...]) -> None:
    answer = CliRunner().invoke(cli, [*path, "--help"], prog_name="relayfleet")
    assert answer.exit_code == 0, answer.output
    assert "Examples:" in answer.output, answer.output
    commands = [line for line in _examples(answer.output) if line.startswith("relayfleet ")]
    # At least one example runs this very command (a group: one of its commands); other
    # lines may be comments or shell around it (eval "$(relayfleet completion bash)").
    prefix = " ".join(("relayfleet", *path))
    assert any(line == prefix or line.startswith(prefix + " ") for line in commands), (
        prefix, answer.output)


def _parse(words: list[str]) -> None:
    """Parse a command line down to its last command, as ``relayfleet`` would, without
    running anything (a wrong option, a missing argument or a bad value raises)."""
    command: click.Command = cli
    parent: click.Context | None = None
    name = "relayfleet"
    while True:
        ctx = command.make_context(name, list(words), parent=parent)
        if not isinstance(command, click.Group):
            return
        rest = [*ctx._protected_args, *ctx.args]
        if not rest:
            return
        found, sub, words = command.resolve_command(ctx, rest)
        assert sub is not None and found is not None, rest
        name, command, parent = found, sub, ctx


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=lambda p: " ".join(p) or "relayfleet")
def test_each_example_parses(path: tuple[str, ...], tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # files an example names exist here (click checks some)
    answer = CliRunner().invoke(cli, [*path, "--help"], prog_name="relayfleet")
    for line in _examples(answer.output):
        if not line.startswith("relayfleet "):
            continue
        # The shell's part of an example (redirections, pipes) is not the command's.
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words: list[str] = []
        for word in list(lexer)[1:]:
            if word in ("<", ">", ">>", "|", "&&", ";", "2>"):
                break
            words.append(word)
        for word in words:
            if FILE_NAME.fullmatch(word):
                (tmp_path / word).parent.mkdir(parents=True, exist_ok=True)
                (tmp_path / word).touch()
        try:
            _parse(words)
        except click.ClickException as exc:
            pytest.fail(f"{line!r}: {exc.format_message()}")


@pytest.mark.parametrize("path", sorted(p for p, c in COMMANDS.items()
                                        if not isinstance(c, click.Group)),
                         ids=" ".join)
def test_every_command_takes_json_and_quiet_after_its_name(path: tuple[str, ...]) -> None:
    # `relayfleet jobs show 42 --json`: scripts put the flag at the end too.
    options = {opt for param in COMMANDS[path].params for opt in param.opts}
    assert {"--json", "-q", "--quiet"} <= options, (path, sorted(options))
