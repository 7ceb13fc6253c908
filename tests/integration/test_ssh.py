"""The SSH transport against lab hosts with real sshd: logins, host keys, faults, pooling."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.cli import run as run_ops
from shared.errors import CommandTimeout, ExecutorError, HostKeyMismatch, HostUnreachable
from shared.executor import CommandResult, LocalExecutor
from shared.mta import operations_for
from shared.profile import build_profile
from shared.results import OperationResult
from shared.ssh import MAX_STREAM_BYTES, SshExecutor, SshPool, SshTarget, fetch_host_key
from shared.validation import parse_smarthost_request
from tests.conftest import OpsRunner, ssh_target_for
from tests.lab.fanout import run_per_host
from tests.lab.lab import SINK_PORT, LabHost

pytestmark = [pytest.mark.lab, pytest.mark.slow]

Keys = dict[str, tuple[str, str]]
SMARTHOST = {"host": "smarthost.lab.test", "port": SINK_PORT, "mx": False}


def ssh_ops(target: SshTarget, host: LabHost, *argv: str,
            pool: SshPool | None = None) -> tuple[int, dict[str, Any]]:
    return run_ops(["--flavour", host.flavour, *argv], executor=SshExecutor(target, pool))


@pytest.fixture
def pool() -> Iterator[SshPool]:
    """A pool of kept connections for one test, closed after it."""
    pool = SshPool(idle_timeout_s=60)
    yield pool
    pool.close()


@pytest.mark.parametrize("layout", ["debian", "centos"])
def test_non_root_with_sudo_and_every_login_kind(make_host: Callable[..., LabHost], keys: Keys,
                                                 layout: str) -> None:
    host = make_host(layout)
    host.disable_python()
    user, password = host.lab.ensure_ssh_user()
    target = ssh_target_for(host, keys, user=user, sudo=True)
    host.send_mail(["me@ourtest.com"])
    host.wait_deferred()
    code, result = ssh_ops(target, host, "set-smarthost", "--json", json.dumps(SMARTHOST))
    assert code == 0 and result["changed"], result
    code, flushed = ssh_ops(target, host, "flush")
    assert code == 0, flushed
    host.wait_for(lambda: any("<me@ourtest.com>" in m["rcpts"]
                              for m in host.lab.smarthost.messages()), 30, "delivery")
    # Files written through sudo keep root's ownership and their modes.
    st = (host.mail_dir / "sendmail.cf").stat()
    assert st.st_uid == 0 and oct(st.st_mode & 0o777) == "0o644"
    for login in (ssh_target_for(host, keys, user=user, sudo=True, password=password),
                  ssh_target_for(host, keys, user=user, sudo=True, key="rsa"),
                  ssh_target_for(host, keys, user=user, sudo=True, key="ed25519-passphrase"),
                  ssh_target_for(host, keys, user="root", key="rsa")):
        code, read = ssh_ops(login, host, "read-smarthost")
        assert code == 0 and read["data"]["smarthost"]["port"] == SINK_PORT, read
    assert "Accepted password for rflab" in host.sshd_log()
    assert "Accepted publickey for rflab" in host.sshd_log()


@pytest.fixture
def keys(client_keys: Keys) -> Keys:
    return client_keys


def test_unknown_and_changed_host_keys_are_refused(make_host: Callable[..., LabHost],
                                                   keys: Keys) -> None:
    host, other = make_host("debian"), make_host("debian")
    good = ssh_target_for(host, keys)
    other_key = ssh_target_for(other, keys).host_key
    before = host.file_snapshot("sendmail.mc", "sendmail.cf")
    accepted_before = host.sshd_log().count("Accepted")
    unknown = SshTarget(good.host, "root", None, private_key=good.private_key, label=host.name)
    code, doc = ssh_ops(unknown, host, "set-smarthost", "--json", json.dumps(SMARTHOST))
    assert code == 1 and doc["error_kind"] == "host_key", doc
    offered = fetch_host_key(host.address)[1]
    assert host.name in str(doc["error"]) and offered in str(doc["error"])
    changed = SshTarget(good.host, "root", other_key, private_key=good.private_key,
                        label=host.name)
    code, doc = ssh_ops(changed, host, "set-smarthost", "--json", json.dumps(SMARTHOST))
    assert code == 1 and doc["error_kind"] == "host_key", doc
    message = str(doc["error"])
    assert "HOST KEY CHANGED" in message and offered in message
    assert fetch_host_key(other.address)[1] in message
    assert host.sshd_log().count("Accepted") == accepted_before, "a login happened"
    assert host.file_snapshot("sendmail.mc", "sendmail.cf") == before


def test_enrolment_helper_reports_what_ssh_keygen_sees(make_host: Callable[..., LabHost],
                                                       keys: Keys) -> None:
    host = make_host("centos")
    target = ssh_target_for(host, keys)
    line, print_ = fetch_host_key(host.address)
    assert line == target.host_key
    keygen = subprocess.run(["ssh-keygen", "-l", "-f", str(host.root / "ssh_host_ed25519_key")],
                            capture_output=True, text=True, check=True).stdout
    assert print_ in keygen


def test_down_and_stopped_hosts_are_unreachable_in_time(make_host: Callable[..., LabHost],
                                                        keys: Keys) -> None:
    hosts = [make_host("debian"), make_host("centos"), make_host("debian")]
    targets = [ssh_target_for(h, keys) for h in hosts]
    hosts[1].link_down()
    hosts[2].stop_sshd()
    profile = {h.name: build_profile(flavour=h.flavour) for h in hosts}
    by_name = {h.name: h for h in hosts}
    request = parse_smarthost_request(SMARTHOST)

    def work(target: SshTarget) -> OperationResult:
        with SshExecutor(target) as executor:
            return operations_for(executor, profile[target.name]).set_smarthost(request)

    start = time.monotonic()
    try:
        outcomes = run_per_host(targets, work, concurrency=3)
    finally:
        hosts[1].link_up()
    took = time.monotonic() - start
    status = {o.item.name: (o.status, o.error) for o in outcomes}
    assert status[hosts[0].name][0] == "succeeded", status
    assert status[hosts[1].name][0] == "unreachable" and "timed out" in str(
        status[hosts[1].name][1])
    assert status[hosts[2].name][0] == "unreachable" and "refused" in str(
        status[hosts[2].name][1])
    assert took < 60
    assert "smarthost.lab.test" in (by_name[hosts[0].name].mail_dir / "sendmail.cf").read_text()


def test_pool_keeps_connections_between_jobs(make_host: Callable[..., LabHost],
                                             keys: Keys, pool: SshPool) -> None:
    hosts = [make_host("debian"), make_host("centos")]
    targets = [ssh_target_for(h, keys) for h in hosts]
    for _job in range(3):
        for host, target in zip(hosts, targets, strict=True):
            code, doc = ssh_ops(target, host, "queue", pool=pool)
            assert code == 0, doc
    assert pool.dials == 2
    # A changed pinned key is a different connection: redialled, and refused.
    other = SshTarget(targets[0].host, "root", targets[1].host_key,
                      private_key=targets[0].private_key, label=hosts[0].name)
    with pytest.raises(HostKeyMismatch), SshExecutor(other, pool) as executor:
        executor.run(["true"])
    assert pool.dials == 3
    # A connection that died is dropped and redialled.
    hosts[1].stop_sshd()
    hosts[1].ssh_host_key = hosts[1].start_sshd()
    for transport, _since, _shell in list(pool._idle.values()):
        transport.close()
    code, doc = ssh_ops(targets[1], hosts[1], "queue", pool=pool)
    assert code == 0, doc
    assert pool.dials == 4


def test_results_over_ssh_match_the_local_path(make_host: Callable[..., LabHost],
                                               keys: Keys) -> None:
    local_host, ssh_host = make_host("debian"), make_host("debian")
    local = OpsRunner(local_host, None)
    remote = OpsRunner(ssh_host, ssh_target_for(ssh_host, keys))
    ssh_host.disable_python()
    for argv, body in ((("set-smarthost",), SMARTHOST), (("read-smarthost",), None),
                       (("queue",), None), (("status",), None), (("log", "--lines", "50"), None),
                       (("diagnose",), None), (("flush",), None)):
        code_l, doc_l = local(*argv, body=body)
        code_r, doc_r = remote(*argv, body=body)
        assert (code_l, doc_l["ok"]) == (code_r, doc_r["ok"]), (argv, doc_l, doc_r)
        assert set(doc_l) == set(doc_r) and set(doc_l["data"]) == set(doc_r["data"]), argv
        assert [s["name"] for s in doc_l["steps"]] == [s["name"] for s in doc_r["steps"]], argv
        if argv[0] in ("read-smarthost",):
            assert doc_l["data"] == doc_r["data"]


def test_hostile_input_never_connects(make_host: Callable[..., LabHost], keys: Keys) -> None:
    host = make_host("centos")
    target = ssh_target_for(host, keys)
    code, doc = ssh_ops(target, host, "set-smarthost", "--json",
                        json.dumps({"host": "x')esyscmd(`touch /tmp/rf-ssh-pwned')dnl(`"}))
    assert code == 2 and "host" in doc["errors"]
    assert "Accepted" not in host.sshd_log()


def test_local_and_ssh_executors_agree_on_files(make_host: Callable[..., LabHost],
                                                keys: Keys) -> None:
    """The file primitives behave the same way through both executors."""
    host = make_host("debian")
    target = ssh_target_for(host, keys)
    work = host.root / "scratch"
    work.mkdir()
    with SshExecutor(target) as remote:
        local = LocalExecutor()
        for ex, name in ((local, "l"), (remote, "r")):
            base = str(work / name)
            assert ex.make_dir(base) is True and ex.make_dir(base) is False
            data = b"a b\n'quoted' $x `y`\n"
            ex.write_file(f"{base}/f", data, mode=0o640)
            assert ex.read_file(f"{base}/f") == data
            info = ex.file_info(f"{base}/f")
            assert info is not None and info.mode == 0o640 and info.size == len(data)
            ex.write_file_atomic(f"{base}/f", b"new\n")
            assert ex.file_info(f"{base}/f").mode == 0o640  # type: ignore[union-attr]
            ex.copy_file(f"{base}/f", f"{base}/g")
            assert ex.list_dir(base) == ["f", "g"]
            ex.remove(f"{base}/g")
            ex.remove(f"{base}/g")
            assert ex.file_info(f"{base}/g") is None and ex.read_file_if_exists(f"{base}/g") is None
            ex.remove_dir(base)
            assert ex.list_dir(base) == []


# -- the persistent remote shell -------------------------------------------------------
def _host_pids(host: LabHost) -> list[int]:
    """Processes running inside the host (its network namespace)."""
    listed = subprocess.run(["ip", "netns", "pids", host.netns], capture_output=True,
                            text=True, check=False).stdout
    return [int(pid) for pid in listed.split()]


def _cmdlines(pids: list[int] | None = None) -> dict[int, bytes]:
    """Every process's argv as ``ps`` shows it (the whole machine when ``pids`` is None)."""
    found = {}
    for pid in pids if pids is not None else [int(p) for p in os.listdir("/proc")
                                               if p.isdigit()]:
        with contextlib.suppress(OSError):
            found[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    return found


def _sessions(host: LabHost) -> int:
    return host.sshd_log().count("Starting session:")


def test_a_pooled_connection_reuses_its_shell(make_host: Callable[..., LabHost],
                                              keys: Keys, pool: SshPool) -> None:
    host = make_host("debian")
    target = ssh_target_for(host, keys)
    shells = set()
    for _job in range(3):
        with SshExecutor(target, pool) as executor:
            for _ in range(5):
                # env execs sh: its parent is the shell that runs every command
                shells.add(executor.run(["sh", "-c", "echo $PPID"], timeout=None).stdout)
            many = executor.run_many([["echo", "a"], ["sh", "-c", "echo b >&2; exit 3"],
                                      ["printf", "c"]])
            assert [(r.exit_code, r.stdout, r.stderr) for r in many] == [
                (0, b"a\n", b""), (3, b"", b"b\n"), (0, b"c", b"")]
    assert len(shells) == 1 and pool.dials == 1
    host.wait_for(lambda: _sessions(host) >= 1, 10, "the session in sshd's log")
    assert _sessions(host) == 1, "a command opened a session of its own"


def test_a_killed_shell_is_replaced_in_the_same_executor(make_host: Callable[..., LabHost],
                                                         keys: Keys, pool: SshPool) -> None:
    host = make_host("debian")
    target = ssh_target_for(host, keys)
    with SshExecutor(target, pool) as executor:
        first = int(executor.run(["sh", "-c", "echo $PPID"], timeout=None).stdout)
        os.kill(first, signal.SIGKILL)
        second = int(executor.run(["sh", "-c", "echo $PPID"], timeout=None).stdout)
        assert second != first
        # a command that kills its own shell was in flight: reported, not re-run
        with pytest.raises(HostUnreachable, match="connection lost"):
            executor.run(["sh", "-c", "kill -9 $PPID; sleep 5"], timeout=None)
    with SshExecutor(target, pool) as executor:
        assert executor.run(["echo", "back"]).stdout == b"back\n"


def test_a_timed_out_command_leaves_nothing_running(make_host: Callable[..., LabHost],
                                                   keys: Keys, pool: SshPool) -> None:
    host = make_host("debian")
    target = ssh_target_for(host, keys)
    marker = "3171"
    with SshExecutor(target, pool) as executor:
        with pytest.raises(CommandTimeout, match=r"sh did not finish within 1\.5s"):
            executor.run(["sh", "-c", f"sleep {marker}0 & sleep {marker}1; echo never"],
                         timeout=1.5)

        def gone() -> bool:
            return not any(f"sleep {marker}".encode() in argv
                           for argv in _cmdlines(_host_pids(host)).values())
        # the host's timeout (2 s, then -k 5) kills the whole process group
        host.wait_for(gone, 30, "the timed-out commands to be killed on the host")
        # the same executor and connection go on with a new shell
        assert executor.run(["echo", "next"]).stdout == b"next\n"
    assert pool.dials == 1


def test_output_past_the_cap_is_cut(make_host: Callable[..., LabHost], keys: Keys) -> None:
    host = make_host("debian")
    with SshExecutor(ssh_target_for(host, keys)) as executor:
        with pytest.raises(ExecutorError, match="head printed more than 16 MiB on stdout"):
            executor.run(["head", "-c", str(MAX_STREAM_BYTES + 1), "/dev/zero"])
        exact = executor.run(["head", "-c", str(MAX_STREAM_BYTES), "/dev/zero"])
        assert len(exact.stdout) == MAX_STREAM_BYTES
        with pytest.raises(ExecutorError, match="printed more than 16 MiB on stderr"):
            executor.run(["sh", "-c", f"head -c {MAX_STREAM_BYTES + 1} /dev/zero >&2"])
        assert executor.run(["echo", "ok"]).stdout == b"ok\n"


@pytest.mark.parametrize("mta", ["sendmail", "postfix"])
def test_input_binary_and_secrets_through_the_shell(make_host: Callable[..., LabHost],
                                                    keys: Keys, mta: str) -> None:
    """With sudo on a Debian (dash) host and on a Postfix host: stdin, bytes, secrets."""
    host = make_host("debian", mta=mta)
    user, _password = host.lab.ensure_ssh_user()
    target = ssh_target_for(host, keys, user=user, sudo=True)
    with SshExecutor(target) as executor:
        assert executor.run(["id", "-u"]).stdout == b"0\n"
        # no input: stdin is at its end at once, not the shell's own stdin
        assert executor.run(["sh", "-c", "cat; echo after"], timeout=20).stdout == b"after\n"
        binary = bytes(range(256)) * 64 + b"no newline"
        echoed = executor.run(["cat"], input=binary)
        assert (echoed.exit_code, echoed.stdout) == (0, binary)
        secret = f"rf-secret-{os.urandom(8).hex()}".encode()
        result: list[CommandResult] = []
        runner = threading.Thread(target=lambda: result.append(executor.run(
            ["sh", "-c", 'sleep 3; cat > "$1"', "sh", "/tmp/rf-secret-test"], input=secret)))
        runner.start()
        seen_running = False
        while runner.is_alive():
            argvs = _cmdlines().values()
            assert not any(secret in argv for argv in argvs), "the secret is in an argv"
            seen_running = seen_running or any(b"rf-secret-test" in argv for argv in argvs)
            time.sleep(0.05)
        runner.join()
        assert seen_running and result[0].exit_code == 0, result
        assert host.fs("/tmp/rf-secret-test").read_bytes() == secret
        executor.remove("/tmp/rf-secret-test")
    assert secret.decode() not in host.sshd_log()
