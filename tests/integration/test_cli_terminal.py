"""The installed ``relayfleet`` command on a terminal: under a pseudo-terminal a job draws a
live progress bar that is redrawn as hosts finish, a line per host and the final table; in
a pipe, or with NO_COLOR, no escape sequences (or no colours). Shell completion installs
for bash and completes in a real bash.

A real API server (gunicorn), worker, Redis and four lab hosts with agents; the job runs
one host at a time (``--concurrency 1``) so that it lasts long enough to be seen moving.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import shutil
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.lab.enrol import host_body
from tests.lab.lab import Lab, LabHost
from tests.lab.services import ApiServer, ControllerStack, RelayfleetCli, lab_controller

pytestmark = [pytest.mark.lab, pytest.mark.slow]

HOSTS = ("ttya0", "ttya1", "ttya2", "ttya3")
#: any CSI sequence; SGR (``m``) sequences that set a colour
CSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")
SGR = re.compile(rb"\x1b\[([0-9;]*)m")


@dataclass
class Terminal:
    """The stack, its API server, the enrolled hosts and the CLI pointed at them."""

    stack: ControllerStack
    server: ApiServer
    hosts: list[LabHost]
    cli: RelayfleetCli


@pytest.fixture(scope="module")
def terminal(lab: Lab, redis_server: Any, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Terminal]:
    """Four sendmail hosts with agents in one site, a worker and an API server process."""
    workdir = tmp_path_factory.mktemp("cli-terminal")
    with lab_controller(lab, redis_server, workdir, 5) as (stack, hosts):
        controller = stack.controller
        site = controller.site(controller.tenant("Acme"), "Lyon")
        for name in HOSTS:
            host = lab.add_host(name)
            hosts.append(host)
            controller.ok("POST", "/v1/hosts", {**host_body(host, "agent"), "site_id": site})
        token_file = workdir / "admin.token"
        token_file.write_text(controller.admin + "\n")
        token_file.chmod(0o600)
        with ApiServer(stack.env, workdir / "serve.log") as server:
            yield Terminal(stack, server, hosts, RelayfleetCli(server.url, token_file,
                                                               workdir / "home"))


def run_in_pty(argv: list[str], env: dict[str, str], *, columns: int = 120, rows: int = 40,
               timeout: float = 180) -> tuple[int, bytes]:
    """Run ``argv`` with a pseudo-terminal as stdin, stdout and stderr (``columns`` wide);
    return its exit code and every byte it wrote, escape sequences included."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                            start_new_session=True)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            if time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                raise AssertionError(f"{argv} still running after {timeout} s: "
                                     f"{b''.join(chunks)[-3000:]!r}")
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every holder of the terminal's other side has closed it
                break
            if not data:
                break
            chunks.append(data)
        return proc.wait(30), b"".join(chunks)
    finally:
        os.close(master)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def screen_text(raw: bytes) -> str:
    """What the output says without its escape sequences (carriage returns kept)."""
    return CSI.sub(b"", raw).decode(errors="replace")


def colour_codes(raw: bytes) -> list[str]:
    """The SGR sequences in ``raw`` that set a foreground or background colour."""
    found = []
    for params in SGR.findall(raw):
        codes = [int(p) for p in params.split(b";") if p]
        if any(30 <= c <= 49 or 90 <= c <= 107 for c in codes):
            found.append(params.decode())
    return found


def test_live_progress_is_drawn_and_redrawn_then_the_final_table(terminal: Terminal,
                                                                   tmp_path: Path) -> None:
    cli = terminal.cli
    # A real change, one host at a time: a few seconds per host (m4, make, restart).
    code, raw = run_in_pty(cli.argv("smarthost", "set", "smarthost.lab.test:2525", "--no-mx",
                                    "--all", "--concurrency", "1"),
                           cli.env(TERM="xterm-256color"))
    (tmp_path / "pty-output.bin").write_bytes(raw)  # kept for a look when this fails
    text = screen_text(raw)
    assert code == 0, text[-3000:]
    names = [host.fqdn for host in terminal.hosts]
    total = len(names)

    # The progress bar: its "M/N" counter drawn again and again as hosts finish, each frame
    # going back to the line's start (carriage return, erase line) to redraw it.
    counters = [int(m) for m in re.findall(rf"\b(\d+)/{total}\b", text)]
    assert counters, text[-3000:]
    assert counters == sorted(counters), counters  # it never goes back
    assert counters[0] == 0 and counters[-1] == total, counters
    assert len(set(counters)) >= 3, counters       # frames in between: it moved
    assert len(counters) > len(set(counters))      # and frames were redrawn in place
    assert raw.count(b"\r\x1b[2K") >= len(counters) - 1, raw[-2000:]
    assert b"\x1b[?25l" in raw and b"\x1b[?25h" in raw  # cursor hidden, then shown again

    # A line per host as it finished (printed above the bar), then the final table with
    # every host, its status and what it now relays through.
    lines = re.split(r"[\r\n]+", text)
    for name in names:
        assert any(re.fullmatch(rf"{re.escape(name)}: succeeded — changed; now "
                                r"\[smarthost\.lab\.test\]:2525\b.*", line)
                   for line in lines), (name, text[-3000:])
    title = max(i for i, line in enumerate(lines)
                if re.fullmatch(r"job \d+ set_smarthost: succeeded\s*", line))
    table = lines[title:]
    for name in names:
        assert any(re.match(rf"{re.escape(name)}\s+\S\s+succeeded\s+\S\s+changed; now "
                            r"\[smarthost\.lab\.test\]:2525", line)
                   for line in table), (name, "\n".join(table))
    assert any(re.match(rf"job \d+ succeeded: {total} succeeded", line) for line in table)
    # The bar was live before the table: the last frame comes before the table's title.
    assert text.rindex(f"{total}/{total}") < text.rindex("set_smarthost: succeeded")
    assert colour_codes(raw), "a terminal gets colours"


def test_in_a_pipe_the_same_command_prints_no_escape_sequences(terminal: Terminal) -> None:
    answer = terminal.cli("status", "--all", "--concurrency", "1",
                          env={"TERM": "xterm-256color"})
    assert answer.returncode == 0, answer.stderr
    assert "\x1b" not in answer.stdout and "\x1b" not in answer.stderr, answer.stdout
    for host in terminal.hosts:
        assert re.search(rf"^{re.escape(host.fqdn)}: succeeded — ", answer.stdout, re.M), (
            answer.stdout)
    assert re.search(r"job \d+ collect_status: succeeded", answer.stdout), answer.stdout


def test_no_color_on_a_terminal_prints_no_colour(terminal: Terminal) -> None:
    cli = terminal.cli
    code, raw = run_in_pty(cli.argv("status", "--all", "--concurrency", "1"),
                           cli.env(TERM="xterm-256color", NO_COLOR="1"))
    text = screen_text(raw)
    assert code == 0, text[-3000:]
    assert not colour_codes(raw), (colour_codes(raw), raw[-2000:])
    for host in terminal.hosts:
        assert host.fqdn in text


def test_bash_completion_installs_and_completes(tmp_path: Path) -> None:
    bash = shutil.which("bash")
    assert bash is not None
    home = tmp_path / "home"
    cli = RelayfleetCli("http://127.0.0.1:9", tmp_path / "unused.token", home)  # no API call
    env = cli.env()
    installed = subprocess.run([*cli.argv()[:1], "completion", "bash", "--install"], env=env,
                               capture_output=True, text=True, timeout=60, check=False)
    assert installed.returncode == 0, installed.stderr
    # Where bash-completion loads a user's own completions from, on first use of the command.
    script = Path(env["XDG_DATA_HOME"]) / "bash-completion" / "completions" / "relayfleet"
    assert script.is_file(), (installed.stdout, sorted(str(p) for p in home.rglob("*")))
    assert str(script) in installed.stdout + installed.stderr  # it says where it went
    # A real bash sources what was installed and asks for the words after "relayfleet smart"
    # (the completion function calls the relayfleet command itself).
    probe = f"""
source {script}
fn=$(complete -p relayfleet | sed -n 's/.*-F \\([^ ]*\\).*/\\1/p')
[ -n "$fn" ] || {{ echo "no completion function for relayfleet" >&2; exit 3; }}
# as bash calls it: the command, the word being completed, the word before it
COMPREPLY=(); COMP_WORDS=(relayfleet smart); COMP_CWORD=1; COMP_LINE="relayfleet smart"
COMP_POINT=16
"$fn" relayfleet smart relayfleet
printf '%s\\n' "${{COMPREPLY[@]}}"
COMPREPLY=(); COMP_WORDS=(relayfleet smarthost s); COMP_CWORD=2
COMP_LINE="relayfleet smarthost s"; COMP_POINT=22
"$fn" relayfleet s smarthost
printf 'sub:%s\\n' "${{COMPREPLY[@]}}"
"""
    answer = subprocess.run([bash, "--noprofile", "--norc", "-c", probe], env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert answer.returncode == 0, answer.stderr
    words = answer.stdout.split()
    assert [w for w in words if not w.startswith("sub:")] == ["smarthost"], answer.stdout
    assert sorted(w for w in words if w.startswith("sub:")) == ["sub:set", "sub:show"], (
        answer.stdout)
