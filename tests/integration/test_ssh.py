"""The SSH transport against lab hosts with real sshd: logins, host keys, faults, pooling."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable

import pytest

from shared.cli import run as run_ops
from shared.errors import HostKeyMismatch
from shared.executor import LocalExecutor
from shared.mta import operations_for
from shared.profile import build_profile
from shared.results import OperationResult
from shared.ssh import SshExecutor, SshPool, SshTarget, fetch_host_key
from shared.validation import parse_smarthost_request
from tests.conftest import OpsRunner, ssh_target_for
from tests.lab.fanout import run_per_host
from tests.lab.lab import SINK_PORT, LabHost

pytestmark = [pytest.mark.lab, pytest.mark.slow]

Keys = dict[str, tuple[str, str]]
SMARTHOST = {"host": "smarthost.lab.test", "port": SINK_PORT, "mx": False}


def ssh_ops(target: SshTarget, host: LabHost, *argv: str,
            pool: SshPool | None = None) -> tuple[int, dict[str, object]]:
    return run_ops(["--flavour", host.flavour, *argv], executor=SshExecutor(target, pool))


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
                                             keys: Keys) -> None:
    hosts = [make_host("debian"), make_host("centos")]
    targets = [ssh_target_for(h, keys) for h in hosts]
    pool = SshPool(idle_timeout_s=60)
    try:
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
        for transport, _ in list(pool._idle.values()):
            transport.close()
        code, doc = ssh_ops(targets[1], hosts[1], "queue", pool=pool)
        assert code == 0, doc
        assert pool.dials == 4
    finally:
        pool.close()


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
